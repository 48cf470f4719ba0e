"""The scorecard (minewatch.net.scorecard) against the boosted trees it is read from, and the
shipped behaviour model against the log-odds its training library gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from minewatch.net.behavior import (
    FEATURE_TEXT,
    FEATURES,
    PACKET_FEATURES,
    BehaviorModel,
    default_model,
    default_packet_model,
)
from minewatch.net.scorecard import Scorecard


def _model(which: str) -> BehaviorModel:
    m = default_model() if which == "flow" else default_packet_model()
    assert m is not None
    return m


def _data(n: int = 3000, f: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, f)) * rng.choice([0.1, 1.0, 30.0], size=f)
    logit = np.sin(x[:, 0] * 2) + (x[:, 1] > 0) * (x[:, 2] > 0.1) * 2.0 - 0.3 * x[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


@pytest.mark.parametrize(("depth", "pairs"), [(1, False), (2, True)])
def test_scorecard_equals_the_trees_it_was_read_from(depth: int, pairs: bool) -> None:
    x, y = _data()
    names = tuple(f"f{i}" for i in range(x.shape[1]))
    lo, scale = Scorecard.bins_from_data(names, x, 16)
    blank = Scorecard(names, lo, scale, 16, np.zeros((4, 16)), np.zeros((0, 2), dtype=np.int64),
                      np.zeros((0, 16, 16)), 0.0)  # fmt: skip
    codes = blank.codes(x)
    assert codes.min() == 0 and codes.max() == 15  # values past the edges land in the end bins
    clf = HistGradientBoostingClassifier(max_depth=depth, max_iter=60, random_state=0)
    clf.fit(codes.astype(float), y)
    card = Scorecard.from_trees(clf, names, lo, scale, 16)
    assert (len(card.pairs) > 0) is pairs
    # new rows, including values far outside the training range
    z = np.random.default_rng(1).normal(size=(500, 4)) * 100
    expected = clf.decision_function(blank.codes(z).astype(float))
    np.testing.assert_allclose(card.logit(z), expected, rtol=0, atol=1e-9)
    contrib = card.contributions(z)
    np.testing.assert_allclose(card.intercept + contrib.sum(axis=1), expected, atol=1e-9)
    centred = card.centered(x)
    np.testing.assert_allclose(centred.logit(z), expected, atol=1e-9)
    assert abs(centred.contributions(x).mean(axis=0)).max() < 1e-9


@pytest.mark.parametrize("which", ["flow", "packet"])
def test_scorecard_round_trips_through_arrays(tmp_path: Path, which: str) -> None:
    m = _model(which)
    p = tmp_path / "m.npz"
    m.save(p)
    again = BehaviorModel.load(p)
    x = np.random.default_rng(2).normal(size=(200, len(m.features))) * 3
    np.testing.assert_array_equal(again.confidence(x), m.confidence(x))
    assert again.threshold == m.threshold and again.features == m.features


@pytest.mark.parametrize("which", ["flow", "packet"])
def test_shipped_tables_give_the_training_log_odds(which: str) -> None:
    """The reference rows stored at training time: the shipped tables reproduce the fitted
    classifier's log-odds (without scikit-learn at scan time)."""
    m = _model(which)
    assert m.features == (FEATURES if which == "flow" else FEATURES + PACKET_FEATURES)
    assert m.reference_x is not None and m.reference_logit is not None
    assert len(m.reference_x) >= 500
    np.testing.assert_allclose(m.logit(m.reference_x), m.reference_logit, rtol=0, atol=1e-9)


@pytest.mark.parametrize("which", ["flow", "packet"])
def test_reasons_name_the_terms_that_raised_the_score(which: str) -> None:
    m = _model(which)
    x = m.reference_x
    assert x is not None
    top = int(np.argmax(m.logit(x)))
    (text,) = m.term_reasons(x[top : top + 1])
    assert text.startswith("model terms")
    contrib = m.card.contributions(x[top : top + 1])[0]
    best = m.card.term_names[int(np.argmax(contrib))]
    assert contrib.max() > 0.05  # the top-scoring row has a term that raised it
    assert f"{FEATURE_TEXT[best]} {contrib.max():+.1f}" in text, text

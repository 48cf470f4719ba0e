"""The behaviour model's array form (read without scikit-learn) against scikit-learn itself."""

from __future__ import annotations

import numpy as np

from minewatch.net.behavior import BehaviorModel, TreeEnsemble


def test_shipped_arrays_equal_the_shipped_estimator() -> None:
    fitted = BehaviorModel.load_joblib()
    shipped = BehaviorModel.load()
    assert shipped.estimator is None and shipped.trees is not None
    assert shipped.features == fitted.features and shipped.threshold == fitted.threshold
    rng = np.random.default_rng(0)
    scale = rng.choice([0.1, 1.0, 10.0, 100.0, 1000.0], size=(3000, len(fitted.features)))
    x = np.abs(rng.normal(size=scale.shape)) * scale
    x[rng.random(x.shape) < 0.02] = np.nan  # missing values follow the trained direction
    expected = fitted.estimator.predict_proba(x)[:, 1]
    np.testing.assert_allclose(shipped.raw(x), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        TreeEnsemble.from_sklearn(fitted.estimator).predict_proba(x), expected, atol=1e-12
    )


def test_array_form_round_trips(tmp_path: object) -> None:
    from pathlib import Path

    fitted = BehaviorModel.load_joblib()
    p = Path(str(tmp_path)) / "m.npz"
    fitted.save_arrays(p)
    with np.load(p) as a:
        again = TreeEnsemble.from_arrays(a)
    x = np.linspace(0, 500, 20 * len(fitted.features)).reshape(20, -1)
    np.testing.assert_allclose(again.predict_proba(x), fitted.estimator.predict_proba(x)[:, 1])

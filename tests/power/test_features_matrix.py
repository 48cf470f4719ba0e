"""The accounts × hours matrix built by integer indices and ``bincount`` gives the same values
as the plain Polars way (``group_by`` account and clock hour, then a join for the row index).

The Polars reference is kept here; ``account_features`` is run once as it is and once with the
reference matrix builder put in its place, and the two feature tables must be equal.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from minewatch.lab.meters import generate
from minewatch.power import features
from minewatch.power.features import _Accounts, _Grid, _local_grid


def _reference_hour_matrix(
    acc: _Accounts, rows: np.ndarray, kwh: np.ndarray, tz: str
) -> tuple[pl.Series, np.ndarray, _Grid]:
    """Hourly sums by Polars ``group_by``, complete hours only, scattered by a join."""
    frame = pl.DataFrame(
        {
            "account_id": acc.ids.gather(acc.code[rows]),
            "ts": pl.Series(acc.ts_us[rows], dtype=pl.Datetime("us", "UTC")),
            "kwh": kwh[rows],
            "interval_s": acc.iv[rows],
        }
    )
    hours = (
        frame.with_columns(
            _slot=(pl.col("ts") - pl.duration(seconds=pl.col("interval_s"))).dt.truncate("1h")
        )
        .group_by("account_id", "_slot")
        .agg(_kwh=pl.col("kwh").sum(), _n=pl.len(), _iv=pl.col("interval_s").first())
        .filter(pl.col("_n") * pl.col("_iv") >= 3600)
    )
    ids = hours.get_column("account_id").unique().sort()
    index = pl.DataFrame({"account_id": ids, "_i": np.arange(len(ids), dtype=np.int64)})
    grid = _local_grid(hours.get_column("_slot").min(), hours.get_column("_slot").max(), 3600, tz)
    placed = hours.join(index, on="account_id").with_columns(
        _j=(
            (pl.col("_slot").dt.replace_time_zone(None) - pl.lit(grid.start_utc)).dt.total_seconds()
            // 3600
        ).cast(pl.Int64)
    )
    mat = np.full((len(ids), len(grid.day)), np.nan)
    mat[placed.get_column("_i").to_numpy(), placed.get_column("_j").to_numpy()] = placed.get_column(
        "_kwh"
    ).to_numpy()
    return ids, mat, grid


def _awkward(resolution: str, seed: int) -> pa.Table:
    """Generated readings with gaps, partial hours, a spanning register reading, shuffled."""
    frame = pl.from_arrow(
        generate(n_accounts=40, days=24, resolution=resolution, seed=seed).readings
    )
    assert isinstance(frame, pl.DataFrame)
    rng = np.random.default_rng(seed)
    frame = frame.filter(pl.Series(rng.random(frame.height) > 0.01))  # scattered missing readings
    first = frame.get_column("account_id").min()
    spanning = frame.filter(pl.col("account_id") == first).head(1)
    spanning = spanning.with_columns(
        ts=pl.col("ts") + timedelta(days=3), interval_s=pl.col("interval_s") * 2
    )
    frame = pl.concat([frame, spanning])
    return frame.sample(fraction=1.0, shuffle=True, seed=seed).to_arrow()


CASES = [
    ("hourly", "UTC"),
    ("hourly", "Europe/Berlin"),
    ("15min", "UTC"),
    ("15min", "Asia/Kolkata"),
]


@pytest.mark.parametrize(("resolution", "tz"), CASES)
def test_bincount_matrix_equals_the_polars_group_by(resolution: str, tz: str) -> None:
    table = _awkward(resolution, seed=5)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.sort("account_id", "ts", maintain_order=True)
    acc = _Accounts.of(frame)
    rows = acc.usual_iv[acc.code] == acc.iv
    kwh = frame.get_column("kwh").to_numpy()
    ids, mat, grid = features._hour_matrix(acc, rows, kwh, tz)
    ref_ids, ref_mat, ref_grid = _reference_hour_matrix(acc, rows, kwh, tz)
    assert ids.to_list() == ref_ids.to_list()
    assert mat.shape == ref_mat.shape
    np.testing.assert_array_equal(np.isnan(mat), np.isnan(ref_mat))
    np.testing.assert_allclose(mat, ref_mat, rtol=1e-12, equal_nan=True)
    assert grid.start_utc == ref_grid.start_utc
    assert np.isnan(mat).any() and (~np.isnan(mat)).any()


@pytest.mark.parametrize(("resolution", "tz"), CASES)
def test_features_equal_those_from_the_polars_matrix(
    resolution: str, tz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _awkward(resolution, seed=9)
    new = features.account_features(table, tz=tz)
    monkeypatch.setattr(features, "_hour_matrix", _reference_hour_matrix)
    ref = features.account_features(table, tz=tz)
    assert new.num_rows == ref.num_rows == 40
    for name in features.FEATURES.names:
        a, b = new.column(name), ref.column(name)
        if pa.types.is_float64(a.type):
            x = a.to_numpy(zero_copy_only=False)
            y = b.to_numpy(zero_copy_only=False)
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=0, equal_nan=True, err_msg=name)
        else:
            assert a.equals(b), name


def test_usual_interval_and_span_equal_the_polars_group_by() -> None:
    table = _awkward("15min", seed=3)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.sort("account_id", "ts")
    acc = _Accounts.of(frame)
    ref = (
        frame.group_by("account_id")
        .agg(
            iv=pl.col("interval_s").mode().min(),
            first=pl.col("ts").min().dt.epoch("us"),
            last=pl.col("ts").max().dt.epoch("us"),
        )
        .sort("account_id")
    )
    assert acc.ids.to_list() == ref.get_column("account_id").to_list()
    assert acc.usual_iv.tolist() == ref.get_column("iv").to_list()
    assert acc.first_us.tolist() == ref.get_column("first").to_list()
    assert acc.last_us.tolist() == ref.get_column("last").to_list()
    assert (acc.iv != acc.usual_iv[acc.code]).sum() == 1  # the one spanning register reading


def test_row_order_of_the_input_does_not_change_any_value() -> None:
    table = _awkward("15min", seed=4)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    ordered = frame.sort("account_id", "ts").to_arrow()
    assert features.account_features(table, tz="Europe/Berlin").equals(
        features.account_features(ordered, tz="Europe/Berlin")
    )

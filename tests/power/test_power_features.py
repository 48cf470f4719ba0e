"""Per-account features: the change point, its date and size, grouping purity, resolutions."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from power_synth import START, household, rig, to_readings

from minewatch.power.features import FEATURES, account_features
from minewatch.schema import READINGS

DAYS = 70


def feats(table: pa.Table, **kw: str) -> dict[str, dict[str, object]]:
    out = account_features(table, **kw)
    assert out.schema == FEATURES
    return {r["account_id"]: r for r in out.to_pylist()}


@pytest.fixture(scope="module")
def curves() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    c = {f"h{i}": household(rng, DAYS) for i in range(6)}
    c["step1"] = household(rng, DAYS) + rig(DAYS, 1.0, 40)
    c["night"] = household(rng, DAYS) + rig(DAYS, 1.5, 30, night_only=True)
    return c


def test_a_one_kilowatt_flat_step_is_found_with_its_date_and_size(curves: dict) -> None:
    f = feats(to_readings(curves))["step1"]
    assert f["since"] == START + timedelta(days=40)
    assert f["added_kw"] == pytest.approx(1.0, abs=0.05)
    assert f["base_after_kw"] - f["base_before_kw"] == pytest.approx(1.0, abs=0.05)
    assert f["persist"] >= 0.95 and f["sharpness"] == pytest.approx(1.0, abs=0.1)
    assert f["duty_cycle"] >= 0.95
    assert f["lf_after"] > f["lf_before"]
    assert f["change_stat"] > 20
    assert f["noise_ratio"] < 1.5


def test_plain_households_show_no_real_step(curves: dict) -> None:
    f = feats(to_readings(curves))
    for i in range(6):
        assert (f[f"h{i}"]["added_kw"] or 0.0) < 0.1


def test_night_only_load_is_found_on_the_night_series(curves: dict) -> None:
    f = feats(to_readings(curves))["night"]
    assert f["change_series"] == "night"
    assert f["since"] == START + timedelta(days=30)
    assert f["added_kw"] == pytest.approx(1.5, abs=0.1)
    assert f["added_all_day_kw"] is None or f["added_all_day_kw"] < 0.3


def test_features_do_not_depend_on_how_accounts_are_grouped(curves: dict) -> None:
    table = to_readings(curves)
    whole = account_features(table)
    ids = sorted(curves)
    parts = [
        account_features(table.filter(pc.is_in(table["account_id"], pa.array(group))))
        for group in (ids[:3], ids[3:5], ids[5:])
    ]
    split = pa.concat_tables(parts).sort_by("account_id")
    assert split.equals(whole)


def test_fifteen_minute_data_gives_the_same_change(curves: dict) -> None:
    sub = {"step1": curves["step1"]}
    hourly = feats(to_readings(sub))["step1"]
    quarter = feats(to_readings(sub, interval_s=900))["step1"]
    assert quarter["interval_s"] == 900
    assert quarter["since"] == hourly["since"]
    assert quarter["added_kw"] == pytest.approx(hourly["added_kw"], abs=1e-6)


def test_daily_only_accounts_use_daily_mean_power(curves: dict) -> None:
    hourly = pl.from_arrow(to_readings({"step1": curves["step1"]}))
    daily = (
        hourly.group_by_dynamic(
            "ts", every="1d", closed="right", label="right", group_by="account_id"
        )
        .agg(pl.col("kwh").sum())
        .with_columns(interval_s=pl.lit(86400, dtype=pl.Int32))
        .filter(pl.col("ts") > pl.lit(START))
    )
    f = feats(daily.select(READINGS.names).to_arrow().cast(READINGS))["step1"]
    assert f["change_series"] == "daily_mean"
    assert f["since"] == START + timedelta(days=40)
    assert f["added_kw"] == pytest.approx(1.0, abs=0.15)
    assert f["lf"] is None and f["night_base_kw"] is None


def test_missing_share_and_local_days(curves: dict) -> None:
    table = to_readings({"step1": curves["step1"]})
    keep = np.ones(table.num_rows, dtype=bool)
    keep[100 : 100 + table.num_rows // 10] = False
    f = feats(table.filter(pa.array(keep)))["step1"]
    assert f["missing_share"] == pytest.approx(0.1, abs=0.01)
    berlin = feats(table, tz="Europe/Berlin")["step1"]
    # The rig starts at 00:00 UTC = 01:00 Berlin, so that local day still has an hour without
    # it; the first whole local day with the rig starts at 23:00 UTC the same evening.
    assert berlin["since"] == START + timedelta(days=41) - timedelta(hours=1)


def test_empty_readings_give_an_empty_feature_table() -> None:
    assert account_features(READINGS.empty_table()).num_rows == 0

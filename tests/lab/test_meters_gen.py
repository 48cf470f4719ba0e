"""The benchmark generator: its ground truth matches its readings, and seeds reproduce it."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from minewatch.cli import app
from minewatch.lab import meters
from minewatch.schema import ACCOUNTS, READINGS


@pytest.fixture(scope="module")
def hourly() -> meters.MeterData:
    return meters.generate(n_accounts=3000, days=60, resolution="hourly", prevalence=0.1, seed=11)


@pytest.fixture(scope="module")
def hourly_clean() -> meters.MeterData:
    return meters.generate(
        n_accounts=3000,
        days=60,
        resolution="hourly",
        prevalence=0.1,
        seed=11,
        inject_mining=False,
    )


def _mining_component(with_: meters.MeterData, without: meters.MeterData) -> np.ndarray:
    assert with_.readings.column("account_id").equals(without.readings.column("account_id"))
    return with_.readings.column("kwh").to_numpy() - without.readings.column("kwh").to_numpy()


def test_tables_follow_the_canonical_schemas(hourly: meters.MeterData) -> None:
    assert hourly.readings.schema.equals(READINGS)
    assert hourly.accounts.schema.equals(ACCOUNTS)
    assert hourly.truth.schema.equals(meters.TRUTH)
    assert hourly.accounts.num_rows == hourly.truth.num_rows == 3000
    ids = hourly.accounts.column("account_id")
    assert pc.count_distinct(ids).as_py() == 3000
    assert set(pc.unique(hourly.readings.column("interval_s")).to_pylist()) == {3600}
    # gaps leave out rows, they never add any
    assert hourly.readings.num_rows <= 3000 * 60 * 24
    assert hourly.readings.num_rows > 0.97 * 3000 * 60 * 24
    kwh = hourly.readings.column("kwh").to_numpy()
    assert np.isfinite(kwh).all() and (kwh >= 0).all()


def test_injected_energy_shows_up_in_the_readings(
    hourly: meters.MeterData, hourly_clean: meters.MeterData
) -> None:
    diff = _mining_component(hourly, hourly_clean)
    acct = hourly.readings.column("account_id").to_numpy(zero_copy_only=False)
    truth = hourly.truth.to_pandas().set_index("account_id")
    per_account = np.bincount(
        pc.index_in(
            hourly.readings.column("account_id"), value_set=pa.array(truth.index)
        ).to_numpy(),
        weights=diff,
        minlength=len(truth),
    )
    added = truth["added_kwh"].to_numpy()
    mining = truth["mining"].to_numpy()
    # non-miners are untouched; miners carry the energy the truth table names (gaps and the
    # kWh rounding of readings aside)
    assert np.abs(per_account[~mining]).max() < 1e-9
    gapless = ~np.isin(truth.index, _accounts_with_gaps(hourly))
    ok = mining & gapless
    assert ok.sum() > 100
    np.testing.assert_allclose(per_account[ok], added[ok], rtol=1e-3, atol=0.05)
    assert set(np.unique(acct)) == set(truth.index)


def _accounts_with_gaps(data: meters.MeterData) -> list[str]:
    counts = data.readings.group_by("account_id").aggregate([("kwh", "count")])
    full = data.spec.steps
    return [a for a, c in zip(*counts.to_pydict().values(), strict=True) if c < full]


def test_a_step_miner_adds_its_kw_after_its_start(
    hourly: meters.MeterData, hourly_clean: meters.MeterData
) -> None:
    diff = _mining_component(hourly, hourly_clean)
    readings = hourly.readings.append_column("mine_kwh", pa.array(diff)).to_pandas()
    truth = hourly.truth.to_pandas()
    steps = truth[(truth["disguise"] == "step") & truth["mining"]]
    assert len(steps) >= 20
    for row in steps.itertuples():
        r = readings[readings["account_id"] == row.account_id]
        after = r[r["ts"] > row.start + timedelta(hours=1)]["mine_kwh"]
        before = r[r["ts"] <= row.start]["mine_kwh"]
        assert (before.abs() < 1e-9).all()
        assert after.mean() == pytest.approx(row.added_kw, rel=0.02)


def test_night_only_mining_runs_only_at_night(
    hourly: meters.MeterData, hourly_clean: meters.MeterData
) -> None:
    diff = _mining_component(hourly, hourly_clean)
    night = hourly.truth.filter(pc.equal(hourly.truth.column("disguise"), "night_only"))
    assert night.num_rows >= 10
    sel = pc.is_in(hourly.readings.column("account_id"), value_set=night.column("account_id"))
    ts = hourly.readings.column("ts").filter(sel)
    # local standard time is UTC+1; the interval ending at ts started an hour earlier
    local_hour = (pc.hour(ts).to_numpy() + 1 - 1) % 24
    mined = diff[sel.to_numpy(zero_copy_only=False)] > 1e-6
    hours = set(np.unique(local_hour[mined]).tolist())
    assert hours, "night-only miners never mined"
    assert hours <= {20, 21, 22, 23, 0, 1, 2, 3, 4, 5, 6, 7, 8}
    assert 3 in hours


def test_population_mix(hourly: meters.MeterData) -> None:
    truth = hourly.truth.to_pandas()
    assert 0.07 < truth["mining"].mean() < 0.13
    assert set(truth.loc[truth["mining"], "disguise"]) == set(meters.DISGUISES)
    kinds = set(truth["hard_negative"].dropna())
    assert {"heat_pump", "ev", "electric_boiler", "always_on", "vacation"} <= kinds
    assert {"flat_business", "electric_heating", "vacancy"} <= kinds
    added = truth.loc[truth["mining"], "added_kw"]
    assert added.min() >= 0.3 * 0.2  # the smallest rig of a rig-by-rig site may be small
    assert added.max() > 10.0
    assert (truth.loc[~truth["mining"], "added_kw"] == 0).all()
    assert set(truth.loc[truth["mining"], "tariff_class"]) == {
        "residential",
        "commercial",
        "agricultural",
    }


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = meters.generate(n_accounts=500, days=20, resolution="hourly", seed=5)
    b = meters.generate(n_accounts=500, days=20, resolution="hourly", seed=5)
    c = meters.generate(n_accounts=500, days=20, resolution="hourly", seed=6)
    assert a.readings.equals(b.readings)
    assert a.accounts.equals(b.accounts)
    assert a.truth.equals(b.truth)
    assert not a.readings.column("kwh").equals(c.readings.column("kwh"))


def test_streaming_chunks_equal_the_whole() -> None:
    spec = meters.MeterSpec(n_accounts=2000, days=30, resolution="15min", seed=2)
    assert spec.n_blocks > 1
    whole = meters.MeterData.concat(list(meters.iter_blocks(spec)))
    chunks = list(meters.iter_chunks(spec, accounts_per_chunk=1000))
    assert len(chunks) == 2
    assert meters.MeterData.concat(chunks).readings.equals(whole.readings)
    other = meters.generate(n_accounts=2000, days=30, resolution="15min", seed=2)
    assert other.truth.equals(whole.truth)


@pytest.mark.parametrize("resolution", ["15min", "hourly", "daily"])
def test_resolutions_agree_on_daily_energy(resolution: str) -> None:
    data = meters.generate(n_accounts=300, days=10, resolution=resolution, seed=9, gap_share=0.0)  # type: ignore[arg-type]
    assert set(pc.unique(data.readings.column("interval_s")).to_pylist()) == {
        meters.INTERVAL_S[resolution]
    }
    _, days, daily = meters.daily_matrix(data)
    assert len(days) == 10 and not np.isnan(daily).any()
    res = data.truth.to_pandas()["tariff_class"].to_numpy() == "residential"
    # a household uses a few to a few tens of kWh a day
    assert 3 < np.median(daily[res]) < 30


def test_sgcc_wide_and_long_writers(tmp_path) -> None:
    data = meters.generate(n_accounts=200, days=14, resolution="hourly", seed=4)
    wide = pacsv.read_csv(meters.write_sgcc_wide(data, tmp_path / "sgcc.csv"))
    assert wide.column_names[:2] == ["CONS_NO", "FLAG"]
    assert wide.column_names[2] == "2024/10/7"
    assert wide.num_columns == 2 + 14
    totals = sum(pc.fill_null(wide.column(c), 0.0).to_numpy() for c in wide.column_names[2:])
    expect = data.readings.group_by("account_id").aggregate([("kwh", "sum")]).to_pandas()
    expect = expect.set_index("account_id")["kwh_sum"]
    got = dict(zip(wide.column("CONS_NO").to_pylist(), totals, strict=True))
    for acct, kwh in expect.items():
        assert got[acct] == pytest.approx(kwh, abs=0.02)
    assert wide.column("FLAG").to_pylist() == [
        int(m) for m in data.truth.column("mining").to_pylist()
    ]

    paths = meters.write_long(data, tmp_path / "long", "csv")
    back = pacsv.read_csv(paths["readings"])
    assert back.num_rows == data.readings.num_rows


def test_cli_writes_a_dataset(tmp_path) -> None:
    out = tmp_path / "gen"
    result = CliRunner().invoke(
        app,
        [
            "lab",
            "meters",
            "--accounts",
            "120",
            "--days",
            "5",
            "--resolution",
            "daily",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n_accounts"] == 120
    readings = pq.read_table(summary["readings"])
    assert readings.schema.equals(READINGS)
    assert pq.read_table(summary["truth"]).num_rows == 120
    bad = CliRunner().invoke(app, ["lab", "meters", "--resolution", "weekly", "--out", str(out)])
    assert bad.exit_code == 2

"""``minewatch meters screen`` and ``meters plot`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from power_synth import household, rig, to_readings
from typer.testing import CliRunner

from minewatch.cli import app
from minewatch.schema import SCREEN_FIELDS

DAYS = 63


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(77)
    curves = {f"h{i:02d}": household(rng, DAYS) for i in range(60)}
    curves["rig"] = household(rng, DAYS) + rig(DAYS, 1.2, 30)
    d = tmp_path_factory.mktemp("meters")
    frame = pl.from_arrow(to_readings(curves))
    assert isinstance(frame, pl.DataFrame)
    csv = d / "readings.csv"
    text = (
        frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        .drop("interval_s")
        .write_csv()
    )
    damaged = "h00,2026-04-01T00:00:00Z,-3\nh01,garbage,1\nh02,2026-01-06T01:00:00Z,1.0\n"
    csv.write_text(text + damaged, encoding="utf-8")
    accounts = d / "accounts.csv"
    accounts.write_text(
        "account_id,tariff_class,capacity_kva,region,transformer_id,address\n"
        + "".join(f"{a},residential,8,north,T1,\n" for a in curves),
        encoding="utf-8",
    )
    return {"readings": csv, "accounts": accounts, "dir": d}


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, ["meters", *args])


def test_screen_prints_the_contract_for_flagged_accounts(files: dict[str, Path]) -> None:
    qfile = files["dir"] / "q.jsonl"
    r = invoke(
        "screen", str(files["readings"]), "--accounts", str(files["accounts"]),
        "--quarantine", str(qfile),
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr  # type: ignore[attr-defined]
    rows = [json.loads(x) for x in r.stdout.splitlines()]  # type: ignore[attr-defined]
    assert [x["account_id"] for x in rows] == ["rig"]
    assert tuple(rows[0])[: len(SCREEN_FIELDS)] == SCREEN_FIELDS
    assert rows[0]["flagged"] is True and rows[0]["since"] == "2026-02-04"
    assert rows[0]["added_load_kw"] == pytest.approx(1.2, abs=0.05)
    assert rows[0]["reasons"][0].startswith("+1.2 kW flat since 2026-02-04")
    assert "randomx" in rows[0]["hashrate_hs"]
    err = r.stderr  # type: ignore[attr-defined]
    n = 61 * DAYS * 24 + 3
    assert f"{n} records read = {n - 3} accepted + 3 rejected" in err
    assert "1 flagged" in err
    quarantined = [json.loads(x) for x in qfile.read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantined) == [
        "conflicting duplicate reading (first kept)",
        "negative energy",
        "unparseable timestamp",
    ]


def test_all_and_table_formats(files: dict[str, Path]) -> None:
    r = invoke("screen", str(files["readings"]), "--all")
    assert r.exit_code == 0
    assert len(r.stdout.splitlines()) == 61  # type: ignore[attr-defined]
    r = invoke("screen", str(files["readings"]), "--format", "table")
    assert r.exit_code == 0 and "rig" in r.stdout  # type: ignore[attr-defined]
    assert not r.stdout.lstrip().startswith("{")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"lorem ipsum dolor\nsit amet\n", "no account id column"),
        (b"account_id,ts,volts\nA,2026-01-01,3\n", "no energy column"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
        (b"account_id,ts,kwh\nA,2026-01-01T00:00:00Z,-1\n", "no valid readings"),
    ],
)
def test_unusable_input_exits_2_with_a_message(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    r = invoke("screen", str(path))
    assert r.exit_code == 2
    assert expected in r.stderr and str(path) in r.stderr  # type: ignore[attr-defined]
    assert r.stdout == ""  # type: ignore[attr-defined]


def test_real_process_exit_code_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    path.write_text("not,a,meter\nfile,at,all\n", encoding="utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "minewatch", "meters", "screen", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert "garbage.csv" in p.stderr and "account_id" in p.stderr


def test_plot_writes_a_png_with_the_change(files: dict[str, Path]) -> None:
    out = files["dir"] / "rig.png"
    r = invoke("plot", "rig", "--readings", str(files["readings"]), "-o", str(out))
    assert r.exit_code == 0, r.stderr  # type: ignore[attr-defined]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    r = invoke("plot", "nobody", "--readings", str(files["readings"]), "-o", str(out))
    assert r.exit_code == 2 and "nobody" in r.stderr  # type: ignore[attr-defined]


@pytest.mark.spark
def test_spark_engine_gives_the_same_lines(files: dict[str, Path]) -> None:
    pytest.importorskip("pyspark")
    local = invoke("screen", str(files["readings"]), "--all")
    spark = invoke("screen", str(files["readings"]), "--all", "--engine", "spark")
    assert spark.exit_code == 0, spark.stderr  # type: ignore[attr-defined]
    assert spark.stdout == local.stdout  # type: ignore[attr-defined]


def test_large_parquet_is_screened_in_parts(files: dict[str, Path], monkeypatch) -> None:
    from minewatch.sources import meters as source

    whole = invoke("screen", str(files["readings"]), "--all")
    assert whole.exit_code == 0  # type: ignore[attr-defined]
    frame = pl.read_csv(files["readings"], infer_schema=False)
    parquet = files["dir"] / "readings.parquet"
    frame.write_parquet(parquet, row_group_size=5_000)
    monkeypatch.setattr(source, "PART_ROWS", 12_000)  # 61 accounts x 1512 h: 8+ parts
    parts = list(source.iter_readings(parquet))
    assert len(parts) >= 5
    r = invoke("screen", str(parquet), "--all")
    assert r.exit_code == 0  # type: ignore[attr-defined]
    key = [json.loads(x) for x in r.stdout.splitlines()]  # type: ignore[attr-defined]
    ref = [json.loads(x) for x in whole.stdout.splitlines()]  # type: ignore[attr-defined]
    assert sorted(key, key=lambda x: x["account_id"]) == sorted(ref, key=lambda x: x["account_id"])
    assert "3 rejected" in r.stderr  # type: ignore[attr-defined]

"""Meter data into canonical readings: every format, time zones, damage, conservation."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.schema import ACCOUNTS, READINGS
from minewatch.sources.meters import read_accounts, read_labels, read_readings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows(table: pa.Table) -> list[dict[str, object]]:
    return pl.from_arrow(table).sort(["account_id", "ts"]).to_dicts()  # type: ignore[union-attr]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def conserved(data_report: object) -> None:
    r = data_report
    assert r.read == r.accepted + r.rejected  # type: ignore[attr-defined]
    assert sum(r.rejected_by_reason.values()) == r.rejected  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- long interval


def test_mixed_intervals_are_detected_per_account(tmp_path: Path) -> None:
    lines = ["account_id,ts,kwh"]
    lines += [f"Q,2026-03-02T00:{m:02d}:00Z,0.25" for m in (15, 30, 45)]
    lines += [f"H,2026-03-02T{h:02d}:00:00Z,1.0" for h in range(1, 6)]
    lines += [f"D,2026-03-0{d},24" for d in range(1, 5)]
    data = read_readings(write(tmp_path / "m.csv", "\n".join(lines) + "\n"))
    conserved(data.report)
    assert data.readings.schema == READINGS
    by = {r["account_id"]: r["interval_s"] for r in rows(data.readings)}
    assert by == {"Q": 900, "H": 3600, "D": 86400}
    assert data.report.accounts_by_interval_s == {900: 1, 3600: 1, 86400: 1}
    # a date labels its whole day: the reading ends at the next midnight
    d = [r for r in rows(data.readings) if r["account_id"] == "D"]
    assert d[0]["ts"] == utc(2026, 3, 2)


def test_offsets_are_converted_to_utc_and_start_labels_moved_to_the_end(tmp_path: Path) -> None:
    text = (
        "account,timestamp,energy\nA,2026-03-14T01:00:00+01:00,1\nA,2026-03-14T02:00:00+01:00,2\n"
    )
    data = read_readings(write(tmp_path / "o.csv", text), label="start")
    assert [r["ts"] for r in rows(data.readings)] == [utc(2026, 3, 14, 1), utc(2026, 3, 14, 2)]


def test_dst_fall_back_keeps_both_repeated_hours(tmp_path: Path) -> None:
    # Europe/Berlin, 2026-10-25: 02:00-03:00 local happens twice; a day has 25 hours.
    lines = ["account_id,ts,kwh"]
    hours = [f"{h:02d}:00" for h in range(0, 3)] + ["02:00"] + [f"{h:02d}:00" for h in range(3, 24)]
    lines += [f"A,2026-10-25 {h},0.5" for h in hours]
    q = Quarantine()
    data = read_readings(
        write(tmp_path / "dst.csv", "\n".join(lines) + "\n"), tz="Europe/Berlin", quarantine=q
    )
    conserved(data.report)
    assert data.report.accepted == 25 and data.report.rejected == 0
    ts = [r["ts"] for r in rows(data.readings)]
    assert len(set(ts)) == 25
    assert all((b - a).total_seconds() == 3600 for a, b in pairwise(ts))


def test_dst_spring_forward_gap_is_quarantined(tmp_path: Path) -> None:
    text = "account_id,ts,kwh\nA,2026-03-29 01:00,1\nA,2026-03-29 02:00,1\nA,2026-03-29 03:00,1\n"
    q = Quarantine()
    data = read_readings(write(tmp_path / "gap.csv", text), tz="Europe/Berlin", quarantine=q)
    conserved(data.report)
    assert q.counts == {"local time does not exist (daylight-saving gap)": 1}
    ts = [r["ts"] for r in rows(data.readings)]
    assert ts == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1)]


def test_damage_goes_to_the_quarantine_with_reasons_and_lines(tmp_path: Path) -> None:
    text = (
        "account_id,ts,kwh\n"
        "A,2026-01-01T01:00:00Z,1.0\n"
        "A,2026-01-01T01:00:00Z,1.0\n"  # exact duplicate (line 3)
        "A,2026-01-01T02:00:00Z,1.0\n"
        "A,2026-01-01T02:00:00Z,7.0\n"  # conflicting duplicate (line 5)
        "A,2026-01-01T03:00:00Z,-0.5\n"  # negative (line 6)
        "A,2026-01-01T04:00:00Z,10000\n"  # 10 MWh in an hour (line 7)
        "A,not a time,1\n"  # line 8
        ",2026-01-01T05:00:00Z,1\n"  # no account (line 9)
        "A,2026-01-01T06:00:00Z,abc\n"  # line 10
        "A,2026-01-01T09:00:00Z,1.0\n"
    )
    qfile = tmp_path / "q.jsonl"
    q = Quarantine(path=qfile)
    data = read_readings(write(tmp_path / "bad.csv", text), quarantine=q)
    q.close()
    conserved(data.report)
    assert data.report.read == 10 and data.report.accepted == 3 and data.report.rejected == 7
    assert data.report.rejected_by_reason == {
        "absurd value (average power above 2000 kW)": 1,
        "conflicting duplicate reading (first kept)": 1,
        "duplicate reading": 1,
        "missing account id": 1,
        "missing or unparseable energy value": 1,
        "negative energy": 1,
        "unparseable timestamp": 1,
    }
    lines = [json.loads(x) for x in qfile.read_text().splitlines()]
    assert len(lines) == 7
    by_reason = {x["reason"]: x for x in lines}
    assert by_reason["negative energy"]["where"].endswith("bad.csv:line 6")
    assert by_reason["negative energy"]["source"] == "meters"
    assert by_reason["conflicting duplicate reading (first kept)"]["record"]["kwh"] == "7.0"
    kept = rows(data.readings)
    assert [r["kwh"] for r in kept] == [1.0, 1.0, 1.0]
    assert data.report.gaps == 6  # hours ending 03 to 08 hold no accepted reading


def test_absurd_threshold_is_a_parameter(tmp_path: Path) -> None:
    text = "account_id,ts,kwh\nA,2026-01-01T01:00:00Z,50\nA,2026-01-01T02:00:00Z,1\n"
    q = Quarantine()
    data = read_readings(write(tmp_path / "a.csv", text), max_kw=20, quarantine=q)
    assert data.report.rejected == 1 and "absurd" in next(iter(q.counts))


def test_parquet_with_typed_columns_and_gzip_csv_and_epoch(tmp_path: Path) -> None:
    table = pa.table(
        {
            "account_id": ["P", "P", "P"],
            "ts": pa.array(
                [utc(2026, 1, 1, h) for h in (1, 2, 3)], pa.timestamp("ms", tz="Europe/Berlin")
            ),
            "kwh": [0.5, 0.6, 0.7],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    data = read_readings(tmp_path / "p.parquet")
    assert [r["ts"] for r in rows(data.readings)] == [utc(2026, 1, 1, h) for h in (1, 2, 3)]
    with gzip.open(tmp_path / "z.csv.gz", "wt") as fh:
        fh.write("account_id;ts;kwh\nZ;1767229200;1\nZ;1767232800;2\n")
    data = read_readings(tmp_path / "z.csv.gz")
    assert [r["ts"] for r in rows(data.readings)] == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]


# --------------------------------------------------------------------------- registers


def test_register_readings_with_rollover_replacement_and_misread(tmp_path: Path) -> None:
    text = (
        "account_id,meter_serial,ts,register\n"
        "A,m1,2026-01-01T01:00:00Z,99998.0\n"
        "A,m1,2026-01-01T02:00:00Z,99999.5\n"
        "A,m1,2026-01-01T03:00:00Z,1.0\n"  # rollover at 100000: 1.5 kWh
        "A,m1,2026-01-01T04:00:00Z,2.0\n"
        "A,m1,2026-01-01T05:00:00Z,1.5\n"  # misread: went backwards
        "A,m1,2026-01-01T06:00:00Z,3.0\n"  # 1 kWh over two hours
        "A,m2,2026-01-01T07:00:00Z,0.2\n"  # new meter (serial changed): starts a series
        "A,m2,2026-01-01T08:00:00Z,1.2\n"
        "B,,2026-01-01T01:00:00Z,5000\n"
        "B,,2026-01-01T02:00:00Z,5001\n"
        "B,,2026-01-01T03:00:00Z,3\n"  # replaced without a serial: large drop
        "B,,2026-01-01T04:00:00Z,4\n"
    )
    q = Quarantine()
    data = read_readings(write(tmp_path / "reg.csv", text), quarantine=q)
    conserved(data.report)
    assert data.report.format == "long-register"
    assert q.counts == {"register went backwards (misread)": 1}
    assert data.report.rollovers == 1 and data.report.replacements == 2
    got = [(r["account_id"], r["ts"].hour, r["kwh"], r["interval_s"]) for r in rows(data.readings)]
    assert got == [
        ("A", 2, 1.5, 3600),
        ("A", 3, 1.5, 3600),
        ("A", 4, 1.0, 3600),
        ("A", 6, 1.0, 7200),
        ("A", 8, 1.0, 3600),
        ("B", 2, 1.0, 3600),
        ("B", 4, 1.0, 3600),
    ]
    # series starts are accepted readings that yield no interval
    assert data.report.intervals == 7 and data.report.accepted == 11


def test_cumulative_values_are_recognised_and_kind_can_be_forced(tmp_path: Path) -> None:
    body = "\n".join(f"A,2026-01-01T{h:02d}:00:00Z,{1200 + 0.5 * h}" for h in range(1, 12))
    path = write(tmp_path / "v.csv", "account_id,ts,value\n" + body + "\n")
    auto = read_readings(path)
    assert auto.report.format == "long-register"
    assert {r["kwh"] for r in rows(auto.readings)} == {0.5}
    forced = read_readings(path, kind="interval")
    assert forced.report.format == "long-interval" and forced.readings.num_rows == 11


# --------------------------------------------------------------------------- SGCC wide


def test_sgcc_wide_format_with_flags_gaps_and_damage(tmp_path: Path) -> None:
    text = "CONS_NO,FLAG,2014/1/1,2014/1/2,2014/1/3,2014/1/4\nX1,1,1.5,,2.5,abc\nX2,0,3,3,,-4\n"
    q = Quarantine()
    data = read_readings(write(tmp_path / "sgcc.csv", text), tz="Asia/Shanghai", quarantine=q)
    conserved(data.report)
    assert data.report.format == "sgcc-wide"
    assert data.report.empty_cells == 2 and data.report.read == 6
    assert q.counts == {"unparseable energy value": 1, "negative energy": 1}
    x1 = [r for r in rows(data.readings) if r["account_id"] == "X1"]
    # 2014-01-01 in Shanghai ends at local midnight = 16:00 UTC
    assert x1[0]["ts"] == utc(2014, 1, 1, 16) and x1[0]["interval_s"] == 86400
    assert data.labels is not None
    assert data.labels.to_pylist() == [
        {"account_id": "X1", "label": 1},
        {"account_id": "X2", "label": 0},
    ]


def test_sgcc_without_date_columns_is_unusable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no date columns"):
        read_readings(write(tmp_path / "s.csv", "CONS_NO,FLAG,foo\n1,0,2\n"))


# --------------------------------------------------------------------------- accounts, labels


def test_accounts_table_normalises_and_quarantines(tmp_path: Path) -> None:
    text = (
        "account_id,tariff,capacity_kva,region,transformer_id,address\n"
        "A,household,6,north,T1,1 Main St\n"
        "B,Farm,25,south,T2,\n"
        "C,casino,10,south,T2,\n"
        "D,residential,-3,north,T1,\n"
        "A,commercial,20,north,T1,\n"
        ",residential,5,north,T1,\n"
    )
    q = Quarantine()
    acc = read_accounts(write(tmp_path / "acc.csv", text), quarantine=q)
    assert acc.schema == ACCOUNTS
    got = {r["account_id"]: r["tariff_class"] for r in acc.to_pylist()}
    assert got == {"A": "residential", "B": "agricultural", "C": "other"}
    assert q.counts == {
        "capacity is not a positive number": 1,
        "duplicate account id (first kept)": 1,
        "missing account id": 1,
    }


def test_labels(tmp_path: Path) -> None:
    lab = read_labels(write(tmp_path / "l.csv", "account_id,outcome\nA,yes\nB,0\nC,maybe\n"))
    assert lab.to_pylist() == [{"account_id": "A", "label": 1}, {"account_id": "B", "label": 0}]


# --------------------------------------------------------------------------- unusable files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\x00\x01\x02garbage\x00" * 20, "binary data"),
        (b"account_id,ts,kwh\n", "only a header"),
        (b"this is not a meter file\njust some words\n", "no account id column"),
        (b"account_id,when,kwh\nA,2026-01-01,1\n", "no timestamp column"),
        (b"account_id,ts,volts\nA,2026-01-01,1\n", "no energy column"),
        (b"account_id,ts,kwh\nA,yesterday,1\nB,tomorrow,2\n", "no timestamp could be read"),
        (b"PAR1 but not really parquet", "unreadable Parquet"),
    ],
)
def test_unusable_files_raise_input_error_naming_file_and_fix(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_readings(path)
    assert str(path) in str(err.value)
    assert err.value.hint


def test_missing_columns_error_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_readings(write(tmp_path / "c.csv", "account_id,when,kwh\nA,2026-01-01,1\n"))
    assert err.value.field == "ts" and err.value.line == 1
    assert "timestamp" in (err.value.hint or "")

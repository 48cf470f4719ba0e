"""A large Parquet file is read in parts of whole accounts, with the same result as whole."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.lab import meters
from minewatch.sources.meters import iter_readings, merge_reports, read_readings


def damaged(seed: int = 5) -> pa.Table:
    """Generated hourly readings with negative, absurd, duplicate and conflicting records."""
    frame = pl.from_arrow(
        meters.generate(n_accounts=60, days=20, resolution="hourly", seed=seed).readings
    )
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    i = pl.int_range(0, pl.len())
    frame = frame.with_columns(
        kwh=pl.when(i % 997 == 3).then(-1.0).when(i % 1999 == 5).then(1e9).otherwise(pl.col("kwh"))
    )
    dup = frame.filter(i % 1501 == 7)
    conflict = frame.filter(i % 2503 == 11).with_columns(kwh=pl.col("kwh") + 1.0)
    # duplicates right after their original, so the file stays ordered by account
    out = pl.concat([frame, dup, conflict]).with_row_index("_o")
    out = out.sort("account_id", "ts", "_o").drop("_o")
    return out.to_arrow()


def _same(parts: list, whole, q_parts: Path, q_whole: Path) -> None:
    got = pl.from_arrow(pa.concat_tables([p.readings for p in parts])).sort("account_id", "ts")
    want = pl.from_arrow(whole.readings).sort("account_id", "ts")
    assert got.equals(want)
    a, b = merge_reports([p.report for p in parts]), whole.report
    for name in ("read", "accepted", "rejected", "rejected_by_reason", "accounts", "intervals"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.gaps == b.gaps and a.accounts_by_interval_s == b.accounts_by_interval_s
    assert a.read == a.accepted + a.rejected and a.rejected > 0

    def lines(p: Path) -> set[tuple[str, str]]:
        return {(r["where"], r["reason"]) for r in map(json.loads, p.read_text().splitlines())}

    assert lines(q_parts) == lines(q_whole)  # same records, same record numbers


@pytest.mark.parametrize("order", ["ordered", "shuffled"])
def test_parts_give_what_the_whole_file_gives(tmp_path: Path, order: str) -> None:
    table = damaged()
    if order == "shuffled":
        table = table.sort_by([("ts", "ascending")])
    path = tmp_path / "r.parquet"
    pq.write_table(table, path, row_group_size=2_000)
    q1, q2 = tmp_path / "q_parts.jsonl", tmp_path / "q_whole.jsonl"
    quarantine = Quarantine(path=q1)
    parts = list(iter_readings(path, quarantine=quarantine, part_rows=5_000, spill_dir=tmp_path))
    quarantine.close()
    assert len(parts) >= 3
    ids = [set(p.readings.column("account_id").to_pylist()) for p in parts]
    assert sum(len(s) for s in ids) == len(set().union(*ids))  # no account in two parts
    quarantine = Quarantine(path=q2)
    whole = read_readings(path, quarantine=quarantine)
    quarantine.close()
    _same(parts, whole, q1, q2)
    assert not list(tmp_path.glob("minewatch-readings-*"))  # spill files removed


def test_record_numbers_hold_when_accounts_span_several_row_groups(tmp_path: Path) -> None:
    # accounts of 480 readings in row groups of 100: a part may begin with several row
    # groups' worth of an account owned by the previous part
    table = damaged()
    path = tmp_path / "r.parquet"
    pq.write_table(table, path, row_group_size=100)
    q1, q2 = tmp_path / "q_parts.jsonl", tmp_path / "q_whole.jsonl"
    quarantine = Quarantine(path=q1)
    parts = list(iter_readings(path, quarantine=quarantine, part_rows=1_000))
    quarantine.close()
    assert len(parts) >= 10
    quarantine = Quarantine(path=q2)
    whole = read_readings(path, quarantine=quarantine)
    quarantine.close()
    _same(parts, whole, q1, q2)


def test_small_and_csv_files_are_one_part(tmp_path: Path) -> None:
    table = damaged()
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    assert len(list(iter_readings(path))) == 1  # below the default part size
    csv = tmp_path / "r.csv"
    pl.from_arrow(table.slice(0, 500)).write_csv(csv)  # type: ignore[union-attr]
    assert len(list(iter_readings(csv, part_rows=100))) == 1


def test_ids_ordered_only_with_their_spaces_are_refused(tmp_path: Path) -> None:
    base = pl.DataFrame(
        {
            "account_id": ["A1"] * 30 + ["A1 "] * 30 + ["A2"] * 30,
            "ts": [f"2026-03-{1 + h // 24:02d}T{h % 24:02d}:00:00Z" for h in range(30)] * 3,
            "kwh": [1.0] * 90,
        }
    )
    path = tmp_path / "r.parquet"
    pq.write_table(base.to_arrow(), path, row_group_size=30)
    with pytest.raises(InputError, match="spaces around the ids"):
        list(iter_readings(path, part_rows=30))

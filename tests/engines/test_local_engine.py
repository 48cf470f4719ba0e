"""The local engine cuts any input into whole accounts and gives the same answer every way."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from engine_support import SUMMARY, assert_same, summary

from minewatch.engines import local
from minewatch.lab import meters
from minewatch.power.features import FEATURES, account_features


@pytest.mark.parametrize("chunk", [1, 7, 150, 10_000])
def test_chunk_size_does_not_change_the_result(small_hourly: meters.MeterData, chunk: int) -> None:
    whole = summary(small_hourly.readings)
    seen: list[int] = []

    def fn(t: pa.Table) -> pa.Table:
        seen.append(pc.count_distinct(t.column("account_id")).as_py())
        return summary(t)

    got = local.run(fn, small_hourly.readings, accounts_per_chunk=chunk)
    assert_same(got, whole)
    assert max(seen) <= chunk  # memory is bounded by the chunk
    assert sum(seen) == 400  # every account exactly once, never split


def test_stream_with_accounts_across_batches(small_hourly: meters.MeterData) -> None:
    batches = small_hourly.readings.to_batches(max_chunksize=997)  # cuts accounts mid-way
    got = local.run(summary, iter(batches), accounts_per_chunk=33)
    assert_same(got, summary(small_hourly.readings))


def test_unordered_stream_is_refused(small_hourly: meters.MeterData) -> None:
    shuffled = small_hourly.readings.sort_by([("ts", "ascending")])
    with pytest.raises(local.UnorderedInput, match="not ordered by account"):
        local.run(summary, iter(shuffled.to_batches(max_chunksize=5000)))


def test_unordered_table_is_sorted_in_memory(small_hourly: meters.MeterData) -> None:
    shuffled = small_hourly.readings.sort_by([("ts", "descending")])
    assert_same(local.run(summary, shuffled, accounts_per_chunk=50), summary(small_hourly.readings))


def test_parquet_file_sorted_and_unsorted(small_hourly: meters.MeterData, tmp_path) -> None:
    expect = summary(small_hourly.readings)
    ordered = tmp_path / "ordered.parquet"
    pq.write_table(small_hourly.readings, ordered, row_group_size=10_000)
    assert local.is_ordered(ordered)
    assert_same(local.run(summary, ordered, accounts_per_chunk=64), expect)

    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(small_hourly.readings.sort_by([("ts", "ascending")]), shuffled)
    assert not local.is_ordered(shuffled)
    spill = tmp_path / "spill"
    spill.mkdir()
    got = local.run(summary, shuffled, accounts_per_chunk=64, spill_dir=spill)
    assert_same(got, expect)
    assert list(spill.iterdir()) == []  # spill files are removed


def test_spill_buckets_keep_accounts_whole(small_hourly: meters.MeterData, tmp_path) -> None:
    paths = local.spill_buckets(small_hourly.readings.to_batches(8000), tmp_path, 5)
    owners: dict[str, int] = {}
    total = 0
    for b, p in enumerate(paths):
        t = pq.read_table(p)
        total += t.num_rows
        for acct in pc.unique(t.column("account_id")).to_pylist():
            assert owners.setdefault(acct, b) == b
    assert total == small_hourly.readings.num_rows


@pytest.mark.parametrize("processes", [True, False])
def test_two_workers_same_answer_in_order(small_hourly: meters.MeterData, processes: bool) -> None:
    one = local.run(summary, small_hourly.readings, accounts_per_chunk=40)
    two = local.run(
        summary, small_hourly.readings, accounts_per_chunk=40, workers=2, processes=processes
    )
    assert one.column("account_id").to_pylist() == two.column("account_id").to_pylist()
    assert_same(one, two)


def test_empty_input() -> None:
    empty = meters.generate(n_accounts=1, days=1, resolution="daily").readings.slice(0, 0)
    assert local.run(summary, empty, schema=SUMMARY).num_rows == 0


def test_real_features_are_chunk_invariant(small_hourly: meters.MeterData) -> None:
    whole = account_features(small_hourly.readings)
    chunked = local.features(small_hourly.readings, accounts_per_chunk=37, workers=2)
    assert chunked.schema.equals(FEATURES)
    assert_same(chunked, whole)


def test_automatic_chunk_size_follows_readings(small_hourly: meters.MeterData, monkeypatch) -> None:
    sizes: list[int] = []

    def fn(t: pa.Table) -> pa.Table:
        sizes.append(pc.count_distinct(t.column("account_id")).as_py())
        return summary(t)

    local.run(fn, small_hourly.readings)
    assert sizes == [400]  # 400 accounts x 840 hours is far below the default
    sizes.clear()
    monkeypatch.setattr(local, "DEFAULT_CHUNK_READINGS", 84_000)
    monkeypatch.setattr(local, "MIN_AUTO_CHUNK", 1)
    local.run(fn, small_hourly.readings)
    assert len(sizes) >= 3 and max(sizes) <= 110


@pytest.mark.parametrize("row_group_size", [300, 997])
def test_parquet_parts_keep_accounts_whole(
    small_hourly: meters.MeterData, tmp_path, monkeypatch, row_group_size: int
) -> None:
    # accounts of 840 readings: with 300-row groups one account spans several row groups,
    # some of which hold nothing else; every part must own each account exactly once
    path = tmp_path / "ordered.parquet"
    pq.write_table(small_hourly.readings, path, row_group_size=row_group_size)
    monkeypatch.setattr(local, "PART_READINGS", 5_000)
    parts = local.plan_parts(path, local.PART_READINGS)
    assert parts is not None and len(parts) > 20
    assert any(p.skip for p in parts) and any(p.tail for p in parts)
    seen: list[str] = []

    def fn(t: pa.Table) -> pa.Table:
        seen.extend(pc.unique(t.column("account_id")).to_pylist())
        return summary(t)

    expect = summary(small_hourly.readings)
    assert_same(local.run(fn, path, accounts_per_chunk=16), expect)
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 400
    threads = local.run(summary, path, accounts_per_chunk=16, workers=2, processes=False)
    assert_same(threads, expect)


def test_parquet_row_groups_out_of_order_are_spilled(
    small_hourly: meters.MeterData, tmp_path
) -> None:
    path = tmp_path / "backwards.parquet"
    pq.write_table(
        small_hourly.readings.sort_by([("account_id", "descending")]), path, row_group_size=5_000
    )
    with pytest.raises(local.UnorderedInput, match="row group"):
        local.plan_parts(path, 10_000)
    assert_same(local.run(summary, path, spill_dir=tmp_path), summary(small_hourly.readings))

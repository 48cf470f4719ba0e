"""The local engine: runs a pure per-account function over readings in chunks of accounts.

A *per-account function* takes an Arrow table holding the readings of some whole accounts
and returns a table (typically one row per account); its result for an account must not
depend on which other accounts share the call. :func:`minewatch.power.features.account_features`
is one. This engine cuts any input into chunks of whole accounts, so memory is bounded by the
chunk size, not by the input:

- a table in memory is sorted by account if it is not already;
- a stream of record batches must keep each account's rows together, in ascending account
  order (what the generator, a sorted Parquet file, or a database ``ORDER BY`` gives); the
  order is checked batch by batch with vectorised comparisons;
- a Parquet file or directory is streamed; if it turns out not to be ordered by account,
  :func:`run` reads it again and spills it into hash buckets on disk (Polars hashing, one
  Parquet file per bucket), and each bucket is then sorted and cut into chunks.

With ``workers > 1`` chunks run in a pool of worker processes (or threads); results come back
in input order.

The Spark engine (:mod:`minewatch.engines.spark`) runs the same function per account group.
"""

from __future__ import annotations

import functools
import itertools
import math
import multiprocessing as mp
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from minewatch.errors import InputError

AccountFn: TypeAlias = Callable[[pa.Table], pa.Table]
Source: TypeAlias = pa.Table | str | os.PathLike[str] | Iterable[pa.Table | pa.RecordBatch]
_T = TypeVar("_T")
_R = TypeVar("_R")

KEY = "account_id"
#: with no chunk size given, chunks hold about this many readings: the feature code peaks at
#: roughly 250 bytes per reading (measured), so ~1 GB per chunk in flight
DEFAULT_CHUNK_READINGS = 4_000_000
#: a Parquet file ordered by account is cut into parts of whole row groups of about this many
#: readings; each worker reads its parts itself (see :func:`plan_parts`)
PART_READINGS = 8_000_000
#: rows per record batch read from Parquet
BATCH_READINGS = 1_000_000
#: bounds of the automatic chunk size, in accounts
MIN_AUTO_CHUNK, MAX_AUTO_CHUNK = 100, 500_000


class UnorderedInput(InputError):
    """A stream of readings that does not keep each account's rows together in order."""


def _as_table(batch: pa.Table | pa.RecordBatch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def iter_account_chunks(
    batches: Iterable[pa.Table | pa.RecordBatch],
    accounts_per_chunk: int | None = None,
    key: str = KEY,
) -> Iterator[pa.Table]:
    """Regroup a stream ordered by ``key`` into tables of ``accounts_per_chunk`` whole accounts.

    An account may span several input batches; it is never split across output tables.
    Without ``accounts_per_chunk`` the size is set from the first batch so that a chunk holds
    about :data:`DEFAULT_CHUNK_READINGS` readings. Raises :class:`UnorderedInput` when the
    stream is not in ascending ``key`` order.
    """
    if accounts_per_chunk is not None and accounts_per_chunk < 1:
        raise ValueError("accounts_per_chunk must be at least 1")
    n = accounts_per_chunk or 0
    buf: list[pa.Table] = []
    n_open = 0  # accounts begun in buf
    last: str | None = None
    for record, batch in enumerate(batches):
        table = _as_table(batch)
        if table.num_rows == 0:
            continue
        ids = table.column(key)
        if ids.null_count:
            raise InputError(
                "readings with an empty account id",
                record=record,
                field=key,
                hint="quarantine them in the source before screening",
            )
        ids = ids.combine_chunks()
        starts = np.empty(0, dtype=np.int64)
        if len(ids) > 1:
            prev, nxt = ids.slice(0, len(ids) - 1), ids.slice(1)
            if pc.any(pc.less(nxt, prev)).as_py():
                raise UnorderedInput(
                    "readings are not ordered by account",
                    record=record,
                    field=key,
                    hint="sort by account_id, or give the engine a file so it can spill "
                    "into hash buckets",
                )
            starts = np.flatnonzero(pc.not_equal(nxt, prev).to_numpy(zero_copy_only=False)) + 1
        first = ids[0].as_py()
        if last is None or first != last:
            if last is not None and first < last:
                raise UnorderedInput(
                    f"account {first!r} comes after {last!r}",
                    record=record,
                    field=key,
                    hint="sort by account_id, or give the engine a file so it can spill "
                    "into hash buckets",
                )
            starts = np.concatenate([np.zeros(1, dtype=np.int64), starts])
        last = ids[-1].as_py()
        if n == 0:  # automatic size, from this first batch's readings per account
            per_account = table.num_rows / max(1, len(starts))
            n = int(np.clip(DEFAULT_CHUNK_READINGS / per_account, MIN_AUTO_CHUNK, MAX_AUTO_CHUNK))
        k = np.arange(len(starts))
        number = n_open + k  # accounts already open before this start
        cuts = starts[(number > 0) & (number % n == 0)]
        pos = 0
        for cut in cuts.tolist():
            buf.append(table.slice(pos, cut - pos))
            yield pa.concat_tables(buf)
            buf = []
            pos = cut
        buf.append(table.slice(pos))
        n_open = n_open + len(starts) - n * len(cuts)
    if buf and sum(t.num_rows for t in buf):
        yield pa.concat_tables(buf)


def _sorted_table(table: pa.Table, key: str) -> pa.Table:
    ids = table.column(key).combine_chunks()
    if len(ids) > 1 and pc.any(pc.less(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py():
        return table.sort_by([(key, "ascending")])
    return table


def _scan(path: str | os.PathLike[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    dataset = ds.dataset(str(path), format="parquet")
    # little read-ahead: memory stays bounded by the chunks in flight, not by the scanner
    yield from dataset.to_batches(batch_size=batch_rows, batch_readahead=2, fragment_readahead=1)


@dataclass(frozen=True)
class _Part:
    """A run of row groups of one Parquet file that a worker reads and processes by itself.

    The part owns the accounts whose first reading lies in its row groups: it drops the
    leading rows of ``skip`` (an account begun in the previous row group) and reads on into
    the ``tail`` row groups for the account still open at its end.
    """

    path: str
    row_groups: tuple[int, ...]
    skip: str | None
    tail: tuple[tuple[str, int], ...]
    rows: int


def _row_group_stats(
    path: str | os.PathLike[str], key: str
) -> list[tuple[str, int, int, Any, Any]]:
    """``(file, row group, rows, min key, max key)`` of every row group, in dataset order.

    Empty when a row group has no usable statistics for ``key`` (or nulls in it).
    """
    import pyarrow.parquet as pq

    out: list[tuple[str, int, int, Any, Any]] = []
    for fragment in ds.dataset(str(path), format="parquet").get_fragments():
        meta = pq.ParquetFile(fragment.path).metadata
        col = meta.schema.to_arrow_schema().get_field_index(key)
        if col < 0:
            return []
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows == 0:
                continue
            stats = group.column(col).statistics
            if stats is None or not stats.has_min_max or stats.null_count:
                return []
            out.append((fragment.path, g, group.num_rows, stats.min, stats.max))
    return out


def plan_parts(path: str | os.PathLike[str], part_rows: int, key: str = KEY) -> list[_Part] | None:
    """Cut an account-ordered Parquet file into parts of whole row groups (≈ ``part_rows``).

    Uses only the row-group statistics of ``key`` (no data is read). ``None`` when the
    statistics are missing; raises :class:`UnorderedInput` when they show that the row
    groups are not in ascending ``key`` order. The order *inside* each row group is checked
    by the worker that reads it.
    """
    groups = _row_group_stats(path, key)
    if not groups:
        return None
    for (_, _, _, _, hi), (file, g, _, lo, _) in itertools.pairwise(groups):
        if lo < hi:
            raise UnorderedInput(
                f"row group {g} of {file} starts at account {lo!r} before {hi!r}",
                field=key,
                hint="sort by account_id, or let the engine spill into hash buckets",
            )
    parts: list[_Part] = []
    i = 0
    while i < len(groups):
        j, rows = i, 0
        while j < len(groups) and groups[j][0] == groups[i][0] and (j == i or rows < part_rows):
            rows += groups[j][2]
            j += 1
        skip = groups[i - 1][4] if i > 0 and groups[i - 1][4] == groups[i][3] else None
        last = groups[j - 1][4]
        tail: list[tuple[str, int]] = []
        t = j
        while t < len(groups) and groups[t][3] == last:
            tail.append((groups[t][0], groups[t][1]))
            if groups[t][4] != last:
                break
            t += 1
        if skip is not None and all(g[3] == g[4] == skip for g in groups[i:j]):
            i = j  # every row continues an account owned by an earlier part
            continue
        parts.append(_Part(groups[i][0], tuple(g[1] for g in groups[i:j]), skip, tuple(tail), rows))
        i = j
    return parts


def _part_batches(part: _Part, batch_rows: int, key: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    skip = part.skip
    last: Any = None
    for batch in pq.ParquetFile(part.path).iter_batches(
        batch_size=batch_rows, row_groups=list(part.row_groups)
    ):
        if skip is not None:
            ids = batch.column(key)
            n = pc.sum(pc.equal(ids, skip)).as_py() or 0
            batch = batch.slice(n)
            if n < len(ids):
                skip = None
        if batch.num_rows:
            last = batch.column(key)[-1].as_py()
            yield batch
    if last is None:
        return
    for file, group in part.tail:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, row_groups=[group]):
            ids = batch.column(key)
            n = pc.sum(pc.equal(ids, last)).as_py() or 0
            if n:
                yield batch.slice(0, n)
            if n < len(ids):
                return


def _run_part(
    fn: AccountFn, part: _Part, accounts_per_chunk: int | None, key: str, batch_rows: int
) -> pa.Table | None:
    """Read one part and apply ``fn`` chunk by chunk (runs in a worker process)."""
    results = [
        fn(chunk)
        for chunk in iter_account_chunks(
            _part_batches(part, batch_rows, key), accounts_per_chunk, key
        )
    ]
    return pa.concat_tables(results) if results else None


def is_ordered(path: str | os.PathLike[str], key: str = KEY) -> bool:
    """Whether a Parquet file or directory holds its rows in ascending ``key`` order.

    Reads only the ``key`` column, batch by batch.
    """
    dataset = ds.dataset(str(path), format="parquet")
    last: str | None = None
    for batch in dataset.to_batches(columns=[key], batch_size=4_000_000):
        ids = batch.column(0)
        if len(ids) == 0:
            continue
        if last is not None and ids[0].as_py() < last:
            return False
        if len(ids) > 1 and pc.any(pc.less(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py():
            return False
        last = ids[-1].as_py()
    return True


def spill_buckets(
    batches: Iterable[pa.Table | pa.RecordBatch],
    directory: str | os.PathLike[str],
    n_buckets: int,
    key: str = KEY,
) -> list[Path]:
    """Partition readings by a hash of ``key`` into ``n_buckets`` Parquet files."""
    import polars as pl
    import pyarrow.parquet as pq

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"bucket-{b:05d}.parquet" for b in range(n_buckets)]
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for batch in batches:
            table = _as_table(batch)
            if table.num_rows == 0:
                continue
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            bucket = (frame.get_column(key).hash(seed=0) % n_buckets).to_numpy()
            order = np.argsort(bucket, kind="stable")
            sorted_bucket = bucket[order]
            bounds = np.flatnonzero(np.diff(sorted_bucket)) + 1
            table = table.take(pa.array(order))
            lo = 0
            for hi in [*bounds.tolist(), len(order)]:
                b = int(sorted_bucket[lo])
                if b not in writers:
                    writers[b] = pq.ParquetWriter(paths[b], table.schema)
                writers[b].write_table(table.slice(lo, hi - lo))
                lo = hi
    finally:
        for w in writers.values():
            w.close()
    return [p for b, p in enumerate(paths) if b in writers]


def iter_chunks(
    source: Source,
    accounts_per_chunk: int | None = None,
    *,
    key: str = KEY,
    spill_dir: str | os.PathLike[str] | None = None,
    spill: bool = False,
    bucket_rows: int = 50_000_000,
    batch_rows: int = 1_000_000,
) -> Iterator[pa.Table]:
    """Cut ``source`` into tables of whole accounts (see the module docstring).

    A Parquet path is streamed as it is ordered; with ``spill=True`` it is first partitioned
    into hash buckets under ``spill_dir`` (for files not ordered by account).
    """
    if isinstance(source, pa.Table):
        yield from iter_account_chunks(
            _sorted_table(source, key).to_batches(max_chunksize=batch_rows),
            accounts_per_chunk,
            key,
        )
        return
    if isinstance(source, str | os.PathLike):
        path = source
        if not spill:
            yield from iter_account_chunks(_scan(path, batch_rows), accounts_per_chunk, key)
            return
        rows = ds.dataset(str(path), format="parquet").count_rows()
        n_buckets = max(1, math.ceil(rows / bucket_rows))
        with tempfile.TemporaryDirectory(dir=spill_dir, prefix="minewatch-spill-") as tmp:
            for bucket in spill_buckets(_scan(path, batch_rows), tmp, n_buckets, key):
                table = ds.dataset(str(bucket), format="parquet").to_table()
                yield from iter_account_chunks(
                    _sorted_table(table, key).to_batches(max_chunksize=batch_rows),
                    accounts_per_chunk,
                    key,
                )
        return
    yield from iter_account_chunks(source, accounts_per_chunk, key)


def map_accounts(
    fn: AccountFn,
    source: Source,
    *,
    accounts_per_chunk: int | None = None,
    workers: int = 1,
    processes: bool = True,
    key: str = KEY,
    spill_dir: str | os.PathLike[str] | None = None,
    spill: bool = False,
) -> Iterator[pa.Table]:
    """Apply ``fn`` to each chunk of whole accounts; yield the results in input order.

    With ``workers > 1`` the chunks go to a pool of worker processes (``processes=True``,
    ``fn`` must then be picklable, e.g. a module-level function or a ``functools.partial``)
    or threads; at most ``workers + 1`` chunks are in flight.
    """
    if isinstance(source, str | os.PathLike) and not spill:
        parts = plan_parts(source, PART_READINGS, key)
        if parts is not None:
            yield from _map_parts(fn, parts, accounts_per_chunk, workers, processes, key)
            return
    chunks = iter_chunks(source, accounts_per_chunk, key=key, spill_dir=spill_dir, spill=spill)
    yield from _pool_map(fn, chunks, workers, processes)


def _pool_map(
    fn: AccountFn, chunks: Iterable[pa.Table], workers: int, processes: bool
) -> Iterator[pa.Table]:
    """``fn`` over ``chunks`` in order, in a pool of ``workers`` (at most ``workers + 1`` in
    flight)."""
    if processes and workers > 1:
        # a chunk is made of slices of the scanned batches, and pickling a slice ships its
        # whole parent buffers; one contiguous copy halves the bytes sent and, as measured,
        # more than halves the pickling time (8.2 s -> 3.5 s of CPU time for 32 M hourly
        # readings)
        chunks = (chunk.combine_chunks() for chunk in chunks)
    yield from _ordered_map(fn, chunks, workers, processes)


def _ordered_map(
    task: Callable[[_T], _R], items: Iterable[_T], workers: int, processes: bool
) -> Iterator[_R]:
    """``task`` over ``items`` in order, in a pool of ``workers`` processes (spawned) or
    threads, with at most ``workers + 1`` items in flight; in the caller when ``workers <= 1``."""
    if workers <= 1:
        for item in items:
            yield task(item)
        return
    pool: Executor
    if processes:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minewatch-local")
    with pool:
        pending: deque[Future[_R]] = deque()
        for item in items:
            pending.append(pool.submit(task, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _map_parts(
    fn: AccountFn,
    parts: list[_Part],
    accounts_per_chunk: int | None,
    workers: int,
    processes: bool,
    key: str,
) -> Iterator[pa.Table]:
    """Each worker reads its own parts of the file: no readings cross a process boundary."""
    task = functools.partial(
        _run_part, fn, accounts_per_chunk=accounts_per_chunk, key=key, batch_rows=BATCH_READINGS
    )
    for out in _ordered_map(task, parts, workers, processes):
        if out is not None:
            yield out


def run(
    fn: AccountFn,
    source: Source,
    *,
    schema: pa.Schema | None = None,
    accounts_per_chunk: int | None = None,
    workers: int = 1,
    processes: bool = True,
    spill_dir: str | os.PathLike[str] | None = None,
) -> pa.Table:
    """:func:`map_accounts` collected into one table (``schema`` for an empty input).

    A Parquet path that turns out not to be ordered by account is run again through hash
    buckets on disk (``spill_dir``, default the system's temporary directory).
    """
    options: dict[str, Any] = {
        "accounts_per_chunk": accounts_per_chunk,
        "workers": workers,
        "processes": processes,
        "spill_dir": spill_dir,
    }
    try:
        parts = list(map_accounts(fn, source, **options))
    except UnorderedInput:
        if not isinstance(source, str | os.PathLike):
            raise
        parts = list(map_accounts(fn, source, spill=True, **options))
    if not parts:
        if schema is None:
            raise InputError("no readings to screen", hint="the input holds no rows")
        return schema.empty_table()
    return pa.concat_tables(parts)


def features(
    source: Source,
    *,
    tz: str = "UTC",
    accounts_per_chunk: int | None = None,
    workers: int = 1,
    spill_dir: str | os.PathLike[str] | None = None,
) -> pa.Table:
    """Per-account screening features of ``source`` (``minewatch.power.features``)."""
    from minewatch.power import features as feat

    return run(
        functools.partial(feat.account_features, tz=tz),
        source,
        schema=feat.FEATURES,
        accounts_per_chunk=accounts_per_chunk,
        workers=workers,
        spill_dir=spill_dir,
    )


def features_of_parts(
    tables: Iterable[pa.Table],
    *,
    tz: str = "UTC",
    accounts_per_chunk: int | None = None,
    workers: int = 1,
) -> pa.Table:
    """Features of a stream of tables that each hold whole accounts (no account in two).

    What :func:`minewatch.sources.meters.iter_readings` yields: each table is cut into
    chunks and all chunks share one pool, so only one table and the chunks in flight are in
    memory at a time.
    """
    from minewatch.power import features as feat

    fn = functools.partial(feat.account_features, tz=tz)
    chunks = itertools.chain.from_iterable(iter_chunks(t, accounts_per_chunk) for t in tables)
    parts = list(_pool_map(fn, chunks, workers, processes=True))
    return pa.concat_tables(parts) if parts else feat.FEATURES.empty_table()


def screen(
    source: Source,
    accounts: pa.Table | None = None,
    *,
    tz: str = "UTC",
    accounts_per_chunk: int | None = None,
    workers: int = 1,
    spill_dir: str | os.PathLike[str] | None = None,
) -> pa.Table:
    """Features per chunk of accounts, then one scoring pass over all accounts' features."""
    from minewatch.power import detect

    table = features(
        source,
        tz=tz,
        accounts_per_chunk=accounts_per_chunk,
        workers=workers,
        spill_dir=spill_dir,
    )
    return detect.score(table, accounts)

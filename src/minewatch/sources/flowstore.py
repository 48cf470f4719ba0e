"""The flow store: partitioned Parquet of the canonical ``flows``/``dns``/``evidence`` tables.

Layout under the store root::

    flows/date=YYYY-MM-DD/exporter_dir=NAME/part-<uuid>-0.parquet
    dns/date=YYYY-MM-DD/part-<uuid>-0.parquet
    evidence/part-<uuid>-0.parquet

Every write adds new files (a unique name per write), so ingests and the live collector's
rolling files never overwrite one another. :func:`read_flows` reads the whole store (or a
date range) back as one FLOWS table.

This module also holds :class:`IngestResult`, what every source reader returns, and
:func:`ingest`, which detects the format of each input, reads it with the right source
module and writes the store.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from minewatch.errors import InputError, Quarantine
from minewatch.schema import DNS, EVIDENCE, FLOWS

FORMATS = ("netflow", "nfcapd", "zeek", "eve", "cic")
_PARTITION_SAFE = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass
class IngestResult:
    """What a source reader returns: canonical tables plus conserved counts.

    ``read == accepted + rejected`` always holds. A unit is a record where the input can be
    cut into records; a part that cannot (a damaged datagram, a data set whose template
    never arrived) counts as one rejected unit.
    """

    format: str
    flows: pa.Table
    dns: pa.Table = field(default_factory=DNS.empty_table)
    evidence: pa.Table = field(default_factory=EVIDENCE.empty_table)
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "flows": self.flows.num_rows,
            "dns": self.dns.num_rows,
            "evidence": self.evidence.num_rows,
        }


def finish_flows(
    frame: pl.DataFrame, source: str, quarantine: Quarantine | None
) -> tuple[pa.Table, int]:
    """Validate a frame with the FLOWS columns plus ``_where`` (and optional ``_reason``).

    Rows failing a check get the first reason that applies, go to the quarantine and are
    dropped; the others are returned as a FLOWS table. Checks run column-wise; only rejected
    rows are visited one by one, to write them to the quarantine. Returns (table, rejected).
    """
    if "_reason" not in frame.columns:
        frame = frame.with_columns(_reason=pl.lit(None, dtype=pl.Utf8))
    for name in FLOWS.names:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None).alias(name))
    c = pl.col
    checks = [
        (c("ts_start").is_null(), "start time missing or unreadable"),
        (c("src_ip").is_null() | c("dst_ip").is_null(), "source or destination address missing"),
        (c("ts_end").is_not_null() & (c("ts_end") < c("ts_start")), "flow ends before it starts"),
        (
            (c("packets_up") < 0)
            | (c("packets_down") < 0)
            | (c("bytes_up") < 0)
            | (c("bytes_down") < 0),
            "negative packet or byte counter",
        ),
        (
            (c("src_port") < 0)
            | (c("src_port") > 65535)
            | (c("dst_port") < 0)
            | (c("dst_port") > 65535),
            "port out of range",
        ),
    ]
    reason = c("_reason")
    for cond, text in checks:
        reason = (
            pl.when(reason.is_null() & cond.fill_null(False)).then(pl.lit(text)).otherwise(reason)
        )
    frame = frame.with_columns(_reason=reason)
    bad = frame.filter(c("_reason").is_not_null())
    if bad.height and quarantine is not None:
        rows = bad.select([*FLOWS.names, "_where", "_reason"]).to_dicts()
        for row in rows:
            where = str(row.pop("_where"))
            why = str(row.pop("_reason"))
            quarantine.reject(source, where, why, row)
    good = frame.filter(c("_reason").is_null()).with_columns(
        ts_end=pl.coalesce(c("ts_end"), c("ts_start"))
    )
    table = good.select(FLOWS.names).to_arrow()
    return conform(table, FLOWS), bad.height


def read_json_lines(
    path: Path, source: str, quarantine: Quarantine | None
) -> tuple[pl.DataFrame, int, int]:
    """A JSON Lines file as a frame (plus ``_line``); returns (frame, lines read, rejected).

    The whole file is parsed at once; only when some line is not a JSON object are the lines
    looked at one by one to find and quarantine the damaged ones.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path) from exc
    lines = (
        pl.Series("_text", raw.decode("utf-8", errors="replace").split("\n"))
        .to_frame()
        .with_row_index("_line", offset=1)
        .with_columns(pl.col("_text").str.strip_chars_end("\r"))
        .filter(pl.col("_text").str.strip_chars().str.len_bytes() > 0)
    )
    if lines.height == 0:
        return pl.DataFrame(), 0, 0
    rejected = 0
    try:
        frame = pl.read_ndjson(
            io.BytesIO("\n".join(lines["_text"].to_list()).encode()), infer_schema_length=None
        )
        if frame.height != lines.height:
            raise ValueError("line count changed")
    except Exception:
        ok: list[bool] = []
        for text in lines["_text"].to_list():
            try:
                ok.append(isinstance(json.loads(text), dict))
            except ValueError:
                ok.append(False)
        mask = pl.Series(ok, dtype=pl.Boolean)
        bad = lines.filter(~mask)
        rejected = bad.height
        if quarantine is not None:
            for line_no, text in bad.iter_rows():
                quarantine.reject(
                    source, f"{path} line {line_no}", "line is not a JSON object", text[:512]
                )
        lines = lines.filter(mask)
        if lines.height == 0:
            return pl.DataFrame(), rejected, rejected
        frame = pl.read_ndjson(
            io.BytesIO("\n".join(lines["_text"].to_list()).encode()), infer_schema_length=None
        )
    return frame.with_columns(_line=lines["_line"]), lines.height + rejected, rejected


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to ``schema`` (string views and large types become the plain ones)."""
    cols = []
    for f in schema:
        col = table[f.name]
        if pa.types.is_string_view(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        if pa.types.is_large_list(col.type) or pa.types.is_list_view(col.type):
            col = col.cast(pa.list_(pa.string()))
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _partition_value(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Exporter names made safe as directory names (anything odd becomes ``_``).

    Computed once per distinct exporter, then spread over the rows."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    enc = arr.dictionary_encode()
    names = [_PARTITION_SAFE.sub("_", v) if v else "unknown" for v in enc.dictionary.to_pylist()]
    safe = pa.DictionaryArray.from_arrays(enc.indices, pa.array(names, pa.string()))
    return pc.fill_null(safe.cast(pa.string()), "unknown")


def _date_strings(ts: pa.ChunkedArray) -> pa.ChunkedArray:
    """YYYY-MM-DD of UTC timestamps (a cast, much faster than strftime)."""
    return pc.cast(pc.cast(ts, pa.date32()), pa.string())


def write_flows(table: pa.Table | pa.RecordBatch, root: str | Path) -> list[Path]:
    """Append FLOWS rows to the store, partitioned by UTC date and exporter."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    table = table.select(FLOWS.names).cast(FLOWS)
    if table.num_rows == 0:
        return []
    date = _date_strings(table["ts_start"])
    part = table.append_column("date", date).append_column(
        "exporter_dir", _partition_value(table["exporter"])
    )
    return _write(part, Path(root) / "flows", ["date", "exporter_dir"])


def write_dns(table: pa.Table, root: str | Path) -> list[Path]:
    table = table.select(DNS.names).cast(DNS)
    if table.num_rows == 0:
        return []
    date = _date_strings(table["ts"])
    return _write(table.append_column("date", date), Path(root) / "dns", ["date"])


def write_evidence(table: pa.Table, root: str | Path) -> list[Path]:
    table = table.select(EVIDENCE.names).cast(EVIDENCE)
    if table.num_rows == 0:
        return []
    return _write(table, Path(root) / "evidence", [])


#: Row-group sizes of the store's Parquet files.
_MIN_ROWS_PER_GROUP = 1 << 17
_MAX_ROWS_PER_GROUP = 1 << 20


def _write(table: pa.Table, base: Path, partitions: list[str]) -> list[Path]:
    """Write ``table`` under ``base`` (hive partitions), in files of a name no other write
    uses; returns them.

    The files are found by that name afterwards, not by the writer's ``file_visitor``: a
    Python callback run from Arrow's writer threads makes the process abort at exit now and
    then ("terminate called without an active exception", exit status 134; apache/arrow
    #36980, seen here with pyarrow 26)."""
    tag = uuid.uuid4().hex
    ds.write_dataset(
        table,
        base,
        format="parquet",
        partitioning=ds.partitioning(
            pa.schema([(p, pa.string()) for p in partitions]), flavor="hive"
        )
        if partitions
        else None,
        basename_template=f"part-{tag}-{{i}}.parquet",
        existing_data_behavior="overwrite_or_ignore",
        # The writer cuts each input batch into one row group per partition; without a
        # minimum, a partition holding a little of every batch gets row groups of a few rows
        # (slow to read, poorly compressed). Rows are buffered into groups of at least this.
        min_rows_per_group=_MIN_ROWS_PER_GROUP,
        max_rows_per_group=_MAX_ROWS_PER_GROUP,
    )
    name = f"part-{tag}-*.parquet"
    written: list[Path] = []
    combos = table.select(partitions).group_by(partitions).aggregate([]).to_pylist()
    if all(v is not None for c in combos for v in c.values()):
        # only the partitions this write touched, their values escaped as Arrow does
        for c in combos:
            d = base.joinpath(*(f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in c.items()))
            written.extend(d.glob(name))
    written.sort()
    return written or sorted(base.rglob(name))  # null values, or Arrow escaping otherwise


def _dataset(base: Path, partitions: list[str]) -> ds.Dataset | None:
    if not base.is_dir() or not any(base.rglob("*.parquet")):
        return None
    return ds.dataset(
        base,
        format="parquet",
        partitioning=ds.partitioning(
            pa.schema([(p, pa.string()) for p in partitions]), flavor="hive"
        )
        if partitions
        else None,
    )


def read_flows(
    root: str | Path,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> pa.Table:
    """All FLOWS rows of a store (optionally only partitions dated start..end inclusive).

    The exporter column comes from the files themselves; the directory name is only a
    file-system-safe copy of it for pruning.
    """
    d = _dataset(Path(root) / "flows", ["date", "exporter_dir"])
    if d is None:
        return FLOWS.empty_table()
    flt = None
    if start is not None:
        flt = ds.field("date") >= start.isoformat()
    if end is not None:
        e = ds.field("date") <= end.isoformat()
        flt = e if flt is None else flt & e
    return d.to_table(columns=FLOWS.names, filter=flt).cast(FLOWS)


def scan_flow_files(files: Sequence[Path]) -> pl.LazyFrame:
    """Parquet files holding the FLOWS columns as one lazy Polars scan, cast to FLOWS
    (nothing is read until it is collected, and then only what a query needs)."""
    target = pl.from_arrow(FLOWS.empty_table()).schema  # type: ignore[union-attr]
    if not files:
        return pl.LazyFrame(schema=target)
    scan = pl.scan_parquet(list(files), hive_partitioning=False)
    return scan.select(pl.col(c).cast(t) for c, t in target.items())


def scan_flows(root: str | Path) -> tuple[pl.LazyFrame, int]:
    """All FLOWS rows of a store as a lazy scan (:func:`scan_flow_files`), and their count
    from the files' footers."""
    files = sorted((Path(root) / "flows").rglob("*.parquet"))
    return scan_flow_files(files), sum(pq.read_metadata(f).num_rows for f in files)


def read_dns(root: str | Path) -> pa.Table:
    d = _dataset(Path(root) / "dns", ["date"])
    if d is None:
        return DNS.empty_table()
    return d.to_table(columns=DNS.names).cast(DNS)


def read_evidence(root: str | Path) -> pa.Table:
    d = _dataset(Path(root) / "evidence", [])
    if d is None:
        return EVIDENCE.empty_table()
    return d.to_table(columns=EVIDENCE.names).cast(EVIDENCE)


# --------------------------------------------------------------------------- formats
def detect_format(path: str | Path) -> str:
    """Guess the format of one input file from its first bytes.

    Raises :class:`InputError` when nothing matches.
    """
    from minewatch.sources import netflow

    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=p) from exc
    if head[:2] == b"\x0c\xa5":
        return "nfcapd"
    if netflow.looks_like_export(head):
        return "netflow"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    first = text.lstrip().split("\n", 1)[0]
    if text.startswith("#separator") or text.startswith("#fields"):
        return "zeek"
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            obj = {}
        if isinstance(obj, dict):
            if "event_type" in obj:
                return "eve"
            if "uid" in obj or "id.orig_h" in obj:
                return "zeek"
            if "type" in obj and obj.get("type") == "FLOW":
                return "nfcapd"
        # a line that is not JSON: look at the next ones (EVE files may start damaged)
        for line in text.split("\n")[1:20]:
            if '"event_type"' in line:
                return "eve"
            if '"id.orig_h"' in line:
                return "zeek"
    if first.startswith("["):
        return "nfcapd"  # nfdump -o json writes one JSON array
    low = first.lower()
    if "flow duration" in low or ("src ip" in low and "dst ip" in low) or "flow_duration" in low:
        return "cic"
    if low.startswith("ts,te,td,sa,da") or low.startswith("firstseen,"):
        return "nfcapd"
    raise InputError(
        "format not recognised",
        path=p,
        hint="give --format netflow|nfcapd|zeek|eve|cic",
    )


def expand_inputs(sources: Iterable[str | Path]) -> list[Path]:
    """Files named, and files inside directories named (recursively, sorted)."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise InputError("no such file or directory", path=p)
    return out


def read_source(
    paths: Sequence[Path], fmt: str, quarantine: Quarantine | None = None
) -> IngestResult:
    """Read files of one format into canonical tables (Zeek logs are read together)."""
    from minewatch.sources import cicflowmeter, netflow, nfdump, suricata, zeek

    results: list[IngestResult] = []
    if fmt == "zeek":
        results.append(zeek.read_zeek(paths, quarantine=quarantine))
    else:
        for p in paths:
            if fmt == "netflow":
                results.append(netflow.read_netflow(p, quarantine=quarantine))
            elif fmt == "nfcapd":
                results.append(nfdump.read_nfdump(p, quarantine=quarantine))
            elif fmt == "eve":
                results.append(suricata.read_eve(p, quarantine=quarantine))
            elif fmt == "cic":
                results.append(cicflowmeter.read_cicflowmeter(p, quarantine=quarantine))
            else:
                raise InputError(f"unknown format {fmt!r}", hint="one of " + ", ".join(FORMATS))
    return merge_results(results, fmt)


def merge_results(results: Sequence[IngestResult], fmt: str) -> IngestResult:
    if not results:
        return IngestResult(format=fmt, flows=FLOWS.empty_table())
    return IngestResult(
        format=fmt,
        flows=pa.concat_tables([r.flows for r in results]),
        dns=pa.concat_tables([r.dns for r in results]),
        evidence=pa.concat_tables([r.evidence for r in results]),
        read=sum(r.read for r in results),
        accepted=sum(r.accepted for r in results),
        rejected=sum(r.rejected for r in results),
    )


def ingest(
    sources: Iterable[str | Path],
    into: str | Path,
    *,
    fmt: str = "auto",
    quarantine: Quarantine | None = None,
) -> list[IngestResult]:
    """Read every input (detecting formats unless ``fmt`` is given) and write the store.

    Returns one result per format found, in the order first seen.
    """
    files = expand_inputs(sources)
    by_format: dict[str, list[Path]] = {}
    for f in files:
        by_format.setdefault(detect_format(f) if fmt == "auto" else fmt, []).append(f)
    out: list[IngestResult] = []
    for name, paths in by_format.items():
        res = read_source(paths, name, quarantine)
        write_flows(res.flows, into)
        write_dns(res.dns, into)
        write_evidence(res.evidence, into)
        res.details["files"] = [str(p) for p in paths]
        out.append(res)
    return out

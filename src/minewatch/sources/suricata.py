"""Suricata EVE JSON (``flow``, ``tls``, ``dns`` and ``alert`` events).

* ``flow`` events become FLOWS rows (``toserver`` is up, ``toclient`` down); the ``tls``
  event of the same ``flow_id`` gives ``sni``.
* ``dns`` events become DNS rows (EVE v2 ``rrname``/``answers``/``grouped`` and the v3
  ``queries``/``answers`` layout).
* an ``alert`` whose signature is in the ET COINMINER category of rules becomes an evidence
  row (``detector = "suricata"``); other alerts are counted and not used.

The score of a COINMINER alert is :data:`COINMINER_SCORE`: a signature hit is strong
evidence of mining protocol on the wire, but the rules also fire on pool look-ups and
wallet sites, so it is deliberately below 1; fusion weighs it with the other evidence.
Other event types (``http``, ``stats``, ...) are counted per type and passed over.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from minewatch.errors import Quarantine
from minewatch.schema import DNS, EVIDENCE, FLOWS
from minewatch.sources.flowstore import IngestResult, conform, finish_flows, read_json_lines
from minewatch.sources.nfdump import proto_number

SOURCE = "suricata"
COINMINER_SCORE = 0.9
COINMINER_PATTERN = r"(?i)\bCOINMINER\b"


def _field(frame: pl.DataFrame, *path: str, dtype: Any = None) -> pl.Expr:
    """A nested field (``flow.pkts_toserver``) or a typed null when the file lacks it."""
    fields: dict[str, Any] = dict(frame.schema)
    expr: pl.Expr | None = None
    for name in path:
        if name not in fields:
            return pl.lit(None, dtype=dtype or pl.Utf8)
        expr = pl.col(name) if expr is None else expr.struct.field(name)
        inner = fields[name]
        fields = {f.name: f.dtype for f in inner.fields} if isinstance(inner, pl.Struct) else {}
    assert expr is not None
    return expr.cast(dtype, strict=False) if dtype is not None else expr


def _eve_ts(expr: pl.Expr) -> pl.Expr:
    text = expr.cast(pl.Utf8)
    return pl.coalesce(
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", strict=False, time_unit="us"),
        text.str.to_datetime(strict=False, time_unit="us", time_zone="UTC"),
    ).dt.convert_time_zone("UTC")


def _flows(frame: pl.DataFrame, path: Path, q: Quarantine | None) -> tuple[pa.Table, int]:
    flow = frame.filter(pl.col("event_type") == "flow")
    if flow.height == 0:
        return FLOWS.empty_table(), 0
    tls = frame.filter(pl.col("event_type") == "tls")
    start = _eve_ts(_field(frame, "flow", "start"))
    out = flow.select(
        ts_start=pl.coalesce(start, _eve_ts(_field(frame, "timestamp"))),
        ts_end=_eve_ts(_field(frame, "flow", "end")),
        src_ip=_field(frame, "src_ip", dtype=pl.Utf8),
        src_port=_field(frame, "src_port", dtype=pl.Int64).fill_null(0),
        dst_ip=_field(frame, "dest_ip", dtype=pl.Utf8),
        dst_port=_field(frame, "dest_port", dtype=pl.Int64).fill_null(0),
        proto=proto_number(_field(frame, "proto", dtype=pl.Utf8)).fill_null(0),
        packets_up=_field(frame, "flow", "pkts_toserver", dtype=pl.Int64).fill_null(0),
        packets_down=_field(frame, "flow", "pkts_toclient", dtype=pl.Int64).fill_null(0),
        bytes_up=_field(frame, "flow", "bytes_toserver", dtype=pl.Int64).fill_null(0),
        bytes_down=_field(frame, "flow", "bytes_toclient", dtype=pl.Int64).fill_null(0),
        tcp_flags=_field(frame, "tcp", "tcp_flags", dtype=pl.Utf8)
        .str.to_integer(base=16, strict=False)
        .fill_null(0)
        .cast(pl.Int16),
        exporter=pl.coalesce(_field(frame, "host", dtype=pl.Utf8), pl.lit("suricata")),
        sampling=pl.lit(1, dtype=pl.Int32),
        flow_id=_field(frame, "flow_id", dtype=pl.Utf8),
        _where=pl.format("{} line {}", pl.lit(str(path)), pl.col("_line")),
    )
    if tls.height:
        sni = (
            tls.select(
                flow_id=_field(frame, "flow_id", dtype=pl.Utf8),
                sni=_field(frame, "tls", "sni", dtype=pl.Utf8),
            )
            .filter(pl.col("sni").is_not_null())
            .unique("flow_id", keep="first")
        )
        out = out.join(sni, on="flow_id", how="left")
    else:
        out = out.with_columns(sni=pl.lit(None, dtype=pl.Utf8))
    return finish_flows(out.drop("flow_id"), SOURCE, q)


def _dns(frame: pl.DataFrame, path: Path, q: Quarantine | None) -> tuple[pa.Table, int]:
    """DNS rows, and how many dns events had to be rejected."""
    dns = frame.filter(pl.col("event_type") == "dns")
    if dns.height == 0:
        return DNS.empty_table(), 0
    v2_query = _field(frame, "dns", "rrname", dtype=pl.Utf8)
    queries = _struct_fields(frame, "dns").get("queries")
    v3_query = (
        pl.col("dns").struct.field("queries").list.first().struct.field("rrname").cast(pl.Utf8)
        if isinstance(queries, pl.List)
        and isinstance(queries.inner, pl.Struct)
        and "rrname" in {f.name for f in queries.inner.fields}
        else pl.lit(None, dtype=pl.Utf8)
    )
    answers = _answers(frame)
    out = dns.select(
        ts=_eve_ts(_field(frame, "timestamp")),
        client_ip=_field(frame, "src_ip", dtype=pl.Utf8),
        query=pl.coalesce(v2_query, v3_query),
        answers=answers,
        _type=_field(frame, "dns", "type", dtype=pl.Utf8),
        _line=pl.col("_line"),
    )
    bad = out.filter(pl.col("ts").is_null() | pl.col("query").is_null())
    if q is not None:
        for line, ts, qname in bad.select("_line", "ts", "query").iter_rows():
            why = (
                "dns event without a readable timestamp"
                if ts is None
                else "dns event without a query name"
            )
            q.reject(SOURCE, f"{path} line {line}", why, {"query": qname})
    out = out.filter(pl.col("ts").is_not_null() & pl.col("query").is_not_null())
    # EVE v2 logs the question and the answer as two events; keep answers, and queries
    # that never got one, so each look-up is one row.
    answered = out.filter(pl.col("_type") == "answer").select("query", "client_ip").unique()
    out = out.join(answered.with_columns(_has=pl.lit(True)), on=["query", "client_ip"], how="left")
    out = out.filter(
        (pl.col("_type") != "query") | pl.col("_has").is_null() | pl.col("_type").is_null()
    )
    return conform(out.select(DNS.names).to_arrow(), DNS), bad.height


def _struct_fields(frame: pl.DataFrame, name: str) -> dict[str, pl.DataType]:
    dtype = frame.schema.get(name)
    if not isinstance(dtype, pl.Struct):
        return {}
    return {f.name: f.dtype for f in dtype.fields}  # type: ignore[misc]


def _answers(frame: pl.DataFrame) -> pl.Expr:
    fields = _struct_fields(frame, "dns")
    exprs: list[pl.Expr] = []
    ans = fields.get("answers")
    if isinstance(ans, pl.List) and isinstance(ans.inner, pl.Struct):
        inner = {f.name for f in ans.inner.fields}
        if "rdata" in inner:
            exprs.append(
                pl.col("dns")
                .struct.field("answers")
                .list.eval(pl.element().struct.field("rdata").cast(pl.Utf8))
            )
    grouped = fields.get("grouped")
    if isinstance(grouped, pl.Struct):
        parts = [
            pl.col("dns").struct.field("grouped").struct.field(f.name).cast(pl.List(pl.Utf8))
            for f in grouped.fields
            if isinstance(f.dtype, pl.List)
        ]
        if parts:
            exprs.append(pl.concat_list([p.fill_null([]) for p in parts]))
    if not exprs:
        return pl.lit(None, dtype=pl.List(pl.Utf8))
    return pl.coalesce(exprs)


def _evidence(frame: pl.DataFrame, path: Path) -> pa.Table:
    alerts = frame.filter(pl.col("event_type") == "alert")
    if alerts.height == 0:
        return EVIDENCE.empty_table()
    sig = _field(frame, "alert", "signature", dtype=pl.Utf8)
    cat = _field(frame, "alert", "category", dtype=pl.Utf8)
    hits = alerts.with_columns(_sig=sig, _cat=cat).filter(
        pl.col("_sig").str.contains(COINMINER_PATTERN).fill_null(False)
    )
    if hits.height == 0:
        return EVIDENCE.empty_table()
    rows = hits.select(
        ts=_eve_ts(_field(frame, "timestamp")),
        src_ip=_field(frame, "src_ip", dtype=pl.Utf8),
        src_port=_field(frame, "src_port", dtype=pl.Int64),
        dest_ip=_field(frame, "dest_ip", dtype=pl.Utf8),
        dest_port=_field(frame, "dest_port", dtype=pl.Int64),
        proto=_field(frame, "proto", dtype=pl.Utf8),
        flow_id=_field(frame, "flow_id", dtype=pl.Utf8),
        signature=pl.col("_sig"),
        category=pl.col("_cat"),
        signature_id=_field(frame, "alert", "signature_id", dtype=pl.Int64),
        rev=_field(frame, "alert", "rev", dtype=pl.Int64),
        severity=_field(frame, "alert", "severity", dtype=pl.Int64),
        line=pl.col("_line"),
    )
    details = rows.select(
        pl.struct(
            "signature",
            "signature_id",
            "rev",
            "category",
            "severity",
            "flow_id",
            "src_ip",
            "src_port",
            "dest_ip",
            "dest_port",
            "proto",
            pl.format("{} line {}", pl.lit(str(path)), pl.col("line")).alias("where"),
            pl.concat_list(
                pl.format(
                    "Suricata rule {} ({}) matched {}:{} -> {}:{}",
                    pl.col("signature_id"),
                    pl.col("signature"),
                    pl.col("src_ip"),
                    pl.col("src_port"),
                    pl.col("dest_ip"),
                    pl.col("dest_port"),
                )
            ).alias("reasons"),
        )
        .struct.json_encode()
        .alias("details")
    )["details"]
    key = rows.select(
        pl.concat_str(
            [pl.lit(str(path)), pl.col("line").cast(pl.Utf8), pl.col("signature_id").cast(pl.Utf8)],
            separator="|",
            ignore_nulls=True,
        )
    ).to_series()
    ids = [hashlib.sha256(k.encode()).hexdigest()[:32] for k in key.to_list()]
    out = pl.DataFrame(
        {
            "evidence_id": ids,
            "source": ["network"] * rows.height,
            "detector": ["suricata"] * rows.height,
            "subject_type": ["ip"] * rows.height,
            "subject_id": rows["src_ip"],
            "window_start": rows["ts"],
            "window_end": rows["ts"],
            "score": [COINMINER_SCORE] * rows.height,
            "measures": [json.dumps({})] * rows.height,
            "details": details,
        }
    )
    return conform(out.to_arrow(), EVIDENCE)


def read_eve(path: str | Path, *, quarantine: Quarantine | None = None) -> IngestResult:
    """Read an EVE JSON file into FLOWS (with SNI), DNS and COINMINER evidence."""
    p = Path(path)
    frame, read, rejected = read_json_lines(p, SOURCE, quarantine)
    if frame.height == 0 or "event_type" not in frame.columns:
        if frame.height and quarantine is not None:
            quarantine.reject(SOURCE, str(p), "JSON lines without event_type: not EVE")
        return IngestResult(
            format="eve",
            flows=FLOWS.empty_table(),
            read=read,
            accepted=read - rejected - frame.height,
            rejected=rejected + frame.height,
        )
    flows, flow_rejected = _flows(frame, p, quarantine)
    dns, dns_rejected = _dns(frame, p, quarantine)
    evidence = _evidence(frame, p)
    types = frame.group_by("event_type").len().sort("event_type")
    counts = {str(k): int(v) for k, v in types.iter_rows()}
    rejected += flow_rejected + dns_rejected
    return IngestResult(
        format="eve",
        flows=flows,
        dns=dns,
        evidence=evidence,
        read=read,
        accepted=read - rejected,
        rejected=rejected,
        details={"event_types": counts, "coinminer_alerts": evidence.num_rows},
    )

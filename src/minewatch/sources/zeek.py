"""Zeek ``conn.log``, ``ssl.log`` and ``dns.log`` (TSV with ``#fields`` headers, or JSON).

``conn.log`` rows become FLOWS rows (one per connection, both directions: ``orig`` is up,
``resp`` is down; IP-level byte counts when Zeek logged them, payload bytes otherwise).
``ssl.log``'s ``server_name`` is joined onto the connection with the same ``uid`` as
``sni``. ``dns.log`` rows become DNS rows.

Lines are cut and checked as whole columns: a TSV line whose number of values differs from
the ``#fields`` header, or a JSON line that does not parse, goes to the quarantine with the
reason and its line number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from minewatch.errors import InputError, Quarantine
from minewatch.schema import DNS, FLOWS
from minewatch.sources.flowstore import IngestResult, conform, finish_flows, read_json_lines

SOURCE = "zeek"
PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "sctp": 132}
# Zeek's history letters (upper case: originator, lower case: responder) to TCP flag bits.
_HISTORY_FLAGS = {"S": 0x02, "H": 0x12, "A": 0x10, "D": 0x18, "F": 0x01, "R": 0x04}


@dataclass
class ZeekLog:
    """One log file read into a frame of strings (TSV) or typed values (JSON)."""

    path: Path
    kind: str  # conn, ssl, dns, or the #path/file name
    frame: pl.DataFrame  # the log's own columns, plus _line
    read: int
    rejected: int
    set_separator: str = ","


def _log_kind(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    name = path.name.split(".")[0]
    return name


def _reject_lines(
    q: Quarantine | None, path: Path, lines: pl.DataFrame, reason: pl.Expr | str
) -> None:
    if q is None or lines.height == 0:
        return
    reasons = lines.select(
        pl.col("_line"),
        pl.col("_text"),
        (reason if isinstance(reason, pl.Expr) else pl.lit(reason)).alias("_r"),
    )
    for line_no, text, why in reasons.iter_rows():
        q.reject(SOURCE, f"{path} line {line_no}", str(why), text[:512] if text else text)


def read_log(path: str | Path, quarantine: Quarantine | None = None) -> ZeekLog:
    """Read one Zeek log (TSV or JSON, detected from its first line)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=p) from exc
    text = raw.decode("utf-8", errors="replace")
    lines = pl.Series("_text", text.split("\n")).to_frame().with_row_index("_line", offset=1)
    lines = lines.with_columns(pl.col("_text").str.strip_suffix("\r")).filter(
        pl.col("_text").str.len_bytes() > 0
    )
    first = lines["_text"][0] if lines.height else ""
    if first.startswith("#"):
        return _read_tsv(p, lines, quarantine)
    if first.startswith("{"):
        return _read_json(p, quarantine)
    raise InputError(
        "not a Zeek log: no #fields header and not JSON", path=p, hint="expected conn/ssl/dns.log"
    )


def _read_tsv(p: Path, lines: pl.DataFrame, q: Quarantine | None) -> ZeekLog:
    header = lines.filter(pl.col("_text").str.starts_with("#"))
    meta: dict[str, str] = {}
    blocks: list[tuple[int, list[str]]] = []  # (first line of the block, fields)
    for line_no, t in header.iter_rows():
        key, _, value = t[1:].partition("\t") if "\t" in t else t[1:].partition(" ")
        if key == "fields":
            blocks.append((line_no, value.split("\t")))
        else:
            meta.setdefault(key, value)
    if not blocks:
        raise InputError("Zeek TSV log without a #fields header", path=p)
    sep = meta.get("separator", "\\x09").strip()
    if sep not in ("\\x09", "\t"):
        raise InputError(f"unsupported Zeek separator {sep!r}", path=p, hint="use the default tab")
    unset = meta.get("unset_field", "-")
    empty = meta.get("empty_field", "(empty)")
    data = lines.filter(~pl.col("_text").str.starts_with("#"))
    frames: list[pl.DataFrame] = []
    read = rejected = 0
    bounds = [b[0] for b in blocks] + [10**12]
    for i, (start, names) in enumerate(blocks):
        part = data.filter((pl.col("_line") > start) & (pl.col("_line") < bounds[i + 1]))
        read += part.height
        n = len(names)
        part = part.with_columns(_n=pl.col("_text").str.count_matches("\t", literal=True) + 1)
        bad = part.filter(pl.col("_n") != n)
        _reject_lines(
            q,
            p,
            bad,
            pl.format("{} values for {} #fields", pl.col("_n"), pl.lit(n)),
        )
        rejected += bad.height
        good = part.filter(pl.col("_n") == n)
        cols = good.select(
            pl.col("_line"),
            pl.col("_text").str.split_exact("\t", n - 1).struct.rename_fields(names).alias("_s"),
        ).unnest("_s")
        cols = cols.with_columns(
            [
                pl.when(pl.col(c) == unset)
                .then(None)
                .when(pl.col(c) == empty)
                .then(pl.lit(""))
                .otherwise(pl.col(c))
                .alias(c)
                for c in names
            ]
        )
        frames.append(cols)
    frame = pl.concat(frames, how="diagonal") if frames else pl.DataFrame()
    return ZeekLog(
        p,
        _log_kind(p, meta.get("path")),
        frame,
        read,
        rejected,
        meta.get("set_separator", ","),
    )


def _read_json(p: Path, q: Quarantine | None) -> ZeekLog:
    frame, read, rejected = read_json_lines(p, SOURCE, q)
    declared = None
    if "_path" in frame.columns and frame.height:
        declared = frame["_path"][0]
    return ZeekLog(p, _log_kind(p, declared), frame, read, rejected)


def _num(frame: pl.DataFrame, name: str, dtype: type[pl.DataType] = pl.Int64) -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=dtype)
    return pl.col(name).cast(pl.Utf8).str.strip_chars().cast(dtype, strict=False)


def _zeek_ts(frame: pl.DataFrame, name: str = "ts") -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    text = pl.col(name).cast(pl.Utf8).str.strip_chars()
    epoch = text.cast(pl.Float64, strict=False)
    from_epoch = (
        (epoch * 1_000_000)
        .round()
        .cast(pl.Int64)
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
    iso = text.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    return pl.when(epoch.is_not_null()).then(from_epoch).otherwise(iso)


def _history_flags(col: pl.Expr) -> pl.Expr:
    up = col.str.to_uppercase()
    bits = pl.lit(0, dtype=pl.Int16)
    for letter, bit in _HISTORY_FLAGS.items():
        bits = bits | pl.when(up.str.contains(letter, literal=True)).then(
            pl.lit(bit, pl.Int16)
        ).otherwise(pl.lit(0, pl.Int16))
    return bits.fill_null(0)


def conn_frame(log: ZeekLog, exporter: str = "zeek") -> pl.DataFrame:
    """``conn.log`` columns to FLOWS columns (plus ``uid`` and ``_where``)."""
    f = log.frame
    if f.height == 0:
        return pl.DataFrame()

    def col(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Utf8) if name in f.columns else pl.lit(None, dtype=pl.Utf8)

    start = _zeek_ts(f)
    duration = _num(f, "duration", pl.Float64).fill_null(0.0)
    bytes_up = pl.coalesce(_num(f, "orig_ip_bytes"), _num(f, "orig_bytes"), pl.lit(0))
    bytes_down = pl.coalesce(_num(f, "resp_ip_bytes"), _num(f, "resp_bytes"), pl.lit(0))
    return f.select(
        ts_start=start,
        ts_end=start + pl.duration(microseconds=(duration * 1_000_000).round().cast(pl.Int64)),
        src_ip=col("id.orig_h"),
        src_port=_num(f, "id.orig_p").fill_null(0),
        dst_ip=col("id.resp_h"),
        dst_port=_num(f, "id.resp_p").fill_null(0),
        proto=col("proto")
        .str.to_lowercase()
        .replace_strict(PROTO, default=0, return_dtype=pl.Int16),
        packets_up=_num(f, "orig_pkts").fill_null(0),
        packets_down=_num(f, "resp_pkts").fill_null(0),
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        tcp_flags=_history_flags(col("history")),
        exporter=pl.lit(exporter),
        sampling=pl.lit(1, dtype=pl.Int32),
        uid=col("uid"),
        _where=pl.format("{} line {}", pl.lit(str(log.path)), pl.col("_line")),
        _reason=pl.when(_num(f, "duration", pl.Float64) < 0)
        .then(pl.lit("negative duration"))
        .otherwise(pl.lit(None, dtype=pl.Utf8)),
    )


def sni_frame(log: ZeekLog) -> pl.DataFrame:
    """``uid -> sni`` from ``ssl.log`` (the first server_name logged for each uid)."""
    f = log.frame
    if f.height == 0 or "uid" not in f.columns or "server_name" not in f.columns:
        return pl.DataFrame(schema={"uid": pl.Utf8, "sni": pl.Utf8})
    return (
        f.select(uid=pl.col("uid").cast(pl.Utf8), sni=pl.col("server_name").cast(pl.Utf8))
        .filter(pl.col("uid").is_not_null() & pl.col("sni").is_not_null())
        .unique("uid", keep="first")
    )


def dns_frame(log: ZeekLog, quarantine: Quarantine | None = None) -> pa.Table:
    """``dns.log`` rows to DNS rows; rows without a readable time are quarantined."""
    f = log.frame
    if f.height == 0:
        return DNS.empty_table()
    if "answers" not in f.columns:
        answers = pl.lit(None, dtype=pl.List(pl.Utf8))
    elif f.schema["answers"] == pl.Utf8:
        answers = pl.col("answers").str.split(log.set_separator)
    else:
        answers = pl.col("answers").cast(pl.List(pl.Utf8))
    out = f.select(
        ts=_zeek_ts(f),
        client_ip=pl.col("id.orig_h").cast(pl.Utf8)
        if "id.orig_h" in f.columns
        else pl.lit(None, pl.Utf8),
        query=pl.col("query").cast(pl.Utf8) if "query" in f.columns else pl.lit(None, pl.Utf8),
        answers=answers,
        _line=pl.col("_line"),
    )
    bad = out.filter(pl.col("ts").is_null())
    if quarantine is not None:
        for row in bad.drop("ts").to_dicts():
            line = row.pop("_line")
            quarantine.reject(
                SOURCE, f"{log.path} line {line}", "dns record without a readable ts", row
            )
    return conform(out.filter(pl.col("ts").is_not_null()).to_arrow(), DNS)


def read_zeek(
    paths: Sequence[str | Path] | str | Path,
    *,
    quarantine: Quarantine | None = None,
    exporter: str = "zeek",
) -> IngestResult:
    """Read Zeek logs (any mix of conn, ssl and dns) into FLOWS (with SNI) and DNS."""
    if isinstance(paths, str | Path):
        paths = [paths]
    logs = [read_log(p, quarantine) for p in paths]
    conns = [conn_frame(lg, exporter) for lg in logs if lg.kind == "conn"]
    conns = [c for c in conns if c.height]
    snis = [sni_frame(lg) for lg in logs if lg.kind == "ssl"]
    dns = [dns_frame(lg, quarantine) for lg in logs if lg.kind == "dns"]
    unknown = [lg for lg in logs if lg.kind not in ("conn", "ssl", "dns")]
    read = sum(lg.read for lg in logs)
    rejected = sum(lg.rejected for lg in logs)
    for lg in unknown:
        # A log minewatch does not use: every record is skipped, with the reason.
        rejected += lg.frame.height
        if quarantine is not None:
            quarantine.reject(
                SOURCE,
                str(lg.path),
                f"Zeek {lg.kind!r} log is not used ({lg.frame.height} records)",
            )
    flows = FLOWS.empty_table()
    flow_rejected = 0
    if conns:
        conn = pl.concat(conns, how="diagonal_relaxed")
        if snis:
            sni = pl.concat(snis).unique("uid", keep="first")
            conn = conn.join(sni, on="uid", how="left")
        else:
            conn = conn.with_columns(sni=pl.lit(None, dtype=pl.Utf8))
        flows, flow_rejected = finish_flows(conn.drop("uid"), SOURCE, quarantine)
    dns_table = pa.concat_tables(dns) if dns else DNS.empty_table()
    rejected += flow_rejected
    ssl_read = sum(lg.frame.height for lg in logs if lg.kind == "ssl")
    dns_read = sum(lg.frame.height for lg in logs if lg.kind == "dns")
    dns_rejected = dns_read - dns_table.num_rows
    rejected += dns_rejected
    return IngestResult(
        format="zeek",
        flows=flows,
        dns=dns_table,
        read=read,
        accepted=read - rejected,
        rejected=rejected,
        details={"conn": flows.num_rows, "ssl": ssl_read, "dns": dns_table.num_rows},
    )

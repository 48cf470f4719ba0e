"""CICFlowMeter CSV (the Java tool, the CIC-IDS2017/2018 data sets, and the Python port).

The three write the same measurements under different headers (``Src IP`` / `` Source IP``
/ ``src_ip``); headers are normalised (trimmed, lower case, spaces to underscores) and looked
up through :data:`ALIASES`. ``Flow Duration`` is in microseconds; forward is up, backward
down; byte totals are CICFlowMeter's payload lengths. Timestamps are read as UTC in any of the
layouts these tools write (``2017-07-03 08:55:58``, ``03/07/2017 08:55:58`` day first,
``03/07/2017 08:55:58 AM``, ``3/7/2017 8:55``); the TCP flag columns (``FIN Flag Cnt``, ...)
become flag bits when their count is positive. Everything else in the file (rates, the
``Label`` column) is left to whoever needs it.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from minewatch.errors import InputError, Quarantine
from minewatch.schema import FLOWS
from minewatch.sources.flowstore import IngestResult, finish_flows

SOURCE = "cicflowmeter"
ALIASES: dict[str, tuple[str, ...]] = {
    "src_ip": ("src_ip", "source_ip"),
    "dst_ip": ("dst_ip", "destination_ip"),
    "src_port": ("src_port", "source_port"),
    "dst_port": ("dst_port", "destination_port"),
    "proto": ("protocol",),
    "timestamp": ("timestamp",),
    "duration": ("flow_duration",),
    "packets_up": ("tot_fwd_pkts", "total_fwd_packets"),
    "packets_down": ("tot_bwd_pkts", "total_backward_packets", "total_bwd_packets"),
    "bytes_up": ("totlen_fwd_pkts", "total_length_of_fwd_packets"),
    "bytes_down": ("totlen_bwd_pkts", "total_length_of_bwd_packets"),
}
FLAG_COLUMNS: dict[int, tuple[str, ...]] = {
    0x01: ("fin_flag_cnt", "fin_flag_count"),
    0x02: ("syn_flag_cnt", "syn_flag_count"),
    0x04: ("rst_flag_cnt", "rst_flag_count"),
    0x08: ("psh_flag_cnt", "psh_flag_count"),
    0x10: ("ack_flag_cnt", "ack_flag_count"),
    0x20: ("urg_flag_cnt", "urg_flag_count"),
    0x40: ("ece_flag_cnt", "ece_flag_count"),
    0x80: ("cwe_flag_count", "cwr_flag_count", "cwe_flag_cnt"),
}
_TS_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%d/%m/%Y %I:%M:%S %p",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
)


def _norm(name: str) -> str:
    return "_".join(name.strip().lower().replace("/", " ").split())


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in columns:
            return columns[n]
    return None


def read_cicflowmeter(
    path: str | Path, *, quarantine: Quarantine | None = None, exporter: str = "cicflowmeter"
) -> IngestResult:
    """A CICFlowMeter CSV into FLOWS (one row per bidirectional flow)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=p) from exc
    try:
        df = pl.read_csv(
            io.BytesIO(raw),
            infer_schema=False,
            truncate_ragged_lines=True,
            encoding="utf8-lossy",
        )
    except Exception as exc:
        raise InputError(f"not a readable CSV: {exc}", path=p) from exc
    columns = {_norm(c): c for c in df.columns}
    found = {k: _pick(columns, v) for k, v in ALIASES.items()}
    missing = [k for k in ("src_ip", "dst_ip", "timestamp") if found[k] is None]
    if missing:
        raise InputError(
            f"CICFlowMeter CSV without {', '.join(missing)} columns",
            path=p,
            hint="expected the CICFlowMeter header (Src IP, Dst IP, Timestamp, Flow Duration, ...)",
        )
    if df.height == 0:
        return IngestResult(format="cic", flows=FLOWS.empty_table())

    def text(key: str) -> pl.Expr:
        c = found[key]
        return pl.col(c).str.strip_chars() if c else pl.lit(None, dtype=pl.Utf8)

    def integer(key: str) -> pl.Expr:
        return text(key).cast(pl.Float64, strict=False).round().cast(pl.Int64, strict=False)

    ts_text = text("timestamp")
    start = pl.coalesce(
        [
            ts_text.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC")
            for f in _TS_FORMATS
        ]
    )
    duration = integer("duration")
    flags = pl.lit(0, dtype=pl.Int16)
    for bit, names in FLAG_COLUMNS.items():
        c = _pick(columns, names)
        if c is not None:
            flags = flags | pl.when(
                pl.col(c).str.strip_chars().cast(pl.Float64, strict=False).fill_null(0) > 0
            ).then(pl.lit(bit, pl.Int16)).otherwise(pl.lit(0, pl.Int16))
    # CSV line numbers: the header is line 1.
    frame = df.with_row_index("_i").select(
        ts_start=start,
        ts_end=start + pl.duration(microseconds=duration.fill_null(0).clip(lower_bound=0)),
        src_ip=text("src_ip"),
        src_port=integer("src_port").fill_null(0),
        dst_ip=text("dst_ip"),
        dst_port=integer("dst_port").fill_null(0),
        proto=integer("proto").fill_null(0),
        packets_up=integer("packets_up").fill_null(0),
        packets_down=integer("packets_down").fill_null(0),
        bytes_up=integer("bytes_up").fill_null(0),
        bytes_down=integer("bytes_down").fill_null(0),
        tcp_flags=flags,
        sni=pl.lit(None, dtype=pl.Utf8),
        exporter=pl.lit(exporter),
        sampling=pl.lit(1, dtype=pl.Int32),
        _where=pl.format("{} line {}", pl.lit(str(p)), pl.col("_i") + 2),
        _reason=pl.when(duration < 0)
        .then(pl.lit("negative flow duration"))
        .otherwise(pl.lit(None, dtype=pl.Utf8)),
    )
    flows, rejected = finish_flows(frame, SOURCE, quarantine)
    return IngestResult(
        format="cic",
        flows=flows,
        read=frame.height,
        accepted=flows.num_rows,
        rejected=rejected,
    )

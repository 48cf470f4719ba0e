"""nfcapd files (through ``nfdump``) and nfdump's CSV/JSON output into the ``flows`` table.

A binary nfcapd file is read by running ``nfdump -r FILE -o json`` with ``TZ=UTC`` (JSON
carries milliseconds; ``-o csv`` only seconds). Text that nfdump already printed, with
``-o csv`` or ``-o json``, is read directly; nfdump prints local time, so such text is taken
as UTC unless it was produced with ``TZ=UTC`` (say so when you hand files over).

Counters are taken as nfdump stores them: nfcapd scales sampled counters by the sampling
rate it learnt or was given (``nfcapd -s``), and its output does not say by how much, so the
``sampling`` column is 1 for these rows.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl

from minewatch.errors import InputError, Quarantine
from minewatch.sources.flowstore import IngestResult, finish_flows

SOURCE = "nfdump"
NFCAPD_MAGIC = b"\x0c\xa5"
PROTO_NAMES = {
    "ICMP": 1,
    "IGMP": 2,
    "TCP": 6,
    "UDP": 17,
    "GRE": 47,
    "ESP": 50,
    "ICMP6": 58,
    "SCTP": 132,
}
# nfdump prints TCP flags as 8 characters, most significant first: CWR ECE URG ACK PSH RST SYN FIN.
_FLAG_BITS = (0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01)


def tcp_flags_from_text(col: pl.Expr) -> pl.Expr:
    """nfdump's ``...AP.S.`` notation (or a decimal/hex number) to the flag bits."""
    text = col.cast(pl.Utf8).str.strip_chars()
    bits = pl.lit(0, dtype=pl.Int16)
    for i, bit in enumerate(_FLAG_BITS):
        ch = text.str.slice(i, 1)
        bits = bits + pl.when(ch.is_not_null() & (ch != ".")).then(pl.lit(bit, pl.Int16)).otherwise(
            0
        )
    numeric = text.str.to_integer(base=10, strict=False)
    hexa = text.str.strip_prefix("0x").str.to_integer(base=16, strict=False)
    return (
        pl.when(numeric.is_not_null())
        .then(numeric)
        .when(text.str.starts_with("0x"))
        .then(hexa)
        .when(text.str.len_chars() == 8)
        .then(bits)
        .otherwise(0)
        .cast(pl.Int16)
    )


def proto_number(col: pl.Expr) -> pl.Expr:
    text = col.cast(pl.Utf8).str.strip_chars()
    named = text.str.to_uppercase().replace_strict(PROTO_NAMES, default=None, return_dtype=pl.Int16)
    return pl.coalesce(text.str.to_integer(strict=False).cast(pl.Int16), named)


def _ts(col: pl.Expr) -> pl.Expr:
    text = col.cast(pl.Utf8).str.strip_chars().str.replace("T", " ")
    return pl.coalesce(
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_zone="UTC", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC", strict=False, time_unit="us"),
    )


def _int(col: str, frame: pl.DataFrame) -> pl.Expr:
    if col not in frame.columns:
        return pl.lit(0, dtype=pl.Int64)
    return pl.col(col).cast(pl.Utf8).str.strip_chars().str.to_integer(strict=False).fill_null(0)


def _frame_from_json(raw: bytes, path: Path) -> pl.DataFrame:
    text = raw.strip()
    if not text:
        return pl.DataFrame()
    try:
        df = pl.read_json(io.BytesIO(text), infer_schema_length=None)
    except Exception as exc:
        raise InputError(f"not nfdump JSON output: {exc}", path=path) from exc
    return df.with_columns([pl.col(c).cast(pl.Utf8) for c in df.columns])


def _canon_json(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    def col(name: str) -> pl.Expr:
        return pl.col(name) if name in df.columns else pl.lit(None, dtype=pl.Utf8)

    df = df.with_row_index("_i")
    if "type" in df.columns:
        df = df.filter(pl.col("type").is_null() | (pl.col("type") == "FLOW"))
    return df.select(
        ts_start=_ts(col("first")),
        ts_end=_ts(col("last")),
        src_ip=pl.coalesce(col("src4_addr"), col("src6_addr")),
        dst_ip=pl.coalesce(col("dst4_addr"), col("dst6_addr")),
        src_port=_int("src_port", df).cast(pl.Int64),
        # ICMP has no ports: like NetFlow (and nfdump's CSV), type * 256 + code.
        dst_port=pl.when(col("icmp_type").is_not_null())
        .then(_int("icmp_type", df) * 256 + _int("icmp_code", df))
        .otherwise(_int("dst_port", df))
        .cast(pl.Int64),
        proto=proto_number(col("proto")),
        packets_up=_int("in_packets", df),
        packets_down=_int("out_packets", df),
        bytes_up=_int("in_bytes", df),
        bytes_down=_int("out_bytes", df),
        tcp_flags=tcp_flags_from_text(col("tcp_flags")),
        sni=pl.lit(None, dtype=pl.Utf8),
        exporter=pl.coalesce(col("ip4_router"), col("ip6_router"), pl.lit(path.name)),
        sampling=pl.lit(1, dtype=pl.Int32),
        _where=pl.format("{} record {}", pl.lit(str(path)), pl.col("_i") + 1),
    )


def _canon_csv(raw: bytes, path: Path) -> pl.DataFrame:
    cut = raw.find(b"\nSummary")
    body = raw if cut < 0 else raw[: cut + 1]
    if not body.strip():
        return pl.DataFrame()
    try:
        df = pl.read_csv(io.BytesIO(body), infer_schema=False, truncate_ragged_lines=True)
    except Exception as exc:
        raise InputError(f"not nfdump CSV output: {exc}", path=path) from exc
    df = df.rename({c: c.strip() for c in df.columns})
    needed = {"ts", "te", "sa", "da"}
    if not needed <= set(df.columns):
        raise InputError(
            f"nfdump CSV without columns {sorted(needed - set(df.columns))}",
            path=path,
            hint="produce it with `nfdump -r FILE -o csv`",
        )

    def col(name: str) -> pl.Expr:
        return pl.col(name) if name in df.columns else pl.lit(None, dtype=pl.Utf8)

    df = df.with_row_index("_i")
    return df.select(
        ts_start=_ts(col("ts")),
        ts_end=_ts(col("te")),
        src_ip=col("sa").str.strip_chars(),
        dst_ip=col("da").str.strip_chars(),
        src_port=_int("sp", df).cast(pl.Int64),
        dst_port=_int("dp", df).cast(pl.Int64),
        proto=proto_number(col("pr")),
        packets_up=_int("ipkt", df),
        packets_down=_int("opkt", df),
        bytes_up=_int("ibyt", df),
        bytes_down=_int("obyt", df),
        tcp_flags=tcp_flags_from_text(col("flg")),
        sni=pl.lit(None, dtype=pl.Utf8),
        exporter=pl.coalesce(col("ra").str.strip_chars(), pl.lit(path.name)),
        sampling=pl.lit(1, dtype=pl.Int32),
        _where=pl.format("{} line {}", pl.lit(str(path)), pl.col("_i") + 2),
    )


def run_nfdump(path: Path, output: str = "json", nfdump: str = "nfdump") -> bytes:
    """Run ``nfdump -r PATH -o OUTPUT`` in UTC and return its standard output."""
    exe = shutil.which(nfdump)
    if exe is None:
        raise InputError(
            "nfdump is not installed", path=path, hint="install the Debian package nfdump"
        )
    proc = subprocess.run(
        [exe, "-r", str(path), "-o", output],
        capture_output=True,
        env={**os.environ, "TZ": "UTC"},
        check=False,
    )
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(
            f"nfdump could not read it: {msg[-1] if msg else proc.returncode}",
            path=path,
            hint="is it an nfcapd file?",
        )
    return proc.stdout


def read_nfdump(
    path: str | Path,
    *,
    quarantine: Quarantine | None = None,
    output: str = "json",
) -> IngestResult:
    """An nfcapd file, or nfdump ``-o csv``/``-o json`` text, into FLOWS."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=p) from exc
    if head == NFCAPD_MAGIC:
        raw = run_nfdump(p, output)
        kind = output
    else:
        raw = p.read_bytes()
        kind = "json" if raw.lstrip()[:1] in (b"[", b"{") else "csv"
    if kind == "json":
        frame = _canon_json(_frame_from_json(raw, p), p) if raw.strip() else pl.DataFrame()
    else:
        frame = _canon_csv(raw, p)
    if frame.height == 0:
        from minewatch.schema import FLOWS

        return IngestResult(format="nfcapd", flows=FLOWS.empty_table())
    flows, rejected = finish_flows(frame, SOURCE, quarantine)
    return IngestResult(
        format="nfcapd",
        flows=flows,
        read=frame.height,
        accepted=flows.num_rows,
        rejected=rejected,
    )

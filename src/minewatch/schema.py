"""The canonical Arrow schemas (DESIGN.md, "Canonical tables").

Every source module turns one outside format into record batches of these schemas and
nothing else; every detector reads them. Timestamps are UTC with microsecond precision.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

FLOWS = pa.schema(
    [
        ("ts_start", TS),
        ("ts_end", TS),
        ("src_ip", pa.string()),
        ("src_port", pa.int32()),
        ("dst_ip", pa.string()),
        ("dst_port", pa.int32()),
        ("proto", pa.int16()),
        ("packets_up", pa.int64()),
        ("packets_down", pa.int64()),
        ("bytes_up", pa.int64()),
        ("bytes_down", pa.int64()),
        ("tcp_flags", pa.int16()),
        ("sni", pa.string()),
        ("exporter", pa.string()),
        ("sampling", pa.int32()),
    ]
)

DNS = pa.schema(
    [
        ("ts", TS),
        ("client_ip", pa.string()),
        ("query", pa.string()),
        ("answers", pa.list_(pa.string())),
    ]
)

STRATUM_EVENTS = pa.schema(
    [
        ("ts", TS),
        ("session", pa.string()),
        ("direction", pa.string()),  # "up" (client to pool) or "down"
        ("dialect", pa.string()),
        ("method", pa.string()),
        ("difficulty", pa.float64()),
        ("job_id", pa.string()),
        ("login", pa.string()),
        ("agent", pa.string()),
        ("algo", pa.string()),
    ]
)

READINGS = pa.schema(
    [
        ("account_id", pa.string()),
        ("ts", TS),
        ("kwh", pa.float64()),  # energy in the interval ending at ts
        ("interval_s", pa.int32()),
    ]
)

ACCOUNTS = pa.schema(
    [
        ("account_id", pa.string()),
        ("tariff_class", pa.string()),
        ("capacity_kva", pa.float64()),
        ("address", pa.string()),
        ("region", pa.string()),
        ("transformer_id", pa.string()),
    ]
)

LEASES = pa.schema(
    [
        ("ip", pa.string()),
        ("start", TS),
        ("end", TS),
        ("subscriber_id", pa.string()),
        ("port_lo", pa.int32()),
        ("port_hi", pa.int32()),
    ]
)

SUBSCRIBERS = pa.schema(
    [
        ("subscriber_id", pa.string()),
        ("kind", pa.string()),
        ("address", pa.string()),
        ("region", pa.string()),
    ]
)

EVIDENCE = pa.schema(
    [
        ("evidence_id", pa.string()),
        ("source", pa.string()),  # network / power / finance
        ("detector", pa.string()),
        ("subject_type", pa.string()),  # ip, session, account, subscriber, wallet
        ("subject_id", pa.string()),
        ("window_start", TS),
        ("window_end", TS),
        ("score", pa.float64()),  # calibrated 0-1
        ("measures", pa.string()),  # JSON object: hashrate_hs, added_kw, ...
        ("details", pa.string()),  # JSON object: reasons and anything a person can check
    ]
)

# Output contract of `minewatch scan` and `minewatch flows detect` (DESIGN.md, "Contracts").
DETECTION_FIELDS: tuple[str, ...] = (
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "proto",
    "first_seen",
    "last_seen",
    "detector",
    "dialect",
    "confidence",
    "coin",
    "algo",
    "pool_host",
    "wallet",
    "worker",
    "agent",
    "shares",
    "hashrate_hs",
    "power_w_range",
)

# Output contract of `minewatch meters screen`.
SCREEN_FIELDS: tuple[str, ...] = (
    "account_id",
    "score",
    "flagged",
    "added_load_kw",
    "since",
    "reasons",
)

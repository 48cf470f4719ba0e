"""Small hand-made scenes for the fusion tests: leases, subscribers, accounts, evidence."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from minewatch.fusion.evidence import _frame, detection_row, finance_row, screen_row
from minewatch.sources.leases import empty_leases

UTC = dt.UTC
D = dt.datetime(2026, 11, 25, tzinfo=UTC)


def lease(ip: str, sub: str, lo: int | None = None, hi: int | None = None) -> dict[str, Any]:
    return {
        "ip": ip,
        "start": D,
        "end": D + dt.timedelta(days=1),
        "subscriber_id": sub,
        "port_lo": lo,
        "port_hi": hi,
        "source": "test",
        "note": None,
    }


def det(
    ip: str,
    port: int | None,
    conf: float,
    hr: float | None = None,
    algo: str | None = None,
    detector: str = "stratum",
    wallet: str | None = None,
    dst_ip: str = "192.0.2.200",
    hours: float = 2.0,
) -> dict[str, Any]:
    return detection_row(
        {
            "src_ip": ip,
            "src_port": port,
            "dst_ip": dst_ip,
            "dst_port": 3333,
            "proto": "tcp",
            "first_seen": (D + dt.timedelta(hours=hours)).isoformat(),
            "last_seen": (D + dt.timedelta(hours=hours + 1)).isoformat(),
            "detector": detector,
            "confidence": conf,
            "hashrate_hs": hr,
            "algo": algo,
            "wallet": wallet,
            "pool_host": "pool.example" if detector == "stratum" else None,
            "reasons": ["client sent mining.submit"],
        }
    )


def meter(acc: str, score: float, kw: float, since: str | None = "2026-11-01") -> dict[str, Any]:
    return screen_row(
        {
            "account_id": acc,
            "score": score,
            "flagged": score >= 0.5,
            "added_load_kw": kw,
            "since": since,
            "reasons": [f"+{kw} kW flat"],
        }
    )


def scene() -> dict[str, pl.DataFrame]:
    leases = pl.DataFrame(
        [
            lease("10.0.0.1", "s1"),
            lease("10.0.0.2", "s2"),
            lease("10.0.0.3", "s3"),
            lease("10.0.0.4", "s4"),
            lease("203.0.113.7", "nat:100.64.0.5", 1024, 2047),
            lease("203.0.113.7", "nat:100.64.0.6", 2048, 3071),
            lease("100.64.0.5", "s5"),
            lease("100.64.0.6", "s6"),
        ],
        schema=empty_leases().schema,
    )
    subs = pl.DataFrame(
        {
            "subscriber_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
            "kind": [
                "residential",
                "school",
                "internet_cafe",
                "residential",
                "business",
                "enterprise",
            ],
            "address": [
                "杭州市西湖区文三路100号3幢2单元502室",
                "杭州市西湖区学院路5号",
                "杭州市西湖区文一路9号",
                "杭州市西湖区古墩路8号1幢1单元101室",
                "杭州市上城区延安路1号",
                "杭州市上城区解放路2号",
            ],
            "region": ["西湖区", "西湖区", "西湖区", "西湖区", "上城区", "上城区"],
        }
    )
    accs = pl.DataFrame(
        {
            "account_id": ["a1", "a2", "a3", "a4", "a5", "a6", "a7"],
            "tariff_class": [
                "residential",
                "public",
                "commercial",
                "residential",
                "commercial",
                "industrial",
                "commercial",
            ],
            "capacity_kva": [8.0, 200.0, 30.0, 8.0, 20.0, 400.0, 50.0],
            "address": [
                "西湖区文三路100号3-2-502",
                "学院路5号",
                "文一路9号",
                "古墩路8号1-1-101",
                "延安路1号",
                "解放路2号",
                "滨江区江南大道1号",
            ],
            "region": ["西湖区", "西湖区", "西湖区", "西湖区", "上城区", "上城区", "滨江区"],
            "transformer_id": ["t1", "t2", "t3", "t4", "t5", "t6", "t7"],
        }
    )
    return {"leases": leases, "subscribers": subs, "accounts": accs}


def evidence(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return _frame(rows)


__all__ = ["D", "det", "evidence", "finance_row", "meter"]

"""Suricata EVE JSON: flow, tls, dns (v2 and v3 layouts) and alert events.

Suricata has no Debian package for this machine and cannot be fetched here, so the EVE lines
are written by the test in the layout Suricata 7/8 documents (``flow``/``tcp``/``tls``/``dns``/
``alert`` objects; ET COINMINER signature 2024792 as published in the ET Open rules).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from minewatch.errors import Quarantine
from minewatch.schema import DNS, EVIDENCE, FLOWS
from minewatch.sources.suricata import COINMINER_SCORE, read_eve

FIVE = {
    "src_ip": "10.0.0.5",
    "src_port": 49152,
    "dest_ip": "198.51.100.7",
    "dest_port": 3333,
    "proto": "TCP",
}


def ev(ts: str, kind: str, flow_id: int, **extra: Any) -> dict[str, Any]:
    return {"timestamp": ts, "flow_id": flow_id, "event_type": kind, **FIVE, **extra}


EVENTS = [
    ev(
        "2024-01-01T00:10:00.500000+0000",
        "flow",
        1111,
        flow={
            "pkts_toserver": 150,
            "pkts_toclient": 140,
            "bytes_toserver": 20000,
            "bytes_toclient": 55000,
            "start": "2024-01-01T00:00:00.123456+0000",
            "end": "2024-01-01T00:10:00.000000+0000",
            "state": "closed",
            "reason": "timeout",
            "alerted": True,
        },
        tcp={"tcp_flags": "1b", "syn": True, "fin": True, "psh": True, "ack": True},
    ),
    ev(
        "2024-01-01T00:00:01.000000+0000",
        "tls",
        1111,
        tls={"sni": "pool.example.org", "version": "TLS 1.3"},
    ),
    ev(
        "2024-01-01T00:00:02.000000+0000",
        "alert",
        1111,
        alert={
            "action": "allowed",
            "gid": 1,
            "signature_id": 2024792,
            "rev": 4,
            "signature": "ET COINMINER CryptoNight Proof of Work Submitted by Miner",
            "category": "Crypto Currency Mining Activity Detected",
            "severity": 1,
        },
    ),
    ev(
        "2024-01-01T00:00:03.000000+0000",
        "alert",
        2222,
        alert={
            "signature_id": 2013028,
            "rev": 7,
            "signature": "ET POLICY curl User-Agent Outbound",
            "category": "Attempted Information Leak",
            "severity": 2,
        },
    ),
    ev(
        "2024-01-01T00:00:00.010000+0000",
        "dns",
        3333,
        dns={"type": "query", "id": 1, "rrname": "pool.example.org", "rrtype": "A"},
    ),
    ev(
        "2024-01-01T00:00:00.020000+0000",
        "dns",
        3333,
        dns={
            "version": 2,
            "type": "answer",
            "id": 1,
            "rrname": "pool.example.org",
            "rrtype": "A",
            "rcode": "NOERROR",
            "answers": [{"rrname": "pool.example.org", "rrtype": "A", "rdata": "198.51.100.7"}],
            "grouped": {"A": ["198.51.100.7"]},
        },
    ),
    {"timestamp": "2024-01-01T00:00:05.000000+0000", "event_type": "stats", "stats": {"uptime": 5}},
]


def write(path: Path, events: list[dict[str, Any]], extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join([*(json.dumps(e) for e in events), *extra_lines]) + "\n")
    return path


def test_flows_sni_dns_and_coinminer_evidence(tmp_path: Path) -> None:
    r = read_eve(write(tmp_path / "eve.json", EVENTS))
    assert (
        r.flows.schema.equals(FLOWS)
        and r.dns.schema.equals(DNS)
        and r.evidence.schema.equals(EVIDENCE)
    )
    assert (r.read, r.accepted, r.rejected) == (7, 7, 0)
    f = r.flows.to_pylist()[0]
    assert (f["src_ip"], f["dst_port"], f["proto"], f["sni"]) == (
        "10.0.0.5",
        3333,
        6,
        "pool.example.org",
    )
    assert (f["packets_up"], f["packets_down"], f["bytes_up"], f["bytes_down"], f["tcp_flags"]) == (
        150,
        140,
        20000,
        55000,
        0x1B,
    )
    assert f["ts_start"].isoformat() == "2024-01-01T00:00:00.123456+00:00"
    assert r.dns.to_pylist() == [
        {
            "ts": r.dns.column("ts")[0].as_py(),
            "client_ip": "10.0.0.5",
            "query": "pool.example.org",
            "answers": ["198.51.100.7"],
        }
    ]
    (e,) = r.evidence.to_pylist()
    assert (e["source"], e["detector"], e["subject_type"], e["subject_id"]) == (
        "network",
        "suricata",
        "ip",
        "10.0.0.5",
    )
    assert e["score"] == COINMINER_SCORE
    details = json.loads(e["details"])
    assert details["signature_id"] == 2024792 and "2024792" in details["reasons"][0]
    assert details["where"].endswith("eve.json line 3")
    assert r.details["event_types"] == {"alert": 2, "dns": 2, "flow": 1, "stats": 1, "tls": 1}


def test_dns_v3_layout(tmp_path: Path) -> None:
    v3 = ev("2024-01-01T00:00:00.020000+0000", "dns", 5,
            dns={"version": 3, "id": 1, "queries": [{"rrname": "xmr.example.net", "rrtype": "A"}],
                 "answers": [{"rrname": "xmr.example.net", "rrtype": "A", "rdata": "203.0.113.9"}]})  # fmt: skip  # noqa: E501
    r = read_eve(write(tmp_path / "eve.json", [v3]))
    assert r.dns.column("query").to_pylist() == ["xmr.example.net"]
    assert r.dns.column("answers").to_pylist() == [["203.0.113.9"]]


def test_lines_that_are_not_json_and_bad_flows(tmp_path: Path) -> None:
    backwards = ev("2024-01-01T00:20:00+0000", "flow", 4444,
                   flow={"pkts_toserver": 1, "bytes_toserver": 60, "start": "2024-01-01T00:20:00.000000+0000",  # noqa: E501
                         "end": "2024-01-01T00:19:00.000000+0000"})  # fmt: skip
    no_addr = {"timestamp": "2024-01-01T00:20:00+0000", "event_type": "flow", "flow_id": 5,
               "flow": {"start": "2024-01-01T00:20:00.000000+0000"}}  # fmt: skip
    p = write(
        tmp_path / "eve.json",
        [*EVENTS, backwards, no_addr],
        ('{"timestamp": "2024-01-01T00:00:06.0', "[1, 2]", ""),
    )
    q = Quarantine(tmp_path / "q.jsonl")
    r = read_eve(p, quarantine=q)
    q.close()
    assert (r.read, r.rejected) == (11, 4) and r.read == r.accepted + r.rejected
    assert r.flows.num_rows == 1
    assert q.counts == {
        "line is not a JSON object": 2,
        "flow ends before it starts": 1,
        "source or destination address missing": 1,
    }


@pytest.mark.parametrize("content", ["", "\n\n", '{"a": 1}\n'])
def test_empty_or_foreign_json(tmp_path: Path, content: str) -> None:
    p = tmp_path / "eve.json"
    p.write_text(content)
    q = Quarantine()
    r = read_eve(p, quarantine=q)
    assert r.flows.num_rows == 0 and r.read == r.accepted + r.rejected

"""Loading detector outputs and finance leads into EVIDENCE; bad lines are quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.fusion.evidence import FINANCE_KIND_SCORE, load_evidence, to_arrow
from minewatch.schema import DETECTION_FIELDS, EVIDENCE, SCREEN_FIELDS

DETECTION = {
    "src_ip": "10.0.0.1",
    "src_port": 40000,
    "dst_ip": "192.0.2.200",
    "dst_port": 3333,
    "proto": "tcp",
    "first_seen": "2026-11-25T02:00:00Z",
    "last_seen": "2026-11-25T03:00:00Z",
    "detector": "stratum",
    "dialect": "stratum_v1",
    "confidence": 0.99,
    "coin": "btc",
    "algo": "sha256d",
    "pool_host": "pool.example",
    "wallet": "1Wallet",
    "worker": "rig1",
    "agent": "cgminer/4.10",
    "shares": {"submitted": 10, "accepted": 9, "rejected": 1},
    "hashrate_hs": 1.4e13,
    "power_w_range": [245.0, 1456.0],
    "reasons": ["client sent 10 mining.submit"],
}
SCREEN = {
    "account_id": "a1",
    "score": 0.93,
    "flagged": True,
    "added_load_kw": 3.1,
    "since": "2026-11-14",
    "reasons": ["+3.1 kW flat since 2026-11-14"],
    "evidence": "step",
    "hashrate_hs": {"sha256d": [1e14, 2e14]},
}


def test_fixtures_follow_the_contracts() -> None:
    assert set(DETECTION_FIELDS) <= set(DETECTION)
    assert set(SCREEN_FIELDS) <= set(SCREEN)


def test_detections_screens_and_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "ev.jsonl"
    lines = [
        json.dumps(DETECTION),
        json.dumps(SCREEN),
        "{not json",
        json.dumps({**DETECTION, "confidence": 1.7}),
        json.dumps({"hello": 1}),
        json.dumps({**DETECTION, "first_seen": None}),
        "",
    ]
    p.write_text("\n".join(lines), encoding="utf-8")
    q = Quarantine(path=tmp_path / "q.jsonl")
    ld = load_evidence([p], quarantine=q)
    q.close()
    assert (ld.read, ld.accepted, ld.rejected) == (6, 2, 4)
    ev = ld.evidence
    net = ev.filter(ev["source"] == "network").row(0, named=True)
    assert net["subject_type"] == "ip" and net["subject_id"] == "10.0.0.1"
    assert json.loads(net["measures"])["hashrate_hs"] == 1.4e13
    assert json.loads(net["details"])["wallet"] == "1Wallet"
    pw = ev.filter(ev["source"] == "power").row(0, named=True)
    assert pw["subject_id"] == "a1" and json.loads(pw["measures"])["added_kw"] == 3.1
    assert pw["window_start"].isoformat().startswith("2026-11-14")
    rejected = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(rejected) == 4 and {r["where"].split(":")[-1] for r in rejected} == {
        "line 3",
        "line 4",
        "line 5",
        "line 6",
    }
    table = to_arrow(ev)
    assert isinstance(table, pa.Table) and table.schema.equals(EVIDENCE)


def test_evidence_rows_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(DETECTION) + "\n", encoding="utf-8")
    ev = load_evidence([p]).evidence
    back = tmp_path / "evidence.jsonl"
    back.write_text(
        "\n".join(json.dumps(r, default=str) for r in ev.to_dicts()) + "\n", encoding="utf-8"
    )
    again = load_evidence([back]).evidence
    assert again["evidence_id"].to_list() == ev["evidence_id"].to_list()
    pq = tmp_path / "e.parquet"
    ev.write_parquet(pq)
    assert load_evidence([pq]).evidence.height == 1


def test_finance_csv(tmp_path: Path) -> None:
    p = tmp_path / "fin.csv"
    p.write_text(
        "wallet,ts,kind,amount,coin,counterparty,subscriber_id\n"
        "4Abc,2026-11-20T00:00:00Z,pool_payout,0.05,xmr,pool,\n"
        "bc1q,2026-11-21T00:00:00Z,exchange_deposit,1.0,btc,exchange,s9\n"
        ",2026-11-21T00:00:00Z,pool_payout,1,btc,x,\n"
        "zz,not-a-time,pool_payout,1,btc,x,\n",
        encoding="utf-8",
    )
    ld = load_evidence([], finance=[p])
    assert (ld.read, ld.accepted, ld.rejected) == (4, 2, 2)
    scores = dict(zip(ld.evidence["subject_id"], ld.evidence["score"], strict=True))
    assert scores == {
        "4Abc": FINANCE_KIND_SCORE["pool_payout"],
        "bc1q": FINANCE_KIND_SCORE["exchange_deposit"],
    }
    with pytest.raises(InputError):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n", encoding="utf-8")
        load_evidence([], finance=[bad])

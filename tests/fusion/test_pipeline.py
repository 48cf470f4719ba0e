"""run_fuse on hand-written files: damaged tables and lease files never crash or vanish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minewatch.errors import InputError
from minewatch.fusion.pipeline import run_fuse


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


def test_damaged_inputs_are_counted_and_listed(tmp_path: Path) -> None:
    subs = write(
        tmp_path,
        "subs.csv",
        "subscriber_id,kind,address,region\n"
        "s1,residential,杭州市西湖区文三路100号3幢2单元502室,西湖区\n"
        "s1,residential,duplicate row,西湖区\n"
        ",residential,no id,西湖区\n"
        "s2,school,杭州市西湖区学院路5号,西湖区\n",
    )
    accs = write(
        tmp_path,
        "accs.csv",
        "account_id,tariff_class,capacity_kva,address,region,transformer_id\n"
        "a1,residential,8,西湖区文三路100号3-2-502,西湖区,t1\n"
        "a2,public,not-a-number,学院路5号,西湖区,t2\n",
    )
    leases = write(
        tmp_path,
        "leases.csv",
        "ip,start,end,subscriber_id,port_lo,port_hi\n"
        "10.0.0.1,2026-11-25T00:00:00Z,2026-11-26T00:00:00Z,s1,,\n"
        "10.0.0.2,2026-11-25T00:00:00Z,,s2,,\n"
        "10.0.0.3,garbage,,s3,,\n",
    )
    det = {
        "src_ip": "10.0.0.1",
        "src_port": 40000,
        "first_seen": "2026-11-25T02:00:00Z",
        "last_seen": "2026-11-25T03:00:00Z",
        "detector": "stratum",
        "confidence": 0.99,
        "hashrate_hs": 1.4e13,
        "algo": "sha256d",
    }
    ev = write(
        tmp_path,
        "ev.jsonl",
        json.dumps(det)
        + "\n"
        + json.dumps({**det, "src_ip": "10.9.9.9"})
        + "\n"
        + json.dumps({**det, "src_ip": "10.0.0.2", "hashrate_hs": 6000, "algo": "rx/0"})
        + "\n{broken\n",
    )
    out = tmp_path / "out"
    run = run_fuse([ev], [leases], subs, accs, out=out)
    s = run.summary
    assert s["evidence"]["read"] == 4 and s["evidence"]["rejected"] == 1
    assert s["leases"][0]["read"] == 3 and s["leases"][0]["rejected"] == 1
    assert s["table_rows_dropped"]["subscribers"] == {"without_id": 1, "repeated_id": 1}
    assert s["attribution"] == {"attributed": 2, "no_lease": 1}
    sus = {r["premises_id"]: r for r in map(json.loads, (out / "suspects.jsonl").open())}
    assert sus["a1"]["subscriber_ids"] == ["s1"]
    assert sus["a2"]["subject_class"] == "public_institution"
    un = [json.loads(x) for x in (out / "unattributed.jsonl").open()]
    assert [u["subject_id"] for u in un] == ["10.9.9.9"]
    q = [json.loads(x) for x in (out / "quarantine.jsonl").open()]
    assert len(q) == 2  # the broken evidence line and the lease with a bad start


def test_missing_columns_are_an_input_error(tmp_path: Path) -> None:
    bad = write(tmp_path, "subs.csv", "id,address\n1,x\n")
    acc = write(tmp_path, "a.csv", "account_id,tariff_class,address,region\n")
    with pytest.raises(InputError) as exc:
        run_fuse([], [], bad, acc)
    assert "subscriber_id" in str(exc.value)

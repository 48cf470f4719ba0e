"""Zeek conn/ssl/dns logs, TSV and JSON.

Zeek has no Debian package for this machine and cannot be fetched here, so the logs are
written by the test in Zeek's documented layouts (the ``#fields``/``#types`` TSV header and
``LogAscii::use_json`` lines, field names as Zeek 6 writes them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.schema import DNS, FLOWS
from minewatch.sources.zeek import read_log, read_zeek

CONN_FIELDS = [
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
]
CONN_TYPES = [
    "time",
    "string",
    "addr",
    "port",
    "addr",
    "port",
    "enum",
    "string",
    "interval",
    "count",
    "count",
    "string",
    "bool",
    "bool",
    "count",
    "string",
    "count",
    "count",
    "count",
    "count",
    "set[string]",
]


def tsv(path: Path, kind: str, fields: list[str], types: list[str], rows: list[list[str]]) -> Path:
    head = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        f"#path\t{kind}",
        "#open\t2024-01-01-00-00-00",
        "#fields\t" + "\t".join(fields),
        "#types\t" + "\t".join(types),
    ]
    body = ["\t".join(r) for r in rows]
    path.write_text("\n".join([*head, *body, "#close\t2024-01-01-01-00-00"]) + "\n")
    return path


MINER = ["1704067200.123456", "C1", "10.0.0.5", "49152", "198.51.100.7", "443", "tcp", "ssl",
         "600.5", "12000", "48000", "SF", "T", "F", "0", "ShADadFf", "150", "20000", "140", "55000", "-"]  # fmt: skip  # noqa: E501
DNS_ROW = ["1704067201.000000", "C2", "10.0.0.6", "53000", "198.51.100.8", "53", "udp", "dns",
           "0.01", "40", "120", "SF", "T", "F", "0", "Dd", "1", "68", "1", "148", "-"]  # fmt: skip


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    conn = tsv(tmp_path / "conn.log", "conn", CONN_FIELDS, CONN_TYPES, [MINER, DNS_ROW])
    ssl = tsv(
        tmp_path / "ssl.log",
        "ssl",
        [
            "ts",
            "uid",
            "id.orig_h",
            "id.orig_p",
            "id.resp_h",
            "id.resp_p",
            "version",
            "cipher",
            "server_name",
            "established",
        ],
        ["time", "string", "addr", "port", "addr", "port", "string", "string", "string", "bool"],
        [
            [
                "1704067200.2",
                "C1",
                "10.0.0.5",
                "49152",
                "198.51.100.7",
                "443",
                "TLSv13",
                "TLS_AES_128_GCM_SHA256",
                "pool.example.org",
                "T",
            ]
        ],
    )
    dns = tsv(
        tmp_path / "dns.log",
        "dns",
        [
            "ts",
            "uid",
            "id.orig_h",
            "id.orig_p",
            "id.resp_h",
            "id.resp_p",
            "proto",
            "query",
            "qtype_name",
            "rcode_name",
            "answers",
            "TTLs",
        ],
        [
            "time",
            "string",
            "addr",
            "port",
            "addr",
            "port",
            "enum",
            "string",
            "string",
            "string",
            "vector[string]",
            "vector[interval]",
        ],
        [
            [
                "1704067199.9",
                "C2",
                "10.0.0.6",
                "53000",
                "198.51.100.8",
                "53",
                "udp",
                "pool.example.org",
                "A",
                "NOERROR",
                "198.51.100.7,198.51.100.9",
                "60.0,60.0",
            ],
            [
                "1704067199.95",
                "C3",
                "10.0.0.6",
                "53001",
                "198.51.100.8",
                "53",
                "udp",
                "nx.example",
                "A",
                "NXDOMAIN",
                "-",
                "-",
            ],
        ],
    )
    return [conn, ssl, dns]


def test_tsv_conn_with_sni_and_dns(logs: list[Path]) -> None:
    r = read_zeek(logs)
    assert r.flows.schema.equals(FLOWS) and r.dns.schema.equals(DNS)
    assert (r.read, r.accepted, r.rejected) == (5, 5, 0)
    rows = {x["src_ip"]: x for x in r.flows.to_pylist()}
    m = rows["10.0.0.5"]
    assert m["sni"] == "pool.example.org"
    assert (m["bytes_up"], m["bytes_down"], m["packets_up"], m["packets_down"]) == (
        20000,
        55000,
        150,
        140,
    )
    assert (m["ts_end"] - m["ts_start"]).total_seconds() == pytest.approx(600.5)
    assert m["ts_start"].isoformat() == "2024-01-01T00:00:00.123456+00:00"
    assert m["proto"] == 6 and m["tcp_flags"] & 0x02 and m["tcp_flags"] & 0x01
    assert rows["10.0.0.6"]["sni"] is None and rows["10.0.0.6"]["proto"] == 17
    dns = {x["query"]: x for x in r.dns.to_pylist()}
    assert dns["pool.example.org"]["answers"] == ["198.51.100.7", "198.51.100.9"]
    assert dns["nx.example"]["answers"] is None


def test_json_logs_match_tsv(logs: list[Path], tmp_path: Path) -> None:
    conn = dict(zip(CONN_FIELDS, MINER, strict=True))
    obj = {k: v for k, v in conn.items() if v != "-"}
    for k in ("id.orig_p", "id.resp_p", "orig_bytes", "resp_bytes", "orig_pkts", "orig_ip_bytes",
              "resp_pkts", "resp_ip_bytes", "missed_bytes"):  # fmt: skip
        obj[k] = int(obj[k])
    obj["ts"], obj["duration"] = 1704067200.123456, 600.5
    j = tmp_path / "json"
    j.mkdir()
    (j / "conn.log").write_text(json.dumps(obj) + "\n")
    (j / "ssl.log").write_text(
        json.dumps(
            {"ts": "2024-01-01T00:00:00.200000Z", "uid": "C1", "server_name": "pool.example.org"}
        )
        + "\n"
    )
    r_json = read_zeek([j / "conn.log", j / "ssl.log"])
    r_tsv = read_zeek(logs[:2])
    a = r_json.flows.to_pylist()[0]
    b = next(x for x in r_tsv.flows.to_pylist() if x["src_ip"] == "10.0.0.5")
    assert a == b


def test_missing_and_extra_fields_are_quarantined(tmp_path: Path) -> None:
    short = MINER[:5]
    extra = [*DNS_ROW, "surplus"]
    bad_ts = ["yesterday", *MINER[1:]]
    negative = [*MINER[:8], "-3.0", *MINER[9:]]
    conn = tsv(
        tmp_path / "conn.log",
        "conn",
        CONN_FIELDS,
        CONN_TYPES,
        [MINER, short, extra, bad_ts, negative],
    )
    q = Quarantine(tmp_path / "q.jsonl")
    r = read_zeek([conn], quarantine=q)
    q.close()
    assert (r.read, r.accepted, r.rejected) == (5, 1, 4)
    assert q.counts["5 values for 21 #fields"] == 1
    assert q.counts["22 values for 21 #fields"] == 1
    assert q.counts["start time missing or unreadable"] == 1
    assert q.counts["negative duration"] == 1
    text = (tmp_path / "q.jsonl").read_text()
    assert "conn.log line 10" in text  # the short line: 8 header lines, then rows


def test_json_lines_that_are_not_json(tmp_path: Path) -> None:
    p = tmp_path / "dns.log"
    p.write_text(
        '{"ts":1704067201.0,"uid":"C2","id.orig_h":"10.0.0.6","query":"a.example","answers":["192.0.2.1"]}\n'
        "{truncated\n"
        '{"ts":"2024-01-01T00:00:03Z","id.orig_h":"10.0.0.7","query":"b.example"}\n'
    )
    q = Quarantine()
    r = read_zeek([p], quarantine=q)
    assert (r.read, r.accepted, r.rejected) == (3, 2, 1)
    assert r.dns.column("query").to_pylist() == ["a.example", "b.example"]
    assert q.counts["line is not a JSON object"] == 1


def test_several_header_blocks_and_unknown_logs(tmp_path: Path) -> None:
    a = tsv(tmp_path / "a.log", "conn", CONN_FIELDS, CONN_TYPES, [MINER])
    fewer = [*CONN_FIELDS[:6], "proto"]
    b = tsv(tmp_path / "b.log", "conn", fewer, CONN_TYPES[:7], [MINER[:7]])
    (tmp_path / "conn.log").write_text(a.read_text() + b.read_text())
    http = tsv(
        tmp_path / "http.log",
        "http",
        ["ts", "uid", "host"],
        ["time", "string", "string"],
        [["1.0", "C9", "x"]],
    )
    q = Quarantine()
    r = read_zeek([tmp_path / "conn.log", http], quarantine=q)
    assert r.flows.num_rows == 2 and r.rejected == 1 and r.read == 3
    assert any("'http' log is not used" in k for k in q.counts)


def test_not_a_zeek_log(tmp_path: Path) -> None:
    p = tmp_path / "conn.log"
    p.write_text("hello\n")
    with pytest.raises(InputError, match="not a Zeek log"):
        read_log(p)

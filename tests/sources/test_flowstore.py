"""The Parquet flow store, format detection, and `minewatch flows ingest`."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minewatch.errors import InputError
from minewatch.schema import EVIDENCE, FLOWS
from minewatch.sources.flowstore import (
    detect_format,
    read_dns,
    read_flows,
    write_dns,
    write_evidence,
    write_flows,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"
MINEWATCH = str(Path(sys.executable).parent / "minewatch")


def flows(n: int, day: int, exporter: str | None) -> pa.Table:
    ts = [dt.datetime(2024, 1, day, 12, 0, i, tzinfo=dt.UTC) for i in range(n)]
    return pa.table(
        {
            "ts_start": ts,
            "ts_end": ts,
            "src_ip": [f"10.0.0.{i}" for i in range(n)],
            "src_port": [1000 + i for i in range(n)],
            "dst_ip": ["198.51.100.7"] * n,
            "dst_port": [3333] * n,
            "proto": [6] * n,
            "packets_up": [1] * n,
            "packets_down": [0] * n,
            "bytes_up": [60] * n,
            "bytes_down": [0] * n,
            "tcp_flags": [2] * n,
            "sni": [None] * n,
            "exporter": [exporter] * n,
            "sampling": [1] * n,
        }
    ).cast(FLOWS)


def test_round_trip_partitions_and_append(tmp_path: Path) -> None:
    write_flows(flows(3, 1, "192.0.2.1"), tmp_path)
    write_flows(flows(2, 2, "router/a b"), tmp_path)
    write_flows(flows(4, 1, "192.0.2.1"), tmp_path)  # appended, not overwritten
    write_flows(flows(1, 3, None), tmp_path)
    t = read_flows(tmp_path)
    assert t.schema.equals(FLOWS) and t.num_rows == 10
    assert sorted(set(t.column("exporter").to_pylist()), key=str) == sorted(
        ["192.0.2.1", "router/a b", None], key=str
    )
    dirs = sorted(
        p.relative_to(tmp_path / "flows").as_posix() for p in (tmp_path / "flows").glob("*/*")
    )
    assert dirs == [
        "date=2024-01-01/exporter_dir=192.0.2.1",
        "date=2024-01-02/exporter_dir=router_a_b",
        "date=2024-01-03/exporter_dir=unknown",
    ]
    assert len(list((tmp_path / "flows" / "date=2024-01-01").rglob("*.parquet"))) == 2
    only = read_flows(tmp_path, start=dt.date(2024, 1, 2), end=dt.date(2024, 1, 2))
    assert only.num_rows == 2
    # each file holds the canonical columns itself
    f = next((tmp_path / "flows").rglob("*.parquet"))
    assert set(FLOWS.names) <= set(pq.read_schema(f).names)
    assert read_flows(tmp_path / "nothing").num_rows == 0


def test_write_reports_the_files_it_wrote(tmp_path: Path) -> None:
    """Also where Arrow escapes the partition value in the directory name (":" as %3A), where
    a date is missing, and for the unpartitioned evidence table."""
    (colon,) = write_flows(flows(1, 4, "192.0.2.9:2055"), tmp_path)
    assert colon.is_file() and colon.parent.name == "exporter_dir=192.0.2.9%3A2055"
    undated = flows(2, 5, "192.0.2.1").set_column(0, "ts_start", pa.nulls(2, FLOWS[0].type))
    (null_date,) = write_flows(undated, tmp_path)
    assert null_date.is_file() and null_date not in [colon]
    again = write_flows(flows(1, 4, "192.0.2.9:2055"), tmp_path)
    assert len(again) == 1 and again[0] != colon and again[0].parent == colon.parent
    ev = pa.table({n: pa.nulls(1, EVIDENCE.field(n).type) for n in EVIDENCE.names})
    (evidence,) = write_evidence(ev, tmp_path)
    assert evidence.parent == tmp_path / "evidence"


_MANY_PARTITIONS = """
import sys
import pyarrow as pa
sys.path.insert(0, sys.argv[2])
from test_flowstore import flows
from minewatch.sources.flowstore import write_flows
# 84 partitions (28 days x 3 exporters), each fed in 4 small batches
t = pa.concat_tables(
    [flows(40, 1 + d, f"192.0.2.{e}") for d in range(28) for e in range(3) for _ in range(4)]
)
print("\\n".join(str(p) for p in write_flows(t, sys.argv[1])))
"""


def test_store_write_exits_cleanly_and_keeps_row_groups_whole(tmp_path: Path) -> None:
    """A process that writes a store with many partitions exits 0, every time: Arrow's
    ``file_visitor`` callback made it abort at exit in about half the runs (status 134,
    apache/arrow#36980). The files it reports are the files it wrote, and small input
    batches are not left as tiny row groups."""
    here = str(Path(__file__).parent)
    for run in range(8):
        root = tmp_path / f"store{run}"
        out = subprocess.run(
            [sys.executable, "-c", _MANY_PARTITIONS, str(root), here],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, (run, out.returncode, out.stderr[-2000:])
        written = sorted(Path(line) for line in out.stdout.split())
        assert written == sorted((root / "flows").rglob("*.parquet"))
        assert len(written) == 84
        assert {pq.read_metadata(f).num_row_groups for f in written} == {1}
        assert read_flows(root).num_rows == 28 * 3 * 4 * 40


def test_dns_round_trip(tmp_path: Path) -> None:
    t = pa.table(
        {
            "ts": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)],
            "client_ip": ["10.0.0.6"],
            "query": ["pool.example.org"],
            "answers": [["198.51.100.7"]],
        }
    )
    write_dns(t, tmp_path)
    assert read_dns(tmp_path).to_pylist()[0]["answers"] == ["198.51.100.7"]


def test_detect_format(tmp_path: Path) -> None:
    samples = {
        "netflow": DATA / "benign" / "netflowv9.pcap",
        "zeek": "#separator \\x09\n#fields\tts\tuid\n",
        "eve": '{"timestamp":"2024-01-01T00:00:00+0000","event_type":"flow"}\n',
        "cic": "Flow ID,Src IP,Src Port,Dst IP,Dst Port,Protocol,Timestamp,Flow Duration\n",
        "nfcapd": "ts,te,td,sa,da,sp,dp,pr\n",
    }
    for fmt, sample in samples.items():
        if isinstance(sample, Path):
            assert detect_format(sample) == fmt
            continue
        p = tmp_path / f"{fmt}.txt"
        p.write_text(sample)
        assert detect_format(p) == fmt, fmt
    zj = tmp_path / "conn.json"
    zj.write_text('{"ts":1.0,"uid":"C1","id.orig_h":"10.0.0.1"}\n')
    assert detect_format(zj) == "zeek"
    raw = tmp_path / "exports.bin"
    raw.write_bytes(bytes.fromhex("000500010000000000000000000000000000000000000000") + bytes(48))
    assert detect_format(raw) == "netflow"
    junk = tmp_path / "junk"
    junk.write_text("hello world\n")
    with pytest.raises(InputError, match="format not recognised"):
        detect_format(junk)


def test_cli_ingest_mixed_inputs(tmp_path: Path) -> None:
    exports = tmp_path / "exports.bin"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        subprocess.run(
            [
                "softflowd",
                "-r",
                str(DATA / "mining" / "xmr.suprnova.cc.pcapng"),
                "-n",
                f"127.0.0.1:{s.getsockname()[1]}",
                "-v",
                "10",
                "-p",
                str(tmp_path / "sf.pid"),
                "-c",
                "none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
        got = []
        try:
            while True:
                got.append(s.recv(65535))
        except TimeoutError:
            pass
    exports.write_bytes(b"".join(got))
    eve = tmp_path / "in" / "eve.json"
    eve.parent.mkdir()
    eve.write_text(
        '{"timestamp":"2024-01-01T00:00:00+0000","event_type":"flow","src_ip":"10.0.0.1","src_port":1,'
        '"dest_ip":"10.0.0.2","dest_port":3333,"proto":"TCP","flow":{"start":"2024-01-01T00:00:00.0+0000",'
        '"end":"2024-01-01T00:01:00.0+0000","pkts_toserver":3}}\nnot json\n'
    )
    shutil.copy(DATA / "benign" / "netflowv9.pcap", tmp_path / "in" / "nf.pcap")
    store, qfile = tmp_path / "store", tmp_path / "q.jsonl"
    proc = subprocess.run(
        [
            MINEWATCH,
            "flows",
            "ingest",
            str(exports),
            str(tmp_path / "in"),
            "--into",
            str(store),
            "--quarantine",
            str(qfile),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    by = {f["format"]: f for f in summary["formats"]}
    assert by["netflow"]["accepted"] == 2 and by["netflow"]["rejected"] == 23
    assert by["eve"]["accepted"] == 1 and by["eve"]["rejected"] == 1
    assert summary["read"] == summary["accepted"] + summary["rejected"]
    assert summary["quarantined"] == summary["rejected"] == len(qfile.read_text().splitlines())
    assert "netflow: 2 file(s)" in proc.stderr and "eve: 1 file(s)" in proc.stderr
    assert read_flows(store).num_rows == 3
    bad = subprocess.run(
        [MINEWATCH, "flows", "ingest", str(tmp_path / "q.jsonl"), "--into", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "format not recognised" in bad.stderr and bad.stdout == ""
    forced = subprocess.run(
        [MINEWATCH, "flows", "ingest", str(eve), "--into", str(store), "--format", "eve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forced.returncode == 0 and json.loads(forced.stdout)["formats"][0]["format"] == "eve"

"""nfcapd files through the real nfdump, and nfdump's CSV/JSON text.

The nfcapd file is written by the real nfcapd receiving softflowd's export of a shared capture
on 127.0.0.1.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.lab.capture import wait_udp
from minewatch.schema import FLOWS
from minewatch.sources.nfdump import read_nfdump, run_nfdump

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"
CGMINER = DATA / "mining" / "cgminer.s0.pcapng"


@pytest.fixture(scope="module")
def nfcapd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("nfcapd")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(tmp), "-t", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_udp(port)
        subprocess.run(
            [
                "softflowd",
                "-r",
                str(CGMINER),
                "-n",
                f"127.0.0.1:{port}",
                "-v",
                "9",
                "-a",
                "-p",
                str(tmp / "sf.pid"),
                "-c",
                "none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=True,
        )
        wait_udp(port, drained=True)
        time.sleep(0.2)  # the last datagram read is written before SIGTERM is handled
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    files = sorted(tmp.glob("nfcapd.2*"))
    assert files, list(tmp.iterdir())
    return files[0]


def test_nfcapd_file_json_and_csv_agree(nfcapd_file: Path, tmp_path: Path) -> None:
    binary = read_nfdump(nfcapd_file)
    assert binary.flows.schema.equals(FLOWS)
    assert binary.read == binary.accepted + binary.rejected == 431
    assert binary.rejected == 0
    csv = tmp_path / "flows.csv"
    csv.write_bytes(run_nfdump(nfcapd_file, "csv"))
    js = tmp_path / "flows.json"
    js.write_bytes(run_nfdump(nfcapd_file, "json"))
    from_csv, from_json = read_nfdump(csv), read_nfdump(js)
    assert from_csv.accepted == from_json.accepted == binary.accepted
    key = [
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
        "proto",
        "packets_up",
        "bytes_up",
        "tcp_flags",
    ]
    rows = sorted(tuple(r[k] for k in key) for r in binary.flows.select(key).to_pylist())
    assert rows == sorted(tuple(r[k] for k in key) for r in from_csv.flows.select(key).to_pylist())
    # softflowd -a kept capture time (2018); JSON has milliseconds, CSV whole seconds.
    t0 = binary.flows.column("ts_start")[0].as_py()
    assert t0.year == 2018 and t0.tzinfo is not None
    assert set(binary.flows.column("exporter").to_pylist()) == {"127.0.0.1"}
    assert {3333} & set(
        binary.flows.column("dst_port").to_pylist() + binary.flows.column("src_port").to_pylist()
    )


def test_damaged_rows_are_quarantined(tmp_path: Path) -> None:
    header = "ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,ra"
    lines = [
        header,
        "2024-01-01 00:00:00,2024-01-01 00:01:00,60,10.0.0.1,10.0.0.2,1000,3333,TCP,...AP.S.,0,0,10,900,8,700,0,0,192.0.2.1",  # noqa: E501
        "2024-01-01 00:02:00,2024-01-01 00:01:00,-60,10.0.0.1,10.0.0.2,1000,3333,TCP,...AP.S.,0,0,10,900,0,0,0,0,192.0.2.1",  # noqa: E501
        "garbage,,,,,",
        "2024-01-01 00:00:00,2024-01-01 00:01:00,60,10.0.0.1,10.0.0.2,1000,99999,UDP,........,0,0,1,90,0,0,0,0,192.0.2.1",  # noqa: E501
        "Summary",
        "flows,bytes,packets,avg_bps,avg_pps,avg_bpp",
        "4,1690,21,0,0,0",
    ]
    p = tmp_path / "out.csv"
    p.write_text("\n".join(lines) + "\n")
    q = Quarantine(tmp_path / "q.jsonl")
    r = read_nfdump(p, quarantine=q)
    q.close()
    assert (r.read, r.accepted, r.rejected) == (4, 1, 3)
    row = r.flows.to_pylist()[0]
    assert (row["tcp_flags"], row["proto"], row["bytes_down"], row["exporter"]) == (
        0x1A,
        6,
        700,
        "192.0.2.1",
    )
    assert dict(q.counts) == {
        "flow ends before it starts": 1,
        "start time missing or unreadable": 1,
        "port out of range": 1,
    }
    assert "out.csv line 3" in (tmp_path / "q.jsonl").read_text()


def test_unusable_files_raise_input_error(tmp_path: Path) -> None:
    fake = tmp_path / "nfcapd.202401010000"
    fake.write_bytes(b"\x0c\xa5" + b"\xff" * 100)
    with pytest.raises(InputError, match=r"nfdump could not read it|not nfdump JSON output"):
        read_nfdump(fake)
    bad = tmp_path / "x.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match="nfdump CSV without columns"):
        read_nfdump(bad)
    with pytest.raises(InputError, match="cannot open"):
        read_nfdump(tmp_path / "missing")

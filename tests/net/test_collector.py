"""The live collector against real peers on loopback: softflowd feeds it, nfcapd agrees.

Every datagram goes to 127.0.0.1. softflowd reads the shared captures (mining and benign);
nfcapd and nfdump are the reference collector the flow counts are compared with.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from minewatch.errors import Quarantine
from minewatch.lab.capture import wait_udp
from minewatch.net.collector import (
    FlowCollector,
    kernel_drops,
    parse_hostport,
    passthrough,
    udp_sockets,
)
from minewatch.sources.flowstore import read_flows

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"
PCAPS = [
    DATA / "mining" / "cgminer.s0.pcapng",
    DATA / "mining" / "xmr.suprnova.cc.pcapng",
    DATA / "benign" / "android.pcap",
    DATA / "benign" / "bitcoin.pcap",
]
HOST = "127.0.0.1"


def softflowd(pcap: Path, port: int, version: str, tmp: Path) -> None:
    subprocess.run(
        [
            "softflowd",
            "-r",
            str(pcap),
            "-n",
            f"{HOST}:{port}",
            "-v",
            version,
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


def capture_export(pcap: Path, version: str, tmp: Path) -> list[bytes]:
    """softflowd's export datagrams for ``pcap``, caught on a socket of ours."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((HOST, 0))
    sock.settimeout(0.5)
    softflowd(pcap, sock.getsockname()[1], version, tmp)
    out = []
    try:
        while True:
            out.append(sock.recv(65535))
    except TimeoutError:
        pass
    finally:
        sock.close()
    return out


def send(port: int, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, (HOST, port))
            time.sleep(0.0005)


class Running:
    """A FlowCollector serving in a thread with its own event loop."""

    def __init__(self, collector: FlowCollector) -> None:
        self.c = collector
        self.c.bind()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.started.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_event = asyncio.Event()
        self.loop.call_soon(self.started.set)
        self.loop.run_until_complete(self.c.run(self.stop_event))

    def wait_received(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.c.received < n:
            time.sleep(0.05)
        time.sleep(0.2)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Running]:
    r = Running(
        FlowCollector(HOST, 0, out=tmp_path / "store", quarantine=Quarantine(tmp_path / "q.jsonl"))
    )
    yield r
    if r.thread.is_alive():
        r.stop()


def nfcapd_flows(datagrams: list[bytes], tmp: Path) -> int:
    """Replay ``datagrams`` into a real nfcapd; the number of flows it stored (nfdump -I)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    out = tmp / "nfcapd"
    out.mkdir()
    proc = subprocess.Popen(
        ["nfcapd", "-b", HOST, "-p", str(port), "-w", str(out), "-t", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_udp(port)
        send(port, datagrams)
        wait_udp(port, drained=True)
        time.sleep(0.2)  # the last datagram read is written before SIGTERM is handled
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    stat = subprocess.run(
        ["nfdump", "-R", str(out), "-I"], capture_output=True, text=True, check=True
    )
    for line in stat.stdout.splitlines():
        if line.startswith("Flows:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no flow count from nfdump -I: {stat.stdout!r}")


@pytest.mark.slow
@pytest.mark.parametrize("version", ["9", "10"])
def test_softflowd_feeds_the_collector_and_nfcapd_counts_the_same(
    version: str, collector: Running, tmp_path: Path
) -> None:
    # softflowd straight into the collector, live.
    for pcap in PCAPS:
        softflowd(pcap, collector.c.port, version, tmp_path)
    # The same exports caught once, then replayed into nfcapd (and the collector's decoder).
    datagrams = [d for pcap in PCAPS for d in capture_export(pcap, version, tmp_path)]
    collector.wait_received(len(datagrams))
    collector.stop()
    c = collector.c
    assert c.received == len(datagrams)
    stats = c.decoder.stats
    assert stats.datagrams_rejected == 0 and c.errors == 0
    assert stats.flows_decoded == stats.flows_accepted > 500
    assert stats.flows_decoded == nfcapd_flows(datagrams, tmp_path)
    # Everything decoded was written to the store as rolling Parquet partitions.
    stored = read_flows(tmp_path / "store")
    assert stored.num_rows == stats.flows_accepted
    assert set(stored.column("exporter").to_pylist()) == {HOST}
    assert {3333, 5222} & set(
        stored.column("src_port").to_pylist() + stored.column("dst_port").to_pylist()
    )


def test_bad_datagrams_are_counted_and_serving_goes_on(collector: Running, tmp_path: Path) -> None:
    rng = random.Random(11)
    good = capture_export(PCAPS[1], "9", tmp_path)
    bad: list[bytes] = [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(200)
    ]
    bad += [good[0][:n] for n in (0, 3, 10, 19, 25, 60)]  # truncated
    bad += [struct.pack("!HH", v, 1) + bytes(30) for v in (1, 6, 8, 11, 0xFFFF)]  # unknown versions
    # data sets whose template never arrives
    bad += [
        struct.pack("!HHIIII", 9, 1, 0, 0, i, 99) + struct.pack("!HH", 999, 12) + bytes(8)
        for i in range(5)
    ]
    stream = bad[:100] + good + bad[100:]
    send(collector.c.port, stream)
    collector.wait_received(len(stream))
    metrics_port = collector.c.start_metrics(HOST, 0)
    text = (
        urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5).read().decode()
    )
    collector.stop()
    c = collector.c
    assert c.received == len(stream) and c.errors == 0
    assert c.decoder.stats.flows_accepted == 2  # the good export still decoded in full
    assert c.decoder.stats.datagrams_rejected > 0
    assert c.counters()["dropped"] >= 5  # the five template-less sets, expired at stop
    assert c.quarantine.total >= c.decoder.stats.datagrams_rejected
    lines = (tmp_path / "q.jsonl").read_text().splitlines()
    assert len(lines) == c.quarantine.total and all(json.loads(x)["reason"] for x in lines)
    assert f"minewatch_collector_received_datagrams_total {float(len(stream))}" in text
    assert "minewatch_collector_decoded_flows_total" in text
    assert 'minewatch_collector_dropped_total{reason="kernel_buffer"}' in text
    assert "minewatch_collector_quarantined_total" in text
    assert "minewatch_collector_templates 5.0" in text


def test_detector_hook_prints_each_detection_as_a_json_line(tmp_path: Path) -> None:
    seen: list[int] = []

    def miner_ports(batch: pa.RecordBatch) -> list[dict[str, Any]]:
        seen.append(batch.num_rows)
        rows = batch.to_pylist()
        return [
            {"src_ip": r["src_ip"], "dst_port": r["dst_port"], "detector": "test-ports"}
            for r in rows
            if r["dst_port"] == 5222 or r["src_port"] == 5222
        ]

    def broken(batch: pa.RecordBatch) -> list[dict[str, Any]]:
        raise RuntimeError("detector bug")

    out = io.StringIO()
    run = Running(FlowCollector(HOST, 0, detector=miner_ports, emit=out))
    send(run.c.port, capture_export(PCAPS[1], "10", tmp_path))
    run.wait_received(1)
    run.stop()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2 and {x["detector"] for x in lines} == {"test-ports"}
    assert sum(seen) == 2 and run.c.detections == 2
    # The default hook reports nothing, and a failing hook does not stop the collector.
    assert passthrough(pa.RecordBatch.from_pylist([{"a": 1}])) == []
    out2 = io.StringIO()
    run2 = Running(FlowCollector(HOST, 0, detector=broken, emit=out2))
    send(run2.c.port, capture_export(PCAPS[1], "9", tmp_path))
    run2.wait_received(1)
    run2.stop()
    assert out2.getvalue() == "" and run2.c.errors == 1 and run2.c.decoder.stats.flows_accepted == 2


def metrics_until(proc: subprocess.Popen[str], mport: int, want: str, timeout: float = 30) -> str:
    """Poll the collector's /metrics until it shows ``want`` (the server may still be starting;
    a loaded machine may be slow): the text, or an assertion naming what was seen."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"minewatch collect exited: {proc.communicate()[1][-2000:]}")
        try:
            url = f"http://{HOST}:{mport}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            text = ""
        if want in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{want!r} not in /metrics after {timeout} s:\n{text}")


def test_cli_collect_serves_metrics_and_writes_partitions(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        mport = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "minewatch"),
            "collect",
            "--listen",
            f"{HOST}:{port}",
            "--out",
            str(tmp_path / "store"),
            "--metrics",
            f"{HOST}:{mport}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics_until(proc, mport, "minewatch_collector_received_datagrams_total 0.0")
        softflowd(PCAPS[1], port, "10", tmp_path)
        send(port, [b"\x00\x0a\x00\x05garbage"])
        # Flows are counted when the collector flushes (every 0.5 s): poll, do not guess.
        metrics_until(proc, mport, "minewatch_collector_decoded_flows_total 2.0")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    # stdout carries detections only, one JSON object per line
    assert all(isinstance(json.loads(x), dict) for x in stdout.splitlines())
    assert '"decoded": 2' in stderr and '"quarantined": 1' in stderr
    assert read_flows(tmp_path / "store").num_rows == 2
    assert (tmp_path / "store" / "quarantine.jsonl").exists()


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:2055") == ("127.0.0.1", 2055)
    assert parse_hostport("[::1]:9995") == ("::1", 9995)
    assert parse_hostport(":4739") == ("127.0.0.1", 4739)
    assert parse_hostport("127.0.0.1") == ("127.0.0.1", 2055)
    # Without a default the port is required (minewatch probe's targets).
    assert parse_hostport("203.0.113.7:3333", None) == ("203.0.113.7", 3333)
    assert parse_hostport("[2001:db8::1]:443", None) == ("2001:db8::1", 443)
    assert parse_hostport("pool.example:14433", None) == ("pool.example", 14433)
    for bad in ("203.0.113.7", "2001:db8::1:443", "host:0", "host:70000", "host:x", ""):
        with pytest.raises(ValueError):
            parse_hostport(bad, None)


def test_udp_socket_table_sees_binding_and_queue() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind((HOST, 0))
        port = rx.getsockname()[1]
        wait_udp(port, timeout=5)
        send(port, [b"x" * 100])
        (mine,) = [u for u in udp_sockets() if u.local == f"0100007F:{port:04X}"]
        assert mine.rx_queue > 0 and mine.drops == 0
        with pytest.raises(TimeoutError, match="drained"):
            wait_udp(port, drained=True, timeout=0.2)
        rx.recv(200)
        wait_udp(port, drained=True, timeout=5)
        assert kernel_drops(rx) == 0
    with pytest.raises(TimeoutError, match="bound"):
        wait_udp(port, timeout=0.2)

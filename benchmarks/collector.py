"""Collector benchmark: decoder choice, then live collection against nfcapd.

1. Builds a capture with many distinct flows, has the real ``softflowd`` export it (NetFlow
   v9 by default) to a loopback socket and keeps the export datagrams.
2. Decoder: decodes those datagrams with the ``netflow`` package (PyPI) and with minewatch's
   vectorised :class:`~minewatch.sources.netflow.NetflowDecoder`; prints flows/s of both and
   the ratio.
3. Collector: replays the datagrams at increasing export rates (flows/s), each step for
   ``--seconds``, into ``minewatch``'s collector and into ``nfcapd``, each receiver pinned to
   one core (``taskset``) with the same socket buffer, and counts what each stored. The
   highest rate at which a receiver stored every flow sent is its sustained rate; prints both
   and the ratio.

Run: ``.venv/bin/python benchmarks/collector.py [--flows 60000] [--seconds 3]``. Everything is
sent to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dpkt

from minewatch.lab.behavior_data import softflowd_datagrams
from minewatch.sources.netflow import NetflowDecoder

HOST = "127.0.0.1"
RCVBUF = 212_992  # socket buffer for both receivers (default: Linux's net.core.rmem_default)
DRAIN_S = 1.5  # after a step, time a receiver gets to store what it received


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_capture(path: Path, n_flows: int, seed: int = 7) -> None:
    """A pcap of ``n_flows`` distinct TCP/UDP conversations (3 packets each) over 10 minutes."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        pkts: list[tuple[float, bytes]] = []
        for i in range(n_flows):
            src = struct.pack("!I", (10 << 24) | rng.randrange(1 << 20))
            dst = struct.pack("!I", (198 << 24) | (51 << 16) | (100 << 8) | (i % 250 + 1))
            sport, dport = 1024 + (i % 60000), rng.choice((443, 3333, 53, 80, 4444, 8080))
            start = t0 + rng.random() * 600
            tcp = rng.random() < 0.7
            for k, flags in enumerate(
                (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN)
            ):
                l4: dpkt.Packet
                if tcp:
                    l4 = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=b"x" * (40 * k))
                    p = dpkt.ip.IP_PROTO_TCP
                else:
                    l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=b"y" * (30 + 20 * k))
                    l4.ulen = len(l4)
                    p = dpkt.ip.IP_PROTO_UDP
                ip = dpkt.ip.IP(src=src, dst=dst, p=p, data=l4, ttl=64)
                ip.len = len(ip)
                eth = dpkt.ethernet.Ethernet(data=ip, type=dpkt.ethernet.ETH_TYPE_IP)
                pkts.append((start + k * 0.05, bytes(eth)))
        pkts.sort(key=lambda x: x[0])
        for ts, buf in pkts:
            w.writepkt(buf, ts=ts)


def softflowd_export(pcap: Path, version: int) -> list[bytes]:
    """softflowd's export of ``pcap`` (the stream both collectors are fed)."""
    return softflowd_datagrams(pcap, "-v", str(version), "-a")


def bench_decoders(datagrams: list[bytes], repeat: int) -> dict[str, float]:
    """Flows/s of the netflow package and of NetflowDecoder over the same datagrams."""
    import netflow  # the PyPI package (dev extra)

    t = time.perf_counter()
    n_pkg = 0
    for _ in range(repeat):
        templates: dict[str, dict] = {"netflow": {}, "ipfix": {}}
        for d in datagrams:
            try:
                n_pkg += len(netflow.parse_packet(d, templates).flows)
            except Exception:  # unknown templates etc.: the package's way of saying "later"
                continue
    pkg_s = time.perf_counter() - t
    t = time.perf_counter()
    n_mw = 0
    for _ in range(repeat):
        dec = NetflowDecoder()
        for i, d in enumerate(datagrams, 1):
            dec.feed(d, HOST)
            if i % 2048 == 0:
                n_mw += dec.take().num_rows
        n_mw += dec.finish().num_rows
    mw_s = time.perf_counter() - t
    return {
        "flows_netflow_pkg": n_pkg,
        "flows_minewatch": n_mw,
        "netflow_pkg_flows_s": n_pkg / pkg_s,
        "minewatch_flows_s": n_mw / mw_s,
    }


def replay(
    datagrams: list[bytes], counts: list[int], port: int, rate: float, seconds: float
) -> int:
    """Send datagrams (cycling) at ``rate`` flows/s for ``seconds``; returns flows sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent_flows = 0
    i = 0
    n = len(datagrams)
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = rate * (now - start)
        while sent_flows < due:
            sock.sendto(datagrams[i], (HOST, port))
            sent_flows += counts[i]
            i = (i + 1) % n
    sock.close()
    return sent_flows


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, list[tuple[int, float]]] = {"minewatch": [], "nfcapd": []}


def _taskset(core: int) -> list[str]:
    return (
        ["taskset", "-c", str(core)]
        if shutil.which("taskset") and (os.cpu_count() or 1) > 1
        else []
    )


def run_minewatch(
    datagrams: list[bytes], counts: list[int], rate: float, seconds: float, work: Path
) -> int:
    """Flows lost by ``minewatch collect`` at ``rate``; a backlog not decoded within
    :data:`DRAIN_S` after the step counts as lost (the collector did not keep up)."""
    port, mport = free_port(), free_port()
    out = work / f"mw-{int(rate)}"
    code = (
        "import json; from minewatch.net.collector import FlowCollector, serve; "
        f"c = serve(FlowCollector({HOST!r}, {port}, out={str(out)!r}, rcvbuf={RCVBUF}, roll_s=5), "
        f"metrics=({HOST!r}, {mport}), on_ready=lambda i: print('ready', flush=True)); "
        "print(json.dumps(c), flush=True)"
    )
    proc = subprocess.Popen(
        [*_taskset(1), sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    try:
        proc.stdout.readline()
        time.sleep(0.3)
        cpu0 = cpu_seconds(proc.pid)
        sent = replay(datagrams, counts, port, rate, seconds)
        deadline = time.monotonic() + DRAIN_S
        decoded_in_time = 0
        while time.monotonic() < deadline:
            decoded_in_time = _metric(mport, "minewatch_collector_decoded_flows_total")
            if decoded_in_time >= sent:
                break
            time.sleep(0.1)
        CPU["minewatch"].append((decoded_in_time, cpu_seconds(proc.pid) - cpu0))
    finally:
        proc.send_signal(signal.SIGTERM)
        tail = proc.communicate(timeout=60)[0]
    final = json.loads(tail.strip().splitlines()[-1])
    late = int(final["decoded"]) - min(decoded_in_time, int(final["decoded"]))
    print(
        f"    (minewatch: kernel/backlog drops {final['dropped']}, decoded late {late})",
        file=sys.stderr,
    )
    return sent - min(decoded_in_time, int(final["decoded"]))


def _metric(port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    return 0


def run_nfcapd(
    datagrams: list[bytes], counts: list[int], rate: float, seconds: float, work: Path
) -> int:
    port = free_port()
    out = work / f"nf-{int(rate)}"
    out.mkdir()
    proc = subprocess.Popen(
        [
            *_taskset(1),
            "nfcapd",
            "-b",
            HOST,
            "-p",
            str(port),
            "-w",
            str(out),
            "-t",
            "3600",
            "-B",
            str(RCVBUF),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        cpu0 = cpu_seconds(proc.pid)
        sent = replay(datagrams, counts, port, rate, seconds)
        time.sleep(DRAIN_S)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    stat = subprocess.run(
        ["nfdump", "-R", str(out), "-I"], capture_output=True, text=True, check=False
    ).stdout
    stored = 0
    for line in stat.splitlines():
        if line.startswith("Flows:"):
            stored = int(line.split(":")[1])
            break
    CPU["nfcapd"].append((stored, cpu))
    return sent - stored


def ladder(name: str, fn, datagrams, counts, rates, seconds, work) -> tuple[float, list[dict]]:  # type: ignore[no-untyped-def]
    best = 0.0
    steps = []
    for rate in rates:
        lost = fn(datagrams, counts, rate, seconds, work)
        steps.append({"receiver": name, "rate_flows_s": rate, "lost": lost})
        print(f"  {name:10s} {rate:>10,.0f} flows/s  lost {lost}", file=sys.stderr)
        if lost > 0:
            break
        best = rate
    return best, steps


def main() -> None:
    global RCVBUF, DRAIN_S
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=60_000, help="distinct flows in the capture")
    ap.add_argument("--version", type=int, default=9, choices=(5, 9, 10))
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each rate step")
    ap.add_argument("--repeat", type=int, default=3, help="passes for the decoder comparison")
    ap.add_argument("--rcvbuf", type=int, default=RCVBUF, help="socket buffer of both receivers")
    ap.add_argument(
        "--drain", type=float, default=DRAIN_S, help="seconds a receiver gets after each step"
    )
    ap.add_argument("--receivers", default="minewatch,nfcapd", help="which receivers to run")
    ap.add_argument(
        "--rates",
        default="25000,50000,100000,150000,200000,300000,400000,600000,800000",
        help="comma-separated export rates to try, flows/s",
    )
    args = ap.parse_args()
    RCVBUF = args.rcvbuf
    DRAIN_S = args.drain
    for tool in ("softflowd", "nfcapd", "nfdump"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (make debs)")
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        work = Path(tmp)
        pcap = work / "flows.pcap"
        make_capture(pcap, args.flows)
        datagrams = softflowd_export(pcap, args.version)
        dec = NetflowDecoder()
        counts = []
        for d in datagrams:
            dec.feed(d, HOST)
            counts.append(dec.take().num_rows)
        total = sum(counts)
        print(
            f"softflowd -v {args.version}: {len(datagrams)} datagrams, {total} flows",
            file=sys.stderr,
        )

        d = bench_decoders(datagrams, args.repeat)
        ratio = d["minewatch_flows_s"] / d["netflow_pkg_flows_s"]
        print("decoder (one core, same datagrams)", file=sys.stderr)
        print(
            f"  netflow package (PyPI)  {d['netflow_pkg_flows_s']:>12,.0f} flows/s", file=sys.stderr
        )
        print(
            f"  minewatch NetflowDecoder {d['minewatch_flows_s']:>11,.0f} flows/s", file=sys.stderr
        )
        print(f"  ratio                   {ratio:>12.1f}x", file=sys.stderr)

        rates = [float(r) for r in args.rates.split(",")]
        print(
            f"collector (one core each, {args.seconds:g} s per step + {DRAIN_S:g} s to finish,"
            f" socket buffer {RCVBUF} B)",
            file=sys.stderr,
        )
        chosen = args.receivers.split(",")
        mw_best, mw_steps = (
            ladder("minewatch", run_minewatch, datagrams, counts, rates, args.seconds, work)
            if "minewatch" in chosen
            else (0.0, [])
        )
        nf_best, nf_steps = (
            ladder("nfcapd", run_nfcapd, datagrams, counts, rates, args.seconds, work)
            if "nfcapd" in chosen
            else (0.0, [])
        )
        print(
            f"  minewatch collect  sustained {mw_best:>10,.0f} flows/s without loss",
            file=sys.stderr,
        )
        print(
            f"  nfcapd             sustained {nf_best:>10,.0f} flows/s without loss",
            file=sys.stderr,
        )
        print(
            f"  ratio minewatch/nfcapd {mw_best / nf_best if nf_best else float('nan'):.2f}",
            file=sys.stderr,
        )
        cost = {}
        for name, samples in CPU.items():
            flows = sum(f for f, _ in samples)
            secs = sum(c for _, c in samples)
            cost[name] = flows / secs if secs else float("nan")
            print(
                f"  {name:10s} CPU cost: {secs:.2f} CPU-s for {flows} flows"
                f" = {cost[name]:,.0f} flows per CPU-second",
                file=sys.stderr,
            )
        load = os.getloadavg()
        print(
            f"  load average during the run: {load[0]:.1f} (on {os.cpu_count()} cores)",
            file=sys.stderr,
        )
        result = {
            "load_average_1m": load[0],
            "export_version": args.version,
            "datagrams": len(datagrams),
            "flows_per_datagram": total / max(1, len(datagrams)),
            **d,
            "decoder_ratio": ratio,
            "minewatch_sustained_flows_s": mw_best,
            "nfcapd_sustained_flows_s": nf_best,
            "collector_ratio": mw_best / nf_best if nf_best else None,
            "minewatch_flows_per_cpu_s": cost["minewatch"],
            "nfcapd_flows_per_cpu_s": cost["nfcapd"],
            "steps": mw_steps + nf_steps,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()

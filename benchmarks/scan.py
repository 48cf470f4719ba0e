"""Packet-level scan throughput: ``minewatch scan`` beside ``ndpiReader -i`` on one capture.

Builds a large pcap by repeating the shared captures (mining and benign, Ethernet link type)
with every repetition moved to other IPv4 addresses and later times, so that each repetition
is new sessions, not the same ones again. Then times both tools on the same file, each in
its own process, and prints packets per second, peak memory (max RSS) and the ratio.

Memory is measured on two file sizes: it should follow the number of open sessions, not the
file size.

    python benchmarks/scan.py                 # ~300 MB capture
    python benchmarks/scan.py --size-mb 20    # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "pcap"


def ethernet_frames() -> list[tuple[float, bytes]]:
    """Every Ethernet frame of the shared captures, on one timeline starting at 0."""
    frames: list[tuple[float, bytes]] = []
    t0 = 0.0
    for path in sorted(SHARED.glob("*/*.pcap*")):
        with path.open("rb") as fh:
            try:
                reader = (
                    dpkt.pcapng.Reader(fh) if path.suffix == ".pcapng" else dpkt.pcap.Reader(fh)
                )
                if reader.datalink() != dpkt.pcap.DLT_EN10MB:
                    continue
                pkts = list(reader)
            except (ValueError, dpkt.UnpackError, struct.error):
                continue
        if not pkts:
            continue
        first = pkts[0][0]
        # Clamp: some fuzzed captures carry absurd timestamps.
        frames.extend(
            (t0 + min(max(float(ts - first), 0.0), 3600.0), bytes(buf)) for ts, buf in pkts
        )
        t0 = max(t for t, _ in frames) + 1.0
    return frames


def build_capture(path: Path, size_mb: float) -> tuple[int, int]:
    """Write a pcap of about ``size_mb`` MB; returns (packets, bytes)."""
    frames = ethernet_frames()
    span = max(t for t, _ in frames) + 10.0
    base = 1_700_000_000.0
    target = size_mb * 1e6
    written = 24
    count = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        rep = 0
        while written < target:
            shift = rep.to_bytes(2, "big")
            for t, frame in frames:
                f = bytearray(frame)
                # IPv4 over untagged Ethernet: move both addresses to another /16 per repetition.
                if len(f) >= 34 and f[12:14] == b"\x08\x00":
                    f[27:29] = shift
                    f[31:33] = shift
                ts = base + rep * span + t
                sec = int(ts)
                out.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(f), len(f)))
                out.write(f)
                written += 16 + len(f)
                count += 1
                if written >= target:
                    break
            rep += 1
    return count, written


def run_child(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Run ``cmd`` and read its own peak RSS through wait4 (not other children's)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_chunks: list[bytes] = []
    assert proc.stdout is not None and proc.stderr is not None
    out_chunks.append(proc.stdout.read())
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    return (
        wall,
        usage.ru_maxrss / 1024.0,
        subprocess.CompletedProcess(cmd, code, b"".join(out_chunks), err),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=300.0, help="size of the large capture")
    ap.add_argument("--keep", type=Path, help="keep the generated captures in this directory")
    args = ap.parse_args()

    ndpi = shutil.which("ndpiReader")
    if ndpi is None:
        print("ndpiReader not found: install Debian's libndpi-bin (make debs)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="mw-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        sizes = [max(args.size_mb / 4, 1.0), args.size_mb]
        for size in sizes:
            cap = work / f"bench-{int(size)}MB.pcap"
            t = time.perf_counter()
            packets, nbytes = build_capture(cap, size)
            print(
                f"built {cap.name}: {packets:,} packets, {nbytes / 1e6:.0f} MB "
                f"in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            mw = [sys.executable, "-m", "minewatch", "scan", "--quiet", str(cap)]
            wall, rss, res = run_child(mw)
            if res.returncode != 0:
                print(res.stderr.decode(errors="replace"), file=sys.stderr)
                return 1
            found = len(res.stdout.splitlines())
            rows.append(("minewatch scan", size, packets, wall, rss, f"{found} mining sessions"))
            wall_n, rss_n, res_n = run_child([ndpi, "-i", str(cap), "-q"])
            if res_n.returncode != 0:
                print(res_n.stderr.decode(errors="replace"), file=sys.stderr)
                return 1
            rows.append(("ndpiReader -i", size, packets, wall_n, rss_n, "nDPI 4.2 (C)"))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"{'tool':<16}{'file MB':>9}{'packets':>12}{'seconds':>10}{'packets/s':>13}"
        f"{'peak MB':>10}  note"
    )
    for tool, size, packets, wall, rss, note in rows:
        print(
            f"{tool:<16}{size:>9.0f}{packets:>12,}{wall:>10.2f}{packets / wall:>13,.0f}"
            f"{rss:>10.0f}  {note}"
        )
    big = [r for r in rows if r[1] == sizes[-1]]
    ratio = (big[0][2] / big[0][3]) / (big[1][2] / big[1][3])
    print(
        f"ratio minewatch/ndpiReader packet rate on the {sizes[-1]:.0f} MB file: {ratio:.2f} "
        "(target >= 0.5)"
    )
    small = next(r for r in rows if r[1] == sizes[0])
    print(
        f"minewatch peak memory: {small[4]:.0f} MB at {sizes[0]:.0f} MB, "
        f"{big[0][4]:.0f} MB at {sizes[-1]:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Detection latency: seconds from a connection's first packet to its printed detection.

Replays each mining capture of the behaviour training data (``.cache/behavior-data``, made by
``benchmarks/train_behavior.py generate``) through ``minewatch scan`` in live mode, batch by
batch as ``tcpdump -w -`` would deliver it, and notes the capture time at which the first
line for each connection is printed (the Stratum reader's early report for cleartext, the
behaviour model's for TLS). The time the scanner itself spends is added (it is tiny next to
the capture time). Prints one line per capture and the median/max per kind.

The flow path (``minewatch collect`` fed by an exporter with a 60 s active timeout) is also
shown: the record end time at which the behaviour model first crossed its threshold, plus
the export delay of the active timeout (the record arrives when its window closes).

    python benchmarks/detection_latency.py
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from minewatch.lab.behavior_data import flows_from_softflowd  # noqa: E402
from minewatch.net.behavior import SlidingDetector  # noqa: E402
from minewatch.net.scan import Scanner  # noqa: E402
from minewatch.sources.pcap import RawBatch, ReadStats, read_batches  # noqa: E402

DATA = ROOT / ".cache" / "behavior-data"


def per_second(b: RawBatch) -> list[RawBatch]:
    """The packets of a batch as a live pipe delivers them: one batch per second."""
    sec = b.ts_us // 1_000_000
    cuts = np.flatnonzero(np.diff(sec)) + 1
    bounds = [0, *cuts.tolist(), len(b)]
    return [
        RawBatch(b.buf, b.offset[i:j], b.caplen[i:j], b.ts_us[i:j], b.linktype[i:j])
        for i, j in itertools.pairwise(bounds)
        if j > i
    ]


def live_latency(pcap: Path) -> tuple[str, float] | None:
    out: list[tuple[str, float]] = []
    spent = 0.0

    sc = Scanner(live=True)

    def on(rec: dict[str, Any]) -> None:
        out.append((rec["detector"], sc._now))

    sc.on_detection = on
    stats = ReadStats(path=str(pcap))
    t0 = None
    for whole in read_batches(str(pcap), stats):
        for batch in per_second(whole):
            if t0 is None:
                t0 = float(batch.ts_us.min()) / 1e6
            t = time.perf_counter()
            sc.feed(batch)
            spent += time.perf_counter() - t
            if out:
                break
        if out:
            break
    if not out or t0 is None:
        return None
    kind, at = out[0]
    return kind, at - t0 + spent


def flow_latency(pcap: Path, work: Path) -> float | None:
    flows = flows_from_softflowd(pcap, work)
    det = SlidingDetector()
    order = flows.sort_by("ts_end")
    for i in range(order.num_rows):
        found = det(order.slice(i, 1))
        if found:
            found[0]
            t0 = order.column("ts_start")[0].as_py().timestamp()
            return float(order.column("ts_end")[i].as_py().timestamp() - t0)
    return None


def main() -> None:
    rows = []
    for manifest in sorted(DATA.glob("manifest-w*.json")):
        for e in json.loads(manifest.read_text()):
            if e.get("label") != 1:
                continue
            pcap = Path(e["pcap"])
            live = live_latency(pcap)
            flow = flow_latency(pcap, pcap.parent)
            rows.append((e["variant"], e["family"], live, flow))
            print(e["variant"], live, flow, flush=True)
    for fam in ("xmrig", "xmrig-tls"):
        lv = [r[2][1] for r in rows if r[1] == fam and r[2] is not None]
        fl = [r[3] for r in rows if r[1] == fam and r[3] is not None]
        n = sum(1 for r in rows if r[1] == fam)
        if lv:
            print(
                f"{fam}: scan live first line median {statistics.median(lv):.1f} s, "
                f"max {max(lv):.1f} s ({len(lv)}/{n} connections)"
            )
        if fl:
            print(
                f"{fam}: flow path (60 s records) median {statistics.median(fl):.1f} s, "
                f"max {max(fl):.1f} s ({len(fl)}/{n} connections)"
            )


if __name__ == "__main__":
    main()

"""``minewatch demo``: the main job end to end on generated data, on a fresh machine.

Three stages, each through the same library calls as the commands:

1. network: a generated capture scanned as by ``minewatch scan``;
2. power: a synthetic city's meters screened as by ``minewatch meters screen``;
3. fusion: that screening, the city's network evidence, RADIUS/CGNAT/dhcpd/Kea/static lease logs,
   subscriber and account records fused as by ``minewatch fuse`` into a ranked monitoring
   list (XLSX and CSV, Chinese and English headers) and regional statistics.

The city (``minewatch.lab.city``) knows the truth, so the demo can say how many of the top of
the list really mine.

Network stage: a capture of a small access network is generated (miners of several dialects
and coins, a Stratum V2 rig, and the traffic that fools naive detectors: an Electrum wallet,
a JSON-RPC API on a pool port, a TLS session to a listed pool domain, web browsing), scanned
by the same code as ``minewatch scan``, and the detections are written as JSON Lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minewatch.lab import traffic as T
from minewatch.net.scan import Scanner
from minewatch.sources.pcap import read_batches

T0 = 1_764_000_000.0  # 2025-11-24 16:00 UTC


def network_conversations() -> tuple[list[T.Conversation], list[tuple[float, bytes]]]:
    """The demo network: who talks to whom. Returns conversations and extra frames (DNS)."""
    convs = [
        T.cryptonote_session(("10.20.1.15", 41000), ("10.99.0.1", 3333), T0, shares=40),
        T.cryptonote_session(
            ("10.20.4.7", 41001),
            ("10.99.0.1", 443),
            T0 + 5,
            shares=25,
            interval=4.0,
            difficulty=5000,
            wallet="4" + "B" * 94,
            worker="cafe-pc-07",
        ),
        T.stratum1_session(("10.20.2.30", 42000), ("10.99.0.2", 3334), T0, shares=30),
        T.ethproxy_session(("10.20.3.9", 43000), ("10.99.0.3", 4444), T0),
        T.getwork_session(("10.20.5.2", 44000), ("10.99.0.4", 8332), T0),
        T.electrum_session(("10.20.6.1", 45000), ("10.99.0.5", 50001), T0),
        T.jsonrpc_api_session(("10.20.6.2", 45001), ("10.99.0.6", 3333), T0),
        T.web_session(("10.20.6.3", 45002), ("10.99.0.7", 80), T0),
    ]
    tls = T.Conversation(("10.20.7.4", 46000), ("10.99.0.8", 443), T0)
    tls.send(0.1, True, T.tls_client_hello("gulf.moneroocean.stream"))
    tls.send(0.2, False, b"\x16\x03\x03" + os.urandom(120))
    for i in range(20):
        tls.send(1 + i * 3, True, b"\x17\x03\x03\x00\xc0" + os.urandom(192))
    convs.append(tls)
    sv2 = T.Conversation(("10.20.8.8", 47000), ("10.99.0.9", 34254), T0)
    sv2.send(0.1, True, os.urandom(64)).send(0.2, False, os.urandom(170))
    for i in range(8):
        sv2.send(1 + i * 6, True, os.urandom(78)).send(1.5 + i * 6, False, os.urandom(98))
    convs.append(sv2)
    dns = [
        T.dns_answer(T0 - 2, "10.20.1.15", "xmr-eu1.nanopool.org", "10.99.0.1"),
        T.dns_answer(T0 - 2, "10.20.2.30", "stratum.braiins.com", "10.99.0.2"),
    ]
    return convs, dns


@dataclass
class DemoResult:
    out_dir: Path
    capture: Path
    detections: list[dict[str, Any]] = field(default_factory=list)
    weak_leads: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def run_network_stage(out_dir: Path) -> DemoResult:
    """Generate the demo capture, scan it, write detections; returns what was found."""
    out_dir.mkdir(parents=True, exist_ok=True)
    convs, dns = network_conversations()
    capture = out_dir / "demo-network.pcap"
    capture.write_bytes(T.write_pcap(convs, T.Damage(split=600, seed=7), extra=dns))
    sc = Scanner(min_confidence=0.0)
    found = sc.run(read_batches(capture))
    res = DemoResult(out_dir, capture)
    res.detections = [r for r in found if r["confidence"] >= 0.5]
    res.weak_leads = [r for r in found if r["confidence"] < 0.5]
    det = out_dir / "detections.jsonl"
    det.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in res.detections))
    res.files = {"capture": str(capture), "detections": str(det)}
    return res


@dataclass
class FusionDemo:
    out_dir: Path
    screened: list[dict[str, Any]]
    suspects: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    files: dict[str, str]
    truth_top: tuple[int, int]  # (true mining premises among the top k, k)
    summary: dict[str, Any]


def run_power_and_fusion_stage(out_dir: Path, premises: int = 600) -> FusionDemo:
    """A small synthetic city (minewatch.lab.city): screen its meters, then fuse the meter
    screening with its network evidence, lease logs, subscriber and account records."""
    from minewatch.fusion.pipeline import run_fuse
    from minewatch.fusion.risk import suspect_records
    from minewatch.lab.city import CitySpec, build
    from minewatch.power.detect import screen, screen_record

    city = build(CitySpec(n_premises=premises, days=28, seed=3, prevalence=0.05))
    files = city.write(out_dir / "city")
    scores = screen(city.readings, city.meter_accounts)
    screened = [screen_record(r) for r in scores.to_pylist()]
    screen_path = out_dir / "meter-screen.jsonl"
    screen_path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in screened), encoding="utf-8"
    )
    run = run_fuse(
        [files["detections"], screen_path],
        [files[k] for k in ("radius", "cgnat", "static", "dhcpd", "kea")],
        files["subscribers"],
        files["accounts"],
        links=files["links"],
        finance=[files["finance"]],
        out=out_dir / "fused",
    )
    suspects = suspect_records(run.result.suspects)
    truth = dict(zip(city.truth["premises_id"], city.truth["mining"], strict=True))
    k = 20
    top_true = sum(bool(truth.get(s["premises_id"], False)) for s in suspects[:k])
    stats_path = Path(run.written["stats"])
    stats = [json.loads(line) for line in stats_path.read_text(encoding="utf-8").splitlines()]
    written = {
        "meter_screen": str(screen_path),
        "city_inputs": str(out_dir / "city"),
        **run.written,
    }
    return FusionDemo(out_dir, screened, suspects, stats, written, (top_true, k), run.summary)

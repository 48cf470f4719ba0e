"""Packets to per-connection, per-window FLOWS records (minewatch.net.flowagg).

Oracles: tshark's own per-packet fields on the same shared captures, and softflowd's export of
the same capture (the exporter the aggregator imitates).
"""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from minewatch.lab.behavior_data import flows_from_softflowd
from minewatch.net.decode import Packets, decode
from minewatch.net.flowagg import FLOWS_PACKET, FlowAggregator, aggregate_file
from minewatch.schema import FLOWS
from minewatch.sources.pcap import ReadStats, read_batches

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"
XMR = SHARED / "mining" / "xmr.suprnova.cc.pcapng"  # 57 s of CryptoNote mining
ETH = SHARED / "mining" / "eth-eu1.nanopool.org.pcapng"


def tshark_tcp(path: Path) -> pl.DataFrame:
    out = subprocess.run(
        [
            "tshark", "-r", str(path), "-Y", "tcp", "-T", "fields", "-E", "separator=,",
            "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst",
            "-e", "tcp.dstport", "-e", "ip.len", "-e", "tcp.len",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split(",") for line in out.splitlines() if line.count(",") == 6]
    return pl.DataFrame(
        {
            "ts": [float(r[0]) for r in rows],
            "src": [r[1] for r in rows],
            "sport": [int(r[2]) for r in rows],
            "dst": [r[3] for r in rows],
            "dport": [int(r[4]) for r in rows],
            "ip_len": [int(r[5]) for r in rows],
            "tcp_len": [int(r[6]) for r in rows],
        }
    )


def test_totals_match_tshark_per_connection_and_direction() -> None:
    flows = pl.from_arrow(aggregate_file(XMR).flows)
    assert isinstance(flows, pl.DataFrame)
    assert flows.schema.names() == FLOWS_PACKET.names
    t = tshark_tcp(XMR)
    tcp = flows.filter(pl.col("proto") == 6)
    assert tcp.height >= 1
    for r in (
        tcp.group_by("src_ip", "src_port", "dst_ip", "dst_port")
        .agg(pl.col("packets_up", "packets_down", "bytes_up", "bytes_down", "pay_bytes_up").sum())
        .iter_rows(named=True)
    ):
        up = t.filter(
            (pl.col("src") == r["src_ip"])
            & (pl.col("sport") == r["src_port"])
            & (pl.col("dst") == r["dst_ip"])
            & (pl.col("dport") == r["dst_port"])
        )
        down = t.filter(
            (pl.col("src") == r["dst_ip"])
            & (pl.col("sport") == r["dst_port"])
            & (pl.col("dst") == r["src_ip"])
            & (pl.col("dport") == r["src_port"])
        )
        assert r["packets_up"] == up.height and r["packets_down"] == down.height
        assert r["bytes_up"] == up["ip_len"].sum() and r["bytes_down"] == down["ip_len"].sum()
        assert r["pay_bytes_up"] == up["tcp_len"].sum()
    # The miner is the client: it sent the SYN, to the pool's low port.
    row = tcp.row(0, named=True)
    assert row["src_port"] > row["dst_port"]


def test_windows_cut_each_connection_from_its_first_packet() -> None:
    flows = pl.from_arrow(aggregate_file(XMR, window_s=10.0).flows)
    assert isinstance(flows, pl.DataFrame)
    conn = flows.filter(pl.col("proto") == 6).sort("ts_start")
    start = conn["ts_start"][0]
    k = ((conn["ts_start"] - start).dt.total_microseconds() // 10_000_000).to_list()
    assert k == sorted(set(k)), "one record per window"
    assert len(k) >= 4 and k[-1] == 5  # 57 s of traffic (with a quiet stretch), 10 s windows
    end_k = ((conn["ts_end"] - start).dt.total_microseconds() // 10_000_000).to_list()
    assert end_k == k, "a record ends inside the window it started in"
    whole = pl.from_arrow(aggregate_file(XMR, window_s=600.0).flows)
    assert isinstance(whole, pl.DataFrame)
    assert whole.filter(pl.col("proto") == 6)["packets_up"].sum() == conn["packets_up"].sum()


def _slice(p: Packets, lo: int, hi: int) -> Packets:
    return replace(p, **{f.name: getattr(p, f.name)[lo:hi] for f in fields(p)})


@pytest.mark.parametrize("packet_stats", [True, False])
@pytest.mark.parametrize("parts", [1, 3, 17])
def test_batch_boundaries_do_not_change_the_records(parts: int, packet_stats: bool) -> None:
    stats = ReadStats(path=str(ETH))
    p = decode(next(iter(read_batches(str(ETH), stats))))
    n = len(p.ts_us)
    cuts = np.linspace(0, n, parts + 1).astype(int)
    agg = FlowAggregator(window_s=20.0, packet_stats=packet_stats)
    out = [agg.add(_slice(p, a, b)) for a, b in itertools.pairwise(cuts)]
    out.append(agg.flush())
    got = pl.from_arrow(pa.concat_tables(out))
    ref = pl.from_arrow(aggregate_file(ETH, window_s=20.0, packet_stats=packet_stats).flows)
    assert isinstance(got, pl.DataFrame) and isinstance(ref, pl.DataFrame)
    key = ["src_ip", "src_port", "dst_ip", "dst_port", "ts_start"]
    assert got.sort(key).equals(ref.sort(key))


def test_gaps_and_pushes_from_packets() -> None:
    flows = pl.from_arrow(aggregate_file(XMR, window_s=600.0).flows)
    assert isinstance(flows, pl.DataFrame)
    r = flows.filter(pl.col("proto") == 6).row(0, named=True)
    t = tshark_tcp(XMR).filter((pl.col("tcp_len") > 0) & (pl.col("sport") == r["src_port"]))
    ts = t["ts"].to_numpy()
    assert r["pay_pkts_up"] == len(ts)
    assert r["gap_n_up"] == len(ts) - 1
    assert r["gap_sum_up"] == pytest.approx(ts[-1] - ts[0], abs=1e-3)
    assert r["gap_sq_up"] == pytest.approx(float((np.diff(ts) ** 2).sum()), rel=1e-3)
    # Pushes, from tshark's packets of the connection: a server payload packet whose
    # previous payload packet was the server's, or the client's more than 1 s before.
    conn = (
        tshark_tcp(XMR)
        .filter(
            (pl.col("tcp_len") > 0)
            & ((pl.col("sport") == r["src_port"]) | (pl.col("dport") == r["src_port"]))
        )
        .with_columns(up=pl.col("sport") == r["src_port"])
    )
    t_all, up = conn["ts"].to_numpy(), conn["up"].to_numpy()
    prev_up, gap = np.r_[False, up[:-1]], np.r_[np.inf, np.diff(t_all)]
    is_push = ~up & (~prev_up | (gap > 1.0))
    pushes = int(is_push.sum())
    assert r["pushes_down"] == pushes and 1 <= pushes < r["pay_pkts_down"] == int((~up).sum())
    size = conn["tcp_len"].to_numpy().astype(np.float64)
    assert r["push_bytes_down"] == int(size[is_push].sum())
    assert r["push_sq_down"] == pytest.approx(float((size[is_push] ** 2).sum()))
    assert r["pay_sq_up"] == pytest.approx(float((size[up] ** 2).sum()))
    assert r["pay_sq_down"] == pytest.approx(float((size[~up] ** 2).sum()))
    small = conn.filter(pl.col("up") & (pl.col("tcp_len") <= 600)).height
    assert r["small_up"] == small


def test_flow_records_only_and_idle_connections_leave_the_state() -> None:
    stats = ReadStats(path=str(XMR))
    agg = FlowAggregator(window_s=60.0, idle_s=5.0, packet_stats=False)
    out = [agg.add_batch(b) for b in read_batches(str(XMR), stats)]
    out.append(agg.flush())
    t = pa.concat_tables(out)
    assert t.schema.equals(FLOWS)
    assert agg.open_connections() == 0


def test_same_totals_as_softflowd(tmp_path: Path) -> None:
    """softflowd (maxlife 60 s) and the aggregator count the same packets per connection."""
    sf = pl.from_arrow(flows_from_softflowd(XMR, tmp_path))
    ours = pl.from_arrow(aggregate_file(XMR).flows)
    assert isinstance(sf, pl.DataFrame) and isinstance(ours, pl.DataFrame)
    o = ours.filter(pl.col("proto") == 6).row(0, named=True)
    up = sf.filter((pl.col("src_ip") == o["src_ip"]) & (pl.col("src_port") == o["src_port"]))
    down = sf.filter((pl.col("dst_ip") == o["src_ip"]) & (pl.col("dst_port") == o["src_port"]))
    assert up["packets_up"].sum() == o["packets_up"]
    assert down["packets_up"].sum() == o["packets_down"]


@pytest.mark.parametrize("window_s", [60.0, 7.0])
def test_flow_records_are_the_same_with_and_without_packet_statistics(window_s: float) -> None:
    """Scans aggregate without the packet statistics (``packet_stats=False``), training
    with them: the FLOWS part of their records must not drift apart, on every shared
    capture."""
    key = ["src_ip", "src_port", "dst_ip", "dst_port", "proto", "ts_start"]
    checked = 0
    for path in sorted(SHARED.glob("*/*.pcap*")):
        try:
            full = aggregate_file(path, window_s=window_s).flows
        except Exception:  # a capture the reader refuses is refused the same way by both
            with pytest.raises(Exception):  # noqa: B017
                aggregate_file(path, window_s=window_s, packet_stats=False)
            continue
        lean = pl.from_arrow(aggregate_file(path, window_s=window_s, packet_stats=False).flows)
        ref = pl.from_arrow(full.select(FLOWS.names))
        assert isinstance(lean, pl.DataFrame) and isinstance(ref, pl.DataFrame)
        assert lean.sort(key).equals(ref.sort(key)), path.name
        checked += 1
    assert checked > 100

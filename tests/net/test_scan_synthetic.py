"""The scanner on conversations built by minewatch.lab.traffic, under every kind of damage."""

from __future__ import annotations

import io
import json
import os
import random

import pytest

from minewatch.lab import traffic as T
from minewatch.net.intel import PoolIntel
from minewatch.net.scan import Scanner
from minewatch.sources.intel import parse_lines
from minewatch.sources.pcap import read_batches


def scan(data: bytes, **kw: object) -> list[dict]:
    sc = Scanner(**kw)  # type: ignore[arg-type]
    return [r for r in sc.run(read_batches(io.BytesIO(data))) if sc.passes(r)]


SESSIONS = [
    T.cryptonote_session(),
    T.stratum1_session(),
    T.electrum_session(),
    T.jsonrpc_api_session(),
]

DAMAGE = [
    T.Damage(),
    T.Damage(split=7, reorder=0.3, retransmit=0.3, seed=1),
    T.Damage(split=3, coalesce=True, reorder=0.5, seed=2),
    T.Damage(split=40, reorder=0.5, retransmit=0.5, seed=3),
    T.Damage(coalesce=True),
    T.Damage(linktype="sll"),
    T.Damage(linktype="null", ipv6=True),
    T.Damage(linktype="raw", split=50),
    T.Damage(vlan=42, ipv6=True),
]


@pytest.mark.parametrize("damage", DAMAGE, ids=repr)
def test_same_sessions_whatever_the_capture_did(damage: T.Damage) -> None:
    found = {r["dialect"]: r for r in scan(T.write_pcap(SESSIONS, damage))}
    assert set(found) == {"cryptonote", "stratum1"}  # Electrum and the JSON-RPC API are not mining
    xmr, btc = found["cryptonote"], found["stratum1"]
    assert xmr["wallet"] == T.XMR_WALLET and xmr["worker"] == "rig1"
    assert xmr["agent"].startswith("XMRig/6.16.0")
    assert xmr["shares"] == {"submitted": 30, "accepted": 30, "rejected": 0}
    assert xmr["hashrate_hs"] == pytest.approx(500, rel=0.02)  # difficulty 1000 every 2 s
    assert (xmr["coin"], xmr["algo"]) == ("xmr", "randomx")
    assert btc["shares"]["accepted"] == 20 and btc["worker"] == "worker7"
    assert btc["hashrate_hs"] == pytest.approx(65536 * 2**32 / 3, rel=0.02)
    assert (btc["coin"], btc["algo"]) == ("btc", "sha256d")
    lo, hi = btc["power_w_range"]
    assert 0 < lo < hi
    for r in found.values():
        assert r["confidence"] == 0.99 and r["src_port"] in (50000, 50001)


def test_lost_segments_lose_only_the_damaged_messages() -> None:
    data = T.write_pcap(SESSIONS, T.Damage(drop=0.05, seed=2))
    sc = Scanner()
    found = {r["dialect"]: r for r in sc.run(read_batches(io.BytesIO(data)))}
    assert set(found) == {"cryptonote", "stratum1"}
    assert sc.counters.gaps > 0
    assert 20 <= found["cryptonote"]["shares"]["accepted"] < 30


def test_capture_started_mid_session() -> None:
    c = T.cryptonote_session()
    c.handshake = False
    pk = T.packets(c)
    data = T.write_pcap([], extra=pk[3:])  # no login line either: the pool side still shows work
    found = scan(data, min_confidence=0.0)
    assert len(found) == 1 and found[0]["dialect"] == "cryptonote"
    assert found[0]["src_port"] == 50000  # the miner side inferred without a SYN


def test_pool_host_from_dns_and_intel_hit() -> None:
    extra = [T.dns_answer(1_764_000_000.0 - 1, "10.1.0.5", "xmr.pool.example.net", "10.9.0.1")]
    intel = PoolIntel([parse_lines(["||pool.example.net^"], "test-list")])
    (r,) = scan(T.write_pcap([T.cryptonote_session()], extra=extra), intel=intel)
    assert r["pool_host"] == "xmr.pool.example.net"
    assert any("on a pool list (test-list)" in x for x in r["reasons"])


def test_intel_alone_stays_below_the_reporting_threshold() -> None:
    c = T.Conversation(("10.1.0.9", 51000), ("10.9.0.9", 443), 1_764_000_000.0)
    c.send(0.1, True, T.tls_client_hello("xmr.supportxmr.com"))
    c.send(0.2, False, b"\x16\x03\x03" + os.urandom(90))
    for i in range(10):
        c.send(1 + i * 5, True, b"\x17\x03\x03\x00\x40" + os.urandom(64))
    data = T.write_pcap([c])
    assert scan(data) == []  # a list hit alone is not a detection at the default threshold
    (weak,) = scan(data, min_confidence=0.0)
    assert weak["detector"] == "intel" and weak["confidence"] <= 0.3
    assert weak["pool_host"] == "xmr.supportxmr.com" and weak["coin"] == "xmr"


def test_miner_port_alone_is_nothing() -> None:
    c = T.Conversation(("10.1.0.9", 51001), ("10.9.0.9", 3333), 1_764_000_000.0)
    for i in range(5):
        c.send(i, True, b"\x01\x02binary protocol " + bytes([i]) * 40)
    assert scan(T.write_pcap([c]), min_confidence=0.0) == []


def sv2_session(reply: int = 170, key_head: bytes = b"") -> T.Conversation:
    """Stratum V2's visible shape. No SV2 implementation is packaged for this machine (Debian
    or PyPI), so the bytes are random with the sizes of the Noise NX handshake and frames
    (seeded, so that a failure can be replayed; ``key_head`` starts the client's key)."""
    rng = random.Random(f"sv2-{reply}-{key_head!r}")
    c = T.Conversation(("10.1.0.10", 52000), ("10.9.0.10", 34254), 1_764_000_000.0)
    key = key_head + rng.randbytes(64 - len(key_head))
    c.send(0.1, True, key)  # client ElligatorSwift ephemeral key
    c.send(0.2, False, rng.randbytes(reply))  # server reply: key, static key, signature
    for i in range(6):
        c.send(1 + i * 10, True, rng.randbytes(22 + 40 + 16))  # SubmitSharesStandard-sized
        c.send(1.5 + i * 10, False, rng.randbytes(22 + 60 + 16))
    return c


def test_stratum_v2_shape_reported_with_lower_confidence() -> None:
    (r,) = scan(T.write_pcap([sv2_session()]))
    assert r["dialect"] == "stratum2" and r["detector"] == "stratum2-shape"
    assert r["confidence"] == 0.5 and r["wallet"] is None
    assert scan(T.write_pcap([sv2_session(reply=1200)]), min_confidence=0.0) == []
    # A random key may begin like JSON (about 1.5% of keys did, and were taken for JSON-RPC
    # before the shape was tried): still Stratum V2.
    for head in (b"{", b' ["', b'x{"'):
        (r,) = scan(T.write_pcap([sv2_session(key_head=head)]))
        assert r["detector"] == "stratum2-shape", head


def test_bad_json_and_long_lines_inside_a_stratum_stream() -> None:
    c = T.stratum1_session(shares=5)
    c.send(2.5, True, b'{"id": 99, "method": "mining.submit", "params": [oops\n')
    c.send(2.6, True, b'{"x": "' + b"A" * 200_000 + b'"}\n')
    sc = Scanner()
    (r,) = sc.run(read_batches(io.BytesIO(T.write_pcap([c], T.Damage(split=1400)))))
    assert r["shares"]["accepted"] == 5
    assert sc.counters.bad_json == 1 and sc.counters.oversized >= 1
    assert any("not valid JSON" in x for x in r["reasons"])


def test_stream_cut_mid_message() -> None:
    c = T.cryptonote_session(shares=10)
    c.close = False
    frames = T.packets(c)
    last_t, last = frames[-1]
    cut = T.write_pcap([], extra=[*frames[:-1], (last_t, last[: len(last) - 30])])
    (r,) = scan(cut)
    assert r["shares"]["submitted"] == 10


def test_live_mode_reports_when_confirmed_then_at_the_end() -> None:
    seen: list[dict] = []
    sc = Scanner(live=True, on_detection=seen.append)
    sc.run(read_batches(io.BytesIO(T.write_pcap([T.cryptonote_session()]))))
    assert [r["final"] for r in seen] == [False, True]
    assert seen[0]["session_id"] == seen[1]["session_id"]
    json.dumps(seen)  # every record is plain JSON


def test_node_p2p_traffic_is_not_mining() -> None:
    """Monero P2P (Levin header, 18080) and Bitcoin P2P (magic f9beb4d9, 8333)."""
    levin = T.Conversation(("10.1.0.20", 53000), ("10.9.0.20", 18080), 1_764_000_000.0)
    btc = T.Conversation(("10.1.0.21", 53001), ("10.9.0.21", 8333), 1_764_000_000.0)
    for i in range(20):
        levin.send(i, i % 2 == 0, bytes.fromhex("0121010101010101") + os.urandom(120))
        btc.send(
            i,
            i % 2 == 0,
            bytes.fromhex("f9beb4d9") + b"ping\x00\x00\x00\x00\x00\x00\x00\x00" + os.urandom(16),
        )
    assert scan(T.write_pcap([levin, btc]), min_confidence=0.0) == []

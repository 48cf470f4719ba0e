"""The scanner on the real captures in ../shared/data/pcap.

Ground truth comes from tshark, independently of minewatch's own parsing: every TCP session
whose payload names a mining-protocol method must be reported, with the dialect that method
belongs to; the benign captures must give no detection at all.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from minewatch.net.scan import Scanner
from minewatch.sources.pcap import read_batches

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"
MINING = sorted((SHARED / "mining").glob("*.pcap*"))
BENIGN = sorted((SHARED / "benign").glob("*.pcap*"))

# A payload marker and the dialects a session carrying it may be reported as.
MARKERS = {
    '"mining.': {"stratum1", "ethstratum"},
    '"login"': {"cryptonote"},
    '"eth_': {"ethproxy"},
    '"getwork"': {"getwork"},
    '"getblocktemplate"': {"getblocktemplate"},
}


def _key(a: str, ap: str, b: str, bp: str) -> frozenset[tuple[str, int]]:
    return frozenset({(a, int(ap)), (b, int(bp))})


def tshark_truth(path: Path) -> dict[frozenset[tuple[str, int]], set[str]]:
    """Sessions that carry a mining-protocol message, with the dialects allowed for each."""
    quoted = ['"' + m.replace('"', '\\"') + '"' for m in MARKERS]
    flt = "tcp.len>0 && (" + " || ".join(f"tcp.payload contains {q}" for q in quoted) + ")"
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            flt,
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "tcp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.payload",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    truth: dict[frozenset[tuple[str, int]], set[str]] = defaultdict(set)
    for line in out.splitlines():
        src4, src6, sport, dst4, dst6, dport, payload = line.split("\t")
        text = bytes.fromhex(payload.replace(":", "")).decode("latin-1")
        for marker, dialects in MARKERS.items():
            if marker in text:
                truth[_key(src4 or src6, sport, dst4 or dst6, dport)] |= dialects
    return truth


@pytest.mark.parametrize("path", MINING, ids=lambda p: p.name)
def test_every_stratum_session_reported_with_its_dialect(path: Path) -> None:
    truth = tshark_truth(path)
    assert truth, "tshark found no mining message: is the capture there?"
    sc = Scanner()
    found = {
        _key(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]): r
        for r in sc.run(read_batches(path))
        if sc.passes(r)
    }
    missing = set(truth) - set(found)
    assert not missing, f"{len(missing)} mining sessions not reported, e.g. {sorted(missing)[:3]}"
    wrong = {
        k: (found[k]["dialect"], truth[k]) for k in truth if found[k]["dialect"] not in truth[k]
    }
    assert not wrong, f"wrong dialect: {list(wrong.items())[:3]}"
    extra = set(found) - set(truth)
    assert not extra, f"reported sessions that carry no mining message: {sorted(extra)[:3]}"


def test_cryptonote_capture_details() -> None:
    """xmr.suprnova.cc: 5 submits at difficulty 10,000 (b88d0600) in ~56.5 s (REFERENCE.md)."""
    sc = Scanner()
    (r,) = sc.run(read_batches(SHARED / "mining" / "xmr.suprnova.cc.pcapng"))
    assert r["dialect"] == "cryptonote" and r["confidence"] >= 0.95
    assert (r["wallet"], r["worker"], r["agent"]) == ("kvetak", "worker1", "xmr/1.0")
    assert r["shares"] == {"submitted": 5, "accepted": 5, "rejected": 0}
    assert r["difficulty"][0]["difficulty"] == pytest.approx(10_000, rel=1e-4)
    assert 700 < r["hashrate_hs"] < 1100  # REFERENCE.md's reading of the capture: ~885 H/s
    assert r["algo"] == "cryptonight"  # 2017: before Monero's RandomX fork
    assert r["power_w_range"][0] < r["power_w_range"][1]


def test_eth_and_zec_details() -> None:
    sc = Scanner()
    (eth,) = sc.run(read_batches(SHARED / "mining" / "eth-eu1.nanopool.org.pcapng"))
    assert eth["dialect"] == "ethproxy" and eth["coin"] == "eth" and eth["algo"] == "ethash"
    assert eth["wallet"] == "0x9c99d212f7e5daa18ab50810e0fd255d1f04303b"
    assert eth["hashrate_reported_hs"] and eth["hashrate_hs"]
    (http,) = Scanner().run(read_batches(SHARED / "mining" / "pool.eth.pp.ua.pcapng"))
    assert http["dialect"] == "ethproxy" and http["pool_host"] == "pool.eth.pp.ua"
    assert http["wallet"] == "0x4b999ba68e017854ffb6b494bc2ddb9ef02bd745"
    assert http["worker"] == "OptionalRigName"
    (zec,) = Scanner().run(read_batches(SHARED / "mining" / "zec-eu.suprnova.cc.pcapng"))
    assert zec["dialect"] == "stratum1" and zec["coin"] == "zec" and zec["algo"] == "equihash"
    assert zec["pool_host"] == "zec-eu.suprnova.cc" and zec["agent"] == "equihashminer"
    assert zec["shares"]["accepted"] == zec["shares"]["submitted"] > 5
    assert zec["hashrate_hs"] > 0


def test_pool_host_from_dns_answers_in_the_capture() -> None:
    sc = Scanner()
    hosts = {r["pool_host"] for r in sc.run(read_batches(SHARED / "mining" / "cgminer.g0.pcapng"))}
    assert any(h.endswith("litecoinpool.org") for h in hosts)


@pytest.mark.parametrize("path", BENIGN, ids=lambda p: p.name)
def test_benign_capture_gives_no_detection(path: Path) -> None:
    sc = Scanner(min_confidence=0.0)  # not even a weak lead
    found = sc.run(read_batches(path))
    assert found == [], [(r["dst_ip"], r["dst_port"], r["reasons"]) for r in found]

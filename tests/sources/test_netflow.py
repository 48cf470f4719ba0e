"""NetFlow v5/v9/IPFIX decoding: real softflowd exports, template handling, bad input.

Real exports come from the Debian ``softflowd`` reading the shared captures and sending to a
socket on 127.0.0.1 that the test owns. Hand-built datagrams (``v9``/``ipfix`` below) cover
what softflowd never sends: data before templates, redefinitions, withdrawals, damage.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import pyarrow as pa
import pytest

from minewatch.errors import Quarantine
from minewatch.lab.behavior_data import softflowd_datagrams
from minewatch.schema import FLOWS
from minewatch.sources import netflow
from minewatch.sources.netflow import NetflowDecoder, read_netflow, split_datagrams

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"
XMR = DATA / "mining" / "xmr.suprnova.cc.pcapng"
CGMINER = DATA / "mining" / "cgminer.s0.pcapng"
NETFLOW_PCAP = DATA / "benign" / "netflowv9.pcap"


def softflowd_export(pcap: Path, tmp: Path, *opts: str) -> list[bytes]:
    """softflowd reads ``pcap`` and exports to a socket of ours; returns the datagrams."""
    return softflowd_datagrams(pcap, *opts)


def decode(
    datagrams: list[bytes], q: Quarantine | None = None, exporter: str = "127.0.0.1"
) -> tuple[pa.Table, NetflowDecoder]:
    dec = NetflowDecoder(q)
    for d in datagrams:
        dec.feed(d, exporter)
    return pa.Table.from_batches([dec.finish()], schema=FLOWS), dec


# ----------------------------------------------------------------- hand-built datagrams
def v9(
    sets: list[bytes],
    seq: int = 1,
    uptime: int = 10_000,
    secs: int = 1_700_000_000,
    source_id: int = 0,
) -> bytes:
    return struct.pack("!HHIIII", 9, len(sets), uptime, secs, seq, source_id) + b"".join(sets)


def ipfix(sets: list[bytes], seq: int = 0, secs: int = 1_700_000_000, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), secs, seq, domain) + body


def tset(set_id: int, records: list[tuple[int, list[tuple[int, int]]]]) -> bytes:
    body = b"".join(
        struct.pack("!HH", tid, len(fs)) + b"".join(struct.pack("!HH", f, n) for f, n in fs)
        for tid, fs in records
    )
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def dset(tid: int, body: bytes) -> bytes:
    pad = (-len(body)) % 4
    return struct.pack("!HH", tid, 4 + len(body) + pad) + body + b"\0" * pad


FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (22, 4), (21, 4)]


def rec(
    src: str,
    dst: str,
    sp: int,
    dp: int,
    pkts: int = 3,
    octets: int = 180,
    first: int = 5_000,
    last: int = 9_000,
) -> bytes:
    return (
        socket.inet_aton(src)
        + socket.inet_aton(dst)
        + struct.pack("!HHBBIIII", sp, dp, 6, 0x1B, pkts, octets, first, last)
    )


# ----------------------------------------------------------------- real exports
@pytest.fixture(scope="module")
def xmr_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    tmp = tmp_path_factory.mktemp("softflowd")
    return {v: softflowd_export(XMR, tmp, "-v", v, "-a") for v in ("5", "9", "10")}


def test_softflowd_versions_agree_and_match_the_capture(
    xmr_exports: dict[str, list[bytes]],
) -> None:
    tables = {v: decode(d)[0] for v, d in xmr_exports.items()}
    for v, t in tables.items():
        assert t.num_rows == 2, v
        rows = sorted(t.to_pylist(), key=lambda r: r["src_port"])
        # The capture: one Monero pool connection, 21 packets/2630 bytes from the pool.
        pool = next(r for r in rows if r["src_port"] == 5222)
        assert (pool["src_ip"], pool["dst_ip"], pool["proto"]) == (
            "37.59.21.58",
            "147.229.13.222",
            6,
        )
        assert (pool["packets_up"], pool["bytes_up"]) == (21, 2630)
        # softflowd -a keeps capture time: 2017-01-17 11:32:31.98 .. 11:33:28.49 UTC.
        assert pool["ts_start"].isoformat().startswith("2017-01-17T11:32:3")
        assert 55 <= (pool["ts_end"] - pool["ts_start"]).total_seconds() <= 58
        assert pool["sampling"] == 1 and pool["exporter"] == "127.0.0.1"
    assert tables["9"].column("bytes_up").to_pylist() == tables["10"].column("bytes_up").to_pylist()


def test_sampling_rate_from_options_and_v5_header(tmp_path: Path) -> None:
    for version in ("5", "9", "10"):
        t, dec = decode(softflowd_export(XMR, tmp_path, "-v", version, "-s", "4"))
        assert t.num_rows > 0
        assert set(t.column("sampling").to_pylist()) == {4}, version
        if version != "5":
            assert dec.stats.options_records >= 1


def test_bidirectional_ipfix_fills_the_down_direction(tmp_path: Path) -> None:
    t, _ = decode(softflowd_export(XMR, tmp_path, "-v", "10", "-b", "-a"))
    assert t.num_rows == 1
    row = t.to_pylist()[0]
    assert {row["bytes_up"], row["bytes_down"]} == {2630, 2054}
    assert {row["packets_up"], row["packets_down"]} == {21, 22}


def test_absolute_time_elements(tmp_path: Path) -> None:
    for unit in ("sec", "milli", "micro", "nano"):
        t, _ = decode(softflowd_export(XMR, tmp_path, "-v", "10", "-A", unit))
        starts = [r.isoformat() for r in t.column("ts_start").to_pylist()]
        assert all(s.startswith("2017-01-17T11:32:31") for s in starts), (unit, starts)


def test_raw_concatenated_file_and_garbage_between(tmp_path: Path) -> None:
    datagrams = softflowd_export(CGMINER, tmp_path, "-v", "9")
    expected, _ = decode(datagrams)
    raw = tmp_path / "export.bin"
    raw.write_bytes(b"".join(datagrams))
    assert [d for _, d in split_datagrams(raw.read_bytes())] == datagrams
    r = read_netflow(raw, exporter="127.0.0.1")
    assert r.flows.num_rows == expected.num_rows > 400
    # Damage in the middle: the bytes are counted and quarantined, the rest still decodes.
    junk = bytes(random.Random(3).randrange(256) for _ in range(300)).replace(b"\x00", b"\x01")
    raw.write_bytes(b"".join(datagrams[:5]) + junk + b"".join(datagrams[5:]))
    q = Quarantine()
    r2 = read_netflow(raw, quarantine=q, exporter="127.0.0.1")
    assert r2.flows.num_rows == expected.num_rows
    assert r2.rejected >= 1 and r2.read == r2.accepted + r2.rejected
    assert q.total == r2.rejected


def test_pcap_of_exports_whose_templates_never_arrive() -> None:
    """The shared netflowv9.pcap holds data sets only: nothing decodes, everything is counted."""
    q = Quarantine()
    r = read_netflow(NETFLOW_PCAP, quarantine=q)
    assert r.flows.num_rows == 0
    assert r.details["sets_held"] == r.details["sets_expired"] == 23
    assert r.read == r.accepted + r.rejected == 23
    assert all("never arrived" in reason for reason in q.counts)


# ----------------------------------------------------------------- template handling
def test_data_held_until_its_template_comes() -> None:
    dec = NetflowDecoder()
    data = dset(
        300, rec("10.0.0.1", "10.0.0.2", 1000, 3333) + rec("10.0.0.1", "10.0.0.2", 1001, 3333)
    )
    dec.feed(v9([data], seq=1), "192.0.2.1")
    assert dec.take().num_rows == 0 and dec.held_sets == 1
    dec.feed(v9([tset(0, [(300, FIELDS)])], seq=2), "192.0.2.1")
    t = dec.finish()
    assert t.num_rows == 2 and dec.stats.sets_released == 1
    # uptime 10 s at export 1_700_000_000 s; first seen at up-time 5 s.
    assert t.column("ts_start")[0].as_py().timestamp() == pytest.approx(1_700_000_000 - 5)
    assert t.column("dst_port").to_pylist() == [3333, 3333]


def test_held_buffer_is_bounded_and_counted() -> None:
    q = Quarantine()
    dec = NetflowDecoder(q, max_held_sets=2)
    for i in range(5):
        dec.feed(v9([dset(400 + i, rec("10.0.0.1", "10.0.0.2", 1, 2))], seq=i + 1), "192.0.2.1")
    assert dec.held_sets == 2 and dec.stats.sets_expired == 3
    dec.finish()
    assert dec.stats.sets_expired == 5
    assert q.counts["template 400 never arrived (buffer full); data set dropped"] == 1


def test_templates_are_per_exporter_and_domain() -> None:
    short = [(8, 4), (12, 4), (2, 4)]
    dec = NetflowDecoder()
    dec.feed(v9([tset(0, [(256, FIELDS)])]), "192.0.2.1")
    dec.feed(v9([tset(0, [(256, short)])]), "192.0.2.2")
    dec.feed(v9([tset(0, [(256, short)])], source_id=7), "192.0.2.1")
    dec.feed(v9([dset(256, rec("10.0.0.1", "10.0.0.2", 5, 6, pkts=9))], seq=2), "192.0.2.1")
    dec.feed(
        v9(
            [
                dset(
                    256,
                    socket.inet_aton("10.1.1.1")
                    + socket.inet_aton("10.2.2.2")
                    + struct.pack("!I", 77),
                )
            ],
            seq=2,
        ),
        "192.0.2.2",
    )
    dec.feed(
        v9(
            [
                dset(
                    256,
                    socket.inet_aton("10.3.3.3")
                    + socket.inet_aton("10.4.4.4")
                    + struct.pack("!I", 55),
                )
            ],
            seq=2,
            source_id=7,
        ),
        "192.0.2.1",
    )
    t = dec.finish().to_pylist()
    got = {(r["exporter"], r["src_ip"], r["packets_up"]) for r in t}
    assert got == {
        ("192.0.2.1", "10.0.0.1", 9),
        ("192.0.2.2", "10.1.1.1", 77),
        ("192.0.2.1", "10.3.3.3", 55),
    }
    assert dec.template_count == 3


def test_template_redefinition_and_ipfix_withdrawal() -> None:
    dec = NetflowDecoder()
    dec.feed(ipfix([tset(2, [(256, FIELDS)]), dset(256, rec("10.0.0.1", "10.0.0.2", 1, 2))]), "e")
    swapped = [(12, 4), (8, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (22, 4), (21, 4)]
    dec.feed(
        ipfix([tset(2, [(256, swapped)]), dset(256, rec("10.0.0.1", "10.0.0.2", 1, 2))], seq=1), "e"
    )
    t = dec.take().to_pylist()
    assert [(r["src_ip"], r["dst_ip"]) for r in t] == [
        ("10.0.0.1", "10.0.0.2"),
        ("10.0.0.2", "10.0.0.1"),
    ]
    assert dec.stats.template_redefinitions == 1
    dec.feed(ipfix([tset(2, [(256, [])])], seq=2), "e")  # withdrawal: field count 0
    assert dec.template_count == 0 and dec.stats.template_withdrawals == 1
    dec.feed(ipfix([dset(256, rec("10.0.0.1", "10.0.0.2", 1, 2))], seq=2), "e")
    assert dec.held_sets == 1


def test_refreshed_template_set_is_not_reparsed_but_still_applies() -> None:
    dec = NetflowDecoder()
    a = tset(0, [(256, FIELDS)])
    b = tset(0, [(256, [(8, 4), (12, 4), (2, 4)])])
    dec.feed(v9([a]), "e")
    dec.feed(v9([b], seq=2), "e")
    dec.feed(v9([a], seq=3), "e")  # seen before: cached, and must win again over b
    dec.feed(v9([dset(256, rec("10.0.0.1", "10.0.0.2", 1, 2, pkts=4))], seq=4), "e")
    assert dec.finish().column("packets_up").to_pylist() == [4]
    assert dec.stats.template_refreshes == 1


# ----------------------------------------------------------------- bad input
def test_random_bytes_never_crash_and_counts_are_conserved() -> None:
    rng = random.Random(42)
    q = Quarantine()
    dec = NetflowDecoder(q)
    headers = [b"\x00\x05", b"\x00\x09", b"\x00\x0a", b""]
    for i in range(3000):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        dec.feed(rng.choice(headers) + body, f"192.0.2.{i % 5}")
        if i % 500 == 0:
            dec.take()
    dec.finish()
    s = dec.stats
    assert s.datagrams == 3000 == s.datagrams_decoded + s.datagrams_rejected
    assert s.flows_decoded == s.flows_accepted + s.flows_rejected
    assert s.datagrams_rejected > 0 and q.total >= s.datagrams_rejected


def test_every_truncation_of_real_datagrams(xmr_exports: dict[str, list[bytes]]) -> None:
    for version, datagrams in xmr_exports.items():
        whole = datagrams[0]
        for cut in range(0, len(whole)):
            q = Quarantine()
            dec = NetflowDecoder(q)
            dec.feed(whole[:cut], "e")
            t = dec.finish()
            assert t.num_rows <= 2
            assert dec.stats.datagrams_rejected + dec.stats.datagrams_decoded == 1
        assert version in ("5", "9", "10")


def test_unknown_version_and_reserved_set_ids() -> None:
    q = Quarantine()
    dec = NetflowDecoder(q)
    dec.feed(struct.pack("!HH", 7, 1) + bytes(40), "e")
    dec.feed(v9([dset(300, b"\x01" * 8)])[:20] + struct.pack("!HH", 77, 8) + bytes(4), "e")
    dec.feed(v9([struct.pack("!HH", 300, 0)]), "e")  # set length 0 would loop forever
    dec.finish()
    assert dec.stats.datagrams_rejected == 3
    assert q.counts["unknown export version 7"] == 1
    assert any("reserved" in k for k in q.counts)
    assert any("has length 0" in k for k in q.counts)


def test_zero_length_fields_are_skipped_with_a_reason() -> None:
    q = Quarantine()
    dec = NetflowDecoder(q)
    fields = [(8, 4), (99, 0), (12, 4), (2, 4)]
    body = socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2") + struct.pack("!I", 3)
    dec.feed(v9([tset(0, [(256, fields)]), dset(256, body)]), "e")
    # A template of nothing but zero-length fields is refused; its data stays unknown.
    dec.feed(v9([tset(0, [(257, [(8, 0), (12, 0)])]), dset(257, b"\x00" * 8)], seq=2), "e")
    t = dec.finish()
    assert t.column("src_ip").to_pylist() == ["10.0.0.1"]
    assert dec.stats.zero_length_fields == 3 and dec.stats.templates_rejected == 1
    assert dec.stats.sets_expired == 1


def test_sequence_going_backwards_and_gaps_are_counted() -> None:
    dec = NetflowDecoder()
    tpl = tset(0, [(256, FIELDS)])
    for seq in (1, 2, 5, 3):
        dec.feed(v9([tpl, dset(256, rec("10.0.0.1", "10.0.0.2", 1, 2))], seq=seq), "e")
    dec.finish()
    assert dec.stats.sequence_lost == 2
    assert dec.stats.sequence_backwards == 1


def test_flow_ending_before_it_starts_is_quarantined() -> None:
    q = Quarantine()
    dec = NetflowDecoder(q)
    good = rec("10.0.0.1", "10.0.0.2", 1, 2, first=5_000, last=6_000)
    bad = rec("10.0.0.3", "10.0.0.4", 1, 2, first=9_000, last=6_000)
    dec.feed(v9([tset(0, [(256, FIELDS)]), dset(256, good + bad)]), "e")
    t = dec.finish()
    assert t.column("src_ip").to_pylist() == ["10.0.0.1"]
    assert q.counts["flow ends before it starts"] == 1
    assert dec.stats.flows_decoded == 2 == dec.stats.flows_accepted + dec.stats.flows_rejected


def test_ipv6_and_variable_length_fields() -> None:
    fields = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (2, 4), (82, 65535), (1, 4)]
    src = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    recs = b""
    for name in (b"eth0", b"x" * 300):
        enc = (
            bytes([len(name)]) + name
            if len(name) < 255
            else b"\xff" + struct.pack("!H", len(name)) + name
        )
        recs += src + dst + struct.pack("!HHBI", 443, 5000, 6, 7) + enc + struct.pack("!I", 900)
    dec = NetflowDecoder()
    dec.feed(ipfix([tset(2, [(256, fields)]), dset(256, recs)]), "e")
    t = dec.finish().to_pylist()
    assert [(r["src_ip"], r["dst_ip"], r["bytes_up"], r["packets_up"]) for r in t] == [
        ("2001:db8::1", "2001:db8::2", 900, 7)
    ] * 2


def test_module_doctest() -> None:
    import doctest

    assert doctest.testmod(netflow).failed == 0

"""Synthetic packet captures of whole TCP conversations, with the damage real captures show.

A :class:`Conversation` is a list of messages (who sent what, when). :func:`write_pcap`
turns conversations into a pcap with a proper three-way handshake, sequence numbers and a
closing FIN exchange, and can split messages across segments, pack several into one,
reorder segments, retransmit and drop them, tag VLANs, use IPv6, and write Ethernet, Linux
cooked (SLL), BSD loopback or raw-IP link layers. Tests use it to show that the scanner
reads the same session the same way whatever the capture did to it; ``minewatch demo`` uses
it to make sample traffic without shipping anyone's capture.

Packets are built with dpkt.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dpkt

LINKTYPES = {"ethernet": 1, "sll": 113, "null": 0, "raw": 101}


@dataclass
class Conversation:
    client: tuple[str, int]
    server: tuple[str, int]
    start: float
    messages: list[tuple[float, bool, bytes]] = field(default_factory=list)  # (t, up, data)
    handshake: bool = True
    close: bool = True

    def send(self, t: float, up: bool, data: bytes | dict[str, Any] | str) -> Conversation:
        if isinstance(data, dict):
            data = (json.dumps(data) + "\n").encode()
        elif isinstance(data, str):
            data = data.encode()
        self.messages.append((self.start + t, up, data))
        return self


@dataclass
class Damage:
    """What the capture does to the conversation."""

    split: int = 0  # cut each message into segments of at most this many bytes (0: whole)
    coalesce: bool = False  # several consecutive messages in one segment
    reorder: float = 0.0  # probability that a segment swaps with the next
    retransmit: float = 0.0  # probability that a segment is sent twice
    drop: float = 0.0  # probability that a segment is lost (never retransmitted)
    vlan: int | None = None
    ipv6: bool = False
    linktype: str = "ethernet"
    seed: int = 0


def _ip_packet(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    data: bytes,
    v6: bool,
) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=data)
    tcp.off = 5
    if v6:
        ip6 = dpkt.ip6.IP6(src=_v6(src), dst=_v6(dst), nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=tcp)
        ip6.plen = len(tcp)
        return bytes(ip6)
    ip = dpkt.ip.IP(
        src=bytes(int(x) for x in src.split(".")),
        dst=bytes(int(x) for x in dst.split(".")),
        p=dpkt.ip.IP_PROTO_TCP,
        ttl=64,
        data=tcp,
    )
    ip.len = 20 + len(bytes(tcp))
    return bytes(ip)


def _v6(addr4: str) -> bytes:
    """IPv4 test addresses mapped into the documentation prefix 2001:db8::/32."""
    return bytes.fromhex("20010db8") + bytes(8) + bytes(int(x) for x in addr4.split("."))


def _frame(ip: bytes, d: Damage) -> bytes:
    v6 = d.ipv6
    if d.linktype == "raw":
        return ip
    if d.linktype == "null":
        return struct.pack("<I", 30 if v6 else 2) + ip
    etype = 0x86DD if v6 else 0x0800
    if d.linktype == "sll":
        return struct.pack(">HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", etype) + ip
    mac = b"\x02\x00\x00\x00\x00"
    if d.vlan is not None:
        return mac + b"\x01" + mac + b"\x02" + struct.pack(">HHH", 0x8100, d.vlan, etype) + ip
    return mac + b"\x01" + mac + b"\x02" + struct.pack(">H", etype) + ip


def _segments(
    c: Conversation, d: Damage, rng: random.Random
) -> list[tuple[float, bool, int, bytes]]:
    """(time, up, flags, payload) for the conversation, before sequence numbers."""
    A, S, F, P = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    segs: list[tuple[float, bool, int, bytes]] = []
    if c.handshake:
        segs += [
            (c.start, True, S, b""),
            (c.start + 0.01, False, S | A, b""),
            (c.start + 0.02, True, A, b""),
        ]
    msgs = sorted(c.messages, key=lambda m: m[0])
    if d.coalesce:
        merged: list[tuple[float, bool, bytes]] = []
        for t, up, data in msgs:
            if merged and merged[-1][1] == up and t - merged[-1][0] < 1.0:
                merged[-1] = (merged[-1][0], up, merged[-1][2] + data)
            else:
                merged.append((t, up, data))
        msgs = merged
    for t, up, data in msgs:
        if d.split > 0:
            for n, k in enumerate(range(0, len(data), d.split)):
                segs.append((t + n * 1e-6, up, A | P, data[k : k + d.split]))
        else:
            segs.append((t, up, A | P, data))
    if c.close:
        end = (msgs[-1][0] if msgs else c.start) + 0.05
        segs += [
            (end, True, F | A, b""),
            (end + 0.01, False, F | A, b""),
            (end + 0.02, True, A, b""),
        ]
    return segs


def packets(c: Conversation, d: Damage | None = None) -> list[tuple[float, bytes]]:
    """The conversation as (timestamp, link-layer frame) pairs, damage applied."""
    d = d or Damage()
    rng = random.Random(d.seed)
    isn = {True: rng.randrange(2**32), False: rng.randrange(2**32)}
    nxt = {True: isn[True], False: isn[False]}
    out: list[tuple[float, bytes]] = []
    for t, up, flags, data in _segments(c, d, rng):
        src, dst = (c.client, c.server) if up else (c.server, c.client)
        seq = nxt[up]
        ack = nxt[not up] if flags & dpkt.tcp.TH_ACK else 0
        frame = _frame(
            _ip_packet(
                src[0],
                dst[0],
                src[1],
                dst[1],
                seq & 0xFFFFFFFF,
                ack & 0xFFFFFFFF,
                flags,
                data,
                d.ipv6,
            ),
            d,
        )
        nxt[up] = seq + len(data) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        if data and rng.random() < d.drop:
            continue
        out.append((t, frame))
        if data and rng.random() < d.retransmit:
            out.append((t + 0.2, frame))
    if d.reorder:
        i = 0
        while i < len(out) - 1:
            if rng.random() < d.reorder:
                (t1, f1), (t2, f2) = out[i], out[i + 1]
                out[i], out[i + 1] = (t1, f2), (t2, f1)
                i += 2
            else:
                i += 1
    return out


def write_pcap(
    conversations: Iterable[Conversation],
    damage: Damage | None = None,
    extra: Iterable[tuple[float, bytes]] = (),
) -> bytes:
    """A pcap file holding the conversations (interleaved by time) and any extra frames."""
    d = damage or Damage()
    frames = [f for c in conversations for f in packets(c, d)] + list(extra)
    if not d.reorder:
        frames.sort(key=lambda f: f[0])
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, snaplen=262144, linktype=LINKTYPES[d.linktype])
    for t, frame in frames:
        w.writepkt(frame, ts=t)
    return buf.getvalue()


def dns_answer(
    t: float, client: str, name: str, address: str, d: Damage | None = None
) -> tuple[float, bytes]:
    """A DNS response frame (UDP from port 53) naming ``address`` for ``name``."""
    d = d or Damage()
    rr = dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=60)
    rr.rdata = bytes(int(x) for x in address.split("."))
    rr.rlen = 4
    q = dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)
    msg = dpkt.dns.DNS(id=1, qr=dpkt.dns.DNS_R, op=dpkt.dns.DNS_RA, qd=[q], an=[rr])
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=bytes(msg))
    udp.ulen = 8 + len(bytes(msg))
    ip = dpkt.ip.IP(
        src=bytes([9, 9, 9, 9]),
        dst=bytes(int(x) for x in client.split(".")),
        p=17,
        ttl=64,
        data=udp,
    )
    ip.len = 20 + udp.ulen
    return t, _frame(bytes(ip), Damage(linktype=d.linktype, vlan=d.vlan))


# ---- conversations of each dialect (values shaped like the real protocols) -----------------

XMR_WALLET = "4" + "A" + "1" * 93


def cryptonote_session(
    client: tuple[str, int] = ("10.1.0.5", 50000),
    server: tuple[str, int] = ("10.9.0.1", 3333),
    start: float = 1_764_000_000.0,
    shares: int = 30,
    interval: float = 2.0,
    difficulty: int = 1000,
    wallet: str = XMR_WALLET,
    worker: str = "rig1",
) -> Conversation:
    """An XMRig-like CryptoNote session: login, job, ``shares`` submits every ``interval`` s."""
    c = Conversation(client, server, start)
    c.send(
        0.1,
        True,
        {
            "id": 1,
            "jsonrpc": "2.0",
            "method": "login",
            "params": {
                "login": wallet,
                "pass": "x",
                "agent": "XMRig/6.16.0 (Linux x86_64) libuv/1.42.0 gcc/9.3.0",
                "algo": ["rx/0"],
                "rigid": worker,
            },
        },
    )
    target = ((2**32 - 1) // difficulty).to_bytes(4, "little").hex()
    job = {
        "blob": "0c0c" + "ab" * 74,
        "job_id": "j1",
        "target": target,
        "algo": "rx/0",
        "height": 3000000,
        "seed_hash": "cd" * 32,
    }
    c.send(
        0.15,
        False,
        {
            "id": 1,
            "jsonrpc": "2.0",
            "error": None,
            "result": {"id": "s1", "job": job, "extensions": ["algo", "keepalive"], "status": "OK"},
        },
    )
    for i in range(shares):
        t = 1.0 + i * interval
        c.send(
            t,
            True,
            {
                "id": 2 + i,
                "jsonrpc": "2.0",
                "method": "submit",
                "params": {"id": "s1", "job_id": "j1", "nonce": f"{i:08x}", "result": "ef" * 32},
            },
        )
        c.send(
            t + 0.05,
            False,
            {"id": 2 + i, "jsonrpc": "2.0", "error": None, "result": {"status": "OK"}},
        )
    return c


def stratum1_session(
    client: tuple[str, int] = ("10.1.0.6", 50001),
    server: tuple[str, int] = ("10.9.0.2", 3334),
    start: float = 1_764_000_000.0,
    shares: int = 20,
    interval: float = 3.0,
    difficulty: float = 65536.0,
    user: str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080.worker7",
) -> Conversation:
    """A Bitcoin Stratum V1 session from an ASIC-like client."""
    c = Conversation(client, server, start)
    c.send(0.1, True, {"id": 1, "method": "mining.subscribe", "params": ["bmminer/2.0.0"]})
    c.send(
        0.12,
        False,
        {"id": 1, "result": [[["mining.notify", "ae68"]], "08000002", 4], "error": None},
    )
    c.send(0.2, True, {"id": 2, "method": "mining.authorize", "params": [user, "x"]})
    c.send(0.22, False, {"id": 2, "result": True, "error": None})
    c.send(0.23, False, {"id": None, "method": "mining.set_difficulty", "params": [difficulty]})
    c.send(
        0.24,
        False,
        {
            "id": None,
            "method": "mining.notify",
            "params": [
                "bf",
                "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000",
                "01000000010000",
                "072f736c7573682f000000000100f2052a",
                [],
                "00000002",
                "1c2ac4af",
                "504e86b9",
                False,
            ],
        },
    )
    for i in range(shares):
        t = 1.0 + i * interval
        c.send(
            t,
            True,
            {
                "id": 10 + i,
                "method": "mining.submit",
                "params": [user, "bf", "00000001", "504e86ed", f"{i:08x}"],
            },
        )
        c.send(t + 0.03, False, {"id": 10 + i, "result": True, "error": None})
    return c


def electrum_session(
    client: tuple[str, int] = ("10.1.0.7", 50002),
    server: tuple[str, int] = ("10.9.0.3", 50001),
    start: float = 1_764_000_000.0,
) -> Conversation:
    """An Electrum wallet talking JSON-RPC to its server: crypto, but not mining."""
    c = Conversation(client, server, start)
    c.send(0.1, True, {"id": 0, "method": "server.version", "params": ["electrum/4.5", "1.4"]})
    c.send(0.12, False, {"id": 0, "result": ["ElectrumX 1.16", "1.4"]})
    for i in range(10):
        c.send(
            1 + i * 30, True, {"id": 1 + i, "method": "blockchain.headers.subscribe", "params": []}
        )
        c.send(
            1.05 + i * 30, False, {"id": 1 + i, "result": {"height": 800000 + i, "hex": "00" * 80}}
        )
    return c


def jsonrpc_api_session(
    client: tuple[str, int] = ("10.1.0.8", 50003),
    server: tuple[str, int] = ("10.9.0.4", 8545),
    start: float = 1_764_000_000.0,
) -> Conversation:
    """A generic JSON-RPC API client (not mining) on a port pools also use."""
    c = Conversation(client, server, start)
    for i in range(12):
        c.send(
            0.1 + i, True, {"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []}
        )
        c.send(0.12 + i, False, {"jsonrpc": "2.0", "id": i, "result": hex(19_000_000 + i)})
    return c


def ethproxy_session(
    client: tuple[str, int] = ("10.1.0.11", 50011),
    server: tuple[str, int] = ("10.9.0.11", 4444),
    start: float = 1_764_000_000.0,
    shares: int = 12,
    interval: float = 5.0,
    wallet: str = "0x9c99d212f7e5daa18ab50810e0fd255d1f04303b",
) -> Conversation:
    """An eth-proxy GPU miner (Ethash family): login, getWork polling, submits, hash rate."""
    c = Conversation(client, server, start)
    c.send(
        0.1,
        True,
        {
            "worker": "gpu1",
            "jsonrpc": "2.0",
            "params": [wallet, "x"],
            "id": 2,
            "method": "eth_submitLogin",
        },
    )
    c.send(0.12, False, {"jsonrpc": "2.0", "id": 2, "result": True})
    boundary = "0x" + (2**256 // (4 * 10**9)).to_bytes(32, "big").hex()
    work = ["0x" + "41" * 32, "0x" + "71" * 32, boundary]
    for i in range(shares):
        t = 1 + i * interval
        c.send(
            t,
            True,
            {"worker": "", "jsonrpc": "2.0", "params": [], "id": 3, "method": "eth_getWork"},
        )
        c.send(t + 0.02, False, {"jsonrpc": "2.0", "id": 3, "result": work})
        c.send(
            t + 2,
            True,
            {
                "id": 4,
                "jsonrpc": "2.0",
                "method": "eth_submitWork",
                "params": ["0x" + f"{i:016x}", work[0], "0x" + "99" * 32],
            },
        )
        c.send(t + 2.02, False, {"jsonrpc": "2.0", "id": 4, "result": True})
    c.send(
        shares * interval,
        True,
        {
            "id": 6,
            "jsonrpc": "2.0",
            "method": "eth_submitHashrate",
            "params": [hex(800_000_000), "0x" + "59" * 32],
        },
    )
    return c


def getwork_session(
    client: tuple[str, int] = ("10.1.0.12", 50012),
    server: tuple[str, int] = ("10.9.0.12", 8332),
    start: float = 1_764_000_000.0,
) -> Conversation:
    """A getblocktemplate miner over HTTP with keep-alive, answered by the pool."""
    c = Conversation(client, server, start)
    body = json.dumps(
        {
            "id": 0,
            "method": "getblocktemplate",
            "params": [{"capabilities": ["coinbasetxn", "workid"]}],
        }
    )
    req = (
        f"POST / HTTP/1.1\r\nHost: solo.pool.example:8332\r\nAuthorization: Basic "
        f"bWluZXIxOng=\r\nUser-Agent: cgminer 4.12.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    result = json.dumps(
        {
            "id": 0,
            "error": None,
            "result": {
                "previousblockhash": "00" * 32,
                "target": "00000000ffff" + "00" * 26,
                "height": 840000,
            },
        }
    )
    chunked = f"{len(result):x}\r\n{result}\r\n0\r\n\r\n"
    resp = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{chunked}"
    )
    for i in range(3):
        c.send(0.1 + i * 30, True, req)
        c.send(0.15 + i * 30, False, resp)
    return c


def web_session(
    client: tuple[str, int] = ("10.1.0.13", 50013),
    server: tuple[str, int] = ("10.9.0.13", 80),
    start: float = 1_764_000_000.0,
) -> Conversation:
    """An ordinary web page load: not mining."""
    c = Conversation(client, server, start)
    c.send(0.1, True, "GET /index.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
    page = "<html><body>" + "hello " * 300 + "</body></html>"
    c.send(0.2, False, f"HTTP/1.1 200 OK\r\nContent-Length: {len(page)}\r\n\r\n{page}")
    return c


def tls_client_hello(sni: str) -> bytes:
    """A minimal TLS 1.3 ClientHello record naming ``sni`` (random bytes where secrets go)."""
    name = sni.encode()
    ext = b"\x00\x00" + (len(name) + 5).to_bytes(2, "big") + (len(name) + 3).to_bytes(2, "big")
    ext += b"\x00" + len(name).to_bytes(2, "big") + name
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(ext).to_bytes(2, "big") + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs

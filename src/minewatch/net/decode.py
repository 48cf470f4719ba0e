"""Column-wise decoding of link, network and transport headers for a whole batch.

Input is a :class:`~minewatch.sources.pcap.RawBatch`; output is one NumPy array per field.
No Python code runs per packet: every step is a vectorised gather over the batch buffer,
with a mask for packets that end before a header does.

Covered: Ethernet (with up to two VLAN/QinQ tags), Linux cooked captures (SLL and SLL2),
BSD loopback/NULL, raw IP (DLT 12/14/101/228/229), PPP and PPP-in-HDLC framing; IPv4 (with
options, non-first fragments marked), IPv6 (with hop-by-hop, routing and destination-option
extension headers), two levels of tunnelling (IP-in-IP: 4in4, 6in4, 4in6, 6in6;
GTP-U on UDP 2152, as on the core links of a mobile operator); TCP and UDP.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from minewatch.sources.pcap import RawBatch

# Link types (tcpdump.org/linktypes.html).
DLT_NULL, DLT_EN10MB, DLT_PPP, DLT_RAW, DLT_PPP_HDLC = 0, 1, 9, 101, 50
DLT_LOOP, DLT_LINUX_SLL, DLT_LINUX_SLL2, DLT_IPV4, DLT_IPV6 = 108, 113, 276, 228, 229
DLT_RAW_ALT = (12, 14)

TCP, UDP = 6, 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class Packets:
    """Decoded columns of a batch. ``ok`` marks packets with a usable TCP/UDP header."""

    ok: np.ndarray  # bool
    ts_us: np.ndarray  # int64
    ipver: np.ndarray  # uint8 (4 or 6, 0 when not IP)
    src_hi: np.ndarray  # uint64 (0 for IPv4)
    src_lo: np.ndarray  # uint64 (the IPv4 address for IPv4)
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray  # uint8
    sport: np.ndarray  # uint16 as int32
    dport: np.ndarray
    seq: np.ndarray  # uint32 as int64
    flags: np.ndarray  # uint8
    pay_off: np.ndarray  # int64 offset of the transport payload in the buffer
    pay_len: np.ndarray  # int64 length of the transport payload (0 when none)
    wire_len: np.ndarray  # int64 IP length (header + payload) as the packet said
    flow: np.ndarray  # uint64 direction-free flow key
    dirkey: np.ndarray  # uint64 key of the flow direction (src->dst)
    rdirkey: np.ndarray  # uint64 key of the opposite direction (dst->src)


def _u8(buf: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return buf[np.minimum(idx, len(buf) - 1)].astype(np.int64)


def _be16(buf: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (_u8(buf, idx) << 8) | _u8(buf, idx + 1)


def _be32(buf: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (_be16(buf, idx) << 16) | _be16(buf, idx + 2)


def _be64(buf: np.ndarray, idx: np.ndarray) -> np.ndarray:
    hi = _be32(buf, idx).astype(np.uint64)
    lo = _be32(buf, idx + 4).astype(np.uint64)
    return (hi << np.uint64(32)) | lo


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of a uint64 column."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def endpoint_hash(hi: np.ndarray, lo: np.ndarray, port: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(_mix(hi) ^ lo ^ (port.astype(np.uint64) << np.uint64(48)))


def _l3_offsets(buf: np.ndarray, b: RawBatch) -> tuple[np.ndarray, np.ndarray]:
    """Offset of the IP header and its version (4, 6, or 0 when not IP) for each packet."""
    off = b.offset
    link = b.linktype
    l3 = np.full(len(off), -1, dtype=np.int64)
    ver = np.zeros(len(off), dtype=np.int64)

    eth = link == DLT_EN10MB
    if eth.any():
        et_off = off + 12
        et = _be16(buf, et_off)
        for _ in range(2):  # VLAN (802.1Q), QinQ (802.1ad), old QinQ
            tagged = eth & ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100))
            et_off = np.where(tagged, et_off + 4, et_off)
            et = np.where(tagged, _be16(buf, et_off), et)
        l3 = np.where(eth & (et == 0x0800), et_off + 2, l3)
        ver = np.where(eth & (et == 0x0800), 4, ver)
        l3 = np.where(eth & (et == 0x86DD), et_off + 2, l3)
        ver = np.where(eth & (et == 0x86DD), 6, ver)

    sll = link == DLT_LINUX_SLL
    if sll.any():
        et = _be16(buf, off + 14)
        l3 = np.where(sll & ((et == 0x0800) | (et == 0x86DD)), off + 16, l3)
        ver = np.where(sll & (et == 0x0800), 4, np.where(sll & (et == 0x86DD), 6, ver))

    sll2 = link == DLT_LINUX_SLL2
    if sll2.any():
        et = _be16(buf, off)
        l3 = np.where(sll2 & ((et == 0x0800) | (et == 0x86DD)), off + 20, l3)
        ver = np.where(sll2 & (et == 0x0800), 4, np.where(sll2 & (et == 0x86DD), 6, ver))

    null = (link == DLT_NULL) | (link == DLT_LOOP)
    if null.any():
        le = _u8(buf, off) | (_u8(buf, off + 1) << 8) | (_u8(buf, off + 2) << 16)
        le |= _u8(buf, off + 3) << 24
        be = _be32(buf, off)
        fam = np.where(link == DLT_LOOP, be, np.where(le < 256, le, be))
        v4 = null & (fam == 2)
        v6 = null & np.isin(fam, (10, 24, 28, 30))
        l3 = np.where(v4 | v6, off + 4, l3)
        ver = np.where(v4, 4, np.where(v6, 6, ver))

    raw = np.isin(link, (DLT_RAW, DLT_IPV4, DLT_IPV6, *DLT_RAW_ALT))
    if raw.any():
        nib = _u8(buf, off) >> 4
        good = raw & ((nib == 4) | (nib == 6))
        l3 = np.where(good, off, l3)
        ver = np.where(good, nib, ver)

    ppp = (link == DLT_PPP) | (link == DLT_PPP_HDLC)
    if ppp.any():
        hdlc = (_u8(buf, off) == 0xFF) & (_u8(buf, off + 1) == 0x03)
        p_off = np.where(hdlc, off + 2, off)
        proto = _be16(buf, p_off)
        v4 = ppp & (proto == 0x0021)
        v6 = ppp & (proto == 0x0057)
        l3 = np.where(v4 | v6, p_off + 2, l3)
        ver = np.where(v4, 4, np.where(v6, 6, ver))

    return l3, ver


_FIELDS = ("ok", "ver", "proto", "l4", "ip_end", "src_hi", "src_lo", "dst_hi", "dst_lo", "wire")


def _ip_layer(
    buf: np.ndarray, l3: np.ndarray, ver: np.ndarray, end: np.ndarray, ok: np.ndarray
) -> dict[str, np.ndarray]:
    """Decode the IP header at ``l3`` (version ``ver``) for packets where ``ok``."""
    n = len(l3)
    v4 = ok & (ver == 4) & (l3 + 20 <= end)
    v6 = ok & (ver == 6) & (l3 + 40 <= end)
    ihl = (_u8(buf, l3) & 0x0F) * 4
    tot4 = _be16(buf, l3 + 2)
    frag = _be16(buf, l3 + 6)
    v4 &= ihl >= 20
    later_frag = v4 & ((frag & 0x1FFF) != 0)

    plen6 = _be16(buf, l3 + 4)
    nh = _u8(buf, l3 + 6)
    off6 = l3 + 40
    for _ in range(3):  # hop-by-hop (0), routing (43), destination options (60)
        ext = v6 & ((nh == 0) | (nh == 43) | (nh == 60))
        nxt = _u8(buf, off6)
        elen = (_u8(buf, off6 + 1) + 1) * 8
        nh = np.where(ext, nxt, nh)
        off6 = np.where(ext, off6 + elen, off6)
    frag6 = v6 & (nh == 44)
    later_frag |= frag6 & ((_be16(buf, off6 + 2) & 0xFFF8) != 0)
    nh = np.where(frag6, _u8(buf, off6), nh)
    off6 = np.where(frag6, off6 + 8, off6)

    zero = np.zeros(n, dtype=np.uint64)
    return {
        "ok": (v4 | v6) & ~later_frag,
        "ver": np.where(v4, 4, np.where(v6, 6, 0)),
        "proto": np.where(v4, _u8(buf, l3 + 9), np.where(v6, nh, 0)),
        "l4": np.where(v4, l3 + ihl, off6),
        "ip_end": np.where(
            v4 & (tot4 >= ihl),
            np.minimum(end, l3 + tot4),
            np.where(v6, np.minimum(end, l3 + 40 + plen6), end),
        ),
        "src_hi": np.where(v6, _be64(buf, l3 + 8), zero),
        "src_lo": np.where(v4, _be32(buf, l3 + 12).astype(np.uint64), _be64(buf, l3 + 16)),
        "dst_hi": np.where(v6, _be64(buf, l3 + 24), zero),
        "dst_lo": np.where(v4, _be32(buf, l3 + 16).astype(np.uint64), _be64(buf, l3 + 32)),
        "wire": np.where(v4, tot4, plen6 + 40),
    }


def _inner(buf: np.ndarray, ip: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Packets that carry another IP packet (IP-in-IP, GTP-U), and where it starts."""
    ok, proto, l4, ip_end = ip["ok"], ip["proto"], ip["l4"], ip["ip_end"]
    ipip = ok & ((proto == 4) | (proto == 41))
    inner = np.where(ipip, l4, -1)
    # GTP-U (3GPP TS 29.281) on UDP 2152: version 1, PT 1, message type 255 (G-PDU).
    udp = ok & (proto == UDP) & (l4 + 16 <= ip_end)
    gtp = udp & ((_be16(buf, l4) == 2152) | (_be16(buf, l4 + 2) == 2152))
    g = l4 + 8
    gflags = _u8(buf, g)
    gtp &= ((gflags >> 5) == 1) & ((gflags & 0x10) != 0) & (_u8(buf, g + 1) == 0xFF)
    opt = (gflags & 0x07) != 0
    goff = np.where(opt, g + 12, g + 8)
    ext_type = np.where(gflags & 0x04, _u8(buf, g + 11), 0)
    for _ in range(2):  # extension headers (e.g. the 5G PDU session container)
        more = gtp & (ext_type != 0)
        elen = _u8(buf, goff) * 4
        ext_type = np.where(more, _u8(buf, goff + np.maximum(elen, 1) - 1), ext_type)
        goff = np.where(more, goff + np.maximum(elen, 4), goff)
    nib = _u8(buf, goff) >> 4
    gtp &= (nib == 4) | (nib == 6)
    inner = np.where(gtp, goff, inner)
    ver = np.where(ipip, np.where(proto == 4, 4, 6), np.where(gtp, nib, 0))
    return inner, ver


def decode(b: RawBatch) -> Packets:
    """Decode every packet of the batch at once."""
    buf = np.frombuffer(b.buf, dtype=np.uint8)
    end = b.offset + b.caplen.astype(np.int64)  # one past the last captured byte
    l3, ver = _l3_offsets(buf, b)
    ip = _ip_layer(buf, l3, ver, end, l3 >= 0)
    for _ in range(2):  # up to two levels of tunnelling
        inner, iver = _inner(buf, ip)
        tun = inner >= 0
        if not tun.any():
            break
        rows = np.flatnonzero(tun)  # decode the inner headers of tunnelled packets only
        sub = _ip_layer(buf, inner[rows], iver[rows], end[rows], tun[rows])
        for k in _FIELDS:
            col = ip[k].copy()
            col[rows] = sub[k]
            ip[k] = col

    ok, proto, l4, ip_end = ip["ok"], ip["proto"], ip["l4"], ip["ip_end"]
    tcp = ok & (proto == TCP) & (l4 + 20 <= ip_end)
    udp = ok & (proto == UDP) & (l4 + 8 <= ip_end)
    sport = np.where(tcp | udp, _be16(buf, l4), 0)
    dport = np.where(tcp | udp, _be16(buf, l4 + 2), 0)
    seq = np.where(tcp, _be32(buf, l4 + 4), 0)
    doff = (_u8(buf, l4 + 12) >> 4) * 4
    tcp &= doff >= 20
    flags = np.where(tcp, _u8(buf, l4 + 13), 0)
    pay_off = np.where(tcp, l4 + doff, np.where(udp, l4 + 8, 0))
    pay_len = np.where(tcp | udp, np.maximum(ip_end - pay_off, 0), 0)
    src_hi, src_lo, dst_hi, dst_lo = ip["src_hi"], ip["src_lo"], ip["dst_hi"], ip["dst_lo"]

    a = endpoint_hash(src_hi, src_lo, sport)
    c = endpoint_hash(dst_hi, dst_lo, dport)
    with np.errstate(over="ignore"):
        p = proto.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        flow = _mix((a ^ c) + (a & c) * np.uint64(3) + p)  # symmetric in a and c
        dirkey = _mix(a * np.uint64(0x100000001B3) ^ c ^ p)
        rdirkey = _mix(c * np.uint64(0x100000001B3) ^ a ^ p)
    return Packets(
        ok=tcp | udp,
        ts_us=b.ts_us,
        ipver=ip["ver"].astype(np.uint8),
        src_hi=src_hi,
        src_lo=src_lo,
        dst_hi=dst_hi,
        dst_lo=dst_lo,
        proto=np.where(tcp | udp, proto, 0).astype(np.uint8),
        sport=sport.astype(np.int32),
        dport=dport.astype(np.int32),
        seq=seq,
        flags=flags.astype(np.uint8),
        pay_off=pay_off,
        pay_len=pay_len,
        wire_len=ip["wire"],
        flow=flow,
        dirkey=dirkey,
        rdirkey=rdirkey,
    )


@functools.lru_cache(maxsize=1 << 16)
def ip_text(ver: int, hi: int, lo: int) -> str:
    """The printable address of one endpoint (used only for reported sessions).

    Cached: the same servers and clients come back in session after session, and
    :mod:`ipaddress` costs several microseconds per address.
    """
    if ver == 4:
        v = int(lo) & 0xFFFFFFFF
        return f"{v >> 24}.{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}.{v & 0xFF}"
    import ipaddress

    return str(ipaddress.IPv6Address((int(hi) << 64) | int(lo)))

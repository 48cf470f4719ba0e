"""pcap and pcapng files and live pcap streams, read in columnar batches.

The reader walks record headers only; packet bytes stay in the chunk buffer and are decoded
later, column-wise, by :mod:`minewatch.net.decode`. A batch is one buffer plus NumPy arrays
of offsets, captured lengths, timestamps and link types, so memory is bounded by the chunk
size, never by the file size.

Damage is handled, counted and reported, never fatal once the file is recognised:
- a record header that cannot be right (captured length beyond any snap length, or larger
  than the original length) makes the reader search forward for the next plausible record
  and count the bytes it skipped;
- a file that ends inside a record is reported as truncated; what came before is kept.

Why not dpkt's readers: they build one Python object per packet; this reader does only the
header walk per packet and leaves decoding to NumPy (measured in ``benchmarks/scan.py``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from minewatch.errors import InputError

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
# Largest packet any capture tool writes (tcpdump's maximum snap length).
MAX_SNAPLEN = 262_144
CHUNK = 8 << 20
BATCH_PACKETS = 65_536


@dataclass
class RawBatch:
    """Packets of one chunk: bytes live in ``buf``; per-packet columns index into it."""

    buf: bytes
    offset: np.ndarray  # int64, start of the link-layer header in buf
    caplen: np.ndarray  # int32, bytes captured
    ts_us: np.ndarray  # int64, microseconds since the epoch (UTC)
    linktype: np.ndarray  # int32, DLT/LINKTYPE of the packet's interface

    def __len__(self) -> int:
        return len(self.offset)


@dataclass
class ReadStats:
    """What the reader saw; reported on stderr by the CLI."""

    path: str
    format: str = ""
    packets: int = 0
    bytes: int = 0
    skipped_bytes: int = 0
    corrupt_records: int = 0
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)


def _chunks(fh: BinaryIO, live: bool) -> Iterator[bytes]:
    """Bytes from a file or a pipe. For pipes, yield whatever has arrived (low latency)."""
    fd = None
    if live:
        try:
            fd = fh.fileno()
        except (OSError, AttributeError, ValueError):
            fd = None  # an in-memory stream
    while True:
        data = os.read(fd, 1 << 20) if fd is not None else fh.read(CHUNK)
        if not data:
            return
        yield data


class _Walker:
    """Shared state of the two walkers: the batch being built and the statistics.

    The pcap walker records only record offsets; timestamps and lengths are then gathered
    from the buffer for the whole batch at once (``pcap_header``). The pcapng walker, whose
    blocks vary, fills the per-packet lists itself.
    """

    def __init__(self, stats: ReadStats) -> None:
        self.stats = stats
        self.offs: list[int] = []
        self.caps: list[int] = []
        self.tss: list[int] = []
        self.links: list[int] = []
        # For pcap: (byte order, fraction units per second, link type).
        self.pcap_header: tuple[str, int, int] | None = None

    def take(self, buf: bytes) -> RawBatch:
        offset = np.asarray(self.offs, dtype=np.int64)
        if self.pcap_header is not None:
            endian, per_sec, link = self.pcap_header
            u8 = np.frombuffer(buf, dtype=np.uint8)
            head = u8[(offset - 16)[:, None] + np.arange(12)]
            words = np.ascontiguousarray(head).view(endian + "u4").reshape(-1, 3)
            sec = words[:, 0].astype(np.int64)
            frac = np.minimum(words[:, 1].astype(np.int64), per_sec - 1)
            ts_us = sec * 1_000_000 + (frac * 1_000_000) // per_sec
            batch = RawBatch(
                buf=buf,
                offset=offset,
                caplen=words[:, 2].astype(np.int32),
                ts_us=ts_us,
                linktype=np.full(len(offset), link, dtype=np.int32),
            )
        else:
            batch = RawBatch(
                buf=buf,
                offset=offset,
                caplen=np.asarray(self.caps, dtype=np.int32),
                ts_us=np.asarray(self.tss, dtype=np.int64),
                linktype=np.asarray(self.links, dtype=np.int32),
            )
        self.stats.packets += len(self.offs)
        self.offs, self.caps, self.tss, self.links = [], [], [], []
        return batch


def _drive(
    chunks: Iterator[bytes],
    buf: bytes,
    walk: Callable[[bytes, bool], tuple[int, bool]],
    w: _Walker,
    stats: ReadStats,
    unit: str,
) -> Iterator[RawBatch]:
    """Feed chunks to a header walker, yielding batches; report a cut-short end."""
    for data in chunks:
        buf = buf + data if buf else data
        while True:
            used, more = walk(buf, False)
            if w.offs:
                yield w.take(buf)
            stats.bytes += used
            buf = buf[used:]
            if not more:
                break
    while buf:
        used, more = walk(buf, True)
        if w.offs:
            yield w.take(buf)
        stats.bytes += used
        buf = buf[used:]
        if not more:
            break
    if buf:
        stats.truncated = True
        stats.skipped_bytes += len(buf)
        stats.note(
            f"file ends inside a {unit} at byte {stats.bytes} ({len(buf)} bytes dropped); "
            "the capture was cut short"
        )


def _pcap_batches(chunks: Iterator[bytes], head: bytes, stats: ReadStats) -> Iterator[RawBatch]:
    endian, per_sec = PCAP_MAGICS[head[:4]]
    if len(head) < 24:
        raise InputError(
            "pcap global header is cut short",
            path=stats.path,
            hint="the file is truncated before the first packet",
        )
    _, _, _, _, snaplen, link = struct.unpack(endian + "HHiIII", head[4:24])
    linktype = link & 0x0FFF_FFFF
    limit = max(snaplen, 65_535) if snaplen <= MAX_SNAPLEN else MAX_SNAPLEN
    stats.format = "pcap"
    rec = struct.Struct(endian + "IIII")
    caplen_at = struct.Struct(endian + "I").unpack_from
    w = _Walker(stats)
    w.pcap_header = (endian, per_sec, linktype)
    buf = head[24:]

    def plausible(b: bytes, o: int, last_sec: int) -> bool:
        if o + 16 > len(b):
            return True
        sec, frac, incl, orig = rec.unpack_from(b, o)
        if incl > limit or incl > orig or frac >= per_sec:
            return False
        return not (last_sec >= 0 and abs(sec - last_sec) > 86_400 * 30)

    def walk(b: bytes, final: bool) -> tuple[int, bool]:
        o = 0
        n = len(b)
        offs = w.offs
        append = offs.append
        room = BATCH_PACKETS - len(offs)  # records this batch still takes
        while o + 16 <= n:
            (incl,) = caplen_at(b, o + 8)
            if incl > limit:
                # A header that cannot be right: search for the next plausible record.
                stats.corrupt_records += 1
                stats.note(f"corrupt record header at byte {stats.bytes + o}; resynchronising")
                last_sec = rec.unpack_from(b, offs[-1] - 16)[0] if offs else -1
                p = o + 1
                while p + 16 <= n:
                    nxt = p + 16 + caplen_at(b, p + 8)[0]
                    if plausible(b, p, last_sec) and plausible(b, nxt, last_sec):
                        break
                    p += 1
                if p + 16 > n and not final:
                    return o, True
                stats.skipped_bytes += p - o
                o = p
                continue
            o += 16
            nxt = o + incl
            if nxt > n:
                o -= 16
                break
            append(o)
            o = nxt
            room -= 1
            if room <= 0:
                return o, True
        return o, False

    yield from _drive(chunks, buf, walk, w, stats, "record")


def _pcapng_batches(chunks: Iterator[bytes], head: bytes, stats: ReadStats) -> Iterator[RawBatch]:
    stats.format = "pcapng"
    w = _Walker(stats)
    buf = head
    endian = "<"
    # Per interface: (linktype, microseconds per timestamp unit as a float).
    ifaces: list[tuple[int, float]] = []

    def tsresol(body: bytes, o: int, end: int) -> float:
        while o + 4 <= end:
            code, length = struct.unpack_from(endian + "HH", body, o)
            if code == 0:
                break
            if code == 9 and length >= 1:
                r = body[o + 4]
                units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** (r & 0x7F)
                return 1_000_000 / units
            o += 4 + ((length + 3) & ~3)
        return 1.0

    def walk(b: bytes, final: bool) -> tuple[int, bool]:
        nonlocal endian
        o = 0
        n = len(b)
        while o + 12 <= n:
            btype_raw = b[o : o + 4]
            if btype_raw == PCAPNG_SHB:
                if o + 12 > n:
                    break
                bom = b[o + 8 : o + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise InputError(
                        "pcapng section header has an unknown byte-order magic",
                        path=stats.path,
                        hint="the file is damaged at its start",
                    )
            btype, blen = struct.unpack_from(endian + "II", b, o)
            if blen < 12 or blen % 4 or blen > MAX_SNAPLEN + 4096:
                stats.corrupt_records += 1
                stats.note(f"corrupt pcapng block at byte {stats.bytes + o}; resynchronising")
                p = o + 4
                while p + 12 <= n:
                    t2, l2 = struct.unpack_from(endian + "II", b, p)
                    if (
                        t2 in (1, 3, 5, 6)
                        and 12 <= l2 <= MAX_SNAPLEN + 4096
                        and l2 % 4 == 0
                        and p + l2 <= n
                        and struct.unpack_from(endian + "I", b, p + l2 - 4)[0] == l2
                    ):
                        break
                    p += 4
                if p + 12 > n and not final:
                    return o, True
                stats.skipped_bytes += p - o
                o = p
                continue
            if o + blen > n:
                break
            if btype == 1:  # interface description
                link = struct.unpack_from(endian + "H", b, o + 8)[0]
                ifaces.append((link, tsresol(b, o + 16, o + blen - 4)))
            elif btype == 6 and o + 28 <= o + blen:  # enhanced packet
                iid, hi, lo, cap = struct.unpack_from(endian + "IIII", b, o + 8)
                if iid < len(ifaces) and o + 28 + cap <= o + blen:
                    link, res = ifaces[iid]
                    w.offs.append(o + 28)
                    w.caps.append(cap)
                    w.tss.append(int(((hi << 32) | lo) * res))
                    w.links.append(link)
                else:
                    stats.corrupt_records += 1
                    stats.note(f"packet block at byte {stats.bytes + o} names no interface")
            elif btype == 3 and ifaces:  # simple packet: no timestamp
                orig = struct.unpack_from(endian + "I", b, o + 8)[0]
                cap = min(orig, blen - 16)
                w.offs.append(o + 12)
                w.caps.append(cap)
                w.tss.append(0)
                w.links.append(ifaces[0][0])
            elif btype == 2 and o + 28 <= o + blen:  # obsolete packet block
                iid, _drops, hi, lo, cap = struct.unpack_from(endian + "HHIII", b, o + 8)
                if iid < len(ifaces):
                    link, res = ifaces[iid]
                    w.offs.append(o + 28)
                    w.caps.append(min(cap, blen - 32))
                    w.tss.append(int(((hi << 32) | lo) * res))
                    w.links.append(link)
            o += blen
            if len(w.offs) >= BATCH_PACKETS:
                return o, True
        return o, False

    yield from _drive(chunks, buf, walk, w, stats, "block")


def read_batches(
    source: str | Path | BinaryIO, stats: ReadStats | None = None
) -> Iterator[RawBatch]:
    """Yield :class:`RawBatch` es from a pcap/pcapng file path, ``"-"`` (stdin) or a stream.

    Raises :class:`InputError` only when the input is not a capture at all.
    """
    if stats is None:
        stats = ReadStats(path=str(source) if not hasattr(source, "read") else "<stream>")
    if isinstance(source, str | Path) and str(source) == "-":
        import sys

        yield from _read_stream(sys.stdin.buffer, stats, live=True)
        return
    if isinstance(source, str | Path):
        p = Path(source)
        if not p.exists():
            raise InputError("no such file", path=p, hint="check the path")
        if p.is_dir():
            raise InputError("is a directory, not a capture file", path=p)
        try:
            fh = p.open("rb")
        except OSError as exc:
            raise InputError(f"cannot open: {exc.strerror}", path=p) from exc
        with fh:
            yield from _read_stream(fh, stats, live=False)
        return
    yield from _read_stream(source, stats, live=True)


def _read_stream(fh: BinaryIO, stats: ReadStats, live: bool) -> Iterator[RawBatch]:
    chunks = _chunks(fh, live)
    head = b""
    for data in chunks:
        head += data
        if len(head) >= 24:
            break
    if len(head) < 4:
        raise InputError(
            "empty or too short to be a capture" if head else "empty input",
            path=stats.path,
            hint="give a pcap/pcapng file, e.g. written by `tcpdump -w FILE`",
        )
    magic = head[:4]
    if magic in PCAP_MAGICS:
        yield from _pcap_batches(chunks, head, stats)
    elif magic == PCAPNG_SHB:
        yield from _pcapng_batches(chunks, head, stats)
    else:
        looks_text = all(32 <= c < 127 or c in (9, 10, 13) for c in head[:64])
        kind = "a text file" if looks_text else f"magic bytes {magic.hex()}"
        raise InputError(
            f"not a pcap or pcapng capture ({kind})",
            path=stats.path,
            hint="give a file written by `tcpdump -w` or Wireshark, or `-` for a pcap stream",
        )

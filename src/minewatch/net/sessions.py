"""TCP reassembly and message framing for the sessions worth reading.

Only sessions that may carry mining traffic reach this module (the scanner drops the rest
column-wise), so it is written for clarity over raw speed. It handles what real captures
contain: segments out of order, retransmissions and overlaps, messages split across
segments and several messages in one segment, captures that begin mid-session (no SYN),
lost segments (the gap is skipped and the damaged message dropped and counted), absurdly
long lines and streams cut mid-message.

Two framings are read: newline-delimited JSON-RPC (Stratum and friends) and HTTP/1.x
messages with ``Content-Length`` or chunked bodies (getwork, getblocktemplate, eth-proxy
over HTTP).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

MASK = 0xFFFF_FFFF
HALF = 0x8000_0000
MAX_LINE = 64 * 1024  # longer lines are not Stratum: dropped and counted
MAX_PENDING = 256 * 1024  # out-of-order bytes held before a gap is declared
MAX_HTTP = 256 * 1024


@dataclass
class StreamStats:
    gaps: int = 0  # holes in the sequence space that were skipped
    retransmitted: int = 0  # bytes received again
    oversized: int = 0  # lines or HTTP messages beyond the limits, dropped
    cut: int = 0  # bytes of an unfinished message when the stream ended


class HalfStream:
    """One direction of a TCP connection: sequence space to an ordered byte buffer."""

    __slots__ = ("buf", "need", "next_seq", "pending", "pending_bytes", "resync", "stats")

    def __init__(self, stats: StreamStats, isn: int | None = None) -> None:
        self.next_seq: int | None = (isn + 1) & MASK if isn is not None else None
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        self.buf = bytearray()
        self.resync = False  # bytes before the next message boundary are damaged
        self.stats = stats
        self.need = 0  # HTTP: buffer length the message at its start needs to be complete

    def feed(self, seq: int, data: bytes) -> None:
        if not data:
            return
        if self.next_seq is None:
            self.next_seq = seq
        ahead = (seq - self.next_seq) & MASK
        if ahead >= HALF:  # starts before what we have: a retransmission or an overlap
            behind = (self.next_seq - seq) & MASK
            if behind >= len(data):
                self.stats.retransmitted += len(data)
                return
            self.stats.retransmitted += behind
            data = data[behind:]
            ahead = 0
        if ahead == 0:
            self._accept(data)
            self._drain()
            return
        old = self.pending.get(seq)
        if old is None or len(old) < len(data):
            self.pending_bytes += len(data) - (len(old) if old else 0)
            self.pending[seq] = data
        if self.pending_bytes > MAX_PENDING:
            self.skip_gap()

    def _accept(self, data: bytes) -> None:
        assert self.next_seq is not None
        self.buf += data
        self.next_seq = (self.next_seq + len(data)) & MASK

    def _drain(self) -> None:
        while self.pending:
            assert self.next_seq is not None
            progressed = False
            for seq in list(self.pending):
                ahead = (seq - self.next_seq) & MASK
                if ahead != 0 and ahead < HALF:
                    continue
                data = self.pending.pop(seq)
                self.pending_bytes -= len(data)
                if ahead >= HALF:
                    behind = (self.next_seq - seq) & MASK
                    self.stats.retransmitted += min(behind, len(data))
                    data = data[behind:]
                if data:
                    self._accept(data)
                progressed = True
            if not progressed:
                return

    def skip_gap(self) -> None:
        """Give up on the missing bytes before the earliest held segment."""
        if not self.pending or self.next_seq is None:
            return
        base = self.next_seq
        first = min(self.pending, key=lambda s: (s - base) & MASK)
        self.stats.gaps += 1
        self.resync = True
        self.next_seq = first
        self._drain()

    def finish(self) -> None:
        while self.pending:
            self.skip_gap()


def take_lines(h: HalfStream) -> list[bytes]:
    """Complete newline-terminated lines from the buffer (damaged and oversized ones dropped)."""
    buf = h.buf
    if h.resync:
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > MAX_LINE:
                h.stats.oversized += 1
                buf.clear()
            return []
        del buf[: nl + 1]
        h.resync = False
    end = buf.rfind(b"\n")
    if end < 0:
        if len(buf) > MAX_LINE:
            h.stats.oversized += 1
            buf.clear()
            h.resync = True
        return []
    chunk = bytes(buf[:end])
    del buf[: end + 1]
    lines = []
    for line in chunk.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_LINE:
            h.stats.oversized += 1
            continue
        lines.append(line)
    return lines


@dataclass
class HttpMessage:
    start_line: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("HTTP/")


_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"HTTP/")


def looks_http(data: bytes) -> bool:
    return data.startswith(_METHODS)


def _dechunk(body: bytearray | bytes) -> tuple[bytes, int] | None:
    """Decode a chunked body; returns (body, bytes consumed) or None when incomplete."""
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(body[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return (bytes(out), len(body))  # damaged: keep what we have
        pos = eol + 2
        if size == 0:
            end = body.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return bytes(out), end + 4
        if len(body) < pos + size + 2:
            return None
        out += body[pos : pos + size]
        pos += size + 2


def take_http(h: HalfStream, final: bool = False) -> list[HttpMessage]:
    """Complete HTTP/1.x messages from the buffer."""
    buf = h.buf
    out: list[HttpMessage] = []
    if not final and not h.resync and len(buf) < h.need:
        return out  # the message at the start of the buffer is still incomplete
    h.need = 0
    while buf:
        if h.resync or not looks_http(bytes(buf[:8])):
            nxt = min((i for i in (buf.find(m) for m in _METHODS) if i > 0), default=-1)
            if nxt < 0:
                if final or len(buf) > MAX_HTTP:
                    buf.clear()
                return out
            del buf[:nxt]
            h.resync = False
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > MAX_HTTP:
                h.stats.oversized += 1
                buf.clear()
            return out
        head = bytes(buf[:head_end]).decode("latin-1")
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        body_start = head_end + 4
        msg = HttpMessage(lines[0], headers)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            res = _dechunk(buf[body_start:])
            if res is None:
                if final:
                    h.stats.cut += len(buf)
                    buf.clear()
                return out
            msg.body, used = res
            del buf[: body_start + used]
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = 0
            if length > MAX_HTTP:
                h.stats.oversized += 1
                buf.clear()
                return out
            if not msg.is_request and "content-length" not in headers:
                # A response without a length runs to the end of the connection.
                if not final:
                    h.need = sys.maxsize  # nothing to read before the stream ends
                    return out
                length = len(buf) - body_start
            if len(buf) < body_start + length:
                if final:
                    h.stats.cut += len(buf)
                    buf.clear()
                else:
                    h.need = body_start + length  # nothing to read before that
                return out
            msg.body = bytes(buf[body_start : body_start + length])
            del buf[: body_start + length]
        out.append(msg)
    return out

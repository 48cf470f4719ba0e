"""Packet-level mining detection: the streaming scanner behind ``minewatch scan``.

One :class:`Scanner` object holds all per-session state and is fed batch by batch; the
same object serves a file and a live ``tcpdump -w -`` stream, and :meth:`Scanner.flush`
ends it. Work per batch:

1. the batch is decoded column-wise (:mod:`minewatch.net.decode`);
2. DNS answers and SYNs are recorded (names of servers, initial sequence numbers);
3. payload-carrying TCP packets of sessions already found not to be mining are dropped with
   one vectorised membership test, so the Python code below runs only for the first few
   payload packets of each session and for the sessions that do carry mining protocols;
4. those packets are reassembled (:mod:`minewatch.net.sessions`) and read
   (:mod:`minewatch.net.stratum`);
5. per-session packet and byte counts are updated per batch with grouped NumPy reductions.

A session is reported when it ends (FIN/RST, idle timeout, end of input). In live mode a
session is also reported as soon as it is confirmed (``"final": false``), then again when it
ends (``"final": true``); consumers keep the last line per ``session_id``.
"""

from __future__ import annotations

import collections
import gc
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dpkt
import numpy as np

from minewatch.energy import COIN_ALGO, power_w_range
from minewatch.errors import InputError
from minewatch.net.behavior import SlidingDetector
from minewatch.net.decode import ACK, FIN, RST, SYN, Packets, decode, ip_text
from minewatch.net.flowagg import FlowAggregator
from minewatch.net.intel import MINER_PORTS, PoolIntel
from minewatch.net.sessions import HalfStream, StreamStats, looks_http, take_http, take_lines
from minewatch.net.stratum import (
    CLIENT_METHODS,
    SERVER_METHODS,
    StratumState,
    coin_from_host,
    split_login,
)
from minewatch.net.tls import client_hello_sni, is_client_hello
from minewatch.sources.pcap import RawBatch, ReadStats, read_batches

# Payload packets and bytes a session may show before it must have spoken a mining protocol.
UNDECIDED_PACKETS = 16
UNDECIDED_BYTES = 64 * 1024
SV2_CONFIDENCE = 0.5
BEHAVIOR_WINDOW_S = 60.0  # flow windows for the behaviour model (minewatch.net.behavior)
INTEL_ONLY_CONFIDENCE = 0.3


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _high_entropy(data: bytes) -> bool:
    """Bytes that look encrypted or random (as Noise handshakes and records do)."""
    if len(data) < 32:
        return False
    return len(set(data)) >= min(len(data), 256) * 0.6


class FlowSet:
    """A set of flow keys with a cheap vectorised membership test and bounded memory.

    Two generations: keys not seen for a whole generation (``span_s`` of capture time) are
    forgotten, so memory follows the number of recently active flows, not the file size.
    """

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.current: set[int] = set()
        self.previous: set[int] = set()
        self._arr = np.empty(0, dtype=np.uint64)
        self._dirty = False
        self._rotated_at: float | None = None

    def add(self, key: int) -> None:
        self.current.add(key)
        self._dirty = True

    def _array(self) -> np.ndarray:
        if self._dirty:
            keys = self.current | self.previous
            self._arr = np.fromiter(keys, dtype=np.uint64, count=len(keys))
            self._arr.sort()
            self._dirty = False
        return self._arr

    def contains(self, keys: np.ndarray) -> np.ndarray:
        arr = self._array()
        if len(arr) == 0 or len(keys) == 0:
            return np.zeros(len(keys), dtype=bool)
        pos = np.searchsorted(arr, keys)
        pos[pos == len(arr)] = 0
        hit = arr[pos] == keys
        if self.previous and hit.any():  # still active: carry forward, once per flow
            seen = np.unique(keys[hit])
            fresh = [k for k in seen.tolist() if k not in self.current]
            self.current.update(k for k in fresh if k in self.previous)
        return np.asarray(hit)

    def tick(self, now: float) -> None:
        if self._rotated_at is None:
            self._rotated_at = now
        elif now - self._rotated_at > self.span_s:
            self.previous = self.current
            self.current = set()
            self._rotated_at = now
            self._dirty = True

    def __len__(self) -> int:
        return len(self.current | self.previous)


@dataclass
class Endpoint:
    ver: int
    hi: int
    lo: int
    port: int
    _ip: str | None = field(default=None, repr=False, compare=False)

    @property
    def ip(self) -> str:
        if self._ip is None:  # computed once: records and the behaviour hook ask repeatedly
            self._ip = ip_text(self.ver, self.hi, self.lo)
        return self._ip


@dataclass
class Session:
    """One TCP connection under examination."""

    sid: int
    first_ts: float
    last_ts: float
    ends: dict[int, Endpoint]  # dirkey -> the sending endpoint of that direction
    client_dir: int | None = None
    mode: str = "new"  # new, json, http, sv2?, sv2, tls, intel, mining, other, dead
    framing: str = "json"  # how the payload is cut into messages: "json" lines or "http"
    halves: dict[int, HalfStream] = field(default_factory=dict)
    stats: StreamStats = field(default_factory=StreamStats)
    state: StratumState = field(default_factory=StratumState)
    payload_packets: int = 0
    payload_bytes: int = 0
    packets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    fin_or_rst: bool = False
    sni: str | None = None
    sv2_sizes: list[tuple[bool, int]] = field(default_factory=list)
    announced: bool = False

    def other(self, dirkey: int) -> int | None:
        return next((k for k in self.ends if k != dirkey), None)


@dataclass
class ScanCounters:
    packets: int = 0
    decoded: int = 0
    tcp_payload_packets: int = 0
    examined_packets: int = 0  # payload packets read by the Python session code
    sessions_examined: int = 0
    sessions_dropped: int = 0
    dns_answers: int = 0
    bad_dns: int = 0
    bad_json: int = 0
    gaps: int = 0
    oversized: int = 0
    detections: int = 0


class Scanner:
    """Streaming packet-level mining detector. Feed batches; collect detection dicts."""

    def __init__(
        self,
        intel: PoolIntel | None = None,
        *,
        min_confidence: float = 0.5,
        idle_s: float = 300.0,
        live: bool = False,
        on_detection: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.intel = intel if intel is not None else PoolIntel()
        self.min_confidence = min_confidence
        self.idle_s = idle_s
        self.live = live
        self.on_detection = on_detection
        self.sessions: dict[int, Session] = {}
        self.dead = FlowSet(idle_s)
        self.syn_now: dict[int, tuple[int, float]] = {}
        self.syn_old: dict[int, tuple[int, float]] = {}
        self.names: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._clients: set[int] = set()  # directions whose sender sent a pure SYN
        self._clients_old: set[int] = set()
        self.counters = ScanCounters()
        self.out: list[dict[str, Any]] = []
        self._next_sid = 1
        self._last_idle_check = -math.inf
        self._now = 0.0
        # Behaviour model over per-connection flow windows (TLS and other payload-less mining).
        self.flowagg = FlowAggregator(BEHAVIOR_WINDOW_S, idle_s, packet_stats=True)
        self.behavior = SlidingDetector(
            intel=self.intel, idle_s=max(idle_s, 900.0), every_record=live
        )
        self._stratum_keys: set[tuple[str, int, str, int]] = set()

    # ---- batches -----------------------------------------------------------------------

    def feed(self, batch: RawBatch, decoded: Packets | None = None) -> list[dict[str, Any]]:
        """Process one batch (``decoded``: its :func:`decode`, when already done).

        Returns the detections completed by it.
        """
        self.out = []
        if len(batch) == 0:
            return self.out
        p = decoded if decoded is not None else decode(batch)
        self.counters.packets += len(batch)
        self.counters.decoded += int(p.ok.sum())
        self._now = float(p.ts_us.max()) / 1e6
        self._dns(batch, p)
        self._syns(p)
        self._payloads(batch, p)
        self._account(p)
        self._behavior(*self._model(p))
        self._close_finished()
        if self._now - self._last_idle_check > 10:
            self._expire_idle()
            self._last_idle_check = self._now
            self.dead.tick(self._now)
        return self.out

    def flush(self) -> list[dict[str, Any]]:
        """End of input: finish every open session."""
        self.out = []
        for sid in list(self.sessions):
            self._finish(sid)
        self._behavior(*self._model(None))
        return self.out

    def run(self, batches: Iterable[RawBatch]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for b in batches:
            found.extend(self.feed(b))
        found.extend(self.flush())
        return found

    # ---- DNS and SYN -------------------------------------------------------------------

    def _dns(self, batch: RawBatch, p: Packets) -> None:
        idx = np.flatnonzero(p.ok & (p.proto == 17) & (p.sport == 53) & (p.pay_len >= 12))
        buf = batch.buf
        for i in idx.tolist():
            off = int(p.pay_off[i])
            data = buf[off : off + int(p.pay_len[i])]
            try:
                msg = dpkt.dns.DNS(data)
            except (dpkt.UnpackError, IndexError, ValueError):
                self.counters.bad_dns += 1
                continue
            for rr in msg.an:
                name = rr.name.lower() if isinstance(rr.name, str) else None
                if not name:
                    continue
                if rr.type == dpkt.dns.DNS_A and len(rr.rdata) == 4:
                    ip = ip_text(4, 0, int.from_bytes(rr.rdata, "big"))
                elif rr.type == dpkt.dns.DNS_AAAA and len(rr.rdata) == 16:
                    v = int.from_bytes(rr.rdata, "big")
                    ip = ip_text(6, v >> 64, v & ((1 << 64) - 1))
                else:
                    continue
                qname = msg.qd[0].name.lower() if msg.qd else name
                self.names[ip] = qname
                self.names.move_to_end(ip)
                self.counters.dns_answers += 1
        while len(self.names) > 200_000:
            self.names.popitem(last=False)

    def _syns(self, p: Packets) -> None:
        syn = p.ok & (p.proto == 6) & ((p.flags & SYN) != 0)
        if not syn.any():
            return
        keys = p.dirkey[syn].tolist()
        vals = zip(p.seq[syn].tolist(), (p.ts_us[syn] / 1e6).tolist(), strict=True)
        self.syn_now.update(zip(keys, vals, strict=True))
        # A pure SYN marks its sender as the client; remember that too.
        pure = syn & ((p.flags & ACK) == 0)
        for k in p.dirkey[pure].tolist():
            self._clients.add(k)
        if len(self.syn_now) > 500_000:
            self.syn_old, self.syn_now = self.syn_now, {}
            self._clients_old, self._clients = self._clients, set()

    def _isn(self, dirkey: int) -> int | None:
        v = self.syn_now.get(dirkey) or self.syn_old.get(dirkey)
        return v[0] if v else None

    def _is_client(self, dirkey: int) -> bool:
        return dirkey in self._clients or dirkey in self._clients_old

    # ---- payload packets ---------------------------------------------------------------

    def _payloads(self, batch: RawBatch, p: Packets) -> None:
        pl = p.ok & (p.proto == 6) & (p.pay_len > 0)
        idx = np.flatnonzero(pl)
        self.counters.tcp_payload_packets += len(idx)
        if len(idx) == 0:
            return
        keep = ~self.dead.contains(p.flow[idx])
        idx = idx[keep]
        self.counters.examined_packets += len(idx)
        if len(idx) == 0:
            return
        buf = batch.buf
        flows = p.flow[idx].tolist()
        dirs = p.dirkey[idx].tolist()
        seqs = p.seq[idx].tolist()
        offs = p.pay_off[idx].tolist()
        lens = p.pay_len[idx].tolist()
        tss = (p.ts_us[idx] / 1e6).tolist()
        # The first packet of each flow without a session: its endpoints, decoded column-wise.
        first: dict[int, int] = {}
        for j, flow in enumerate(flows):
            if flow not in self.sessions and flow not in first:
                first[flow] = j
        news = list(first.values())
        ends = dict(zip(news, self._endpoints(p, idx[news]), strict=True)) if news else {}
        for j, flow in enumerate(flows):
            s = self.sessions.get(flow)
            if s is None:
                if flow in self.dead.current:  # decided earlier in this same batch
                    continue
                end = ends.get(j) or self._endpoints(p, idx[j : j + 1])[0]
                s = self._new_session(dirs[j], end, tss[j])
                self.sessions[flow] = s
            elif s.mode == "dead":
                continue
            data = buf[offs[j] : offs[j] + lens[j]]
            self._packet(flow, s, dirs[j], seqs[j], data, tss[j])

    @staticmethod
    def _endpoints(p: Packets, rows: np.ndarray) -> list[tuple[int, Endpoint, Endpoint]]:
        """(reverse direction key, sender, receiver) of the given packets, column-wise."""
        cols = zip(
            p.rdirkey[rows].tolist(),
            p.ipver[rows].tolist(),
            p.src_hi[rows].tolist(),
            p.src_lo[rows].tolist(),
            p.sport[rows].tolist(),
            p.dst_hi[rows].tolist(),
            p.dst_lo[rows].tolist(),
            p.dport[rows].tolist(),
            strict=True,
        )
        return [
            (r, Endpoint(v, sh, sl, sp), Endpoint(v, dh, dl, dp))
            for r, v, sh, sl, sp, dh, dl, dp in cols
        ]

    def _new_session(self, d: int, ends: tuple[int, Endpoint, Endpoint], ts: float) -> Session:
        self.counters.sessions_examined += 1
        r, src, dst = ends
        s = Session(sid=self._next_sid, first_ts=ts, last_ts=ts, ends={d: src, r: dst})
        self._next_sid += 1
        if self._is_client(d):
            s.client_dir = d
        elif self._is_client(r):
            s.client_dir = r
        for k in (d, r):
            syn = self.syn_now.get(k) or self.syn_old.get(k)
            if syn:
                s.first_ts = min(s.first_ts, syn[1])
        return s

    def _half(self, s: Session, dirkey: int) -> HalfStream:
        h = s.halves.get(dirkey)
        if h is None:
            h = HalfStream(s.stats, self._isn(dirkey))
            s.halves[dirkey] = h
        return h

    def _drop(self, flow: int, s: Session) -> None:
        s.mode = "dead"
        self.sessions.pop(flow, None)
        self.dead.add(flow)
        self.counters.sessions_dropped += 1

    def _packet(self, flow: int, s: Session, dirkey: int, seq: int, data: bytes, ts: float) -> None:
        s.payload_packets += 1
        s.payload_bytes += len(data)
        if s.mode == "new":
            # Classify on the start of the reassembled stream, not on whichever segment
            # happened to arrive first.
            h = self._half(s, dirkey)
            h.feed(seq, data)
            head = bytes(h.buf[:4096])
            if not self._ready(s, head):
                return
            self._classify(flow, s, dirkey, head)
            if s.mode == "dead":
                return
            if s.mode in ("json", "http"):
                if s.framing == "json" and head.lstrip()[:1] not in (b"{", b"["):
                    h.resync = True  # the capture began inside a message
                self._after_read(flow, s, dirkey, h, ts)
            else:
                s.halves.clear()  # nothing more to reassemble for this session
            return
        if s.mode in ("json", "http", "mining"):
            h = self._half(s, dirkey)
            fresh = h.next_seq is None and not h.buf
            h.feed(seq, data)
            if fresh and s.framing == "json" and data.lstrip()[:1] not in (b"{", b"["):
                h.resync = True  # the capture began inside a message
            self._after_read(flow, s, dirkey, h, ts)
        elif s.mode == "sv2?":
            self._sv2(flow, s, dirkey, data)

    @staticmethod
    def _ready(s: Session, head: bytes) -> bool:
        """Enough of the stream's start to tell what it is (or waited long enough)."""
        if s.payload_packets > 8:
            return True
        if not head:
            return False  # the first in-order bytes have not arrived yet
        if head[:1] == b"\x16" and len(head) >= 5:
            need = 5 + int.from_bytes(head[3:5], "big")  # the whole ClientHello record
            return len(head) >= min(need, 4096)
        return len(head) >= 8 or head.lstrip()[:1] in (b"{", b"[")

    def _after_read(self, flow: int, s: Session, dirkey: int, h: HalfStream, ts: float) -> None:
        self._read(s, dirkey, h, ts, final=False)
        if s.state.not_mining:
            self._drop(flow, s)
        elif s.mode == "mining":  # is_mining stays true once true (unless not_mining)
            self._announce(s)
        elif s.state.is_mining:
            s.mode = "mining"
            self._announce(s)
        elif not s.state.messages and (
            (s.payload_packets > UNDECIDED_PACKETS and s.payload_bytes > 4096)
            or s.payload_bytes > UNDECIDED_BYTES
            or s.payload_packets > 16 * UNDECIDED_PACKETS
        ):
            self._drop(flow, s)  # no complete JSON-RPC message in all that
        elif s.payload_packets > 4 * UNDECIDED_PACKETS and s.payload_bytes > 4096:
            self._drop(flow, s)  # JSON-RPC, but no mining method in many messages

    def _classify(self, flow: int, s: Session, dirkey: int, data: bytes) -> None:
        head = data.lstrip()[:1]
        if is_client_hello(data):
            s.client_dir = dirkey
            s.sni = client_hello_sni(data)
            s.mode = "tls"
        elif data[:1] in (b"\x16", b"\x17", b"\x15", b"\x14") and data[1:2] == b"\x03":
            s.mode = "tls"
        elif looks_http(data):
            s.mode = "http"
            s.framing = "http"
            if s.client_dir is None and not data.startswith(b"HTTP/"):
                s.client_dir = dirkey
        elif len(data) == 64 and _high_entropy(data) and not data.isascii() and len(s.halves) == 1:
            # Before the JSON test: a random key may begin with "{" or hold '{"' (~1.5% of
            # keys), where a JSON-RPC line is text.
            s.mode = "sv2?"
            if s.client_dir is None:
                s.client_dir = dirkey
            s.sv2_sizes.append((True, 64))
            return
        elif head in (b"{", b"[") or b'{"' in data[:512]:
            s.mode = "json"
        else:
            s.mode = "other"
        if s.mode in ("tls", "other"):
            server = self._server(s)
            hit = self.intel.match_domain(s.sni) or (
                self.intel.match_ip(server.ip) if server else None
            )
            if hit is not None:
                s.mode = "intel"
            else:
                self._drop(flow, s)

    def _sv2(self, flow: int, s: Session, dirkey: int, data: bytes) -> None:
        """Stratum V2 shape: 64-byte client ephemeral, ~170-byte reply, encrypted frames."""
        up = dirkey == s.client_dir
        s.sv2_sizes.append((up, len(data)))
        if not _high_entropy(data) and len(data) >= 32:
            self._drop(flow, s)
            return
        sizes = s.sv2_sizes
        if len(sizes) >= 2 and not (not sizes[1][0] and 150 <= sizes[1][1] <= 260):
            self._drop(flow, s)
            return
        later_up = [n for u, n in sizes[2:] if u]
        if any(n < 38 for n in later_up):  # a frame is at least header + two MACs
            self._drop(flow, s)
            return
        if len(later_up) >= 2:
            s.mode = "sv2"
            self._announce(s)

    def _read(self, s: Session, dirkey: int, h: HalfStream, ts: float, final: bool) -> None:
        if s.framing == "http":
            for msg in take_http(h, final):
                if s.client_dir is None:
                    s.client_dir = dirkey if msg.is_request else s.other(dirkey)
                s.state.on_http(ts, dirkey == s.client_dir, msg)
            return
        for line in take_lines(h):
            if s.client_dir is None:
                s.client_dir = self._guess_client(s, dirkey, line)
            s.state.on_line(ts, dirkey == s.client_dir, line)

    @staticmethod
    def _guess_client(s: Session, dirkey: int, line: bytes) -> int | None:
        """Which side is the miner, from the first message when no SYN was captured."""
        other = s.other(dirkey)
        for name in CLIENT_METHODS:
            if f'"{name}"'.encode() in line:
                return dirkey
        for name in SERVER_METHODS:
            if f'"{name}"'.encode() in line:
                return other
        if b'"result"' in line or b'"error"' in line:
            return other
        ports = {k: e.port for k, e in s.ends.items()}
        return max(ports, key=lambda k: ports[k])

    # ---- accounting and ends -----------------------------------------------------------

    def _account(self, p: Packets) -> None:
        """Packet/byte counts, last-seen times and FIN/RST per session, grouped per batch."""
        if not self.sessions:
            return
        tcp = p.ok & (p.proto == 6)
        keys = np.fromiter(self.sessions.keys(), dtype=np.uint64, count=len(self.sessions))
        keys.sort()
        flows = p.flow[tcp]
        pos = np.searchsorted(keys, flows)
        pos[pos == len(keys)] = 0
        mine = keys[pos] == flows
        if not mine.any():
            return
        f = flows[mine]
        d = p.dirkey[tcp][mine]
        wire = p.wire_len[tcp][mine]
        ts = p.ts_us[tcp][mine]
        fl = p.flags[tcp][mine]
        uniq, inv = np.unique(f, return_inverse=True)
        n = len(uniq)
        count = np.bincount(inv, minlength=n)
        last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inv, ts)
        first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inv, ts)
        ended = np.zeros(n, dtype=bool)
        np.logical_or.at(ended, inv, (fl & (FIN | RST)) != 0)
        sess = [self.sessions.get(k) for k in uniq.tolist()]
        cdir = np.array(
            [s.client_dir if s is not None and s.client_dir is not None else 0 for s in sess],
            dtype=np.uint64,
        )
        up = d == cdir[inv]
        b_up = np.bincount(inv, weights=np.where(up, wire, 0), minlength=n)
        b_down = np.bincount(inv, weights=np.where(up, 0, wire), minlength=n)
        for j, s in enumerate(sess):
            if s is None:
                continue
            s.packets += int(count[j])
            s.first_ts = min(s.first_ts, first[j] / 1e6)
            s.last_ts = max(s.last_ts, last[j] / 1e6)
            if ended[j]:
                s.fin_or_rst = True
            if s.client_dir is not None:
                s.bytes_up += int(b_up[j])
                s.bytes_down += int(b_down[j])

    def _close_finished(self) -> None:
        for key in [k for k, s in self.sessions.items() if s.fin_or_rst]:
            self._finish(key)

    def _expire_idle(self) -> None:
        cutoff = self._now - self.idle_s
        for key in [k for k, s in self.sessions.items() if s.last_ts < cutoff]:
            self._finish(key)

    def _finish(self, key: int) -> None:
        s = self.sessions.pop(key, None)
        if s is None:
            return
        if s.mode in ("json", "http", "mining"):
            for dirkey, h in s.halves.items():
                h.finish()
                self._read(s, dirkey, h, s.last_ts, final=True)
        self.counters.bad_json += s.state.bad_json
        self.counters.gaps += s.stats.gaps
        self.counters.oversized += s.stats.oversized
        rec = self._record(s, final=True)
        if rec is not None:
            self._emit(rec)
        self.dead.add(key)

    def _announce(self, s: Session) -> None:
        """Live mode: report a session once both sides have shown mining (login and work)."""
        if not self.live or s.announced:
            return
        rec = self._record(s, final=False)
        if rec is not None and (rec["confidence"] >= 0.95 or s.mode == "sv2"):
            s.announced = True
            self._emit(rec)

    def _model(self, p: Packets | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Flow windows of a batch (``None``: end of input) scored by the behaviour model.

        Returns (connections newly over the threshold, final records of connections that
        ended); the scanner's sessions and output are not touched here.
        """
        records = self.flowagg.flush() if p is None else self.flowagg.add(p)
        found = self.behavior(records) if records.num_rows else []
        done = self.behavior.expired + (self.behavior.finish() if p is None else [])
        self.behavior.expired = []
        return found, done

    def _behavior(self, found: list[dict[str, Any]], done: list[dict[str, Any]]) -> None:
        """Report connections the behaviour model found that the Stratum reader did not report.

        Live: a connection is reported when the model first reaches its threshold, then again
        when it ends. Files: once, when it ends (or at the end of input).
        """
        if not found and not done:
            return
        for s in self.sessions.values():  # connections the Stratum reader is following
            if s.mode in ("mining", "sv2") and s.client_dir is not None:
                c, srv = s.ends[s.client_dir], self._server(s)
                if srv is not None:
                    self._stratum_keys.add((c.ip, c.port, srv.ip, srv.port))
        for rec, is_final in [(r, False) for r in found if self.live] + [(r, True) for r in done]:
            key = (rec["src_ip"], rec["src_port"], rec["dst_ip"], rec["dst_port"])
            if key in self._stratum_keys:
                continue
            rec["session_id"] = self._next_sid
            self._next_sid += 1
            rec["final"] = is_final
            self._emit(rec)

    def _emit(self, rec: dict[str, Any]) -> None:
        if rec["detector"] != "behavior":  # the behaviour model stays quiet on these
            self._stratum_keys.add((rec["src_ip"], rec["src_port"], rec["dst_ip"], rec["dst_port"]))
        if rec["final"] and self.passes(rec):
            self.counters.detections += 1  # reported sessions, not lines (live prints two)
        self.out.append(rec)
        if self.on_detection is not None:
            self.on_detection(rec)

    # ---- the record --------------------------------------------------------------------

    def _server(self, s: Session) -> Endpoint | None:
        if s.client_dir is None:
            return None
        other = s.other(s.client_dir)
        return s.ends.get(other) if other is not None else None

    def _record(self, s: Session, final: bool) -> dict[str, Any] | None:
        st = s.state
        if s.client_dir is None:
            ports = {k: e.port for k, e in s.ends.items()}
            s.client_dir = max(ports, key=lambda k: ports[k])
        client = s.ends[s.client_dir]
        server = self._server(s)
        assert server is not None
        reasons: list[str] = []
        if s.mode == "mining" or st.is_mining:
            conf, reasons = st.confidence()
            detector = "stratum"
            dialect = st.dialect()
        elif s.mode == "sv2":
            conf = SV2_CONFIDENCE
            detector = "stratum2-shape"
            dialect = "stratum2"
            reasons.append(
                "Stratum V2 shape: 64-byte client key, "
                f"{s.sv2_sizes[1][1]}-byte reply, then encrypted frames (content not visible)"
            )
        elif s.mode == "intel":
            conf = INTEL_ONLY_CONFIDENCE
            detector = "intel"
            dialect = None
        else:
            return None

        # Pool host: SNI, then what the miner itself named, then DNS, then the address.
        pool_host, host_src = None, None
        if s.sni:
            pool_host, host_src = s.sni, "TLS SNI"
        elif st.host_hint:
            pool_host, host_src = st.host_hint, st.host_hint_source
        elif server.ip in self.names:
            pool_host, host_src = self.names[server.ip], "DNS answer in the capture"
        hit = self.intel.match_domain(pool_host) or self.intel.match_ip(server.ip)
        if pool_host:
            reasons.append(f"pool host {pool_host} (from {host_src})")
        if hit is not None:
            reasons.append(f"{hit.kind} {hit.matched} is on a pool list ({hit.source})")
        if server.port in MINER_PORTS:
            reasons.append(f"server port {server.port} is a common pool port (a hint only)")

        wallet, worker, wallet_coin = split_login(st.user)
        if st.rig_id and not worker:
            worker = st.rig_id
        coin = None
        for cand, why in (
            (hit.coin if hit else None, "pool list"),
            (coin_from_host(pool_host), "pool host name"),
            (wallet_coin, "wallet address format"),
            (st.coin(), st.coin_hints[0][1] if st.coin_hints else ""),
        ):
            if cand and cand in COIN_ALGO:
                coin = cand
                reasons.append(f"coin {cand} from the {why}")
                break
        algo = st.algo_family(coin, s.first_ts)
        if st.algo_assumed:
            reasons.append(f"algorithm {algo} assumed from the dialect and the date")
        if coin is None and algo == "randomx":
            coin = "xmr"
        rate, rate_how = st.hashrate()
        if rate is not None:
            reasons.append(f"hash rate from {rate_how}")
        power = power_w_range(algo, rate)
        shares = st.share_counts()
        return {
            "src_ip": client.ip,
            "src_port": client.port,
            "dst_ip": server.ip,
            "dst_port": server.port,
            "proto": "tcp",
            "first_seen": _iso(s.first_ts),
            "last_seen": _iso(s.last_ts),
            "detector": detector,
            "dialect": dialect,
            "confidence": round(conf, 3),
            "coin": coin,
            "algo": algo,
            "pool_host": pool_host or server.ip,
            "wallet": wallet,
            "worker": worker,
            "agent": st.agent,
            "shares": shares,
            "hashrate_hs": round(rate, 3) if rate is not None else None,
            "power_w_range": [round(power[0], 3), round(power[1], 3)] if power else None,
            "session_id": s.sid,
            "final": final,
            "difficulty": [
                {"ts": _iso(t), "difficulty": d, "hashes_per_share": round(h, 3)}
                for t, d, h in st.difficulty[:50]
            ],
            "hashrate_reported_hs": st.reported_hs,
            "login_accepted": st.login_ok,
            "packets": s.packets,
            "bytes_up": s.bytes_up,
            "bytes_down": s.bytes_down,
            "reasons": reasons,
        }

    def passes(self, rec: dict[str, Any]) -> bool:
        return bool(rec["confidence"] >= self.min_confidence)


@dataclass
class InputReport:
    """What happened to one input of a scan: read statistics, counters, or why it failed."""

    path: str
    read: ReadStats
    counters: ScanCounters
    error: str | None = None


def scan_sources(
    sources: Iterable[str],
    *,
    intel: PoolIntel | None = None,
    min_confidence: float = 0.5,
    idle_s: float = 300.0,
    on_detection: Callable[[dict[str, Any]], None] | None = None,
) -> list[InputReport]:
    """Scan pcap/pcapng files (or ``-`` for a live stream on stdin), one scanner per input.

    Detections at or above ``min_confidence`` go to ``on_detection`` as soon as they are
    made. An unusable input is reported (``error``) and the others are still scanned.
    """
    intel = intel if intel is not None else PoolIntel()
    reports: list[InputReport] = []

    def emit(rec: dict[str, Any]) -> None:
        if on_detection is not None and rec["confidence"] >= min_confidence:
            on_detection(rec)

    # The scan allocates many small, mostly long-lived objects (sessions, their buffers and
    # protocol state). With the default thresholds the collector would repeatedly traverse
    # them and everything the imports left behind (measured: ~10 % of a scan's time); the
    # imported objects are frozen out of its view and young collections made rarer, for
    # the duration of the scan only (collections still run, less often).
    thresholds = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0  # leave a caller's own frozen objects alone
    if freeze:
        gc.freeze()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        _scan_each(sources, intel, min_confidence, idle_s, emit, reports)
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()
    return reports


def _scan_each(
    sources: Iterable[str],
    intel: PoolIntel,
    min_confidence: float,
    idle_s: float,
    emit: Callable[[dict[str, Any]], None],
    reports: list[InputReport],
) -> None:
    for src in sources:
        live = src == "-"
        stats = ReadStats(path="<stdin>" if live else src)
        sc = Scanner(
            intel, min_confidence=min_confidence, idle_s=idle_s, live=live, on_detection=emit
        )
        report = InputReport(src, stats, sc.counters)
        try:
            if live:  # as it arrives
                for batch in read_batches(src, stats):
                    sc.feed(batch)
            else:
                for batch, decoded in _read_ahead(src, stats):
                    sc.feed(batch, decoded)
        except InputError as exc:
            report.error = str(exc)
        finally:
            sc.flush()
        reports.append(report)


def _read_ahead(src: str, stats: ReadStats) -> Iterator[tuple[RawBatch, Packets]]:
    """Batches of ``src`` with their decoded columns, read and decoded by a thread one batch
    ahead of the scanner (decoding is NumPy work that runs beside the scanner's Python).

    The reader's errors are raised here, after the batches read before them.
    """
    ahead: queue.Queue[tuple[RawBatch, Packets] | BaseException | None] = queue.Queue(1)
    stop = threading.Event()

    def put(item: tuple[RawBatch, Packets] | BaseException | None) -> bool:
        while not stop.is_set():  # the consumer may have stopped early
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in read_batches(src, stats):
                if not put((batch, decode(batch))):
                    return
            put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    reader = threading.Thread(target=produce, name="minewatch-scan-read", daemon=True)
    reader.start()
    try:
        while True:
            item = ahead.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()

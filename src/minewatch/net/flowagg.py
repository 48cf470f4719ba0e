"""Packets to canonical FLOWS records: one record per connection per fixed window.

:class:`FlowAggregator` plays the part of a NetFlow exporter with a short active timeout: each
TCP/UDP connection is cut into records of ``window_s`` seconds counted from the connection's
first packet (as ``softflowd -t maxlife=60`` does), so that a capture and an exporter's flow
records give the behaviour model (:mod:`minewatch.net.behavior`) the same view.

Everything is NumPy work over whole batches (no Python per packet), the state and pending
records kept as arrays sorted by connection key; Polars only builds the emitted table:

1. packets of a batch are keyed by their direction-free flow key (``Packets.flow``) and
   looked up in the per-connection state (start time, which side is the client, endpoints);
2. new connections get their state from the batch itself (the client is the sender of a pure
   SYN, else the side with the higher port);
3. one sort of the batch by (connection, window), then per (connection, window) sums, minima
   and maxima (``reduceat``) are added to the pending records; a record is emitted when its
   window has passed (``start + (w + 1) * window_s`` is behind the newest packet), or when
   the connection has been idle for ``idle_s``, or at :meth:`FlowAggregator.flush`.

Finer per-window statistics from packets (``packet_stats=True``) ride along as extra
columns after the FLOWS columns: payload-carrying packets and bytes each way, client→server
payloads of at most :data:`SMALL_PAYLOAD` bytes, server pushes (server payload packets that
do not follow client payload within :data:`REPLY_GAP_S`; the others are replies), the
count, sum and sum of squares of the gaps between client payload packets, the sums of
squared payload sizes each way, and the bytes and squared sizes of the pushes. They take a
second sort, of the payload packets by (connection, time), and three more values per
connection in the state (the last payload times). Flow records from exporters lack them;
the behaviour model's packet variant (``behavior.PACKET_FEATURES``) reads them, and they
make the reasons of ``minewatch scan``'s detections finer.

Memory: the state and the pending records hold at most a few rows per open connection;
connections idle for ``idle_s`` are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch.net.decode import ACK, SYN, TCP, UDP, Packets, decode, ip_text
from minewatch.schema import FLOWS
from minewatch.sources.pcap import RawBatch, ReadStats, read_batches

#: Client→server payloads up to this size count as "small submissions".
SMALL_PAYLOAD = 600
#: A server payload packet within this many seconds after client payload is a reply.
REPLY_GAP_S = 1.0
EXPORTER = "minewatch-flowagg"

#: Extra per-window columns from packets, after the FLOWS columns (all int64 but the gaps).
PACKET_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("pay_pkts_up", pa.int64()),
    ("pay_pkts_down", pa.int64()),
    ("pay_bytes_up", pa.int64()),
    ("pay_bytes_down", pa.int64()),
    ("small_up", pa.int64()),
    ("pushes_down", pa.int64()),
    ("gap_n_up", pa.int64()),
    ("gap_sum_up", pa.float64()),
    ("gap_sq_up", pa.float64()),
    ("pay_sq_up", pa.float64()),
    ("pay_sq_down", pa.float64()),
    ("push_bytes_down", pa.int64()),
    ("push_sq_down", pa.float64()),
)
FLOWS_PACKET = pa.schema([*FLOWS, *(pa.field(n, t) for n, t in PACKET_COLUMNS)])

#: Columns summed when pending records of one window merge.
_SUMS = ("packets_up", "packets_down", "bytes_up", "bytes_down", *(n for n, _ in PACKET_COLUMNS))

#: Per-connection state, sorted by ``flow``.
_NP_STATE: dict[str, type[np.generic]] = {
    "flow": np.uint64,
    "start_us": np.int64,
    "last_us": np.int64,
    "cdir": np.uint64,
    "ver": np.uint8,
    "proto": np.uint8,
    "c_hi": np.uint64,
    "c_lo": np.uint64,
    "c_port": np.int32,
    "s_hi": np.uint64,
    "s_lo": np.uint64,
    "s_port": np.int32,
    # (packet statistics) last client payload packet, last payload packet either way (-1:
    # none yet) and whether that one was the client's
    "last_up_us": np.int64,
    "last_pay_us": np.int64,
    "last_pay_up": np.bool_,
}
#: Pending records, sorted by (``flow``, ``w``).
_NP_PENDING: dict[str, type[np.generic]] = {
    "flow": np.uint64,
    "w": np.int64,
    "first_us": np.int64,
    "last_us": np.int64,
    "flags": np.uint8,
    "packets_up": np.int64,
    "packets_down": np.int64,
    "bytes_up": np.int64,
    "bytes_down": np.int64,
}
#: ... and their packet-statistics columns (``packet_stats=True``).
_NP_PENDING_PACKET: dict[str, type[np.generic]] = {
    n: np.float64 if t == pa.float64() else np.int64 for n, t in PACKET_COLUMNS
}
_Arrays = dict[str, np.ndarray]


def _np_empty(dtypes: dict[str, type[np.generic]]) -> _Arrays:
    return {c: np.empty(0, t) for c, t in dtypes.items()}


def _starts(key: np.ndarray) -> np.ndarray:
    """Positions where a run of equal values of sorted ``key`` starts."""
    return np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key[:0]


@dataclass
class AggregateResult:
    """Records of one input and what the reader saw."""

    flows: pa.Table  # FLOWS_PACKET when packet_stats, else FLOWS
    read: ReadStats


def _ipv4_text(col: str) -> pl.Expr:
    v = pl.col(col)
    parts = [((v // (1 << s)) % 256).cast(pl.Utf8) for s in (24, 16, 8, 0)]
    return pl.concat_str(parts, separator=".")


class FlowAggregator:
    """Streaming per-connection, per-window flow records from decoded packet batches."""

    def __init__(
        self, window_s: float = 60.0, idle_s: float = 300.0, *, packet_stats: bool = True
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_us = int(window_s * 1e6)
        self.idle_us = int(idle_s * 1e6)
        self.packet_stats = packet_stats
        self.st = _np_empty(_NP_STATE)
        self._pend_types = _NP_PENDING | (_NP_PENDING_PACKET if packet_stats else {})
        self.pend = _np_empty(self._pend_types)
        self.now_us = 0
        self.packets = 0
        self.records = 0

    # ---- input -------------------------------------------------------------------------

    def add_batch(self, batch: RawBatch) -> pa.Table:
        """Decode and add one raw batch; returns the records completed by it."""
        if len(batch) == 0:
            return self._empty()
        return self.add(decode(batch))

    def add(self, p: Packets) -> pa.Table:
        """Add decoded packets; returns the records completed by them."""
        sel = p.ok & ((p.proto == TCP) | (p.proto == UDP))
        if not sel.any():
            return self._empty()
        idx = np.flatnonzero(sel)
        ts = p.ts_us[idx]
        self.packets += len(idx)
        self.now_us = max(self.now_us, int(ts.max()))
        return self._add_np(p, idx, ts)

    # ---- the NumPy work ---------------------------------------------------------------

    def _lookup(self, flow: np.ndarray) -> np.ndarray:
        """Row of each key in the state, -1 when not there."""
        sf = self.st["flow"]
        if len(sf) == 0:
            return np.full(len(flow), -1, np.int64)
        pos = np.searchsorted(sf, flow)
        pos[pos == len(sf)] = 0
        return np.where(sf[pos] == flow, pos, -1)

    def _add_np(self, p: Packets, idx: np.ndarray, ts: np.ndarray) -> pa.Table:
        flow, dirk, sport = p.flow[idx], p.dirkey[idx], p.sport[idx]
        si = self._lookup(flow)
        fresh = si < 0
        if fresh.any():
            si = self._new_connections_np(p, idx, ts, si, np.flatnonzero(fresh))
            self._learn_client_dirs_np(si, dirk, sport)
        st = self.st
        up = dirk == st["cdir"][si]
        w = (ts - st["start_us"][si]) // self.window_us
        # One sort of the batch by (connection, window): connection rows follow flow order.
        # (The order inside a group does not matter: integer sums, minima and maxima.)
        w0 = int(w.min())
        span = int(w.max()) - w0 + 1
        if span * len(st["flow"]) < 1 << 62:
            order = np.argsort(si * span + (w - w0))
        else:
            order = np.lexsort((w, si))
        so, wo = si[order], w[order]
        b = np.flatnonzero(np.r_[True, (so[1:] != so[:-1]) | (wo[1:] != wo[:-1])])
        tso = ts[order]
        upo = up[order]
        wire = p.wire_len[idx][order].astype(np.int64)
        n = np.diff(np.r_[b, len(order)])
        pkts_up = np.add.reduceat(upo.astype(np.int64), b)
        bytes_up = np.add.reduceat(np.where(upo, wire, 0), b)
        last = np.maximum.reduceat(tso, b)
        part = {
            "flow": st["flow"][so[b]],
            "w": wo[b],
            "first_us": np.minimum.reduceat(tso, b),
            "last_us": last,
            "flags": np.bitwise_or.reduceat(p.flags[idx][order].astype(np.uint8), b),
            "packets_up": pkts_up,
            "packets_down": n - pkts_up,
            "bytes_up": bytes_up,
            "bytes_down": np.add.reduceat(wire, b) - bytes_up,
        }
        if self.packet_stats:
            pay = p.pay_len[idx].astype(np.int64)
            part |= self._packet_sums(si, ts, up, pay, order, b)
        # Newest packet of each connection (groups are sorted by connection first).
        sb = so[b]
        fb = _starts(sb)
        rows = sb[fb]
        st["last_us"][rows] = np.maximum(st["last_us"][rows], np.maximum.reduceat(last, fb))
        self._merge_pending_np(part)
        return self._emit_np(final=False)

    def _packet_sums(
        self,
        si: np.ndarray,
        ts: np.ndarray,
        up: np.ndarray,
        pay: np.ndarray,
        order: np.ndarray,
        b: np.ndarray,
    ) -> _Arrays:
        """Per-(connection, window) packet statistics of a batch (groups ``b`` of ``order``),
        and the state's last payload times carried forward.

        Payload packets in (connection, time, batch position) order: a server payload packet
        is a push unless the connection's previous payload packet (in this batch or, for
        its first, the state's) was the client's and at most :data:`REPLY_GAP_S` earlier;
        a client payload packet's gap is the time since the connection's previous client
        payload packet (none for the first ever)."""
        st = self.st
        n = len(ts)
        push = np.zeros(n, np.int64)
        gap = np.full(n, np.nan)
        at = np.flatnonzero(pay > 0)
        if len(at):
            at = at[np.lexsort((at, ts[at], si[at]))]
            s_, t_, u_ = si[at], ts[at], up[at]
            first = np.r_[True, s_[1:] != s_[:-1]]
            prev_t = np.where(first, st["last_pay_us"][s_], np.r_[0, t_[:-1]])
            prev_u = np.where(first, st["last_pay_up"][s_], np.r_[False, u_[:-1]])
            fresh = prev_t < 0
            push[at] = ~u_ & (fresh | ~prev_u | (t_ - prev_t > REPLY_GAP_S * 1e6))
            ua = at[u_]
            if len(ua):
                su, tu = s_[u_], t_[u_]
                ufirst = np.r_[True, su[1:] != su[:-1]]
                prev = np.where(ufirst, st["last_up_us"][su], np.r_[0, tu[:-1]])
                gap[ua] = np.where(prev < 0, np.nan, (tu - prev) / 1e6)
                last_u = np.r_[ufirst[1:], True]  # last client payload per connection
                st["last_up_us"][su[last_u]] = tu[last_u]
            last = np.r_[first[1:], True]  # last payload packet per connection
            st["last_pay_us"][s_[last]] = t_[last]
            st["last_pay_up"][s_[last]] = u_[last]
        upo, payo = up[order], pay[order]
        has = payo > 0
        gapo = gap[order]
        has_gap = ~np.isnan(gapo)
        gapo = np.where(has_gap, gapo, 0.0)
        pay_up = np.add.reduceat(np.where(upo, payo, 0), b)
        pusho = push[order]
        pushed = pusho.astype(bool)
        sq = payo.astype(np.float64) ** 2
        sq_up = np.add.reduceat(np.where(upo, sq, 0.0), b)
        return {
            "pay_pkts_up": np.add.reduceat((upo & has).astype(np.int64), b),
            "pay_pkts_down": np.add.reduceat((~upo & has).astype(np.int64), b),
            "pay_bytes_up": pay_up,
            "pay_bytes_down": np.add.reduceat(payo, b) - pay_up,
            "small_up": np.add.reduceat((upo & has & (payo <= SMALL_PAYLOAD)).astype(np.int64), b),
            "pushes_down": np.add.reduceat(pusho, b),
            "gap_n_up": np.add.reduceat(has_gap.astype(np.int64), b),
            "gap_sum_up": np.add.reduceat(gapo, b),
            "gap_sq_up": np.add.reduceat(gapo * gapo, b),
            "pay_sq_up": sq_up,
            "pay_sq_down": np.add.reduceat(sq, b) - sq_up,
            "push_bytes_down": np.add.reduceat(np.where(pushed, payo, 0), b),
            "push_sq_down": np.add.reduceat(np.where(pushed, sq, 0.0), b),
        }

    def _new_connections_np(
        self, p: Packets, idx: np.ndarray, ts: np.ndarray, si: np.ndarray, fresh: np.ndarray
    ) -> np.ndarray:
        """Add the connections of the ``fresh`` packets; returns every packet's state row."""
        # Packets of new connections by (connection, time, batch order).
        order = fresh[np.lexsort((ts[fresh], p.flow[idx[fresh]]))]
        at = idx[order]
        fo = p.flow[at]
        starts = np.r_[True, fo[1:] != fo[:-1]]
        gid = np.cumsum(starts) - 1
        heads = at[starts]  # first packet of each new connection (indices into p)
        k = len(heads)
        first_dir = p.dirkey[heads]
        do = p.dirkey[at]
        fl = p.flags[at]
        pure_syn = ((fl & SYN) != 0) & ((fl & ACK) == 0) & (p.proto[at] == TCP)
        has_syn, syn_dir = self._first_per_group(pure_syn, gid, do, k)
        # Client: the sender of a pure SYN; else the side with the higher port; else the
        # sender of the first packet.
        sp, dp = p.sport[heads], p.dport[heads]
        client = np.where(has_syn, syn_dir == first_dir, np.where(sp != dp, sp > dp, True))
        # The client's direction key when the first packet came from the server: the key of
        # any packet of that connection sent by the other side; else 0 (learnt later).
        has_other, other_dir = self._first_per_group(do != first_dir[gid], gid, do, k)
        cdir = np.where(client, first_dir, np.where(has_other, other_dir, np.uint64(0)))
        sh, sl, dh, dl = p.src_hi[heads], p.src_lo[heads], p.dst_hi[heads], p.dst_lo[heads]
        new = {
            "flow": p.flow[heads],
            "start_us": p.ts_us[heads],
            "last_us": p.ts_us[heads],
            "cdir": cdir,
            "ver": p.ipver[heads],
            "proto": p.proto[heads],
            "c_hi": np.where(client, sh, dh),
            "c_lo": np.where(client, sl, dl),
            "c_port": np.where(client, sp, dp),
            "s_hi": np.where(client, dh, sh),
            "s_lo": np.where(client, dl, sl),
            "s_port": np.where(client, dp, sp),
            "last_up_us": np.full(k, -1, np.int64),
            "last_pay_us": np.full(k, -1, np.int64),
            "last_pay_up": np.zeros(k, bool),
        }
        n_old = len(self.st["flow"])
        o = np.argsort(np.concatenate([self.st["flow"], new["flow"]]), kind="stable")
        self.st = {
            c: np.concatenate([self.st[c], new[c].astype(t, copy=False)])[o]
            for c, t in _NP_STATE.items()
        }
        # Rows after the merge: old rows and new ones (n_old + connection number) moved by o.
        moved = np.empty_like(o)
        moved[o] = np.arange(len(o))
        rows = np.empty_like(si)
        rows[si >= 0] = moved[si[si >= 0]]
        rows[order] = moved[n_old + gid]
        return rows

    @staticmethod
    def _first_per_group(
        mask: np.ndarray, gid: np.ndarray, values: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per group (of ``k``): whether ``mask`` holds anywhere, and the first such value."""
        has = np.zeros(k, bool)
        val = np.zeros(k, values.dtype)
        at = np.flatnonzero(mask)
        if len(at):
            g = gid[at]
            f = _starts(g)
            has[g[f]] = True
            val[g[f]] = values[at[f]]
        return has, val

    def _learn_client_dirs_np(self, si: np.ndarray, dirk: np.ndarray, sport: np.ndarray) -> None:
        """Client direction keys still unknown (0): from packets not sent by the server."""
        cdir = self.st["cdir"]
        m = np.flatnonzero((cdir[si] == 0) & (sport != self.st["s_port"][si]))
        if len(m):
            rows, first = np.unique(si[m], return_index=True)
            cdir[rows] = dirk[m[first]]

    def _merge_pending_np(self, part: _Arrays) -> None:
        pend = self.pend
        if len(pend["flow"]) == 0:
            self.pend = part
            return
        a = {c: np.concatenate([pend[c], part[c]]) for c in self._pend_types}
        order = np.lexsort((a["w"], a["flow"]))
        a = {c: v[order] for c, v in a.items()}
        f, w = a["flow"], a["w"]
        b = np.flatnonzero(np.r_[True, (f[1:] != f[:-1]) | (w[1:] != w[:-1])])
        if len(b) == len(f):
            self.pend = a
            return
        self.pend = {
            "flow": f[b],
            "w": w[b],
            "first_us": np.minimum.reduceat(a["first_us"], b),
            "last_us": np.maximum.reduceat(a["last_us"], b),
            "flags": np.bitwise_or.reduceat(a["flags"], b),
            **{c: np.add.reduceat(a[c], b) for c in _SUMS if c in a},
        }

    def _emit_np(self, final: bool) -> pa.Table:
        pend, st = self.pend, self.st
        cutoff = self.now_us - self.idle_us
        rows = self._lookup(pend["flow"])
        if final:
            done = np.ones(len(rows), bool)
        else:
            w_end = st["start_us"][rows] + (pend["w"] + 1) * self.window_us
            done = (w_end <= self.now_us) | (st["last_us"][rows] < cutoff)
        out = {c: v[done] for c, v in pend.items()}
        keep = ~done
        self.pend = {c: v[keep] for c, v in pend.items()}
        # Connections idle for idle_s without pending records leave the state.
        held = np.zeros(len(st["flow"]), bool)
        held[rows[keep]] = True
        stay = (st["last_us"] >= cutoff) | held
        if not stay.all():
            self.st = {c: v[stay] for c, v in st.items()}
        if not done.any():
            return self._empty()
        self.records += int(done.sum())
        order = np.argsort(out["first_us"], kind="stable")
        r = rows[done][order]
        cols = {c: v[order] for c, v in out.items()}
        for c in ("ver", "proto", "c_hi", "c_lo", "c_port", "s_hi", "s_lo", "s_port"):
            cols[c] = st[c][r]
        return self._to_arrow(pl.DataFrame(cols))

    # ---- output ------------------------------------------------------------------------

    def _to_arrow(self, done: pl.DataFrame) -> pa.Table:
        v4 = pl.col("ver") == 4
        ts = pl.Datetime("us", "UTC")
        ips = done.select(
            src_ip=pl.when(v4).then(_ipv4_text("c_lo")), dst_ip=pl.when(v4).then(_ipv4_text("s_lo"))
        )
        six = np.flatnonzero(done["ver"].to_numpy() == 6)
        if len(six):  # IPv6 text per connection (rare; not per packet)
            v6 = done[six]
            c = [ip_text(6, h, lo) for h, lo in zip(v6["c_hi"], v6["c_lo"], strict=True)]
            s = [ip_text(6, h, lo) for h, lo in zip(v6["s_hi"], v6["s_lo"], strict=True)]
            ips = pl.DataFrame([ips["src_ip"].scatter(six, c), ips["dst_ip"].scatter(six, s)])
        cols = {
            "ts_start": pl.col("first_us").cast(ts),
            "ts_end": pl.col("last_us").cast(ts),
            "src_port": pl.col("c_port").cast(pl.Int32),
            "dst_port": pl.col("s_port").cast(pl.Int32),
            "proto": pl.col("proto").cast(pl.Int16),
            "tcp_flags": pl.when(pl.col("proto") == TCP)
            .then(pl.col("flags").cast(pl.Int16))
            .otherwise(0),
            "sni": pl.lit(None, pl.Utf8),
            "exporter": pl.lit(EXPORTER),
            "sampling": pl.lit(1, pl.Int32),
        }
        schema = FLOWS_PACKET if self.packet_stats else FLOWS
        out = done.select(cols.get(n, pl.col(n)).alias(n) for n in schema.names if n not in ips)
        return pl.concat([out, ips], how="horizontal").select(schema.names).to_arrow().cast(schema)

    def _empty(self) -> pa.Table:
        return (FLOWS_PACKET if self.packet_stats else FLOWS).empty_table()

    def flush(self) -> pa.Table:
        """End of input: every pending record."""
        out = self._emit_np(final=True)
        self.st = _np_empty(_NP_STATE)
        self.pend = _np_empty(self._pend_types)
        return out

    def open_connections(self) -> int:
        return len(self.st["flow"])


def aggregate(
    batches: Iterable[RawBatch], *, window_s: float = 60.0, packet_stats: bool = True
) -> pa.Table:
    """All flow records of a stream of raw batches."""
    agg = FlowAggregator(window_s, packet_stats=packet_stats)
    parts = [agg.add_batch(b) for b in batches]
    parts.append(agg.flush())
    return pa.concat_tables(parts)


def aggregate_file(
    path: str | Path, *, window_s: float = 60.0, packet_stats: bool = True
) -> AggregateResult:
    """Flow records of one pcap/pcapng file."""
    stats = ReadStats(path=str(path))
    flows = aggregate(read_batches(str(path), stats), window_s=window_s, packet_stats=packet_stats)
    return AggregateResult(flows=flows, read=stats)

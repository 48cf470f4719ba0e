"""Packets to canonical FLOWS records: one record per connection per fixed window.

:class:`FlowAggregator` plays the part of a NetFlow exporter with a short active timeout: each
TCP/UDP connection is cut into records of ``window_s`` seconds counted from the connection's
first packet (as ``softflowd -t maxlife=60`` does), so that a capture and an exporter's flow
records give the behaviour model (:mod:`minewatch.net.behavior`) the same view.

Everything is grouped NumPy/Polars work over whole batches (no Python per packet):

1. packets of a batch are keyed by their direction-free flow key (``Packets.flow``) and
   joined to the per-connection state (start time, which side is the client, endpoints);
2. new connections get their state from the batch itself (the client is the sender of a pure
   SYN, else the side with the higher port);
3. per (connection, window) sums are added to the pending records; a record is emitted when
   its window has passed (``start + (w + 1) * window_s`` is behind the newest packet), or
   when the connection has been idle for ``idle_s``, or at :meth:`FlowAggregator.flush`.

Without ``packet_stats`` the same steps run as NumPy work over arrays sorted by connection
key (one sort of the batch by (connection, window), ``reduceat`` for the sums, minima and
maxima), the state and pending records kept as sorted arrays; Polars only builds the emitted
table.

Finer per-window statistics from packets (``packet_stats=True``) ride along as extra
columns after the FLOWS columns: payload-carrying packets and bytes each way, client→server
payloads of at most :data:`SMALL_PAYLOAD` bytes, server pushes (server payload packets that
do not follow client payload within :data:`REPLY_GAP_S`), and the count, sum and sum of
squares of the gaps between client payload packets. Flow records from exporters lack them;
the model does not need them, they only make its reasons finer.

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
)
FLOWS_PACKET = pa.schema([*FLOWS, *(pa.field(n, t) for n, t in PACKET_COLUMNS)])

_SUMS = (
    "packets_up",
    "packets_down",
    "bytes_up",
    "bytes_down",
    "pay_pkts_up",
    "pay_pkts_down",
    "pay_bytes_up",
    "pay_bytes_down",
    "small_up",
    "pushes_down",
    "gap_n_up",
    "gap_sum_up",
    "gap_sq_up",
)

_STATE_SCHEMA = {
    "flow": pl.UInt64,
    "start_us": pl.Int64,
    "last_us": pl.Int64,
    "cdir": pl.UInt64,
    "ver": pl.UInt8,
    "proto": pl.UInt8,
    "c_hi": pl.UInt64,
    "c_lo": pl.UInt64,
    "c_port": pl.Int32,
    "s_hi": pl.UInt64,
    "s_lo": pl.UInt64,
    "s_port": pl.Int32,
    "last_up_us": pl.Int64,  # last client payload packet (for gaps), or null
    "last_pay_us": pl.Int64,  # last payload packet either way
    "last_pay_up": pl.Boolean,  # ... and whether it was the client's
}


#: Per-connection state of the NumPy path (``packet_stats=False``), sorted by ``flow``.
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
}
#: Pending records of the NumPy path, sorted by (``flow``, ``w``).
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
        self.state = pl.DataFrame(schema=_STATE_SCHEMA)
        self.pending = pl.DataFrame(schema=self._pending_schema())
        self.st = _np_empty(_NP_STATE)
        self.pend = _np_empty(_NP_PENDING)
        self.now_us = 0
        self.packets = 0
        self.records = 0

    @staticmethod
    def _pending_schema() -> dict[str, type[pl.DataType] | pl.DataType]:
        s: dict[str, type[pl.DataType] | pl.DataType] = {
            "flow": pl.UInt64,
            "w": pl.Int64,
            "first_us": pl.Int64,
            "last_us": pl.Int64,
            "flags": pl.UInt8,
        }
        for c in _SUMS:
            s[c] = pl.Float64 if c.startswith("gap_s") else pl.Int64
        return s

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
        if not self.packet_stats:
            return self._add_np(p, idx, ts)
        pk = pl.DataFrame(
            {
                "flow": p.flow[idx],
                "dir": p.dirkey[idx],
                "ts": ts,
                "wire": p.wire_len[idx].astype(np.int64),
                "pay": p.pay_len[idx].astype(np.int64),
                "flags": p.flags[idx],
                "proto": p.proto[idx],
                "ver": p.ipver[idx],
                "src_hi": p.src_hi[idx],
                "src_lo": p.src_lo[idx],
                "dst_hi": p.dst_hi[idx],
                "dst_lo": p.dst_lo[idx],
                "sport": p.sport[idx],
                "dport": p.dport[idx],
            }
        )
        self._new_connections(pk)
        pk = pk.join(
            self.state.select("flow", "start_us", "cdir"), on="flow", how="left"
        ).with_columns(
            up=pl.col("dir") == pl.col("cdir"),
            w=(pl.col("ts") - pl.col("start_us")) // self.window_us,
        )
        if self.packet_stats:
            pk = self._packet_columns(pk)
        part = pk.group_by("flow", "w").agg(
            first_us=pl.col("ts").min(),
            last_us=pl.col("ts").max(),
            flags=pl.col("flags").cast(pl.UInt8).bitwise_or(),
            packets_up=pl.col("up").sum().cast(pl.Int64),
            packets_down=(~pl.col("up")).sum().cast(pl.Int64),
            bytes_up=pl.when(pl.col("up")).then(pl.col("wire")).otherwise(0).sum(),
            bytes_down=pl.when(pl.col("up")).then(0).otherwise(pl.col("wire")).sum(),
            **self._packet_aggs(),
        )
        self.pending = (
            pl.concat([self.pending, part.select(self.pending.columns)], how="vertical_relaxed")
            .group_by("flow", "w")
            .agg(
                pl.col("first_us").min(),
                pl.col("last_us").max(),
                pl.col("flags").bitwise_or(),
                *(pl.col(c).sum() for c in _SUMS),
            )
        )
        last = pk.group_by("flow").agg(seen=pl.col("ts").max())
        self.state = (
            self.state.join(last, on="flow", how="left")
            .with_columns(last_us=pl.max_horizontal("last_us", "seen"))
            .drop("seen")
        )
        return self._emit(final=False)

    def _new_connections(self, pk: pl.DataFrame) -> None:
        fresh = pk.join(self.state.select("flow"), on="flow", how="anti")
        if fresh.height == 0:
            return
        syn = (pl.col("flags") & SYN) != 0
        pure_syn = syn & ((pl.col("flags") & ACK) == 0) & (pl.col("proto") == TCP)
        # Client: the sender of a pure SYN; else the side with the higher port; else the
        # sender of the first packet.
        first = fresh.sort("ts").group_by("flow", maintain_order=True).first()
        syn_dir = (
            fresh.filter(pure_syn).sort("ts").group_by("flow").agg(syn_dir=pl.col("dir").first())
        )
        new = first.join(syn_dir, on="flow", how="left").with_columns(
            src_is_client=pl.when(pl.col("syn_dir").is_not_null())
            .then(pl.col("syn_dir") == pl.col("dir"))
            .when(pl.col("sport") != pl.col("dport"))
            .then(pl.col("sport") > pl.col("dport"))
            .otherwise(True)
        )
        c = pl.col("src_is_client")
        new = new.select(
            "flow",
            start_us=pl.col("ts"),
            last_us=pl.col("ts"),
            cdir=pl.when(c).then(pl.col("dir")).otherwise(pl.lit(None, pl.UInt64)),
            ver=pl.col("ver"),
            proto=pl.col("proto"),
            c_hi=pl.when(c).then(pl.col("src_hi")).otherwise(pl.col("dst_hi")),
            c_lo=pl.when(c).then(pl.col("src_lo")).otherwise(pl.col("dst_lo")),
            c_port=pl.when(c).then(pl.col("sport")).otherwise(pl.col("dport")),
            s_hi=pl.when(c).then(pl.col("dst_hi")).otherwise(pl.col("src_hi")),
            s_lo=pl.when(c).then(pl.col("dst_lo")).otherwise(pl.col("src_lo")),
            s_port=pl.when(c).then(pl.col("dport")).otherwise(pl.col("sport")),
            src_is_client=c,
        )
        # The client's direction key when the first packet came from the server: the key of
        # any packet of that connection sent by the other side.
        other = (
            fresh.join(new.select("flow", "src_is_client"), on="flow")
            .join(first.select("flow", first_dir="dir"), on="flow")
            .filter(~pl.col("src_is_client") & (pl.col("dir") != pl.col("first_dir")))
            .group_by("flow")
            .agg(odir=pl.col("dir").first())
        )
        new = (
            new.join(other, on="flow", how="left")
            .with_columns(cdir=pl.coalesce("cdir", "odir"))
            .drop("odir", "src_is_client")
            .with_columns(
                last_up_us=pl.lit(None, pl.Int64),
                last_pay_us=pl.lit(None, pl.Int64),
                last_pay_up=pl.lit(None, pl.Boolean),
            )
        )
        # A connection whose client never sent in this batch: its direction key is not
        # known yet. Mark it with 0 and learn it from the first packet of the other side.
        new = new.with_columns(pl.col("cdir").fill_null(0))
        self.state = pl.concat([self.state, new.select(self.state.columns)], how="vertical_relaxed")
        self._learn_client_dirs(pk)

    def _learn_client_dirs(self, pk: pl.DataFrame) -> None:
        unknown = self.state.filter(pl.col("cdir") == 0)
        if unknown.height == 0:
            return
        known = (
            pk.join(unknown.select("flow", "s_port"), on="flow")
            .filter(pl.col("sport") != pl.col("s_port"))
            .group_by("flow")
            .agg(newdir=pl.col("dir").first())
        )
        if known.height:
            self.state = (
                self.state.join(known, on="flow", how="left")
                .with_columns(cdir=pl.coalesce("newdir", "cdir"))
                .drop("newdir")
            )

    def _packet_columns(self, pk: pl.DataFrame) -> pl.DataFrame:
        """Server pushes and client payload gaps, per packet (null/0 for the others)."""
        pk = pk.with_row_index("_i")
        pay = pk.filter(pl.col("pay") > 0)
        if pay.height == 0:
            return pk.drop("_i").with_columns(
                pushes_down=pl.lit(0, pl.Int64), gap_up=pl.lit(None, pl.Float64)
            )
        prev = self.state.select("flow", "last_up_us", "last_pay_us", "last_pay_up")
        pay = pay.sort("flow", "ts", "_i").join(prev, on="flow", how="left", maintain_order="left")
        same = pl.col("flow") == pl.col("flow").shift(1)
        pay = pay.with_columns(
            prev_ts=pl.when(same).then(pl.col("ts").shift(1)).otherwise(pl.col("last_pay_us")),
            prev_up=pl.when(same).then(pl.col("up").shift(1)).otherwise(pl.col("last_pay_up")),
        ).with_columns(
            pushes_down=(
                ~pl.col("up")
                & (
                    pl.col("prev_ts").is_null()
                    | ~pl.col("prev_up").fill_null(False)
                    | ((pl.col("ts") - pl.col("prev_ts")) > REPLY_GAP_S * 1e6)
                )
            ).cast(pl.Int64)
        )
        ups = pay.filter(pl.col("up")).with_columns(
            gap_up=(
                pl.col("ts")
                - pl.when(same).then(pl.col("ts").shift(1)).otherwise(pl.col("last_up_us"))
            )
            / 1e6
        )
        # Carry the last payload times of each connection into the state.
        last = pay.group_by("flow").agg(
            lp=pl.col("ts").last(),
            lpu=pl.col("up").last(),
            lu=pl.col("ts").filter(pl.col("up")).last(),
        )
        self.state = (
            self.state.join(last, on="flow", how="left")
            .with_columns(
                last_pay_us=pl.coalesce("lp", "last_pay_us"),
                last_pay_up=pl.coalesce("lpu", "last_pay_up"),
                last_up_us=pl.coalesce("lu", "last_up_us"),
            )
            .drop("lp", "lpu", "lu")
        )
        return (
            pk.join(pay.select("_i", "pushes_down"), on="_i", how="left")
            .join(ups.select("_i", "gap_up"), on="_i", how="left")
            .drop("_i")
            .with_columns(pl.col("pushes_down").fill_null(0))
        )

    def _packet_aggs(self) -> dict[str, pl.Expr]:
        if not self.packet_stats:
            zero = pl.lit(0, pl.Int64)
            return {
                c: (zero.cast(pl.Float64) if c.startswith("gap_s") else zero).sum()
                for c in _SUMS[4:]
            }
        up, pay = pl.col("up"), pl.col("pay")
        gap = pl.col("gap_up")
        return {
            "pay_pkts_up": (up & (pay > 0)).sum().cast(pl.Int64),
            "pay_pkts_down": (~up & (pay > 0)).sum().cast(pl.Int64),
            "pay_bytes_up": pl.when(up).then(pay).otherwise(0).sum(),
            "pay_bytes_down": pl.when(up).then(0).otherwise(pay).sum(),
            "small_up": (up & (pay > 0) & (pay <= SMALL_PAYLOAD)).sum().cast(pl.Int64),
            "pushes_down": pl.col("pushes_down").sum().cast(pl.Int64),
            "gap_n_up": gap.is_not_null().sum().cast(pl.Int64),
            "gap_sum_up": gap.sum().cast(pl.Float64),
            "gap_sq_up": (gap * gap).sum().cast(pl.Float64),
        }

    # ---- NumPy path (packet_stats=False) ------------------------------------------------

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
        # Newest packet of each connection (groups are sorted by connection first).
        sb = so[b]
        fb = _starts(sb)
        rows = sb[fb]
        st["last_us"][rows] = np.maximum(st["last_us"][rows], np.maximum.reduceat(last, fb))
        self._merge_pending_np(part)
        return self._emit_np(final=False)

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
        a = {c: np.concatenate([pend[c], part[c]]) for c in _NP_PENDING}
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
            **{c: np.add.reduceat(a[c], b) for c in _SUMS[:4]},
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

    def _emit(self, final: bool) -> pa.Table:
        if not self.packet_stats:
            return self._emit_np(final)
        if self.pending.height == 0:
            self._expire()
            return self._empty()
        joined = self.pending.join(self.state, on="flow", how="left")
        if final:
            done = joined
        else:
            w_end = pl.col("start_us") + (pl.col("w") + 1) * self.window_us
            idle = pl.col("last_us_right") < self.now_us - self.idle_us
            done = joined.filter((w_end <= self.now_us) | idle)
        if done.height:
            keys = done.select("flow", "w")
            self.pending = self.pending.join(keys, on=["flow", "w"], how="anti")
        self._expire()
        if done.height == 0:
            return self._empty()
        self.records += done.height
        return self._to_arrow(done.sort("first_us"))

    def _expire(self) -> None:
        cutoff = self.now_us - self.idle_us
        gone = self.state.filter(pl.col("last_us") < cutoff).select("flow")
        if gone.height:
            gone = gone.join(self.pending.select("flow").unique(), on="flow", how="anti")
            self.state = self.state.join(gone, on="flow", how="anti")

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
        out = self._emit(final=True)
        self.pending = self.pending.clear()
        self.state = self.state.clear()
        self.st = _np_empty(_NP_STATE)
        self.pend = _np_empty(_NP_PENDING)
        return out

    def open_connections(self) -> int:
        return self.state.height if self.packet_stats else len(self.st["flow"])


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

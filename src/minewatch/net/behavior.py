"""A payload-free model of mining connections over FLOWS records.

A mining client keeps one TCP connection to its pool open for hours. Over it the client sends
small submissions (a share every few seconds to minutes, at random: a Poisson process) and
keepalives, and the pool pushes a new job at the coin's job cadence. None of this needs the
payload: it shows in how many packets and bytes go each way per minute, how big they are, how
the per-record counts vary, and for how long the connection lives. TLS does not hide it.

The same pure functions score a capture's aggregated flows (:mod:`minewatch.net.flowagg`) and
flow records from exporters (NetFlow/IPFIX, softflowd, Zeek, Suricata, nfdump):

1. orientation — the client (the originator of a two-way record, else the side with the
   higher port) becomes ``src``; a one-way record from the server becomes the ``down`` part of
   the same connection, so one-way exports (softflowd, routers) and two-way ones (Zeek, the
   aggregator) give the same connection.
2. running totals — per connection, at each record's end (records in order of end time),
   totals over the connection so far: packets and bytes each way, records with packets each
   way and sums of squared packet counts, and the connection's age. One sort, then NumPy
   cumulative sums over the whole column with each connection's offset taken off (no group
   loop, no Python per connection).
3. :func:`feature_matrix` — :data:`FEATURES` from those totals (rates, sizes, ratios, the
   index of dispersion of per-record packet counts, which is about 1 for Poisson-like
   submissions and near 0 for a clockwork keepalive).
4. :class:`BehaviorModel` — an additive model over binned features
   (:class:`minewatch.net.scorecard.Scorecard`: per-feature bins and per-bin log-odds, trained as
   boosted stumps) whose log-odds an isotonic calibration (fitted on out-of-fold scores, see
   ``docs/behavior-model.md``) maps to a probability; stored as plain arrays in
   ``minewatch/data/behavior_model.npz`` (no scikit-learn needed to score).
5. :func:`detect` — one detection dict per connection whose calibrated confidence reached the
   model's threshold at some record, per the JSON Lines contract (``detector: "behavior"``),
   with reasons a person can check, including which features pushed the score up.

Only rows the model may score (:func:`eligible`: long enough, traffic both ways, shaped like
submissions) get features and a score; everything else is a handful of comparisons.

:class:`SlidingDetector` keeps the running totals per open connection for the live collector
(memory bounded by open connections) and reuses the same feature and scoring functions.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch.net.flowagg import PACKET_COLUMNS
from minewatch.net.intel import MINER_PORTS, PoolIntel
from minewatch.net.scorecard import Scorecard

MODEL_FILE = "behavior_model.npz"  # the shipped model: plain arrays and a JSON data card
#: The model for flow records made from packets (``minewatch scan``): :data:`FEATURES` plus
#: :data:`PACKET_FEATURES`.
PACKET_MODEL_FILE = "behavior_packet_model.npz"
#: A connection is scored only once it has been seen for this long, with traffic both ways.
#: Two minutes: the benign connections that looked most like mining out of fold did so in
#: their first one or two records (50 s: 30% of TLS mining detected at 0 false positives out
#: of fold; 120 s: 90%; see docs/behavior-model.md).
MIN_SPAN_S = 120.0
MIN_PACKETS = 8
MAX_UP_BYTES_PER_PACKET = 600
MAX_UP_DOWN_RATIO = 4.0
CONN_KEY = ("src_ip", "src_port", "dst_ip", "dst_port", "proto")
#: Columns of FLOWS that detection reads.
FLOW_COLUMNS = (
    "ts_start",
    "ts_end",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "proto",
    "packets_up",
    "packets_down",
    "bytes_up",
    "bytes_down",
    "sni",
    "sampling",
)

FEATURES: tuple[str, ...] = (
    "log_age_min",
    "log_ppm_up",
    "log_ppm_down",
    "log_bpp_up",
    "log_bpp_down",
    "log_byte_ratio",
    "log_pkt_ratio",
    "disp_up",
    "disp_down",
    "log_ppm_up_x_age",
)
#: What each feature means, for the reasons.
FEATURE_TEXT = {
    "log_push_pm": "server pushes/min",
    "push_share": "share of server messages that are pushes",
    "log_push_size": "push size",
    "log_reply_size": "reply size",
    "log_msg_size_up": "client message size",
    "cv_msg_up": "variation of client message sizes",
    "cv_reply": "variation of reply sizes",
    "cv_gap_up": "variation of gaps between client messages",
    "reply_per_msg": "replies per client message",
    "small_share_up": "share of small client messages",
    "log_age_min": "connection age",
    "log_ppm_up": "client→server packets/min",
    "log_ppm_down": "server→client packets/min",
    "log_bpp_up": "client bytes/packet",
    "log_bpp_down": "server bytes/packet",
    "log_byte_ratio": "byte ratio up/down",
    "log_pkt_ratio": "packet ratio up/down",
    "disp_up": "dispersion of client packets per record",
    "disp_down": "dispersion of server packets per record",
    "log_ppm_up_x_age": "client packets/min × age",
}
#: Running totals per connection (and their input columns).
TOTALS = ("PU", "PD", "BU", "BD", "NU", "ND", "PU2", "PD2")
#: Per-record statistics from packets (:mod:`minewatch.net.flowagg` with ``packet_stats``),
#: summed per connection like :data:`TOTALS` when the input has them.
PACKET_TOTALS: tuple[str, ...] = tuple(n for n, _ in PACKET_COLUMNS)
#: Features from :data:`PACKET_TOTALS`: what a pool's messages look like against a
#: request/response client's (the packet model adds them to :data:`FEATURES`).
PACKET_FEATURES: tuple[str, ...] = (
    "log_push_pm",
    "push_share",
    "log_push_size",
    "log_reply_size",
    "log_msg_size_up",
    "cv_msg_up",
    "cv_reply",
    "cv_gap_up",
    "reply_per_msg",
    "small_share_up",
)


def _to_frame(flows: pa.Table | pa.RecordBatch | pl.DataFrame) -> pl.DataFrame:
    if isinstance(flows, pl.DataFrame):
        return flows
    return pl.from_arrow(flows)  # type: ignore[return-value]


# --------------------------------------------------------------------------- features


def _disp(n: np.ndarray, s: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """log1p of the index of dispersion (variance / mean, capped at 50) of per-record counts,
    1 when fewer than two records carried packets."""
    k = np.maximum(n, 1).astype(np.float64)
    mean = s / k
    var = np.maximum(s2 / k - mean * mean, 0.0)
    d = np.where(n >= 2, var / np.maximum(mean, 1e-9), 1.0)
    return np.log1p(np.clip(d, 0.0, 50.0))


def feature_columns(t: dict[str, np.ndarray] | pl.DataFrame) -> Iterator[np.ndarray]:
    """:data:`FEATURES`, one column at a time in that order, from running totals ``age_s``
    and :data:`TOTALS`. The one definition of the features: training, :func:`detect` and the
    live detector all compute exactly this (the benchmark's pandas baseline writes the same
    formulas again in pandas and must find the same connections). A negative counter (bad
    input) gives NaN, which the scorecard puts in the lowest bin."""
    c = {k: np.asarray(t[k]) for k in ("age_s", *TOTALS)}
    age_min = np.maximum(c["age_s"] / 60.0, 0.5)
    log_age = np.log(np.minimum(age_min, 120.0))
    log_age_full = np.log(age_min)
    lpu = np.log(c["PU"] + 1.0)
    lpd = np.log(c["PD"] + 1.0)
    lbu = np.log(c["BU"] + 1.0)
    lbd = np.log(c["BD"] + 1.0)
    ppm_up = lpu - log_age_full
    yield log_age
    yield ppm_up
    yield lpd - log_age_full
    yield lbu - lpu
    yield lbd - lpd
    yield lbu - lbd
    yield lpu - lpd
    yield _disp(c["NU"], c["PU"], c["PU2"])
    yield _disp(c["ND"], c["PD"], c["PD2"])
    yield ppm_up * log_age


def _cv(n: np.ndarray, s: np.ndarray, s2: np.ndarray, empty: float) -> np.ndarray:
    """Coefficient of variation (capped at 5) from a count, sum and sum of squares;
    ``empty`` when fewer than two values."""
    k = np.maximum(n, 1).astype(np.float64)
    mean = s / k
    sd = np.sqrt(np.maximum(s2 / k - mean * mean, 0.0))
    return np.where(n >= 2, np.clip(sd / np.maximum(mean, 1e-9), 0.0, 5.0), empty)


def packet_feature_columns(t: dict[str, np.ndarray] | pl.DataFrame) -> Iterator[np.ndarray]:
    """:data:`PACKET_FEATURES`, in that order, from ``age_s`` and :data:`PACKET_TOTALS`.

    A *message* is a payload-carrying packet; a server message is a *push* when it does not
    follow a client message within ``flowagg.REPLY_GAP_S``, else a *reply*. A pool pushes
    jobs of a fixed shape and answers each submission with a short fixed acknowledgement; a
    cache or RPC client's replies carry values of any size and nothing comes unasked."""
    c = {k: np.asarray(t[k], dtype=np.float64) for k in ("age_s", *PACKET_TOTALS)}
    age_min = np.maximum(c["age_s"] / 60.0, 0.5)
    mu, md, push = c["pay_pkts_up"], c["pay_pkts_down"], c["pushes_down"]
    reply_n = np.maximum(md - push, 0.0)
    reply_b = np.maximum(c["pay_bytes_down"] - c["push_bytes_down"], 0.0)
    reply_sq = np.maximum(c["pay_sq_down"] - c["push_sq_down"], 0.0)
    yield np.log(push + 1.0) - np.log(age_min)
    yield push / np.maximum(md, 1.0)
    yield np.log1p(c["push_bytes_down"] / np.maximum(push, 1.0))
    yield np.log1p(reply_b / np.maximum(reply_n, 1.0))
    yield np.log1p(c["pay_bytes_up"] / np.maximum(mu, 1.0))
    yield _cv(mu, c["pay_bytes_up"], c["pay_sq_up"], 0.0)
    yield _cv(reply_n, reply_b, reply_sq, 0.0)
    yield _cv(c["gap_n_up"], c["gap_sum_up"], c["gap_sq_up"], 1.0)
    yield np.clip(reply_n / np.maximum(mu, 1.0), 0.0, 3.0)
    yield c["small_up"] / np.maximum(mu, 1.0)


def feature_matrix(t: dict[str, np.ndarray] | pl.DataFrame) -> np.ndarray:
    """:func:`feature_columns` as a matrix (rows = samples, columns = :data:`FEATURES`)."""
    n = len(np.asarray(t["age_s"]))
    cols = list(feature_columns(t))
    return np.stack(cols, axis=1) if n else np.zeros((0, len(FEATURES)))


def with_features(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` (running totals) with the :data:`FEATURES` columns added."""
    x = feature_matrix(df) if df.height else np.zeros((0, len(FEATURES)))
    return df.with_columns(
        pl.Series(name, x[:, i], dtype=pl.Float64) for i, name in enumerate(FEATURES)
    )


def eligible() -> pl.Expr:
    """Rows the model may score: seen long enough, with enough traffic both ways, and shaped
    like submissions at all: a share submission is a few hundred bytes (CryptoNote ~200,
    Stratum V1 ~150, plus TLS overhead), so a client that sends on average more than
    :data:`MAX_UP_BYTES_PER_PACKET` per packet, or more than :data:`MAX_UP_DOWN_RATIO` times
    what it receives, is uploading, not mining. The model was trained inside these bounds
    only. (:func:`eligible_mask` is the same over NumPy arrays.)"""
    return (
        (pl.col("age_s") >= MIN_SPAN_S)
        & (pl.col("PU") >= MIN_PACKETS)
        & (pl.col("PD") >= MIN_PACKETS)
        & (pl.col("BU") <= MAX_UP_BYTES_PER_PACKET * pl.col("PU"))
        & (pl.col("BU") <= MAX_UP_DOWN_RATIO * pl.col("BD"))
    )


def eligible_mask(
    age_s: np.ndarray, pu: np.ndarray, pd: np.ndarray, bu: np.ndarray, bd: np.ndarray
) -> np.ndarray:
    ok = age_s >= MIN_SPAN_S
    ok &= pu >= MIN_PACKETS
    ok &= pd >= MIN_PACKETS
    ok &= bu <= MAX_UP_BYTES_PER_PACKET * pu
    ok &= bu <= MAX_UP_DOWN_RATIO * bd
    return ok


# --------------------------------------------------------------------------- running totals


def _src_is_client() -> pl.Expr:
    """Whether a FLOWS record's ``src`` is the client: a record that carries both directions
    keeps its orientation (its ``src`` started the connection); a one-way record is oriented
    by port (the higher port is the client; the same port both ends: the greater address)."""
    two_way = ((pl.col("packets_down") > 0) | (pl.col("bytes_down") > 0)).fill_null(False)
    sp, dp = pl.col("src_port").fill_null(0), pl.col("dst_port").fill_null(0)
    tie = (sp == dp) & (pl.col("src_ip") >= pl.col("dst_ip")).fill_null(False)
    return two_way | (sp > dp) | tie


def _times_us() -> tuple[pl.Expr, pl.Expr]:
    """A record's start and end in integer microseconds (either stands in for the other)."""
    return (
        pl.coalesce("ts_start", "ts_end").dt.epoch("us"),
        pl.coalesce("ts_end", "ts_start").dt.epoch("us"),
    )


def _client_counts(sc: pl.Expr) -> dict[str, pl.Expr]:
    """Packets and bytes up (client to server) and down, by ``sc`` (:func:`_src_is_client`),
    scaled up by the record's sampling rate."""
    scale = pl.col("sampling").fill_null(1).clip(1, None).cast(pl.Int64)

    def pick(a: str, b: str) -> pl.Expr:
        return pl.when(sc).then(pl.col(a)).otherwise(pl.col(b)).fill_null(0) * scale

    return {
        "packets_up": pick("packets_up", "packets_down"),
        "packets_down": pick("packets_down", "packets_up"),
        "bytes_up": pick("bytes_up", "bytes_down"),
        "bytes_down": pick("bytes_down", "bytes_up"),
    }


def orient(
    flows: pa.Table | pa.RecordBatch | pl.DataFrame, extra: Sequence[str] = ()
) -> pl.DataFrame:
    """TCP records with the client (:func:`_src_is_client`) as ``src``, times in seconds
    (``t0``, ``t1``) and microseconds (``t0_us``, ``t1_us``), counts up and down scaled by
    the sampling rate; ``extra`` input columns are carried as they are (nulls as 0)."""
    sc = pl.col("_sc")
    t0, t1 = _times_us()

    def pick(a: str, b: str) -> pl.Expr:
        return pl.when(sc).then(pl.col(a)).otherwise(pl.col(b))

    df = _to_frame(flows).filter(pl.col("proto") == 6)
    return df.with_columns(_sc=_src_is_client()).select(
        src_ip=pick("src_ip", "dst_ip"),
        src_port=pick("src_port", "dst_port"),
        dst_ip=pick("dst_ip", "src_ip"),
        dst_port=pick("dst_port", "src_port"),
        proto=pl.col("proto"),
        t0_us=t0,
        t1_us=t1,
        t0=t0 / 1e6,
        t1=t1 / 1e6,
        **_client_counts(sc),
        sni=pl.col("sni"),
        **{c: pl.col(c).fill_null(0) for c in extra},
    )


@dataclass
class Running:
    """Running totals per connection, rows in (connection, record end) order.

    ``perm`` maps each row back to its input row; ``starts``/``lengths`` delimit the
    connections (``gid`` numbers them). ``first_t``/``last_t`` are in seconds. Records of a
    connection that end at the same instant (one-way exports give one per direction; NetFlow
    v9 times are whole seconds) make one moment: only the last row of each
    (``moment_end``) holds the totals of that moment, whatever the order the ties came in,
    and only those rows are scored.
    """

    perm: np.ndarray
    moment_end: np.ndarray
    gid: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    first_t: np.ndarray
    last_t: np.ndarray
    age_s: np.ndarray
    totals: dict[str, np.ndarray]

    def columns(self, rows: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        """``age_s`` and :data:`TOTALS` at some rows (what :func:`feature_matrix` takes)."""
        return {"age_s": self.age_s[rows], **{k: v[rows] for k, v in self.totals.items()}}


def _seg_cumsum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every segment start, in place in ``x`` (int64, a fresh
    array): each segment's first value has the previous segment's total taken off, then
    one ``cumsum`` runs over the whole column."""
    if len(starts) > 1:
        totals = np.add.reduceat(x, starts)
        x[starts[1:]] -= totals[:-1]
    return np.cumsum(x, out=x)


def _seg_cummin(v: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Running minimum restarting at every segment start, for int64 ``v``.

    Usually a connection's first record (by end time) also starts first, and the running
    minimum is that start throughout: one ``np.repeat``. The segments where a later record
    started earlier are worked out on their own rows: each is shifted below all earlier ones
    (by its rank times the widest spread within them), so one ``np.minimum.accumulate``
    cannot carry a value across a segment start.
    """
    out = np.repeat(v[starts], lengths)
    below = np.flatnonzero(v < out)
    if not len(below):
        return out
    gid = np.repeat(np.arange(len(starts)), lengths)
    bad = np.unique(gid[below])
    rows, which = _segment_rows(starts[bad], lengths[bad])
    sub, first = v[rows], out[rows]
    d = sub - first
    k = int(d.max()) - int(d.min()) + 1
    if (len(bad) + 1) * k < 2**62:
        shift = which.astype(np.int64) * k
        out[rows] = np.minimum.accumulate(d - shift) + shift + first
        return out
    for s, n in zip(starts[bad].tolist(), lengths[bad].tolist(), strict=True):
        out[s : s + n] = np.minimum.accumulate(v[s : s + n])  # spreads too wide to shift
    return out


def _sort_order(cid: np.ndarray, t1_us: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order by (connection id, record end), where each connection starts in it, and
    each row's connection number; the order of records that end at the same instant is
    left open (it does not matter: see :class:`Running`).

    Two NumPy sorts, no comparison of composite rows: the ids are sorted once (quicksort) and
    numbered, then (number, end time) is packed into one 64-bit key that is already sorted
    by connection, which the stable sort (timsort, that profits from sorted runs) finishes.
    Connections keep their places in the second sort, so the first one's boundaries hold.
    """
    p = np.argsort(cid)
    c = cid[p]
    start = np.empty(len(c), dtype=bool)
    if len(c):
        start[0] = True
        np.not_equal(c[1:], c[:-1], out=start[1:])
    del c
    gid = np.cumsum(start) - 1
    t1 = t1_us[p]
    lo = int(t1.min()) if len(t1) else 0
    span_bits = (int(t1.max()) - lo + 1).bit_length() if len(t1) else 1
    gid_bits = max(int(gid[-1]) if len(gid) else 0, 1).bit_length()
    if span_bits + gid_bits <= 63:
        key = gid.astype(np.uint64)
        key <<= np.uint64(span_bits)
        t1 -= lo
        key |= t1.view(np.uint64)
        return p[np.argsort(key, kind="stable")], start, gid
    again = pl.DataFrame({"g": gid, "a": t1}).select(pl.arg_sort_by("g", "a"))
    return p[again.to_series().to_numpy()], start, gid


def _running(
    cid: np.ndarray,
    t0_us: np.ndarray,
    t1_us: np.ndarray,
    pu: np.ndarray,
    pd: np.ndarray,
    bu: np.ndarray,
    bd: np.ndarray,
) -> Running:
    """Sort once by (connection id, record end); totals over the sorted rows."""
    n = len(cid)
    perm, start, gid = _sort_order(cid, t1_us)
    starts = np.flatnonzero(start)
    lengths = np.diff(np.append(starts, n))
    t1 = t1_us[perm]
    moment_end = np.empty(n, dtype=bool)
    if n:
        moment_end[-1] = True
        np.not_equal(t1[1:], t1[:-1], out=moment_end[:-1])
        moment_end[:-1] |= start[1:]
    first_us = _seg_cummin(t0_us[perm], starts, lengths)
    first_t = first_us / 1e6
    last_t = t1 / 1e6  # record ends are sorted within a connection: their running maximum
    pu, pd = pu[perm], pd[perm]
    totals = {
        "NU": _seg_cumsum((pu > 0).astype(np.int64), starts),
        "ND": _seg_cumsum((pd > 0).astype(np.int64), starts),
        "PU2": _seg_cumsum(pu * pu, starts),
        "PD2": _seg_cumsum(pd * pd, starts),
        "PU": _seg_cumsum(pu, starts),
        "PD": _seg_cumsum(pd, starts),
        "BU": _seg_cumsum(bu[perm], starts),
        "BD": _seg_cumsum(bd[perm], starts),
    }
    return Running(
        perm, moment_end, gid, starts, lengths, first_t, last_t, last_t - first_t, totals
    )


def running_totals(oriented: pl.DataFrame) -> pl.DataFrame:
    """Per connection and record end (a :class:`Running` moment): totals over the connection
    so far, for an :func:`orient` frame. Rows come out sorted by connection and time."""
    if oriented.height == 0:
        return oriented.with_columns(
            *(pl.lit(0, dtype=pl.Int64).alias(k) for k in TOTALS),
            first_t=pl.lit(0.0),
            last_t=pl.lit(0.0),
            age_s=pl.lit(0.0),
        )
    cid = oriented.select(pl.struct(list(CONN_KEY)).hash()).to_series().to_numpy()

    def col(name: str) -> np.ndarray:
        return oriented[name].cast(pl.Int64).to_numpy()

    r = _running(
        cid,
        col("t0_us"),
        col("t1_us"),
        col("packets_up"),
        col("packets_down"),
        col("bytes_up"),
        col("bytes_down"),
    )
    sni_last = (
        pl.DataFrame({"g": r.gid, "sni": oriented["sni"].gather(r.perm)})
        .select(pl.col("sni").fill_null(strategy="forward").over("g"))
        .to_series()
    )
    keep = r.moment_end
    # Packet statistics (when the records carry them) become running totals too.
    packet = {
        c: _seg_cumsum(oriented[c].to_numpy()[r.perm], r.starts)[keep]
        for c in PACKET_TOTALS
        if c in oriented.columns
    }
    return oriented.drop("sni")[r.perm[keep]].with_columns(
        first_t=pl.Series(r.first_t[keep]),
        last_t=pl.Series(r.last_t[keep]),
        age_s=pl.Series(r.age_s[keep]),
        sni=sni_last.filter(pl.Series(keep)),
        **{k: pl.Series(v[keep]) for k, v in r.totals.items()},
        **{k: pl.Series(v) for k, v in packet.items()},
    )


def has_packet_totals(df: pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatch) -> bool:
    """Whether the records carry every packet statistic (:data:`PACKET_TOTALS`)."""
    if isinstance(df, pl.LazyFrame):
        names: Sequence[str] = df.collect_schema().names()
    else:
        names = df.columns if isinstance(df, pl.DataFrame) else df.schema.names
    return all(c in names for c in PACKET_TOTALS)


def with_packet_features(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` (running totals with :data:`PACKET_TOTALS`) with :data:`PACKET_FEATURES` added."""
    return df.with_columns(
        pl.Series(name, col, dtype=pl.Float64)
        for name, col in zip(PACKET_FEATURES, packet_feature_columns(df), strict=True)
    )


def connection_features(flows: pa.Table | pa.RecordBatch | pl.DataFrame) -> pl.DataFrame:
    """One row per (connection, record end) with the running totals and :data:`FEATURES`;
    with :data:`PACKET_TOTALS` and :data:`PACKET_FEATURES` too when the records carry
    packet statistics (flow records made from packets)."""
    if not has_packet_totals(flows):
        return with_features(running_totals(orient(flows)))
    return with_packet_features(with_features(running_totals(orient(flows, PACKET_TOTALS))))


# --------------------------------------------------------------------------- the model


@dataclass
class BehaviorModel:
    """A scorecard (additive log-odds over binned :attr:`features`) plus isotonic calibration.

    ``iso_x``/``iso_y`` map the scorecard's log-odds to a calibrated probability by linear
    interpolation; ``threshold`` is the calibrated confidence at which a connection is
    reported. ``reference_x``/``reference_logit`` are feature rows and the log-odds the
    training library gave them, kept to check the shipped tables against (tests).
    """

    features: tuple[str, ...]
    card: Scorecard
    iso_x: np.ndarray
    iso_y: np.ndarray
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    reference_x: np.ndarray | None = None
    reference_logit: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> BehaviorModel:
        """The shipped model, or an .npz file written by :meth:`save`."""
        if path is None:
            ref = resources.files("minewatch.data").joinpath(MODEL_FILE)
            with resources.as_file(ref) as p:
                return cls.load(p)
        with np.load(path, allow_pickle=False) as a:
            return cls(
                features=tuple(str(f) for f in a["features"]),
                card=Scorecard.from_arrays(a),
                iso_x=np.asarray(a["iso_x"], dtype=np.float64),
                iso_y=np.asarray(a["iso_y"], dtype=np.float64),
                threshold=float(a["threshold"][0]),
                meta=json.loads(str(a["meta"][0])),
                reference_x=np.asarray(a["reference_x"]) if "reference_x" in a else None,
                reference_logit=(
                    np.asarray(a["reference_logit"]) if "reference_logit" in a else None
                ),
            )

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {
            "features": np.array(self.features),
            "iso_x": self.iso_x,
            "iso_y": self.iso_y,
            "threshold": np.array([self.threshold]),
            "meta": np.array([json.dumps(self.meta, default=str)]),
            **self.card.arrays(),
        }
        if self.reference_x is not None and self.reference_logit is not None:
            arrays["reference_x"] = self.reference_x
            arrays["reference_logit"] = self.reference_logit
        np.savez_compressed(path, **arrays)

    def logit(self, x: np.ndarray) -> np.ndarray:
        """The scorecard's log-odds for a feature matrix (rows = samples)."""
        return self.card.logit(x)

    def calibrate(self, logit: np.ndarray) -> np.ndarray:
        return np.interp(logit, self.iso_x, self.iso_y)

    def confidence(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probability per row of a feature matrix."""
        return self.calibrate(self.logit(x))

    @property
    def packet(self) -> bool:
        """Whether the model reads :data:`PACKET_FEATURES` (flow records made from packets)."""
        return any(f in PACKET_FEATURES for f in self.features)

    def _columns(
        self, totals: dict[str, np.ndarray] | pl.DataFrame
    ) -> tuple[tuple[str, ...], Iterator[np.ndarray]]:
        """The names of the features computed for this model and the columns, lazily:
        :func:`feature_columns`, then :func:`packet_feature_columns` for the packet model."""
        if not self.packet:
            return FEATURES, feature_columns(totals)
        cols = itertools.chain(feature_columns(totals), packet_feature_columns(totals))
        return FEATURES + PACKET_FEATURES, cols

    def matrix(self, totals: dict[str, np.ndarray] | pl.DataFrame) -> np.ndarray:
        """The model's feature matrix from running totals (and packet totals)."""
        names, cols = self._columns(totals)
        if len(np.asarray(totals["age_s"])) == 0:
            return np.zeros((0, len(self.features)))
        x = np.stack(list(cols), axis=1)
        return x if names == self.features else x[:, [names.index(f) for f in self.features]]

    def confidence_totals(self, totals: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated probability from running totals, each feature binned as soon as it is
        computed (:meth:`_columns`)."""
        names, cols = self._columns(totals)
        if names != self.features:
            return self.confidence(self.matrix(totals))
        return self.calibrate(self.card.logit_columns(cols, len(totals["age_s"])))

    def score_frame(self, feats: pl.DataFrame) -> np.ndarray:
        """Calibrated probability per row of a frame holding the model's features."""
        if feats.height == 0:
            return np.zeros(0)
        return self.confidence(feats.select(self.features).to_numpy().astype(np.float64))

    def term_reasons(self, x: np.ndarray, top: int = 3) -> list[str]:
        """Per row of ``x``: the terms that raised the score most and the one that lowered it
        most, in log-odds against a typical benign long-lived connection (the tables are
        centred on the benign training rows). Whole columns at once."""
        if x.shape[0] == 0:
            return []
        contrib = self.card.contributions(x)
        order = np.argsort(-contrib, axis=1)
        texts = np.array([_term_text(n) for n in self.card.term_names], dtype=object)
        rows = np.arange(x.shape[0])
        top = min(top, contrib.shape[1])
        cols: dict[str, Any] = {}
        for k in range(top):
            cols[f"n{k}"] = pl.Series(texts[order[:, k]], dtype=pl.Utf8)
            cols[f"v{k}"] = contrib[rows, order[:, k]]
        cols["nl"] = pl.Series(texts[order[:, -1]], dtype=pl.Utf8)
        cols["vl"] = contrib[rows, order[:, -1]]
        raised = pl.concat_list(
            pl.when(pl.col(f"v{k}") > 0.05).then(
                pl.concat_str([pl.col(f"n{k}"), pl.lit(" "), _fixed(pl.col(f"v{k}"), 1, True)])
            )
            for k in range(top)
        ).list.drop_nulls()
        text = pl.concat_str(
            [
                pl.lit("model terms (log-odds against a typical benign connection): "),
                pl.when(raised.list.len() > 0)
                .then(raised.list.join(", "))
                .otherwise(pl.lit("none raised it")),
                pl.when(pl.col("vl") < -0.05)
                .then(
                    pl.concat_str(
                        [
                            pl.lit("; lowered by "),
                            pl.col("nl"),
                            pl.lit(" "),
                            _fixed(pl.col("vl"), 1, True),
                        ]
                    )
                )
                .otherwise(pl.lit("")),
            ]
        )
        return pl.DataFrame(cols).select(text).to_series().to_list()


def _fixed(e: pl.Expr, digits: int, signed: bool = False) -> pl.Expr:
    """A float column as text with ``digits`` decimals (``+`` in front when ``signed``), as
    ``f"{x:.2f}"`` does for one number; null for NaN."""
    k = 10**digits
    v = (e.abs() * k).round(0).cast(pl.Int64, strict=False)
    whole = (v // k).cast(pl.Utf8)
    text = (
        whole
        if digits == 0
        else pl.concat_str([whole, pl.lit("."), (v % k).cast(pl.Utf8).str.zfill(digits)])
    )
    sign = pl.when((e < 0) & (v > 0)).then(pl.lit("-")).otherwise(pl.lit("+" if signed else ""))
    return pl.concat_str([sign, text])


def _term_text(name: str) -> str:
    if "×" in name:
        a, b = name.split("×")
        return f"{FEATURE_TEXT.get(a, a)} with {FEATURE_TEXT.get(b, b)}"
    return FEATURE_TEXT.get(name, name)


_DEFAULT_MODEL: BehaviorModel | None = None


def default_model() -> BehaviorModel:
    global _DEFAULT_MODEL
    if _DEFAULT_MODEL is None:
        _DEFAULT_MODEL = BehaviorModel.load()
    return _DEFAULT_MODEL


@functools.cache
def default_packet_model() -> BehaviorModel | None:
    """The shipped packet model (:data:`PACKET_MODEL_FILE`), None when the package has none."""
    ref = resources.files("minewatch.data").joinpath(PACKET_MODEL_FILE)
    if not ref.is_file():
        return None
    with resources.as_file(ref) as p:
        return BehaviorModel.load(p)


def model_for(
    flows: pa.Table | pa.RecordBatch | pl.DataFrame | pl.LazyFrame,
    model: BehaviorModel | None = None,
) -> BehaviorModel:
    """``model`` if given; else the packet model for records that carry packet statistics
    (when one is shipped), the flow model for all others."""
    if model is not None:
        return model
    pm = default_packet_model() if has_packet_totals(flows) else None
    return pm if pm is not None else default_model()


def score(
    feats: pl.DataFrame, model: BehaviorModel | None = None, *, log_odds: bool = False
) -> pl.DataFrame:
    """Add ``confidence`` (0 where not eligible) to a :func:`connection_features` frame; with
    ``log_odds`` also the scorecard's uncalibrated ``log_odds`` (−inf where not eligible),
    which orders rows without the calibration's ties (for operating curves)."""
    m = model if model is not None else default_model()
    ok = feats.select(eligible()).to_series().to_numpy()
    logit = np.full(feats.height, -np.inf)
    if ok.any():
        x = feats.filter(pl.Series(ok)).select(m.features).to_numpy().astype(np.float64)
        logit[ok] = m.logit(x)
    conf = np.where(ok, m.calibrate(logit), 0.0)
    out = feats.with_columns(confidence=pl.Series(conf, dtype=pl.Float64))
    if log_odds:
        out = out.with_columns(log_odds=pl.Series(logit, dtype=pl.Float64))
    return out


def summarize(
    scored: pl.DataFrame, threshold: float, model: BehaviorModel | None = None
) -> pl.DataFrame:
    """Per connection: the row at which confidence first reached ``threshold`` (among the
    rows the model scores, :func:`eligible`), plus totals.

    ``detected_at`` is the record end at which it first did, and ``terms`` the model terms at
    that record; the other figures in the reasons come from the last row (everything seen).
    """
    key = list(CONN_KEY)
    m = model if model is not None else default_model()
    hit_rows = scored.filter((pl.col("confidence") >= threshold) & eligible())
    hits = hit_rows.group_by(key).agg(
        detected_at=pl.col("last_t").min(),
        confidence=pl.col("confidence").max(),
        first_hit=pl.struct(list(m.features)).sort_by("last_t").first(),
    )
    if hits.height == 0:
        return hits.drop("first_hit").with_columns(terms=pl.lit(None, dtype=pl.Utf8))
    first = hits.select(pl.col("first_hit").struct.unnest())
    terms = m.term_reasons(first.select(m.features).to_numpy().astype(np.float64))
    hits = hits.drop("first_hit").with_columns(terms=pl.Series(terms, dtype=pl.Utf8))
    sub = scored.join(hits.select(key), on=key, how="semi")
    last = sub.group_by(key).agg(pl.all().sort_by("last_t").last())
    return hits.join(last.drop("confidence"), on=key, how="left")


# --------------------------------------------------------------------------- the detect path

_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9)


def _conn_id(sc: pl.Expr) -> pl.Expr:
    """A 64-bit connection id (client address hash, server address hash, packed ports) for
    rows whose client side ``sc`` says. Unsigned multiplication by odd constants wraps in
    Polars (``tests/net/test_behavior_paths.py`` checks it): for fixed other parts,
    distinct values give distinct ids."""
    hs, hd = pl.col("src_ip").hash(), pl.col("dst_ip").hash()
    sp = pl.col("src_port").fill_null(0).cast(pl.UInt64)
    dp = pl.col("dst_port").fill_null(0).cast(pl.UInt64)

    def pick(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return pl.when(sc).then(a).otherwise(b)

    m = [pl.lit(k, dtype=pl.UInt64) for k in _MIX]
    return (
        (pick(hs, hd) * m[0])
        ^ (pick(hd, hs) * m[1])
        ^ (pick(sp * 65536 + dp, dp * 65536 + sp) * m[2])
    )


@dataclass
class _Hot:
    """The TCP rows of connections that may qualify, with their running totals.

    ``frame`` holds those rows' input columns that reports need (``_sc`` = whether the
    input's ``src`` is the client), in input order; ``run`` indexes into it."""

    frame: pl.DataFrame
    run: Running


def _bucket_gate(s: pl.Series) -> pl.Series:
    """Rows that may belong to a connection with :data:`MIN_PACKETS` packets each way.

    Packet counts (clipped at :data:`MIN_PACKETS`) are summed per bucket of connection ids:
    the top bits of the already mixed 64-bit id, two to four buckets per row (2**16 to 2**24
    buckets). A bucket's sums are at least those of every connection in it, so no
    connection that qualifies is dropped; the exact per-connection gate then runs over the
    rows left, far fewer, where a hash aggregation is cheap. ``np.add.at`` on ``uint32``
    tables: no sum can overflow below 2**29 rows."""
    bits = min(24, max(16, len(s).bit_length() + 1))
    cid = s.struct.field("_cid").to_numpy()
    bucket = (cid >> np.uint64(64 - bits)).astype(np.intp)
    ok = np.ones(1 << bits, dtype=bool)
    for name in ("_packets_up", "_packets_down"):
        table = np.zeros(1 << bits, dtype=np.uint32)
        counts = np.minimum(s.struct.field(name).to_numpy(), MIN_PACKETS).astype(np.uint32)
        np.add.at(table, bucket, counts)
        ok &= table >= MIN_PACKETS
    return pl.Series(ok[bucket])


def _hot(flows: pl.DataFrame | pl.LazyFrame) -> _Hot:
    """Orientation, connection ids, the gate and the running totals in one Polars query
    (lazy: given a ``scan_parquet`` the file is read once, in the same pass), then the
    sort and cumulative sums in NumPy over the rows that remain.

    The gate keeps the records of connections with at least :data:`MIN_PACKETS` packets
    each way in total: first :func:`_bucket_gate` (coarse, never drops one that qualifies),
    then per-connection sums over the connection id (exact) on the rows left. Short-lived
    connections, most of a network's records, go here, before the sort; the gate needs only
    addresses, ports and packet counts, and the times, byte counts and other derived
    columns are worked out for the rows that pass it only."""
    lf = flows.lazy()
    names = lf.collect_schema().names()
    sc = pl.col("_sc")
    t0, t1 = _times_us()
    counts = _client_counts(sc)
    up, down = (pl.col(f"_{k}") for k in ("packets_up", "packets_down"))
    frame = (
        lf.filter(pl.col("proto") == 6)
        .with_columns(_sc=_src_is_client())
        .with_columns(
            _cid=_conn_id(sc),
            _packets_up=counts["packets_up"],
            _packets_down=counts["packets_down"],
        )
        .filter(
            pl.struct("_cid", "_packets_up", "_packets_down").map_batches(
                _bucket_gate, return_dtype=pl.Boolean
            )
        )
        .filter((up.sum().over("_cid") >= MIN_PACKETS) & (down.sum().over("_cid") >= MIN_PACKETS))
        .select(
            "_sc",
            "src_ip",
            "src_port",
            "dst_ip",
            "dst_port",
            "sni",
            *(c for c in PACKET_TOTALS if c in names),
            "_cid",
            "_packets_up",
            "_packets_down",
            _t0=t0,
            _t1=t1,
            _bytes_up=counts["bytes_up"],
            _bytes_down=counts["bytes_down"],
        )
        .collect()
    )
    hot = ["_cid", "_t0", "_t1", *(f"_{k}" for k in counts)]
    run = _running(*(frame[c].to_numpy() for c in hot))
    return _Hot(frame.drop(hot), run)


def _segment_rows(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All row positions of some segments, and which of them (0..len-1) each belongs to."""
    which = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(len(which)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offset, which


def _hot_summary(
    h: _Hot, model: BehaviorModel, threshold: float
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Detected connections (as :func:`summarize` gives them) and their packet totals."""
    r = h.run
    t = r.totals
    ok = eligible_mask(r.age_s, t["PU"], t["PD"], t["BU"], t["BD"])
    e = np.flatnonzero(ok & r.moment_end)
    df = h.frame
    # The packet model's running totals of the packet statistics, at every row.
    pk = (
        {c: _seg_cumsum(df[c].to_numpy()[r.perm], r.starts) for c in PACKET_TOTALS}
        if model.packet
        else {}
    )

    def totals_at(rows: np.ndarray) -> dict[str, np.ndarray]:
        return r.columns(rows) | {c: v[rows] for c, v in pk.items()}

    conf = model.confidence_totals(totals_at(e)) if len(e) else np.zeros(0)
    hit = conf >= threshold
    if not hit.any():
        return pl.DataFrame(), None
    rows, hconf = e[hit], conf[hit]
    g = r.gid[rows]  # non-decreasing: rows are in connection order
    first = np.flatnonzero(np.diff(g, prepend=-1))
    ug = g[first]
    det_row = rows[first]  # the earliest record at which each connection reached it
    last_row = r.starts[ug] + r.lengths[ug] - 1
    ends = df.select("_sc", "src_ip", "src_port", "dst_ip", "dst_port")[r.perm[last_row]]
    sc = ends["_sc"]

    def pick(a: str, b: str) -> pl.Series:
        return ends.select(pl.when(sc).then(pl.col(a)).otherwise(pl.col(b))).to_series()

    members, which = _segment_rows(r.starts[ug], r.lengths[ug])
    member_rows = r.perm[members]
    sni = (
        pl.DataFrame({"k": which, "sni": df["sni"][member_rows]})
        .group_by("k", maintain_order=True)
        .agg(pl.col("sni").drop_nulls().last())
        .sort("k")["sni"]
    )
    last_x = feature_matrix(r.columns(last_row))
    summary = pl.DataFrame(
        {
            "src_ip": pick("src_ip", "dst_ip"),
            "src_port": pick("src_port", "dst_port"),
            "dst_ip": pick("dst_ip", "src_ip"),
            "dst_port": pick("dst_port", "src_port"),
            "proto": pl.Series(np.full(len(ug), 6), dtype=pl.Int16),
            "detected_at": r.last_t[det_row],
            "confidence": np.maximum.reduceat(hconf, first),
            "terms": pl.Series(model.term_reasons(model.matrix(totals_at(det_row)))),
            "first_t": r.first_t[last_row],
            "last_t": r.last_t[last_row],
            "age_s": r.age_s[last_row],
            **{k: t[k][last_row] for k in TOTALS},
            "disp_up": last_x[:, FEATURES.index("disp_up")],
            "sni": sni,
        }
    )
    packets = None
    if has_packet_totals(df):
        packets = (
            df.select(PACKET_TOTALS)[member_rows]
            .with_columns(k=pl.Series(which))
            .group_by("k")
            .agg(pl.all().sum())
            .sort("k")
            .drop("k")
        )
        packets = pl.concat([summary.select(CONN_KEY), packets], how="horizontal")
    return summary, packets


def _reason_exprs(threshold: float, packets: bool) -> list[pl.Expr]:
    """The reasons of a detection as text columns (null where one does not apply), computed
    for all reported connections at once from a :func:`summarize`-shaped frame."""
    age_min = pl.col("age_s") / 60.0
    mins = age_min.clip(0.5, None)
    pu, pd, bu, bd = pl.col("PU"), pl.col("PD"), pl.col("BU"), pl.col("BD")
    disp = pl.col("disp_up").exp() - 1.0
    out = [
        pl.concat_str([
            pl.lit("behaviour model "), _fixed(pl.col("confidence"), 3),
            pl.lit(f" ≥ {threshold:.3f} after "),
            _fixed((pl.col("detected_at") - pl.col("first_t")) / 60.0, 1),
            pl.lit(" min of observation"),
        ]),
        pl.concat_str([pl.lit("connection open "), _fixed(age_min, 1), pl.lit(" min")]),
        pl.concat_str([
            pl.lit("client→server "), _fixed(pu / mins, 1), pl.lit(" packets/min of ~"),
            _fixed(bu / pu.clip(1, None), 0), pl.lit(" bytes"),
        ]),
        pl.concat_str([
            pl.lit("server→client "), _fixed(pd / mins, 1), pl.lit(" packets/min of ~"),
            _fixed(bd / pd.clip(1, None), 0), pl.lit(" bytes"),
        ]),
        pl.concat_str([pl.lit("byte ratio up/down "), _fixed(bu / bd.clip(1, None), 2)]),
        pl.when(pl.col("NU") >= 2).then(pl.concat_str([
            pl.lit("client packets per record vary with dispersion "), _fixed(disp, 2),
            pl.lit(" over "), pl.col("NU").cast(pl.Utf8), pl.lit(" records ("),
            pl.when(disp.is_between(0.3, 3.0))
            .then(pl.lit("Poisson-like (random submissions)"))
            .otherwise(pl.lit("not Poisson-like")),
            pl.lit(")"),
        ])),
        pl.col("terms"),
    ]  # fmt: skip
    if packets:
        n, mean = pl.col("gap_n_up"), pl.col("gap_sum_up") / pl.col("gap_n_up")
        cv = (pl.col("gap_sq_up") / n - mean * mean).clip(0.0, None).sqrt() / mean
        replies = pl.col("pay_pkts_down") - pl.col("pushes_down")
        reply_bytes = pl.col("pay_bytes_down") - pl.col("push_bytes_down")

        def size_cv(k: pl.Expr, total: pl.Expr, sq: pl.Expr) -> pl.Expr:
            m = total / k.clip(1, None)
            return (sq / k.clip(1, None) - m * m).clip(0.0, None).sqrt() / m.clip(1e-9, None)

        reply_cv = size_cv(replies, reply_bytes, pl.col("pay_sq_down") - pl.col("push_sq_down"))
        up_cv = size_cv(pl.col("pay_pkts_up"), pl.col("pay_bytes_up"), pl.col("pay_sq_up"))
        out += [
            pl.when(pl.col("pushes_down") > 0).then(pl.concat_str([
                pl.lit("server pushes every ~"),
                _fixed(pl.col("age_s") / pl.col("pushes_down"), 0), pl.lit(" s ("),
                pl.col("pushes_down").cast(pl.Utf8), pl.lit(" unsolicited server messages of ~"),
                _fixed(pl.col("push_bytes_down") / pl.col("pushes_down"), 0),
                pl.lit(" bytes)"),
            ])),
            pl.when(replies > 0).then(pl.concat_str([
                pl.lit("server replies "), replies.cast(pl.Utf8), pl.lit(" to "),
                pl.col("pay_pkts_up").cast(pl.Utf8), pl.lit(" client messages, ~"),
                _fixed(reply_bytes / replies, 0), pl.lit(" bytes each (size CV "),
                _fixed(reply_cv, 2), pl.lit("); client messages ~"),
                _fixed(pl.col("pay_bytes_up") / pl.col("pay_pkts_up").clip(1, None), 0),
                pl.lit(" bytes (size CV "), _fixed(up_cv, 2), pl.lit(")"),
            ])),
            pl.when(pl.col("pay_pkts_up") > 0).then(pl.concat_str([
                _fixed(pl.col("small_up").fill_null(0) / mins, 1),
                pl.lit(" small client→server payloads/min (≤600 bytes; "),
                pl.col("small_up").fill_null(0).cast(pl.Utf8), pl.lit(" of "),
                pl.col("pay_pkts_up").cast(pl.Utf8), pl.lit(")"),
            ])),
            pl.when(n >= 3).then(
                pl.when(mean > 0)
                .then(pl.concat_str([
                    pl.lit("client payloads every "), _fixed(mean, 1),
                    pl.lit(" s on average (CV "), _fixed(cv, 2), pl.lit(")"),
                ]))
                .otherwise(pl.lit("client payloads back to back"))
            ),
        ]  # fmt: skip
    return out


def _records(
    summary: pl.DataFrame,
    *,
    intel: PoolIntel | None,
    names: dict[str, str] | None,
    packet_totals: pl.DataFrame | None,
    threshold: float,
) -> list[dict[str, Any]]:
    """Detection dicts (JSON Lines contract) for summarised connections, built column-wise;
    only the pool-list look-up runs per distinct server (name or address)."""
    if summary.height == 0:
        return []
    s = summary.sort("first_t")
    if "terms" not in s.columns:
        s = s.with_columns(terms=pl.lit(None, dtype=pl.Utf8))
    packets = packet_totals is not None and packet_totals.height > 0
    if packet_totals is not None and packets:
        s = s.join(packet_totals, on=list(CONN_KEY), how="left")
    sni = pl.when(pl.col("sni") != "").then(pl.col("sni"))
    by_dns = pl.lit(None, dtype=pl.Utf8)
    if names:
        by_dns = pl.col("dst_ip").replace_strict(names, default=None, return_dtype=pl.Utf8)
    s = s.with_columns(
        pool_host=pl.coalesce(sni, by_dns),
        host_src=pl.when(sni.is_not_null())
        .then(pl.lit("TLS SNI in the flow records"))
        .otherwise(pl.lit("DNS answer")),
    )
    hits = {"hit": pl.lit(None, dtype=pl.Utf8), "coin": pl.lit(None, dtype=pl.Utf8)}
    if intel is not None:
        found: dict[str, list[Any]] = {"pool_host": [], "dst_ip": [], "hit": [], "coin": []}
        for host, ip in s.select("pool_host", "dst_ip").unique().iter_rows():  # per server
            h = intel.match_domain(host) or intel.match_ip(ip)
            found["pool_host"].append(host)
            found["dst_ip"].append(ip)
            found["hit"].append(
                f"{h.kind} {h.matched} is on a pool list ({h.source})" if h else None
            )
            found["coin"].append(h.coin if h else None)
        table = pl.DataFrame(found, schema={"pool_host": pl.Utf8, "dst_ip": pl.Utf8,
                                            "hit": pl.Utf8, "coin": pl.Utf8})  # fmt: skip
        s = s.join(table, on=["pool_host", "dst_ip"], how="left", nulls_equal=True)
        hits = {"hit": pl.col("hit"), "coin": pl.col("coin")}
    s = s.with_columns(**hits)
    conf = pl.col("confidence")
    boosted = pl.max_horizontal(conf, pl.min_horizontal(pl.lit(0.99), conf + (1 - conf) * 0.5))
    reasons = pl.concat_list(
        [
            *_reason_exprs(threshold, packets),
            pl.when(pl.col("pool_host").is_not_null()).then(
                pl.concat_str(
                    [
                        pl.lit("pool host "),
                        pl.col("pool_host"),
                        pl.lit(" (from "),
                        pl.col("host_src"),
                        pl.lit(")"),
                    ]
                )
            ),
            pl.col("hit"),
            pl.when(pl.col("dst_port").is_in(sorted(MINER_PORTS))).then(
                pl.concat_str(
                    [
                        pl.lit("server port "),
                        pl.col("dst_port").cast(pl.Utf8),
                        pl.lit(" is a common pool port (a hint only)"),
                    ]
                )
            ),
        ]
    ).list.drop_nulls()
    iso = "%Y-%m-%dT%H:%M:%S%.3fZ"

    def stamp(c: str) -> pl.Expr:
        return pl.from_epoch((pl.col(c) * 1e6).floor().cast(pl.Int64), "us").dt.to_string(iso)

    none = pl.lit(None)
    out = s.select(
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        proto=pl.lit("tcp"),
        first_seen=stamp("first_t"),
        last_seen=stamp("last_t"),
        detector=pl.lit("behavior"),
        dialect=none,
        confidence=pl.when(pl.col("hit").is_not_null()).then(boosted).otherwise(conf).round(3),
        coin=pl.col("coin"),
        algo=none,
        pool_host=pl.coalesce("pool_host", "dst_ip"),
        wallet=none,
        worker=none,
        agent=none,
        shares=none,
        hashrate_hs=none,
        power_w_range=none,
        detected_at=stamp("detected_at"),
        packets=(pl.col("PU") + pl.col("PD")).cast(pl.Int64),
        bytes_up=pl.col("BU").cast(pl.Int64),
        bytes_down=pl.col("BD").cast(pl.Int64),
        reasons=reasons,
    )
    return out.to_dicts()


def dns_names(dns: pa.Table | pl.DataFrame | None) -> dict[str, str]:
    """Address → the name it was the answer for (last answer wins), from a DNS table."""
    if dns is None:
        return {}
    df = _to_frame(dns)
    if df.height == 0:
        return {}
    pairs = (
        df.sort("ts")
        .select("query", "answers")
        .explode("answers")
        .drop_nulls()
        .unique("answers", keep="last")
    )
    return dict(zip(pairs["answers"].to_list(), pairs["query"].to_list(), strict=True))


def detect(
    flows: pa.Table | pa.RecordBatch | pl.DataFrame | pl.LazyFrame,
    *,
    dns: pa.Table | pl.DataFrame | None = None,
    intel: PoolIntel | None = None,
    model: BehaviorModel | None = None,
    threshold: float | None = None,
    exclude: pl.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Detections (JSON Lines contract, ``detector: "behavior"``) for a FLOWS table.

    A connection is reported when its calibrated confidence reached the threshold at the end
    of any of its records. ``exclude`` holds connection keys (:data:`CONN_KEY` columns) not to
    report (e.g. those the Stratum reader already reported).
    """
    m = model_for(flows, model)
    thr = m.threshold if threshold is None else threshold
    lf = flows.lazy() if isinstance(flows, pl.LazyFrame) else _to_frame(flows).lazy()
    summary, packets = _hot_summary(_hot(lf), m, thr)
    if summary.height == 0:
        return []
    if exclude is not None and exclude.height:
        summary = summary.join(exclude.select(CONN_KEY), on=list(CONN_KEY), how="anti")
    return _records(
        summary,
        intel=intel,
        names=dns_names(dns),
        packet_totals=packets,
        threshold=thr,
    )


# --------------------------------------------------------------------------- live


_STATE_COLS = {
    "first_t": pl.Float64,
    "last_t": pl.Float64,
    "PU": pl.Int64,
    "PD": pl.Int64,
    "BU": pl.Int64,
    "BD": pl.Int64,
    "NU": pl.Int64,
    "ND": pl.Int64,
    "PU2": pl.Int64,
    "PD2": pl.Int64,
    "sni": pl.Utf8,
}


class SlidingDetector:
    """Live behaviour detection over a stream of FLOWS batches (the collector's hook).

    Keeps running totals per connection (one row per open connection; connections without a
    record for ``idle_s`` of flow time are dropped) and reports each connection once, when its
    confidence first reaches the threshold: calling it with a FLOWS batch returns those new
    detections. :meth:`finish` (and :attr:`expired` for connections dropped while idle) gives
    the same connections again with everything seen until their end (``final`` records).

    ``every_record=False`` scores each connection once per batch (its state at the end of the
    batch) instead of at every record: what ``minewatch scan`` does with files, where the
    tree ensemble's cost per scored row would otherwise dominate. A connection whose
    confidence crossed the threshold in the middle of a batch and fell back before its end is
    then not reported.
    """

    def __init__(
        self,
        *,
        model: BehaviorModel | None = None,
        intel: PoolIntel | None = None,
        idle_s: float = 900.0,
        threshold: float | None = None,
        every_record: bool = True,
    ) -> None:
        self.every_record = every_record
        self._model = model  # the shipped models are loaded on first use
        self._packets = False  # whether the records carry packet statistics (flowagg's)
        self._threshold = threshold
        self.intel = intel
        self.idle_s = idle_s
        schema: dict[str, Any] = {
            "src_ip": pl.Utf8,
            "src_port": pl.Int32,
            "dst_ip": pl.Utf8,
            "dst_port": pl.Int32,
            "proto": pl.Int16,
            **_STATE_COLS,
            # Packet statistics per connection (zero for flow records from exporters).
            **_PACKET_STATE,
        }
        self.state = pl.DataFrame(schema=schema)
        # connection key -> (time first detected, highest confidence so far)
        self.reported: dict[tuple[Any, ...], tuple[float, float]] = {}
        self.names: dict[str, str] = {}
        self.expired: list[dict[str, Any]] = []
        self.announced: set[tuple[Any, ...]] = set()

    @property
    def model(self) -> BehaviorModel:
        """The model given, else the shipped packet model once records with packet
        statistics came (when the package has one), else the shipped flow model."""
        if self._model is not None:
            return self._model
        pm = default_packet_model() if self._packets else None
        return pm if pm is not None else default_model()

    def _features(self, df: pl.DataFrame) -> pl.DataFrame:
        out = with_features(df)
        return with_packet_features(out) if self.model.packet else out

    @property
    def threshold(self) -> float:
        return self.model.threshold if self._threshold is None else self._threshold

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
        packets = has_packet_totals(batch)
        self._packets |= packets
        o = orient(batch, PACKET_TOTALS if packets else ())
        if o.height == 0:
            return []
        key = list(CONN_KEY)
        # Totals of this batch per record (in time order), then on top of what came before.
        run = running_totals(o)
        if not packets:
            run = run.with_columns(pl.lit(0, dtype=t).alias(c) for c, t in _PACKET_STATE.items())
        sums = _SUM_STATE + PACKET_TOTALS
        prev = self.state.rename({c: f"{c}_p" for c in (*_STATE_COLS, *PACKET_TOTALS)})
        run = (
            run.join(prev, on=key, how="left")
            .with_columns(
                first_t=pl.min_horizontal("first_t", "first_t_p"),
                last_t=pl.max_horizontal("last_t", "last_t_p"),
                sni=pl.coalesce("sni", "sni_p"),
                **{c: pl.col(c) + pl.col(f"{c}_p").fill_null(0) for c in sums},
            )
            .with_columns(age_s=pl.col("last_t") - pl.col("first_t"))
        )
        if self.every_record:
            run = self._features(run)
        new_state = (
            run.group_by(key)
            .agg(pl.all().sort_by("last_t").last())
            .select(self.state.columns)
            .cast(self.state.schema)
        )
        self.state = pl.concat(
            [self.state.join(new_state.select(key), on=key, how="anti"), new_state],
            how="vertical_relaxed",
        )
        if not run.select(eligible().any()).item():  # nothing the model may score yet
            self._expire()
            return []
        if not self.every_record:  # only each connection's state at the end of the batch
            run = self._features(new_state.with_columns(age_s=pl.col("last_t") - pl.col("first_t")))
        scored = score(run, self.model)
        self._remember(scored)
        self._expire()
        summary = summarize(scored, self.threshold, self.model)
        if summary.height == 0:
            return []
        fresh = summary
        if self.announced:
            done = pl.DataFrame(
                [list(k) for k in self.announced], schema=summary.select(key).schema, orient="row"
            )
            fresh = summary.join(done, on=key, how="anti")
        recs = _records(
            fresh,
            intel=self.intel,
            names=self.names,
            packet_totals=self._packet_totals(fresh),
            threshold=self.threshold,
        )
        for r in fresh.select(key).iter_rows():  # one per newly detected connection
            self.announced.add(tuple(r))
        return recs

    def _remember(self, scored: pl.DataFrame) -> None:
        key = list(CONN_KEY)
        hits = (
            scored.filter((pl.col("confidence") >= self.threshold) & eligible())
            .group_by(key)
            .agg(at=pl.col("last_t").min(), conf=pl.col("confidence").max())
        )
        for *k, at, conf in hits.iter_rows():  # one per detected connection in this batch
            t = tuple(k)
            old = self.reported.get(t)
            self.reported[t] = (min(at, old[0]), max(conf, old[1])) if old else (at, conf)

    def _final(self, rows: pl.DataFrame) -> list[dict[str, Any]]:
        """Final records for the detected connections among state rows."""
        if rows.height == 0 or not self.reported:
            return []
        key = list(CONN_KEY)
        det = pl.DataFrame(
            [[*k, at, conf] for k, (at, conf) in self.reported.items()],
            schema={**rows.select(key).schema, "detected_at": pl.Float64, "confidence": pl.Float64},
            orient="row",
        )
        summary = self._features(
            rows.join(det, on=key, how="inner").with_columns(
                age_s=pl.col("last_t") - pl.col("first_t")
            )
        )
        x = summary.select(self.model.features).to_numpy().astype(np.float64)
        summary = summary.with_columns(terms=pl.Series(self.model.term_reasons(x), dtype=pl.Utf8))
        return _records(
            summary,
            intel=self.intel,
            names=self.names,
            packet_totals=self._packet_totals(summary),
            threshold=self.threshold,
        )

    def _packet_totals(self, rows: pl.DataFrame) -> pl.DataFrame | None:
        """Packet statistics of some connections, or None when the records carry none."""
        if not self._packets:
            return None
        key = list(CONN_KEY)
        return self.state.join(rows.select(key), on=key, how="semi").select(*key, *PACKET_TOTALS)

    def _expire(self) -> None:
        top = self.state["last_t"].max()
        now = float(top) if isinstance(top, (int, float)) else 0.0
        old = pl.col("last_t") < now - self.idle_s
        gone = self.state.filter(old)
        if gone.height:
            self.expired.extend(self._final(gone))
            for k in gone.select(CONN_KEY).iter_rows():  # dropped connections only
                self.reported.pop(tuple(k), None)
                self.announced.discard(tuple(k))
            self.state = self.state.filter(~old)

    def finish(self) -> list[dict[str, Any]]:
        """End of input: final records for every detected connection still open."""
        out = self._final(self.state)
        self.state = self.state.clear()
        self.reported.clear()
        self.announced.clear()
        return out


_SUM_STATE = ("PU", "PD", "BU", "BD", "NU", "ND", "PU2", "PD2")
_PACKET_STATE: dict[str, Any] = {
    n: pl.Float64 if t == pa.float64() else pl.Int64 for n, t in PACKET_COLUMNS
}


# --------------------------------------------------------------------------- inputs


@dataclass
class FlowInputs:
    """FLOWS and DNS tables gathered from stores and files, with what was read.

    ``flows`` is lazy: flow stores and Parquet files are scanned where :func:`detect` runs, in
    the same pass as orientation and the gate, instead of being read whole first."""

    flows: pl.LazyFrame
    dns: pa.Table
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Flow records read from all sources."""
        return sum(int(s.get("flows", 0)) for s in self.sources)


def read_flow_inputs(sources: list[str] | list[Path], quarantine: Any = None) -> FlowInputs:
    """Flow stores (directories written by ``flows ingest``), Parquet files of FLOWS, or any
    file ``flows ingest`` reads (NetFlow/IPFIX, nfcapd, Zeek, EVE, CIC).

    Raises :class:`minewatch.errors.InputError` for a missing or unrecognised input, or a
    Parquet file whose footer cannot be read or that lacks FLOWS columns (a file damaged
    further in fails when :func:`detect` reads it: the CLI names the Parquet inputs then).
    """
    import pyarrow.parquet as pq

    from minewatch.errors import InputError
    from minewatch.schema import DNS, FLOWS
    from minewatch.sources import flowstore

    flows: list[pl.LazyFrame] = []
    dns: list[pa.Table] = []
    seen: list[dict[str, Any]] = []
    loose: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir() and ((p / "flows").is_dir() or (p / "dns").is_dir()):
            scan, n = flowstore.scan_flows(p)
            flows.append(scan)
            dns.append(flowstore.read_dns(p))
            seen.append({"source": str(p), "format": "store", "flows": n})
        else:
            loose.extend(flowstore.expand_inputs([p]))
    by_format: dict[str, list[Path]] = {}
    for f in loose:
        if f.suffix == ".parquet":
            try:
                meta = pq.read_metadata(f)
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(f"not a readable Parquet file: {exc}", path=f) from exc
            names = set(meta.schema.to_arrow_schema().names)
            missing = [c for c in FLOWS.names if c not in names]
            if missing:
                raise InputError(
                    f"Parquet file without FLOWS columns {missing}",
                    path=f,
                    hint="give a flow store written by `minewatch flows ingest`",
                )
            flows.append(flowstore.scan_flow_files([f]))
            seen.append({"source": str(f), "format": "parquet", "flows": meta.num_rows})
        else:
            by_format.setdefault(flowstore.detect_format(f), []).append(f)
    for fmt, paths in by_format.items():
        res = flowstore.read_source(paths, fmt, quarantine)
        flows.append(_to_frame(res.flows).lazy())
        dns.append(res.dns)
        seen.append({"source": [str(p) for p in paths], **res.summary()})
    return FlowInputs(
        flows=pl.concat(flows, how="vertical") if flows else flowstore.scan_flow_files([]),
        dns=pa.concat_tables(dns) if dns else DNS.empty_table(),
        sources=seen,
    )

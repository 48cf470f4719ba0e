"""A payload-free model of mining connections over FLOWS records.

A mining client keeps one TCP connection to its pool open for hours. Over it the client sends
small submissions (a share every few seconds to minutes, at random: a Poisson process) and
keepalives, and the pool pushes a new job at the coin's job cadence. None of this needs the
payload: it shows in how many packets and bytes go each way per minute, how big they are, how
the per-window counts vary, and for how long the connection lives. TLS does not hide it.

The same pure functions score a capture's aggregated flows (:mod:`minewatch.net.flowagg`) and
flow records from exporters (NetFlow/IPFIX, softflowd, Zeek, Suricata, nfdump):

1. :func:`orient` — one row per record with the client (the side with the higher port, or the
   originator of a bidirectional record) as ``src``; a one-way record from the server becomes
   the ``down`` part of the same connection, so one-way exports (softflowd, routers) and
   two-way ones (Zeek, the aggregator) give the same connection key.
2. :func:`connection_features` — per connection, at each record's end, running totals over the
   connection so far (Polars ``cum_*`` over ``connection``): age, packets/min and bytes per
   packet each way, byte and packet ratios, and the index of dispersion (variance / mean) of
   per-record packet counts each way, which is about 1 for Poisson-like submissions and near 0
   for a clockwork keepalive.
3. :class:`BehaviorModel` — gradient-boosted trees (scikit-learn) over :data:`FEATURES` whose
   output is mapped by an isotonic calibration (fitted on out-of-fold predictions, see
   ``docs/behavior-model.md``) to a probability; stored in ``minewatch/data/behavior_model.joblib``.
4. :func:`detect` — one detection dict per connection whose calibrated confidence reached the
   model's threshold, per the JSON Lines contract (``detector: "behavior"``), with reasons a
   person can check.

:class:`SlidingDetector` keeps the running totals per open connection for the live collector
(memory bounded by open connections) and reuses the same feature and scoring functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch.net.intel import MINER_PORTS, PoolIntel

MODEL_FILE = "behavior_model.joblib"  # the training artefact (scikit-learn, pickled)
TREES_FILE = "behavior_model.npz"  # the same trees as plain arrays, read without scikit-learn
# Up to this many rows per call the NumPy evaluator is faster than importing scikit-learn
# (~1.8 s); beyond it scikit-learn's compiled predictor is (measured: 2 M rows, 5x).
ARRAY_MAX_ROWS = 200_000
#: A connection is scored only once it has been seen for this long, with traffic both ways.
MIN_SPAN_S = 50.0
MIN_PACKETS = 8
MAX_UP_BYTES_PER_PACKET = 600
MAX_UP_DOWN_RATIO = 4.0
#: Running totals stop growing in weight after this much history (minutes); see features.
CONN_KEY = ("src_ip", "src_port", "dst_ip", "dst_port", "proto")

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

_SUM_COLS = ("packets_up", "packets_down", "bytes_up", "bytes_down")


def _to_frame(flows: pa.Table | pa.RecordBatch | pl.DataFrame) -> pl.DataFrame:
    if isinstance(flows, pl.DataFrame):
        return flows
    return pl.from_arrow(flows)  # type: ignore[return-value]


def orient(flows: pa.Table | pa.RecordBatch | pl.DataFrame) -> pl.DataFrame:
    """TCP records with the client as ``src`` and times in seconds (``t0``, ``t1``).

    A record that carries both directions keeps its orientation (its ``src`` started the
    connection). A one-way record (``packets_down == 0``) is oriented by port: the side with
    the higher port is the client; its counts become ``up`` or ``down`` accordingly. Records
    from sampled exports are scaled up by their sampling rate.
    """
    df = _to_frame(flows)
    df = df.filter(pl.col("proto") == 6)
    two_way = (pl.col("packets_down") > 0) | (pl.col("bytes_down") > 0)
    src_client = (
        two_way
        | (pl.col("src_port") > pl.col("dst_port"))
        | ((pl.col("src_port") == pl.col("dst_port")) & (pl.col("src_ip") >= pl.col("dst_ip")))
    )
    sc = pl.col("_sc")
    scale = pl.col("sampling").fill_null(1).clip(1, None).cast(pl.Int64)

    def pick(a: str, b: str) -> pl.Expr:
        return pl.when(sc).then(pl.col(a)).otherwise(pl.col(b))

    return df.with_columns(_sc=src_client).select(
        src_ip=pick("src_ip", "dst_ip"),
        src_port=pick("src_port", "dst_port"),
        dst_ip=pick("dst_ip", "src_ip"),
        dst_port=pick("dst_port", "src_port"),
        proto=pl.col("proto"),
        t0=pl.col("ts_start").dt.epoch("us") / 1e6,
        t1=pl.col("ts_end").dt.epoch("us") / 1e6,
        packets_up=pick("packets_up", "packets_down").fill_null(0) * scale,
        packets_down=pick("packets_down", "packets_up").fill_null(0) * scale,
        bytes_up=pick("bytes_up", "bytes_down").fill_null(0) * scale,
        bytes_down=pick("bytes_down", "bytes_up").fill_null(0) * scale,
        sni=pl.col("sni"),
    )


def feature_exprs() -> list[pl.Expr]:
    """Model features from running totals (``age_s``, ``PU``, ``PD``, ``BU``, ``BD``, ...)."""
    age_min = (pl.col("age_s") / 60.0).clip(0.5, None)
    pu, pd = pl.col("PU"), pl.col("PD")
    bu, bd = pl.col("BU"), pl.col("BD")

    def disp(n: str, s: str, s2: str) -> pl.Expr:
        k = pl.col(n).clip(1, None)
        mean = pl.col(s) / k
        var = (pl.col(s2) / k - mean * mean).clip(0, None)
        return pl.when(pl.col(n) >= 2).then(var / mean.clip(1e-9, None)).otherwise(1.0)

    ppm_up = ((pu + 1) / age_min).log()
    return [
        (age_min.clip(None, 120.0)).log().alias("log_age_min"),
        ppm_up.alias("log_ppm_up"),
        ((pd + 1) / age_min).log().alias("log_ppm_down"),
        ((bu + 1) / (pu + 1)).log().alias("log_bpp_up"),
        ((bd + 1) / (pd + 1)).log().alias("log_bpp_down"),
        ((bu + 1) / (bd + 1)).log().alias("log_byte_ratio"),
        ((pu + 1) / (pd + 1)).log().alias("log_pkt_ratio"),
        disp("NU", "PU", "PU2").clip(0, 50).log1p().alias("disp_up"),
        disp("ND", "PD", "PD2").clip(0, 50).log1p().alias("disp_down"),
        (ppm_up * (age_min.clip(None, 120.0)).log()).alias("log_ppm_up_x_age"),
    ]


def running_totals(oriented: pl.DataFrame) -> pl.DataFrame:
    """Per connection and record (in order of record end): totals over the connection so far.

    Rows come out sorted by connection (``cid``, a 64-bit hash of :data:`CONN_KEY`) and time,
    so the running totals are windowed sums over one small integer key.
    """
    key = list(CONN_KEY)
    df = oriented.with_columns(cid=pl.struct(key).hash()).sort("cid", "t1", "t0")
    pu, pd = pl.col("packets_up"), pl.col("packets_down")
    over = "cid"
    return df.with_columns(
        first_t=pl.col("t0").cum_min().over(over),
        last_t=pl.col("t1").cum_max().over(over),
        PU=pu.cum_sum().over(over),
        PD=pd.cum_sum().over(over),
        BU=pl.col("bytes_up").cum_sum().over(over),
        BD=pl.col("bytes_down").cum_sum().over(over),
        NU=(pu > 0).cast(pl.Int64).cum_sum().over(over),
        ND=(pd > 0).cast(pl.Int64).cum_sum().over(over),
        PU2=(pu * pu).cum_sum().over(over),
        PD2=(pd * pd).cum_sum().over(over),
        sni=pl.col("sni").fill_null(strategy="forward").over(over),
    ).with_columns(age_s=pl.col("last_t") - pl.col("first_t"))


def connection_features(flows: pa.Table | pa.RecordBatch | pl.DataFrame) -> pl.DataFrame:
    """One row per (connection, record end) with the running totals and :data:`FEATURES`."""
    return running_totals(orient(flows)).with_columns(feature_exprs())


@dataclass
class TreeEnsemble:
    """A fitted binary gradient-boosted tree ensemble as NumPy arrays, evaluated without
    scikit-learn: importing scikit-learn and SciPy costs ~1.8 s, more than scoring a whole
    capture. Every tree is padded to the same node count; a row walks all trees at once,
    one level per step (``depth`` steps), as scikit-learn's predictor decides: missing
    values follow ``missing_left``, otherwise ``x <= threshold`` goes left."""

    feature: np.ndarray  # (trees, nodes) int
    threshold: np.ndarray  # (trees, nodes) float
    left: np.ndarray  # (trees, nodes) int
    right: np.ndarray  # (trees, nodes) int
    leaf: np.ndarray  # (trees, nodes) bool
    value: np.ndarray  # (trees, nodes) float: the leaf's raw score
    missing_left: np.ndarray  # (trees, nodes) bool
    baseline: float
    depth: int

    @classmethod
    def from_sklearn(cls, est: Any) -> TreeEnsemble:
        """From a fitted binary HistGradientBoostingClassifier (numerical features)."""
        trees = [p[0].nodes for p in est._predictors]
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("categorical splits are not supported by the array evaluator")
        n = max(len(t) for t in trees)

        def pad(name: str, dtype: Any, fill: Any) -> np.ndarray:
            out = np.full((len(trees), n), fill, dtype=dtype)
            for i, t in enumerate(trees):
                out[i, : len(t)] = t[name]
            return out

        return cls(
            feature=pad("feature_idx", np.int64, 0),
            threshold=pad("num_threshold", np.float64, 0.0),
            left=pad("left", np.int64, 0),
            right=pad("right", np.int64, 0),
            leaf=pad("is_leaf", bool, True),
            value=pad("value", np.float64, 0.0),
            missing_left=pad("missing_go_to_left", bool, False),
            baseline=float(np.ravel(est._baseline_prediction)[0]),
            depth=int(max(int(t["depth"].max()) for t in trees)) + 1,
        )

    def predict_proba(self, x: np.ndarray, chunk: int = 16_384) -> np.ndarray:
        """Probability of the positive class for each row of ``x``, ``chunk`` rows at a time
        (memory: a few (trees x chunk) arrays, about 40 MB each for 300 trees)."""
        if x.shape[0] > chunk:
            parts = [self._proba(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
            return np.concatenate(parts)
        return self._proba(x)

    def _proba(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        t = np.arange(self.feature.shape[0])[:, None]
        rows = np.arange(n)[None, :]
        node = np.zeros((self.feature.shape[0], n), dtype=np.int64)
        for _ in range(self.depth):
            v = x[rows, self.feature[t, node]]
            go_left = np.where(
                np.isnan(v), self.missing_left[t, node], v <= self.threshold[t, node]
            )
            nxt = np.where(go_left, self.left[t, node], self.right[t, node])
            node = np.where(self.leaf[t, node], node, nxt)
        raw = self.baseline + self.value[t, node].sum(axis=0)
        return np.asarray(1.0 / (1.0 + np.exp(-raw)))

    _KEYS = ("feature", "threshold", "left", "right", "leaf", "value", "missing_left")

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays under ``tree_``-prefixed names (for an .npz file)."""
        out = {f"tree_{k}": getattr(self, k) for k in self._KEYS}
        out["tree_baseline"] = np.array([self.baseline])
        out["tree_depth"] = np.array([self.depth])
        return out

    @classmethod
    def from_arrays(cls, a: Any) -> TreeEnsemble:
        return cls(
            **{k: np.asarray(a[f"tree_{k}"]) for k in cls._KEYS},
            baseline=float(a["tree_baseline"][0]),
            depth=int(a["tree_depth"][0]),
        )


@dataclass
class BehaviorModel:
    """A gradient-boosted tree classifier plus isotonic calibration (joblib file).

    ``estimator`` is a fitted scikit-learn classifier over :attr:`features` (columns in that
    order); ``iso_x``/``iso_y`` map its probability to a calibrated one by linear
    interpolation; ``threshold`` is the calibrated confidence at which a connection is
    reported. The file records the scikit-learn version it was written with; loading it
    under another version is refused with a message (retrain: ``benchmarks/train_behavior.py``).
    """

    features: tuple[str, ...]
    estimator: Any
    iso_x: np.ndarray
    iso_y: np.ndarray
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    trees: TreeEnsemble | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> BehaviorModel:
        """The shipped model (its array form, no scikit-learn needed), or a joblib file."""
        if path is None:
            ref = resources.files("minewatch.data").joinpath(TREES_FILE)
            with resources.as_file(ref) as p, np.load(p, allow_pickle=False) as a:
                meta = json.loads(str(a["meta"][0]))
                return cls(
                    features=tuple(str(f) for f in a["features"]),
                    estimator=None,
                    iso_x=np.asarray(a["iso_x"], dtype=np.float64),
                    iso_y=np.asarray(a["iso_y"], dtype=np.float64),
                    threshold=float(a["threshold"][0]),
                    meta=meta,
                    trees=TreeEnsemble.from_arrays(a),
                )
        return cls.load_joblib(path)

    @classmethod
    def load_joblib(cls, path: str | Path | None = None) -> BehaviorModel:
        import joblib
        import sklearn

        if path is None:
            with resources.as_file(resources.files("minewatch.data").joinpath(MODEL_FILE)) as p:
                d = joblib.load(p)
        else:
            d = joblib.load(path)
        made = d["meta"].get("sklearn")
        if made and made.split(".")[:2] != sklearn.__version__.split(".")[:2]:
            raise RuntimeError(
                f"behaviour model was written with scikit-learn {made}, this is "
                f"{sklearn.__version__}: retrain it with benchmarks/train_behavior.py train"
            )
        return cls(
            features=tuple(d["features"]),
            estimator=d["estimator"],
            iso_x=np.asarray(d["iso_x"], dtype=np.float64),
            iso_y=np.asarray(d["iso_y"], dtype=np.float64),
            threshold=float(d["threshold"]),
            meta=d["meta"],
        )

    def save(self, path: str | Path) -> None:
        import joblib
        import sklearn

        self.meta["sklearn"] = sklearn.__version__
        joblib.dump(
            {
                "features": list(self.features),
                "estimator": self.estimator,
                "iso_x": self.iso_x.tolist(),
                "iso_y": self.iso_y.tolist(),
                "threshold": self.threshold,
                "meta": self.meta,
            },
            path,
            compress=3,
        )
        self.save_arrays(Path(path).with_suffix(".npz"))

    def save_arrays(self, path: str | Path) -> None:
        """The array form that :meth:`load` reads (written beside the joblib file)."""
        trees = self.trees or TreeEnsemble.from_sklearn(self.estimator)
        arrays: dict[str, Any] = {
            "features": np.array(self.features),
            "iso_x": self.iso_x,
            "iso_y": self.iso_y,
            "threshold": np.array([self.threshold]),
            "meta": np.array([json.dumps(self.meta, default=str)]),
            **trees.arrays(),
        }
        np.savez_compressed(path, **arrays)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The uncalibrated probability for a feature matrix (rows = samples).

        One OpenMP thread: scikit-learn's tree predictor starts its thread team once per
        tree, which on a busy 2-core machine cost ~10 ms a tree (3.7 s for 2,000 rows,
        measured) against 35 ms in all on one thread.
        """
        if self.estimator is None and x.shape[0] > ARRAY_MAX_ROWS:
            try:  # many rows: scikit-learn's compiled predictor is worth its import time
                self.estimator = BehaviorModel.load_joblib().estimator
            except (RuntimeError, ImportError, OSError):
                self.estimator = None  # another scikit-learn version: the arrays still work
        if self.trees is not None and (self.estimator is None or x.shape[0] <= ARRAY_MAX_ROWS):
            return self.trees.predict_proba(x)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "openmp"):
            return np.asarray(self.estimator.predict_proba(x)[:, 1])

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, self.iso_x, self.iso_y)

    def score_frame(self, feats: pl.DataFrame) -> np.ndarray:
        """Calibrated probability per row of a frame holding the model's features."""
        if feats.height == 0:
            return np.zeros(0)
        x = feats.select(self.features).to_numpy().astype(np.float64)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return self.calibrate(self.raw(x))


_DEFAULT_MODEL: BehaviorModel | None = None


def default_model() -> BehaviorModel:
    global _DEFAULT_MODEL
    if _DEFAULT_MODEL is None:
        _DEFAULT_MODEL = BehaviorModel.load()
    return _DEFAULT_MODEL


def eligible() -> pl.Expr:
    """Rows the model may score: seen long enough, with enough traffic both ways, and shaped
    like submissions at all: a share submission is a few hundred bytes (CryptoNote ~200,
    Stratum V1 ~150, plus TLS overhead), so a client that sends on average more than
    :data:`MAX_UP_BYTES_PER_PACKET` per packet, or more than :data:`MAX_UP_DOWN_RATIO` times
    what it receives, is uploading, not mining. Trees do not extrapolate sensibly outside
    what they were trained on; these bounds keep them inside it."""
    return (
        (pl.col("age_s") >= MIN_SPAN_S)
        & (pl.col("PU") >= MIN_PACKETS)
        & (pl.col("PD") >= MIN_PACKETS)
        & (pl.col("BU") <= MAX_UP_BYTES_PER_PACKET * pl.col("PU"))
        & (pl.col("BU") <= MAX_UP_DOWN_RATIO * pl.col("BD"))
    )


def score(feats: pl.DataFrame, model: BehaviorModel | None = None) -> pl.DataFrame:
    """Add ``confidence`` (0 where not eligible) to a :func:`connection_features` frame."""
    m = model if model is not None else default_model()
    ok = feats.select(eligible()).to_series().to_numpy()
    conf = np.zeros(feats.height)
    if ok.any():
        conf[ok] = m.score_frame(feats.filter(pl.Series(ok)))
    return feats.with_columns(confidence=pl.Series(conf, dtype=pl.Float64))


def _iso(ts: float | None) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summarize(scored: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Per connection: the row at which confidence first reached ``threshold``, plus totals.

    ``detected_at`` is the record end at which it first did; the figures in the reasons come
    from the last row (everything seen).
    """
    key = list(CONN_KEY)
    hits = (
        scored.filter(pl.col("confidence") >= threshold)
        .group_by(key)
        .agg(
            detected_at=pl.col("last_t").min(),
            confidence=pl.col("confidence").max(),
        )
    )
    if hits.height == 0:
        return hits
    sub = scored.join(hits.select(key), on=key, how="semi")
    last = sub.group_by(key).agg(pl.all().sort_by("last_t").last())
    return hits.join(last.drop("confidence"), on=key, how="left")


def _reasons(r: dict[str, Any], packets: dict[str, Any] | None) -> list[str]:
    age_min = r["age_s"] / 60.0
    mins = max(age_min, 0.5)
    pu, pd, bu, bd = r["PU"], r["PD"], r["BU"], r["BD"]
    out = [
        f"connection open {age_min:.1f} min",
        f"client→server {pu / mins:.1f} packets/min of ~{bu / max(pu, 1):.0f} bytes",
        f"server→client {pd / mins:.1f} packets/min of ~{bd / max(pd, 1):.0f} bytes",
        f"byte ratio up/down {bu / max(bd, 1):.2f}",
    ]
    disp = r.get("disp_up")
    if disp is not None and r["NU"] >= 2:
        d = math.expm1(disp)
        kind = "Poisson-like (random submissions)" if 0.3 <= d <= 3 else "not Poisson-like"
        out.append(
            f"client packets per record vary with dispersion {d:.2f} over {r['NU']} records "
            f"({kind})"
        )
    if packets:
        if packets.get("pushes_down"):
            out.append(
                f"server pushes every ~{r['age_s'] / packets['pushes_down']:.0f} s "
                f"({packets['pushes_down']} unsolicited server messages)"
            )
        if packets.get("pay_pkts_up"):
            small = packets.get("small_up", 0)
            out.append(
                f"{small / mins:.1f} small client→server payloads/min "
                f"(≤600 bytes; {small} of {packets['pay_pkts_up']})"
            )
        if packets.get("gap_n_up", 0) >= 3:
            n = packets["gap_n_up"]
            mean = packets["gap_sum_up"] / n
            var = max(packets["gap_sq_up"] / n - mean * mean, 0.0)
            out.append(
                f"client payloads every {mean:.1f} s on average (CV {math.sqrt(var) / mean:.2f})"
                if mean > 0
                else "client payloads back to back"
            )
    return out


def _records(
    summary: pl.DataFrame,
    *,
    intel: PoolIntel | None,
    names: dict[str, str] | None,
    packet_totals: pl.DataFrame | None,
    threshold: float,
) -> list[dict[str, Any]]:
    """Detection dicts (JSON Lines contract) for summarised connections."""
    if summary.height == 0:
        return []
    pk: dict[tuple[Any, ...], dict[str, Any]] = {}
    if packet_totals is not None and packet_totals.height:
        sub = packet_totals.join(summary.select(CONN_KEY), on=list(CONN_KEY), how="semi")
        for row in sub.iter_rows(named=True):  # one per detected connection
            pk[tuple(row[k] for k in CONN_KEY)] = row
    out: list[dict[str, Any]] = []
    for r in summary.sort("first_t").iter_rows(named=True):  # one per detected connection
        key = tuple(r[k] for k in CONN_KEY)
        reasons = _reasons(r, pk.get(key))
        conf = float(r["confidence"])
        reasons.insert(
            0,
            f"behaviour model {conf:.3f} ≥ {threshold:.3f} after "
            f"{(r['detected_at'] - r['first_t']) / 60:.1f} min of observation",
        )
        pool_host, src = r.get("sni"), "TLS SNI in the flow records"
        if not pool_host and names:
            pool_host, src = names.get(r["dst_ip"]), "DNS answer"
        if pool_host:
            reasons.append(f"pool host {pool_host} (from {src})")
        hit = None
        if intel is not None:
            hit = intel.match_domain(pool_host) or intel.match_ip(r["dst_ip"])
        coin = None
        if hit is not None:
            reasons.append(f"{hit.kind} {hit.matched} is on a pool list ({hit.source})")
            coin = hit.coin
            conf = max(conf, min(0.99, conf + (1 - conf) * 0.5))
        if r["dst_port"] in MINER_PORTS:
            reasons.append(f"server port {r['dst_port']} is a common pool port (a hint only)")
        out.append(
            {
                "src_ip": r["src_ip"],
                "src_port": r["src_port"],
                "dst_ip": r["dst_ip"],
                "dst_port": r["dst_port"],
                "proto": "tcp",
                "first_seen": _iso(r["first_t"]),
                "last_seen": _iso(r["last_t"]),
                "detector": "behavior",
                "dialect": None,
                "confidence": round(conf, 3),
                "coin": coin,
                "algo": None,
                "pool_host": pool_host or r["dst_ip"],
                "wallet": None,
                "worker": None,
                "agent": None,
                "shares": None,
                "hashrate_hs": None,
                "power_w_range": None,
                "detected_at": _iso(r["detected_at"]),
                "packets": int(r["PU"] + r["PD"]),
                "bytes_up": int(r["BU"]),
                "bytes_down": int(r["BD"]),
                "reasons": reasons,
            }
        )
    return out


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


def packet_totals(flows: pa.Table | pl.DataFrame) -> pl.DataFrame | None:
    """Per-connection sums of the aggregator's optional packet columns (None when absent)."""
    df = _to_frame(flows)
    if "pushes_down" not in df.columns:
        return None
    cols = [
        "pay_pkts_up",
        "pay_pkts_down",
        "small_up",
        "pushes_down",
        "gap_n_up",
        "gap_sum_up",
        "gap_sq_up",
    ]
    return df.filter(pl.col("proto") == 6).group_by(list(CONN_KEY)).agg(pl.col(cols).sum())


def detect(
    flows: pa.Table | pa.RecordBatch | pl.DataFrame,
    *,
    dns: pa.Table | pl.DataFrame | None = None,
    intel: PoolIntel | None = None,
    model: BehaviorModel | None = None,
    threshold: float | None = None,
    exclude: pl.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Detections (JSON Lines contract, ``detector: "behavior"``) for a FLOWS table.

    ``exclude`` holds connection keys (:data:`CONN_KEY` columns) not to report (e.g. those the
    Stratum reader already reported).
    """
    m = model if model is not None else default_model()
    thr = m.threshold if threshold is None else threshold
    feats = connection_features(flows)
    if exclude is not None and exclude.height and feats.height:
        feats = feats.join(exclude.select(CONN_KEY), on=list(CONN_KEY), how="anti")
    scored = score(feats, m)
    summary = summarize(scored, thr)
    return _records(
        summary,
        intel=intel,
        names=dns_names(dns),
        packet_totals=packet_totals(flows),
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
        self._model = model  # loaded on first use: scikit-learn takes ~1.5 s to import
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
        }
        self.state = pl.DataFrame(schema=schema)
        # connection key -> (time first detected, highest confidence so far)
        self.reported: dict[tuple[Any, ...], tuple[float, float]] = {}
        self.names: dict[str, str] = {}
        self.expired: list[dict[str, Any]] = []
        self.announced: set[tuple[Any, ...]] = set()

    @property
    def model(self) -> BehaviorModel:
        if self._model is None:
            self._model = default_model()
        return self._model

    @property
    def threshold(self) -> float:
        return self.model.threshold if self._threshold is None else self._threshold

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
        o = orient(batch)
        if o.height == 0:
            return []
        key = list(CONN_KEY)
        # Totals of this batch per record (in time order), then on top of what came before.
        run = running_totals(o)
        prev = self.state.rename({c: f"{c}_p" for c in _STATE_COLS})
        run = (
            run.join(prev, on=key, how="left")
            .with_columns(
                first_t=pl.min_horizontal("first_t", "first_t_p"),
                last_t=pl.max_horizontal("last_t", "last_t_p"),
                sni=pl.coalesce("sni", "sni_p"),
                **{c: pl.col(c) + pl.col(f"{c}_p").fill_null(0) for c in _SUM_STATE},
            )
            .with_columns(age_s=pl.col("last_t") - pl.col("first_t"))
            .with_columns(feature_exprs())
        )
        new_state = (
            run.group_by(key).agg(pl.all().sort_by("last_t").last()).select(self.state.columns)
        )
        self.state = pl.concat(
            [self.state.join(new_state.select(key), on=key, how="anti"), new_state],
            how="vertical_relaxed",
        )
        if not run.select(eligible().any()).item():  # nothing the model may score yet
            self._expire()
            return []
        if not self.every_record:  # only each connection's state at the end of the batch
            run = new_state.join(run.select(*key, "last_t", *FEATURES), on=[*key, "last_t"])
            run = run.unique(key, keep="last").with_columns(
                age_s=pl.col("last_t") - pl.col("first_t")
            )
        scored = score(run, self.model)
        self._remember(scored)
        self._expire()
        summary = summarize(scored, self.threshold)
        if summary.height == 0:
            return []
        fresh = summary
        if self.announced:
            done = pl.DataFrame(
                [list(k) for k in self.announced], schema=summary.select(key).schema, orient="row"
            )
            fresh = summary.join(done, on=key, how="anti")
        recs = _records(
            fresh, intel=self.intel, names=self.names, packet_totals=None, threshold=self.threshold
        )
        for r in fresh.select(key).iter_rows():  # one per newly detected connection
            self.announced.add(tuple(r))
        return recs

    def _remember(self, scored: pl.DataFrame) -> None:
        key = list(CONN_KEY)
        hits = (
            scored.filter(pl.col("confidence") >= self.threshold)
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
        summary = (
            rows.join(det, on=key, how="inner")
            .with_columns(age_s=pl.col("last_t") - pl.col("first_t"))
            .with_columns(feature_exprs())
        )
        return _records(
            summary,
            intel=self.intel,
            names=self.names,
            packet_totals=None,
            threshold=self.threshold,
        )

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


# --------------------------------------------------------------------------- inputs


@dataclass
class FlowInputs:
    """FLOWS and DNS tables gathered from stores and files, with what was read."""

    flows: pa.Table
    dns: pa.Table
    sources: list[dict[str, Any]] = field(default_factory=list)


def read_flow_inputs(sources: list[str] | list[Path], quarantine: Any = None) -> FlowInputs:
    """Flow stores (directories written by ``flows ingest``), Parquet files of FLOWS, or any
    file ``flows ingest`` reads (NetFlow/IPFIX, nfcapd, Zeek, EVE, CIC).

    Raises :class:`minewatch.errors.InputError` for a missing or unrecognised input.
    """
    import pyarrow.parquet as pq

    from minewatch.errors import InputError
    from minewatch.schema import DNS, FLOWS
    from minewatch.sources import flowstore

    flows: list[pa.Table] = []
    dns: list[pa.Table] = []
    seen: list[dict[str, Any]] = []
    loose: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir() and ((p / "flows").is_dir() or (p / "dns").is_dir()):
            f, d = flowstore.read_flows(p), flowstore.read_dns(p)
            flows.append(f)
            dns.append(d)
            seen.append({"source": str(p), "format": "store", "flows": f.num_rows})
        else:
            loose.extend(flowstore.expand_inputs([p]))
    by_format: dict[str, list[Path]] = {}
    for f in loose:
        if f.suffix == ".parquet":
            try:
                t = pq.read_table(f)
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(f"not a readable Parquet file: {exc}", path=f) from exc
            missing = [c for c in FLOWS.names if c not in t.column_names]
            if missing:
                raise InputError(
                    f"Parquet file without FLOWS columns {missing}",
                    path=f,
                    hint="give a flow store written by `minewatch flows ingest`",
                )
            flows.append(t.select(FLOWS.names).cast(FLOWS))
            seen.append({"source": str(f), "format": "parquet", "flows": t.num_rows})
        else:
            by_format.setdefault(flowstore.detect_format(f), []).append(f)
    for fmt, paths in by_format.items():
        res = flowstore.read_source(paths, fmt, quarantine)
        flows.append(res.flows)
        dns.append(res.dns)
        seen.append({"source": [str(p) for p in paths], **res.summary()})
    return FlowInputs(
        flows=pa.concat_tables(flows) if flows else FLOWS.empty_table(),
        dns=pa.concat_tables(dns) if dns else DNS.empty_table(),
        sources=seen,
    )

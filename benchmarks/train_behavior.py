"""Train and evaluate the behaviour model on real loopback captures.

    python benchmarks/train_behavior.py generate --waves 0 1 2 --minutes 14   # ~45 min
    python benchmarks/train_behavior.py generate ... --job-schedule blocks    # jobs at block times
    python benchmarks/train_behavior.py train                                 # ~1 min

``generate`` runs :func:`minewatch.lab.behavior_data.generate` (real XMRig against the lab
pool, real benign peers) and writes captures and manifests under ``.cache/behavior-data``
(kept out of git). ``train`` turns every capture into FLOWS twice — the packet path
(:mod:`minewatch.net.flowagg`, 60 s windows) and the exporter path (``softflowd -r … -t
maxlife=60`` → NetFlow v9 → the ingest decoder) — computes the features of
:mod:`minewatch.net.behavior` at every record end of every connection, and then:

1. cross-validates by capture (``GroupKFold``: all connections of one capture, in both paths,
   are held out together; every miner variant is its own capture), giving an out-of-fold score
   for every row;
2. fits an isotonic calibration on the out-of-fold scores, and picks the alert threshold;
3. reports per-connection recall within 10 minutes of observation and false positives among
   benign long-lived connections, from the out-of-fold scores only, per path and per family;
4. fits the final model on everything — a scorecard (:mod:`minewatch.net.scorecard`): every
   feature cut into equal-width bins, boosted stumps over the bin codes (depth 1: a purely
   additive model; ``--depth 2`` allows pair terms), turned exactly into per-bin log-odds
   tables — and writes it with the calibration, the threshold and the measured figures to
   ``src/minewatch/data/behavior_model.npz``;
5. runs the final model over the shared benign captures (never used in training) and reports
   detections there (must be none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import GroupKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from minewatch.lab.behavior_data import (  # noqa: E402
    BENIGN_SCENARIOS,
    flows_from_pcap,
    flows_from_softflowd,
    generate,
)
from minewatch.lab.pool import JOB_SCHEDULES  # noqa: E402
from minewatch.net.behavior import (  # noqa: E402
    CONN_KEY,
    FEATURES,
    PACKET_FEATURES,
    BehaviorModel,
    connection_features,
    detect,
    eligible,
    has_packet_totals,
)
from minewatch.net.scorecard import Scorecard  # noqa: E402

DATA = ROOT / ".cache" / "behavior-data"
MODEL = ROOT / "src" / "minewatch" / "data" / "behavior_model.npz"
PACKET_MODEL = ROOT / "src" / "minewatch" / "data" / "behavior_packet_model.npz"
SHARED_BENIGN = ROOT.parent / "shared" / "data" / "pcap" / "benign"
WITHIN_S = 600.0
DEPTH, LEAF, BINS, ITERS, RATE = 1, 20, 32, 400, 0.1


def cmd_generate(args: argparse.Namespace) -> None:
    benign = BENIGN_SCENARIOS + tuple(n for n in BENIGN_SCENARIOS if n != "postgres-pool")
    for wave in args.waves:
        t = time.time()
        entries = generate(
            args.data,
            wave=wave,
            duration=args.minutes * 60,
            benign=benign,
            seed=args.seed,
            job_schedule=args.job_schedule,
        )
        errors = [e for e in entries if "error" in e]
        print(f"wave {wave}: {len(entries)} runs in {time.time() - t:.0f} s; errors {errors}")


def _entries(data: Path, extra: list[Path]) -> list[tuple[dict[str, Any], str, str]]:
    """Manifest entries with their group (held out together) and flow-cache prefix: the
    waves of :func:`generate` (one capture per folder), then fleet runs of
    ``behavior_heldout.py`` made for training (``--extra``: many captures per folder)."""
    out = []
    for manifest in sorted(data.glob("manifest-w*.json")):
        for e in json.loads(manifest.read_text()):
            out.append((e, Path(e["pcap"]).parent.name, ""))
    for d in extra:
        for manifest in sorted(d.glob("*/manifest.json")):
            for e in json.loads(manifest.read_text()):
                pcap = Path(e["pcap"])
                fam = e["family"]
                # fleet families name the algorithm too (xmrig-tls-rx): keep the protocol
                if fam.startswith("xmrig-"):
                    fam = "xmrig-tls" if fam.startswith("xmrig-tls") else "xmrig"
                e = {**e, "family": fam, "variant": e.get("variant") or f"fleet-{fam}"}
                out.append((e, f"{pcap.parent.name}/{pcap.stem}", f"{pcap.stem}."))
    return out


def load_rows(
    data: Path, extra: list[Path] | None = None, paths: tuple[str, ...] = ("pcap", "softflowd")
) -> pl.DataFrame:
    """Feature rows of every capture by ``paths``, with labels and groups (flows cached per
    capture)."""
    frames = []
    for e, group, prefix in _entries(data, extra or []):
        if "error" in e:
            print(f"skipping failed run {e}", file=sys.stderr)
            continue
        pcap = Path(e["pcap"])
        for path in paths:
            # The flows are cached per capture; the features are always recomputed, so a
            # change to them never meets a stale cache.
            cache = pcap.parent / f"{prefix}flows-{path}.parquet"
            fresh = cache.exists() and cache.stat().st_mtime > pcap.stat().st_mtime
            if fresh:
                flows = pl.read_parquet(cache)
            if not fresh or (path == "pcap" and not has_packet_totals(flows)):
                if path == "pcap":
                    flows = pl.from_arrow(flows_from_pcap(pcap))  # type: ignore[assignment]
                else:
                    flows = pl.from_arrow(  # type: ignore[assignment]
                        flows_from_softflowd(pcap, pcap.parent)
                    )
                flows.write_parquet(cache)
            f = connection_features(flows)
            frames.append(
                f.with_columns(
                    label=pl.lit(int(e["label"])),
                    group=pl.lit(group),
                    family=pl.lit(e["family"]),
                    variant=pl.lit(e["variant"]),
                    path=pl.lit(path),
                )
            )
    rows = pl.concat(frames, how="diagonal_relaxed")
    return rows.with_columns(
        conn=pl.concat_str(
            [pl.col("group"), pl.col("path"), *(pl.col(c).cast(pl.Utf8) for c in CONN_KEY)],
            separator="|",
        )
    )


def fit_model(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, names: tuple[str, ...] = FEATURES
) -> tuple[Scorecard, HistGradientBoostingClassifier, np.ndarray]:
    """A scorecard fitted on ``x``: bins from ``x`` (equal width between the 0.2% and 99.8%
    quantiles), boosted trees of depth ``DEPTH`` on the bin codes, read out as tables. Every
    connection weighs the same whatever its number of rows, and both classes the same in
    total. Returns the scorecard, the classifier (the reference) and the codes."""
    lo, scale = Scorecard.bins_from_data(names, x, BINS)
    blank = Scorecard(
        names=names,
        lo=lo,
        scale=scale,
        nbins=BINS,
        single=np.zeros((len(names), BINS)),
        pairs=np.zeros((0, 2), dtype=np.int64),
        pair_tables=np.zeros((0, BINS, BINS)),
        intercept=0.0,
    )
    codes = blank.codes(x).astype(np.float64)
    pos = w[y == 1].sum()
    neg = w[y == 0].sum()
    sw = np.where(y == 1, w / pos, w / neg)
    clf = HistGradientBoostingClassifier(
        max_depth=DEPTH,
        max_iter=ITERS,
        learning_rate=RATE,
        min_samples_leaf=LEAF,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=0,
    )
    clf.fit(codes, y, sample_weight=sw * len(y))
    card = Scorecard.from_trees(clf, names, lo, scale, BINS)
    return card, clf, codes


def fit_trees(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> HistGradientBoostingClassifier:
    """The previous model (depth-5 boosted trees, 300 rounds) for comparison (``--compare``)."""
    pos = w[y == 1].sum()
    neg = w[y == 0].sum()
    sw = np.where(y == 1, w / pos, w / neg)
    clf = HistGradientBoostingClassifier(
        max_depth=5, max_iter=300, learning_rate=0.08, min_samples_leaf=10, random_state=0
    )
    clf.fit(x, y, sample_weight=sw * len(y))
    return clf


def per_connection(rows: pl.DataFrame, conf: np.ndarray, thr: float) -> pl.DataFrame:
    """Per connection: label, family, path, detected (within 10 min), first detection delay."""
    r = rows.with_columns(conf=pl.Series(conf))
    return r.group_by("conn").agg(
        label=pl.col("label").first(),
        family=pl.col("family").first(),
        variant=pl.col("variant").first(),
        path=pl.col("path").first(),
        age_s=pl.col("age_s").max(),
        max_conf=pl.col("conf").max(),
        detected=(pl.col("conf") >= thr).any(),
        detected_10min=((pl.col("conf") >= thr) & (pl.col("age_s") <= WITHIN_S)).any(),
        delay_s=pl.col("age_s").filter(pl.col("conf") >= thr).min(),
        first_t=pl.col("first_t").first(),
        detected_t=pl.col("last_t").filter(pl.col("conf") >= thr).min(),
    )


def metrics(conns: pl.DataFrame) -> dict[str, Any]:
    mine = conns.filter(pl.col("label") == 1)
    benign = conns.filter(pl.col("label") == 0)
    out: dict[str, Any] = {
        "mining_connections": mine.height,
        "mining_detected_10min": int(mine["detected_10min"].sum()),
        "recall_10min": round(float(mine["detected_10min"].mean() or 0.0), 4),
        "benign_connections": benign.height,
        "benign_false_positives": int(benign["detected"].sum()),
        "fp_rate": round(float(benign["detected"].mean() or 0.0), 5),
        "delay_s_median": (
            round(float(mine["delay_s"].median()), 1)
            if mine["delay_s"].drop_nulls().len()
            else None
        ),
        "delay_s_max": (
            round(float(mine["delay_s"].max()), 1) if mine["delay_s"].drop_nulls().len() else None  # type: ignore[arg-type]
        ),
    }
    tp = int(mine["detected"].sum())
    fp = out["benign_false_positives"]
    out["precision"] = round(tp / (tp + fp), 4) if tp + fp else None
    return out


def evaluate(
    rows: pl.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    folds: int,
    min_threshold: float,
    fit_score: Any,
) -> tuple[dict[str, Any], IsotonicRegression, float]:
    """Out-of-fold scores by capture (``fit_score(x_train, y, w, x_test)`` gives the test
    rows' scores), isotonic calibration on them, the threshold, and the per-connection report."""
    groups = rows["group"].to_numpy()
    oof = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=min(folds, len(set(groups)))).split(x, y, groups):
        oof[te] = fit_score(x[tr], y[tr], w[tr], x[te])
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(oof, y, sample_weight=w)
    cal = iso.predict(oof)
    # Threshold: the lowest calibrated value above every benign out-of-fold score, at least
    # min_threshold (no benign long-lived connection may alert).
    benign_max = float(cal[y == 0].max()) if (y == 0).any() else 0.0
    levels = np.unique(np.asarray(iso.y_thresholds_))
    above = levels[levels > benign_max]
    thr = float(above.min()) if len(above) else 1.0
    thr = max(thr, min_threshold)
    conns = per_connection(rows, cal, thr)
    report: dict[str, Any] = {"threshold": thr, "out_of_fold": metrics(conns)}
    for path in ("pcap", "softflowd"):
        report[f"out_of_fold_{path}"] = metrics(conns.filter(pl.col("path") == path))
    benign = conns.filter(pl.col("label") == 0)
    for fam_name, key in (("xmrig-tls", "tls"), ("xmrig", "cleartext")):
        sub = conns.filter(pl.col("family") == fam_name)
        report[f"out_of_fold_{key}"] = metrics(pl.concat([sub, benign]))
        for path in ("pcap", "softflowd"):
            report[f"out_of_fold_{key}_{path}"] = metrics(
                pl.concat([sub, benign]).filter(pl.col("path") == path)
            )
    fam = (
        conns.group_by("family", "label")
        .agg(
            connections=pl.len(),
            detected=pl.col("detected").sum(),
            detected_10min=pl.col("detected_10min").sum(),
            max_conf=pl.col("max_conf").max(),
        )
        .sort("label", "family")
    )
    report["per_family"] = fam.to_dicts()
    # The trade-off below the chosen threshold: each of the top calibrated levels as a
    # threshold (out of fold), what it would detect and how many benign connections it flags.
    curve = []
    for level in sorted(set(np.unique(cal)) - {0.0}, reverse=True)[:6]:
        c = per_connection(rows, cal, float(level))
        mine, tls = c.filter(pl.col("label") == 1), c.filter(pl.col("family") == "xmrig-tls")
        curve.append(
            {
                "threshold": round(float(level), 4),
                "mining_10min": f"{int(mine['detected_10min'].sum())}/{mine.height}",
                "tls_10min": f"{int(tls['detected_10min'].sum())}/{tls.height}",
                "benign_fp": f"{int(c.filter(pl.col('label') == 0)['detected'].sum())}/"
                f"{c.filter(pl.col('label') == 0).height}",
            }
        )
    report["levels"] = curve
    missed = conns.filter((pl.col("label") == 1) & ~pl.col("detected_10min"))
    report["missed_mining"] = missed.select("variant", "path", "age_s", "max_conf").to_dicts()
    return report, iso, thr


def _scorecard_oof(names: tuple[str, ...]) -> Any:
    def fit_score(xtr: np.ndarray, ytr: np.ndarray, wtr: np.ndarray, xte: np.ndarray) -> Any:
        card, _, _ = fit_model(xtr, ytr, wtr, names)
        return card.logit(xte)

    return fit_score


def _trees_oof(xtr: np.ndarray, ytr: np.ndarray, wtr: np.ndarray, xte: np.ndarray) -> Any:
    return fit_trees(xtr, ytr, wtr).predict_proba(xte)[:, 1]


def cmd_train(args: argparse.Namespace) -> None:
    t0 = time.time()
    # The packet model: flow records made from packets, with their statistics.
    rows = load_rows(args.data, args.extra, ("pcap",) if args.packet else ("pcap", "softflowd"))
    rows = rows.filter(eligible())
    names = FEATURES + PACKET_FEATURES if args.packet else FEATURES
    unknown = set(args.drop) - set(names)
    if unknown:
        raise SystemExit(f"--drop: no such feature {sorted(unknown)}; features: {names}")
    names = tuple(n for n in names if n not in args.drop)
    print(
        f"{rows.height} eligible rows, {rows['conn'].n_unique()} connections "
        f"({time.time() - t0:.0f} s)"
    )
    x = rows.select(names).to_numpy().astype(np.float64)
    y = rows["label"].to_numpy()
    n_conn = rows.group_by("conn").len()
    w = 1.0 / rows.join(n_conn, on="conn", how="left")["len"].to_numpy()
    if args.compare:
        old, _, _ = evaluate(rows, x, y, w, args.folds, args.min_threshold, _trees_oof)
        print("depth-5 boosted trees (the previous model), same folds:")
        print(json.dumps({k: v for k, v in old.items() if k != "missed_mining"}, indent=1))
    report, iso, thr = evaluate(
        rows, x, y, w, args.folds, args.min_threshold, _scorecard_oof(names)
    )
    report["model"] = {"depth": DEPTH, "bins": BINS, "rounds": ITERS, "learning_rate": RATE}
    print(json.dumps(report, indent=1, default=str))
    if args.dry_run:
        return

    card, clf, codes = fit_model(x, y, w, names)
    # Terms centred on the benign rows: a term's value reads "against a typical benign
    # long-lived connection" in the reasons.
    card = card.centered(x[y == 0], w[y == 0])
    rng = np.random.default_rng(0)
    ref = rng.choice(len(y), size=min(2000, len(y)), replace=False)
    model = BehaviorModel(
        features=names,
        card=card,
        iso_x=np.asarray(iso.X_thresholds_, dtype=np.float64),
        iso_y=np.asarray(iso.y_thresholds_, dtype=np.float64),
        threshold=thr,
        meta={
            "trained": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": int(rows.height),
            "connections": int(rows["conn"].n_unique()),
            "families": sorted(set(rows["family"].to_list())),
            "variants": sorted(set(rows["variant"].to_list())),
            "measured": report,
        },
        reference_x=x[ref],
        reference_logit=np.asarray(clf.decision_function(codes[ref]), dtype=np.float64),
    )
    # Shared benign captures: never trained on; the final model must stay silent on them.
    shared = []
    for pcap in sorted(SHARED_BENIGN.glob("*.pcap*")):
        try:
            flows = flows_from_pcap(pcap)
        except Exception as exc:  # a damaged capture is reported, not fatal
            shared.append({"file": pcap.name, "error": str(exc)})
            continue
        n_found = len(detect(flows, model=model))  # the packet model reads the packet columns
        if n_found:
            shared.append({"file": pcap.name, "detections": n_found})
    model.meta["shared_benign_detections"] = shared
    print("shared benign captures with detections:", shared)
    out = args.model or (PACKET_MODEL if args.packet else MODEL)
    model.save(out)
    print(f"wrote {out} ({time.time() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--data", type=Path, default=DATA)
    g.add_argument("--waves", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--minutes", type=float, default=14.0)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument(
        "--job-schedule",
        choices=JOB_SCHEDULES,
        default="timer",
        help="the lab pools' job timing: a fixed timer, or exponential gaps (block times)",
    )
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, default=DATA)
    t.add_argument(
        "--model", type=Path, help=f"output (default {MODEL.name}, or {PACKET_MODEL.name})"
    )
    t.add_argument(
        "--extra",
        type=Path,
        nargs="*",
        default=[],
        help="fleet runs of behavior_heldout.py made for training (their --data folders)",
    )
    t.add_argument(
        "--packet",
        action="store_true",
        help="the packet model: packet-path rows only, with the per-message features",
    )
    t.add_argument(
        "--drop",
        nargs="*",
        default=[],
        metavar="FEATURE",
        help="features the model leaves out (of behavior.FEATURES and PACKET_FEATURES)",
    )
    t.add_argument("--folds", type=int, default=6)
    t.add_argument("--min-threshold", type=float, default=0.5)
    t.add_argument("--depth", type=int, default=DEPTH, help="tree depth: 1 additive, 2 pairs")
    t.add_argument("--leaf", type=int, default=LEAF, help="minimum rows per leaf")
    t.add_argument("--bins", type=int, default=BINS, help="bins per feature")
    t.add_argument("--rounds", type=int, default=ITERS, help="boosting rounds")
    t.add_argument("--rate", type=float, default=RATE, help="learning rate")
    t.add_argument("--compare", action="store_true", help="also cross-validate depth-5 trees")
    t.add_argument("--dry-run", action="store_true", help="cross-validate only, write nothing")
    args = ap.parse_args()
    if args.cmd == "train":
        globals().update(
            DEPTH=args.depth, LEAF=args.leaf, BINS=args.bins, ITERS=args.rounds, RATE=args.rate
        )
    if args.cmd == "generate":
        cmd_generate(args)
    else:
        cmd_train(args)


if __name__ == "__main__":
    main()

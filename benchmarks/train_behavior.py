"""Train and evaluate the behaviour model on real loopback captures.

    python benchmarks/train_behavior.py generate --waves 0 1 2 --minutes 14   # ~45 min
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
4. fits the final model (boosted trees) on everything and writes it with the calibration, the
   threshold and the measured figures to ``src/minewatch/data/behavior_model.json``;
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
from minewatch.net.behavior import (  # noqa: E402
    CONN_KEY,
    FEATURES,
    BehaviorModel,
    connection_features,
    detect,
    eligible,
)

DATA = ROOT / ".cache" / "behavior-data"
MODEL = ROOT / "src" / "minewatch" / "data" / "behavior_model.joblib"
SHARED_BENIGN = ROOT.parent / "shared" / "data" / "pcap" / "benign"
WITHIN_S = 600.0
DEPTH, LEAF = 5, 10


def cmd_generate(args: argparse.Namespace) -> None:
    benign = BENIGN_SCENARIOS + tuple(n for n in BENIGN_SCENARIOS if n != "postgres-pool")
    for wave in args.waves:
        t = time.time()
        entries = generate(
            args.data, wave=wave, duration=args.minutes * 60, benign=benign, seed=args.seed
        )
        errors = [e for e in entries if "error" in e]
        print(f"wave {wave}: {len(entries)} runs in {time.time() - t:.0f} s; errors {errors}")


def load_rows(data: Path) -> pl.DataFrame:
    """Feature rows of every capture, both paths, with labels and groups (cached per capture)."""
    frames = []
    for manifest in sorted(data.glob("manifest-w*.json")):
        for e in json.loads(manifest.read_text()):
            if "error" in e:
                print(f"skipping failed run {e}", file=sys.stderr)
                continue
            pcap = Path(e["pcap"])
            group = pcap.parent.name
            for path in ("pcap", "softflowd"):
                cache = pcap.parent / f"features-{path}.parquet"
                if cache.exists() and cache.stat().st_mtime > pcap.stat().st_mtime:
                    f = pl.read_parquet(cache)
                else:
                    if path == "pcap":
                        flows = flows_from_pcap(pcap)
                    else:
                        flows = flows_from_softflowd(pcap, pcap.parent)
                    pl.from_arrow(flows).write_parquet(pcap.parent / f"flows-{path}.parquet")
                    f = connection_features(flows)
                    f.write_parquet(cache)
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


def fit_model(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> HistGradientBoostingClassifier:
    """Shallow boosted trees; each connection weighs the same whatever its number of rows."""
    pos = w[y == 1].sum()
    neg = w[y == 0].sum()
    sw = np.where(y == 1, w / pos, w / neg)
    clf = HistGradientBoostingClassifier(
        max_depth=DEPTH, max_iter=300, learning_rate=0.08, min_samples_leaf=LEAF, random_state=0
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


def cmd_train(args: argparse.Namespace) -> None:
    t0 = time.time()
    rows = load_rows(args.data)
    rows = rows.filter(eligible())
    print(
        f"{rows.height} eligible rows, {rows['conn'].n_unique()} connections "
        f"({time.time() - t0:.0f} s)"
    )
    x = np.nan_to_num(rows.select(FEATURES).to_numpy().astype(np.float64))
    y = rows["label"].to_numpy()
    n_conn = rows.group_by("conn").len()
    w = rows.join(n_conn, on="conn", how="left")["len"].to_numpy()
    w = 1.0 / w
    groups = rows["group"].to_numpy()
    oof = np.zeros(len(y))
    folds = GroupKFold(n_splits=min(args.folds, len(set(groups))))
    for tr, te in folds.split(x, y, groups):
        clf = fit_model(x[tr], y[tr], w[tr])
        oof[te] = clf.predict_proba(x[te])[:, 1]
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(oof, y, sample_weight=w)
    cal = iso.predict(oof)
    # Threshold: the lowest calibrated value above every benign out-of-fold score, at least
    # args.min_threshold (no benign long-lived connection may alert).
    benign_max = float(cal[y == 0].max()) if (y == 0).any() else 0.0
    levels = np.unique(np.asarray(iso.y_thresholds_))
    above = levels[levels > benign_max]
    thr = float(above.min()) if len(above) else 1.0
    thr = max(thr, args.min_threshold)
    conns = per_connection(rows, cal, thr)
    report: dict[str, Any] = {"threshold": thr, "out_of_fold": metrics(conns)}
    for path in ("pcap", "softflowd"):
        report[f"out_of_fold_{path}"] = metrics(conns.filter(pl.col("path") == path))
    tls = conns.filter(pl.col("family") == "xmrig-tls")
    report["out_of_fold_tls"] = metrics(pl.concat([tls, conns.filter(pl.col("label") == 0)]))
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
    missed = conns.filter((pl.col("label") == 1) & ~pl.col("detected_10min"))
    report["missed_mining"] = missed.select("variant", "path", "age_s", "max_conf").to_dicts()
    print(json.dumps(report, indent=1, default=str))

    clf = fit_model(x, y, w)
    model = BehaviorModel(
        features=FEATURES,
        estimator=clf,
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
    )
    # Shared benign captures: never trained on; the final model must stay silent on them.
    shared = []
    for pcap in sorted(SHARED_BENIGN.glob("*.pcap*")):
        try:
            flows = flows_from_pcap(pcap)
        except Exception as exc:  # a damaged capture is reported, not fatal
            shared.append({"file": pcap.name, "error": str(exc)})
            continue
        found = detect(flows, model=model)
        if found:
            shared.append({"file": pcap.name, "detections": len(found)})
    model.meta["shared_benign_detections"] = shared
    print("shared benign captures with detections:", shared)
    model.save(args.model)
    print(f"wrote {args.model} ({time.time() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--data", type=Path, default=DATA)
    g.add_argument("--waves", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--minutes", type=float, default=14.0)
    g.add_argument("--seed", type=int, default=7)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, default=DATA)
    t.add_argument("--model", type=Path, default=MODEL)
    t.add_argument("--folds", type=int, default=6)
    t.add_argument("--min-threshold", type=float, default=0.5)
    t.add_argument("--depth", type=int, default=DEPTH, help="tree depth")
    t.add_argument("--leaf", type=int, default=LEAF, help="minimum rows per leaf")
    args = ap.parse_args()
    if args.cmd == "train":
        globals().update(DEPTH=args.depth, LEAF=args.leaf)
    if args.cmd == "generate":
        cmd_generate(args)
    else:
        cmd_train(args)


if __name__ == "__main__":
    main()

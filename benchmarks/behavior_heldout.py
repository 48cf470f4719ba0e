"""Held-out evaluation of the shipped behaviour model at scale, on real loopback traffic.

    python benchmarks/behavior_heldout.py benign --run 0 --connections 3300 --minutes 15
    python benchmarks/behavior_heldout.py miners --rounds 6 --randomx 14 --light 26 --minutes 11
    python benchmarks/behavior_heldout.py evaluate [--paths pcap softflowd] [--json out.json]

``benign`` and ``miners`` make the captures with :mod:`minewatch.lab.fleet` (real servers and
client libraries; real XMRig against lab pools on ports 20000-20999, at nice 19) under
``.cache/heldout/`` (not in git), each with a ``manifest.json``. None of it was seen in
training: the model was trained on :mod:`minewatch.lab.behavior_data`'s captures.

``evaluate`` runs the model that is installed in ``src/minewatch/data`` when it runs over every
capture by both paths the model serves:

- **packet path**, as ``minewatch scan`` does: the capture is decoded and aggregated into 60 s
  flow records per connection (:func:`minewatch.net.flowagg.aggregate_file`), and the records
  go, in time order, through :class:`minewatch.net.behavior.SlidingDetector`, which prints a
  detection the first time a connection's confidence reaches the threshold;
- **flow path**: ``softflowd -r`` (60 s active timeout, NetFlow v9) → the ingest decoder →
  :func:`minewatch.net.behavior.detect` on the whole table.

Per family and path it prints connections, how many were detected within 10 minutes of the
connection's first packet, recall with a 95% Clopper-Pearson interval, false positives among
benign long-lived connections (those the model scores at all: seen ≥ 50 s with ≥ 8 packets
each way) with the 95% upper bound, and the median time to detection. Every benign detection
is listed with its software, settings and reasons. Last comes the model's operating curve:
per path and false-positive budget (0.05% to 5%), the log-odds threshold that keeps the
benign long-lived connections within the budget and the TLS mining connections it finds
within 10 minutes; it compares models, it does not pick a threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import beta

ROOT = Path(__file__).resolve().parents[1]
# ``evaluate --rev`` re-runs this script on the code of a git revision exported here.
SRC = Path(os.environ.get("MW_HELDOUT_SRC", ROOT / "src"))
sys.path.insert(0, str(SRC))

DATA = ROOT / ".cache" / "heldout"
WITHIN_S = 600.0
WINDOW_S = 60.0
KEY = ["src_ip", "src_port", "dst_ip", "dst_port"]


def cmd_benign(args: argparse.Namespace) -> None:
    from minewatch.lab.fleet import BenignPlan, run_benign_fleet

    plan = BenignPlan(
        connections=args.connections,
        postgres=args.postgres,
        ssh=args.ssh,
        duration_s=args.minutes * 60,
        ramp_s=args.ramp,
        seed=1000 + args.run,
    )
    t = time.time()
    out = args.data / f"benign-{args.run:02d}"
    entries = run_benign_fleet(out, plan, port_base=args.port_base)
    errors = json.loads((out / "errors.json").read_text())
    print(
        f"benign run {args.run}: {sum(e['planned_connections'] for e in entries)} planned "
        f"connections in {len(entries)} captures, {time.time() - t:.0f} s; client errors {errors}"
    )


def cmd_miners(args: argparse.Namespace) -> None:
    from minewatch.lab.fleet import run_miner_fleet, schedule_suffix

    def report(r: int, entries: list[dict[str, Any]]) -> None:
        ok = [e for e in entries if "error" not in e]
        shares = [e["accepted_shares"] for e in ok]
        print(
            f"round {r}: {len(ok)}/{len(entries)} runs, accepted shares median "
            f"{np.median(shares) if shares else 0:.0f} (min {min(shares, default=0)}); "
            f"errors {[e for e in entries if 'error' in e]}",
            flush=True,
        )

    # Rounds at block times (or with vardiff) go to their own folder: they can run beside
    # the timer rounds.
    run_miner_fleet(
        args.data / f"miners{schedule_suffix(args.job_schedule, args.vardiff)}",
        rounds=args.rounds,
        n_randomx=args.randomx,
        n_light=args.light,
        duration=args.minutes * 60,
        seed=args.seed,
        first_round=args.first_round,
        paced=args.paced,
        job_schedule=args.job_schedule,
        vardiff=args.vardiff,
        job_intervals=args.job_intervals,
        share_intervals=args.share_intervals,
        on_round=report,
    )


# --------------------------------------------------------------------------- evaluation


def load_batches(data: Path) -> dict[str, list[dict[str, Any]]]:
    """Manifest entries grouped by batch (one benign run, one miner round)."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(data.glob("benign-*/manifest.json")):
        for e in json.loads(m.read_text()):
            batches.setdefault(m.parent.name, []).append(e)
    for mm in sorted(data.glob("miners*/manifest.json")):
        for e in json.loads(mm.read_text()):
            if "error" in e:
                print(f"skipping failed miner run {e}", file=sys.stderr)
                continue
            b = e.get("batch") or "miners-" + e["variant"].split("-", 1)[0]
            batches.setdefault(b, []).append(e)
    return batches


def batch_flows(name: str, entries: list[dict[str, Any]], work: Path) -> dict[str, pl.DataFrame]:
    """FLOWS of a batch by both paths (cached: they do not depend on the model).

    The batch's captures are merged first (each has its own server ports), so softflowd
    exports every connection of the batch at the same 60 s instants, as one exporter would.
    """
    from minewatch.lab.behavior_data import flows_from_softflowd
    from minewatch.net.behavior import has_packet_totals
    from minewatch.net.flowagg import aggregate_file

    cache = work / name
    cache.mkdir(parents=True, exist_ok=True)
    pcaps = [Path(e["pcap"]) for e in entries]
    newest = max(p.stat().st_mtime for p in pcaps)
    out: dict[str, pl.DataFrame] = {}
    merged = cache / "merged.pcap"
    try:
        for path in ("pcap", "softflowd"):
            f = cache / f"flows-{path}.parquet"
            if f.exists() and f.stat().st_mtime > newest:
                cached = pl.read_parquet(f)
                if path != "pcap" or has_packet_totals(cached):
                    out[path] = cached
                    continue
            if not merged.exists():
                subprocess.run(
                    ["mergecap", "-F", "pcap", "-w", str(merged), *map(str, pcaps)], check=True
                )
            if path == "pcap":
                flows = aggregate_file(merged, window_s=WINDOW_S, packet_stats=True).flows
            else:
                flows = flows_from_softflowd(merged, cache, maxlife=int(WINDOW_S))
                (cache / f"{merged.stem}.nf9").unlink()
            df = pl.from_arrow(flows)
            assert isinstance(df, pl.DataFrame)
            df.write_parquet(f)
            out[path] = df
    finally:
        merged.unlink(missing_ok=True)
    return out


def connections(flows: pl.DataFrame) -> pl.DataFrame:
    """One row per TCP connection: client/server ports, first record, age, long-lived, and
    the model's highest log-odds over the whole connection and within its first 10 minutes
    (for the operating curve; the detection paths only report connections over the
    threshold, so every record is scored again here)."""
    from minewatch.net.behavior import CONN_KEY, connection_features, eligible, model_for, score

    feats = score(connection_features(flows), model_for(flows), log_odds=True)
    return feats.group_by(list(CONN_KEY)).agg(
        first_t=pl.col("first_t").min(),
        age_s=pl.col("age_s").max(),
        long_lived=eligible().any(),
        long_lived_10min=(eligible() & (pl.col("age_s") <= WITHIN_S)).any(),
        max_logit=pl.col("log_odds").max(),
        max_logit_10min=pl.col("log_odds").filter(pl.col("age_s") <= WITHIN_S).max(),
    )


def _epoch(iso: str | None) -> float | None:
    if iso is None:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def detections_packet_path(flows: pl.DataFrame) -> list[dict[str, Any]]:
    """As ``minewatch scan`` live: each closed 60 s window goes to a SlidingDetector."""
    from minewatch.net.behavior import SlidingDetector

    det = SlidingDetector(every_record=True)
    f = flows.filter(pl.col("proto") == 6).sort("ts_end")
    t = pl.col("ts_end").dt.epoch("ms")
    f = f.with_columns(_w=((t - t.min()) // int(WINDOW_S * 1000)))
    out: list[dict[str, Any]] = []
    for part in f.partition_by("_w", maintain_order=True, include_key=False):
        out.extend(det(part.to_arrow()))
    return out


def detections_flow_path(flows: pl.DataFrame) -> list[dict[str, Any]]:
    from minewatch.net.behavior import detect

    return detect(flows.to_arrow())


def evaluate_batch(
    name: str, entries: list[dict[str, Any]], work: Path, paths: list[str]
) -> pl.DataFrame:
    """Per connection and path: label, family, settings, long-lived, detection and delay."""
    by_port = {int(e["server_port"]): e for e in entries}
    flows = batch_flows(name, entries, work)
    frames = []
    for path in paths:
        conns = connections(flows[path]).filter(pl.col("dst_port").is_in(list(by_port)))
        t0 = time.perf_counter()
        if path == "pcap":
            recs = detections_packet_path(flows[path])
        else:
            recs = detections_flow_path(flows[path])
        secs = time.perf_counter() - t0
        det = pl.DataFrame(
            {
                "src_port": [r["src_port"] for r in recs],
                "dst_port": [r["dst_port"] for r in recs],
                "det_first": [_epoch(r["first_seen"]) for r in recs],
                "det_at": [_epoch(r["detected_at"]) for r in recs],
                "confidence": [float(r["confidence"]) for r in recs],
                "reasons": [" | ".join(r["reasons"]) for r in recs],
            },
            schema={
                "src_port": pl.Int64,
                "dst_port": pl.Int64,
                "det_first": pl.Float64,
                "det_at": pl.Float64,
                "confidence": pl.Float64,
                "reasons": pl.Utf8,
            },
        ).unique(["src_port", "dst_port"], keep="first")
        meta = pl.DataFrame(
            {
                "dst_port": list(by_port),
                "label": [int(e["label"]) for e in by_port.values()],
                "family": [e["family"] for e in by_port.values()],
                "variant": [e.get("variant", e["family"]) for e in by_port.values()],
                "accepted_shares": [e.get("accepted_shares") for e in by_port.values()],
                "paced": [bool(e.get("paced", False)) for e in by_port.values()],
                "vardiff": [bool(e.get("vardiff", False)) for e in by_port.values()],
                "job_schedule": [e.get("job_schedule", "timer") for e in by_port.values()],
                "job_interval": [
                    (e.get("settings") or {}).get("job_interval") for e in by_port.values()
                ],
                "settings": [json.dumps(e.get("settings")) for e in by_port.values()],
            },
            schema_overrides={
                "dst_port": pl.Int64,
                "accepted_shares": pl.Int64,
                "job_interval": pl.Float64,
            },
        )
        c = (
            conns.with_columns(pl.col("src_port", "dst_port").cast(pl.Int64))
            .join(meta, on="dst_port", how="left")
            .join(det, on=["src_port", "dst_port"], how="left")
            .with_columns(
                batch=pl.lit(name),
                path=pl.lit(path),
                detect_s=pl.lit(secs),
                detected=pl.col("det_at").is_not_null(),
                delay_s=pl.col("det_at") - pl.col("det_first"),
            )
            .with_columns(
                detected_10min=pl.col("detected") & (pl.col("delay_s") <= WITHIN_S),
            )
        )
        frames.append(c)
    return pl.concat(frames, how="diagonal_relaxed")


def clopper_pearson(x: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval for a proportion x/n."""
    a = 1 - conf
    lo = 0.0 if x == 0 else float(beta.ppf(a / 2, x, n - x + 1))
    hi = 1.0 if x == n else float(beta.ppf(1 - a / 2, x + 1, n - x))
    return lo, hi


def upper_bound(x: int, n: int, conf: float = 0.95) -> float:
    """One-sided exact upper bound for a proportion x/n (0 of n: ~3/n, the rule of three)."""
    return 1.0 if x >= n else float(beta.ppf(conf, x + 1, n - x))


def summary_rows(res: pl.DataFrame) -> list[dict[str, Any]]:
    """Table rows per path (and both) and per family, plus pooled groups."""
    mining = res.filter((pl.col("label") == 1) & (pl.col("age_s") >= 60))
    benign = res.filter((pl.col("label") == 0) & pl.col("long_lived"))
    tls = pl.col("family").str.contains("tls") | pl.col("family").is_in(
        ["mqtt-tls", "websocket-tls", "http2", "electrum-tls"]
    )
    rate = pl.col("accepted_shares") / (pl.col("age_s") / 60.0)
    rows: list[dict[str, Any]] = []
    for path in ["pcap", "softflowd", "both"]:
        m = mining if path == "both" else mining.filter(pl.col("path") == path)
        b = benign if path == "both" else benign.filter(pl.col("path") == path)
        if m.height + b.height == 0:
            continue
        groups: list[tuple[str, pl.DataFrame, pl.DataFrame]] = [
            ("TLS mining (all algorithms)", m.filter(tls), b.head(0)),
            (
                "TLS mining, RandomX",
                m.filter(tls & pl.col("family").str.ends_with("-rx")),
                b.head(0),
            ),
            ("all mining", m, b.head(0)),
            ("TLS mining, pool-paced difficulty", m.filter(tls & pl.col("paced")), b.head(0)),
            (
                "TLS mining, paced, fixed per run",
                m.filter(tls & pl.col("paced") & ~pl.col("vardiff")),
                b.head(0),
            ),
            ("TLS mining, pool vardiff", m.filter(tls & pl.col("vardiff")), b.head(0)),
            ("TLS mining, fixed difficulty", m.filter(tls & ~pl.col("paced")), b.head(0)),
            (
                "TLS mining, pool jobs on a timer",
                m.filter(tls & (pl.col("job_schedule") == "timer")),
                b.head(0),
            ),
            (
                "TLS mining, pool jobs at block times",
                m.filter(tls & (pl.col("job_schedule") == "blocks")),
                b.head(0),
            ),
            ("TLS mining, < 1 accepted share/min", m.filter(tls & (rate < 1)), b.head(0)),
            ("TLS mining, 1-10 shares/min", m.filter(tls & rate.is_between(1, 10)), b.head(0)),
            ("TLS mining, > 10 shares/min", m.filter(tls & (rate > 10)), b.head(0)),
            ("TLS mining, job every 7 s", m.filter(tls & (pl.col("job_interval") < 10)), b.head(0)),
            (
                "TLS mining, job every ≥ 25 s",
                m.filter(tls & (pl.col("job_interval") >= 10)),
                b.head(0),
            ),
        ]
        groups += [
            (f, m.filter(pl.col("family") == f), b.head(0)) for f in sorted(set(m["family"]))
        ]
        groups += [("all benign long-lived", m.head(0), b)]
        groups += [("benign, TLS families", m.head(0), b.filter(tls))]
        groups += [
            (f, m.head(0), b.filter(pl.col("family") == f)) for f in sorted(set(b["family"]))
        ]
        for label, mm, bb in groups:
            row: dict[str, Any] = {"path": path, "group": label}
            if mm.height:
                n, x = mm.height, int(mm["detected_10min"].sum())
                lo, hi = clopper_pearson(x, n)
                d = mm.filter(pl.col("detected_10min"))["delay_s"]
                row.update(
                    connections=n,
                    detected_10min=x,
                    recall=x / n,
                    recall_lo=lo,
                    recall_hi=hi,
                    long_lived=int(mm["long_lived"].sum()),
                    median_delay_s=float(d.median()) if d.len() else None,  # type: ignore[arg-type]
                    max_delay_s=float(d.max()) if d.len() else None,  # type: ignore[arg-type]
                )
            if bb.height:
                n, x = bb.height, int(bb["detected"].sum())
                row.update(benign=n, fp=x, fp_rate=x / n, fp_upper=upper_bound(x, n))
            if mm.height or bb.height:
                rows.append(row)
    return rows


FP_BUDGETS = (0.0005, 0.001, 0.005, 0.01, 0.02, 0.05)


def operating_curve(res: pl.DataFrame) -> list[dict[str, Any]]:
    """Per path: for each false-positive budget, the log-odds threshold that keeps benign
    long-lived connections within it, and the TLS mining connections that threshold finds
    within 10 minutes. For comparing models on held-out data, not for picking a threshold."""
    tls_mining = res.filter(
        (pl.col("label") == 1) & (pl.col("age_s") >= 60) & pl.col("family").str.contains("tls")
    )
    benign = res.filter((pl.col("label") == 0) & pl.col("long_lived"))
    out: list[dict[str, Any]] = []
    for path in sorted(set(res["path"])):
        b = np.sort(benign.filter(pl.col("path") == path)["max_logit"].to_numpy())[::-1]
        m = tls_mining.filter(pl.col("path") == path)["max_logit_10min"].fill_null(-np.inf)
        if b.size == 0 or m.len() == 0:
            continue
        for budget in FP_BUDGETS:
            allowed = int(np.floor(budget * b.size))
            # Strictly above the (allowed+1)-th highest benign score: at most `allowed` FPs.
            thr = float(b[allowed]) if allowed < b.size else -np.inf
            fp = int((b > thr).sum())
            found = int((m.to_numpy() > thr).sum())
            out.append(
                {"path": path, "budget": budget, "log_odds": thr, "benign": int(b.size),
                 "fp": fp, "tls_mining": m.len(), "found_10min": found}
            )  # fmt: skip
    return out


def print_curve(curve: list[dict[str, Any]]) -> None:
    print("\noperating curve (threshold chosen on these benign connections, for comparison only):")
    print("| path | FP budget | log-odds threshold | benign FP | TLS mining found ≤ 10 min |")
    print("| --- | --- | --- | --- | --- |")
    for c in curve:
        print(
            f"| {c['path']} | {_pct(c['budget'], 2)} | {c['log_odds']:.2f} | "
            f"{c['fp']}/{c['benign']} | {c['found_10min']}/{c['tls_mining']} "
            f"({_pct(c['found_10min'] / c['tls_mining'])}) |"
        )


def candidate_table(res: pl.DataFrame, levels: list[float]) -> list[dict[str, Any]]:
    """Per path and candidate level (calibrated confidence, the unit of ``flows detect
    --threshold``): TLS mining connections at or above it within 10 minutes, benign long-lived
    connections at or above it at any time, and the distinct benign servers among those (what
    ``minewatch probe`` would be asked about). The probe's verdict is not simulated here:
    ``tests/net/test_probe.py`` shows it on live servers of every family in these captures."""
    from minewatch.net.behavior import default_model, default_packet_model

    out: list[dict[str, Any]] = []
    tls_mining = res.filter(
        (pl.col("label") == 1) & (pl.col("age_s") >= 60) & pl.col("family").str.contains("tls")
    )
    benign = res.filter((pl.col("label") == 0) & pl.col("long_lived"))
    for path in sorted(set(res["path"])):
        # The models the two paths use: exporter records have no packet statistics.
        model = default_model() if path == "softflowd" else default_packet_model()
        assert model is not None
        mm = tls_mining.filter(pl.col("path") == path)
        bb = benign.filter(pl.col("path") == path)
        if mm.height == 0 or bb.height == 0:
            continue
        conf_m = model.calibrate(mm["max_logit_10min"].fill_null(-np.inf).to_numpy())
        conf_b = model.calibrate(bb["max_logit"].fill_null(-np.inf).to_numpy())
        for level in levels:
            hit_b = conf_b >= level
            servers = bb.filter(pl.Series(hit_b)).select("batch", "family").unique().height
            out.append(
                {"path": path, "level": level, "tls_mining": mm.height,
                 "found_10min": int((conf_m >= level).sum()), "benign": bb.height,
                 "benign_candidates": int(hit_b.sum()), "benign_servers": servers}
            )  # fmt: skip
    return out


def print_candidates(rows: list[dict[str, Any]]) -> None:
    print("\ncandidates for `minewatch probe` (flows detect --threshold LEVEL | probe -):")
    print("| path | level | TLS mining ≥ level ≤ 10 min | benign long-lived ≥ level | servers |")
    print("| --- | --- | --- | --- | --- |")
    for c in rows:
        print(
            f"| {c['path']} | {c['level']:g} | {c['found_10min']}/{c['tls_mining']} "
            f"({_pct(c['found_10min'] / c['tls_mining'])}) | {c['benign_candidates']}/"
            f"{c['benign']} ({_pct(c['benign_candidates'] / c['benign'], 2)}) | "
            f"{c['benign_servers']} |"
        )


def software_log(data: Path, batches: list[str]) -> pl.DataFrame:
    """What each benign client was (software, role, parameters), from connections.jsonl."""
    rows = []
    for b in batches:
        f = data / b / "connections.jsonl"
        if f.exists():
            for line in f.read_text().splitlines():
                c = json.loads(line)
                if c["client_port"] is not None:
                    rows.append((b, c["family"], int(c["client_port"]), c["kind"],
                                 json.dumps(c["params"])))  # fmt: skip
    return pl.DataFrame(
        rows,
        schema={"batch": pl.Utf8, "family": pl.Utf8, "client_port": pl.Int64,
                "kind": pl.Utf8, "params": pl.Utf8},
        orient="row",
    ).unique(["batch", "family", "client_port"], keep="last")  # fmt: skip


def _pct(v: float | None, digits: int = 1) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}%"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| path | group | connections | detected ≤ 10 min | recall [95% CI] | median / max delay"
        " | benign long-lived | false positives | FP rate (95% upper) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rec = (
            f"{_pct(r['recall'])} [{_pct(r['recall_lo'])}, {_pct(r['recall_hi'])}]"
            if "recall" in r
            else ""
        )
        delay = (
            f"{r['median_delay_s']:.0f} s / {r['max_delay_s']:.0f} s"
            if r.get("median_delay_s") is not None
            else ""
        )
        fp = f"{_pct(r['fp_rate'], 3)} (≤ {_pct(r['fp_upper'], 3)})" if "fp" in r else ""
        print(
            f"| {r['path']} | {r['group']} | {r.get('connections', '')} | "
            f"{r.get('detected_10min', '')} | {rec} | {delay} | {r.get('benign', '')} | "
            f"{r.get('fp', '')} | {fp} |"
        )


def model_identity(src: Path) -> dict[str, Any]:
    import hashlib

    data = src / "minewatch" / "data"
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(data.glob("behavior*model.*"))
    }
    log = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "log",
            "-1",
            "--format=%h %cI %s",
            os.environ.get("MW_HELDOUT_REV", "HEAD"),
            "--",
            "src/minewatch/data",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src/minewatch/data",
         "src/minewatch/net/behavior.py"],
        capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    return {
        "src": str(src),
        "rev": os.environ.get("MW_HELDOUT_REV", "working tree"),
        "last_model_commit_in_checkout": log,
        "uncommitted_in_checkout": dirty or None,
        "model_files_sha256": files,
    }


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.rev:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        code = args.data / "code" / sha
        if not (code / "src").exists():
            code.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", sha, "src"], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        env = {**os.environ, "MW_HELDOUT_SRC": str(code / "src"), "MW_HELDOUT_REV": sha}
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--rev")
        del argv[i : i + 2]
        raise SystemExit(subprocess.call([sys.executable, __file__, *argv], env=env))

    ident = model_identity(SRC)
    load = os.getloadavg()
    started = datetime.now(UTC)
    print(f"model: {json.dumps(ident)}", flush=True)
    batches = load_batches(args.data)
    work = args.data / "eval"
    frames = []
    for name, entries in sorted(batches.items()):
        t = time.perf_counter()
        res = evaluate_batch(name, entries, work, args.paths)
        frames.append(res)
        print(
            f"{name}: {len(entries)} captures, {res.height} connection-paths, "
            f"{time.perf_counter() - t:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    res = pl.concat(frames, how="diagonal_relaxed")
    rows = summary_rows(res)
    print(
        f"\nevaluated {started:%Y-%m-%d %H:%M} UTC, load average at start "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, {len(batches)} batches\n"
    )
    print_table(rows)
    curve = operating_curve(res)
    print_curve(curve)
    candidates = candidate_table(res, args.candidates)
    print_candidates(candidates)
    mining = res.filter((pl.col("label") == 1) & (pl.col("age_s") >= 60))
    missed = mining.filter(~pl.col("detected_10min"))
    print(f"\nmissed mining connections (within 10 min): {missed.height}")
    for r in missed.sort("path", "variant").iter_rows(named=True):  # a report, a few rows
        print(
            f"  {r['path']:9} {r['variant']:42} shares {r['accepted_shares']} "
            f"age {r['age_s']:.0f} s long-lived {r['long_lived']} delay {r['delay_s']}"
        )
    res = res.join(software_log(args.data, sorted(set(res["batch"]))), how="left",
                   left_on=["batch", "family", "src_port"],
                   right_on=["batch", "family", "client_port"])  # fmt: skip
    benign = res.filter((pl.col("label") == 0) & pl.col("long_lived"))
    by_kind = (
        benign.group_by("family", "kind")
        .agg(long_lived=pl.len(), fp=pl.col("detected").sum())
        .sort("family", "kind")
    )
    print("\nbenign long-lived connections by software and role (both paths):")
    for r in by_kind.iter_rows(named=True):  # a report, a few rows
        print(f"  {r['family']:14} {r['kind']!s:12} {r['long_lived']:6} FP {r['fp']}")
    fps = res.filter((pl.col("label") == 0) & pl.col("detected"))
    print(f"\nbenign connections detected as mining: {fps.height}")
    for r in fps.sort("family", "kind", "path").iter_rows(named=True):  # a report
        print(
            f"  {r['path']:9} {r['batch']} {r['family']} {r['kind']} client port "
            f"{r['src_port']} conf {r['confidence']} after {r['delay_s']:.0f} s; "
            f"settings {r['params']}\n    reasons: {r['reasons']}"
        )
    rev = ident["rev"] if ident["rev"] != "working tree" else "worktree"
    out = args.json or args.data / f"results-{rev}.json"
    res.write_parquet(out.with_suffix(".parquet"))
    out.write_text(
        json.dumps(
            {
                "model": ident,
                "evaluated": started.isoformat(),
                "load": load,
                "rows": rows,
                "operating_curve": curve,
                "candidates": candidates,
                "missed": missed.select("path", "variant", "accepted_shares", "age_s").to_dicts(),
                "false_positives": fps.drop("settings").to_dicts(),
            },
            indent=1,
            default=str,
        )
    )
    print(f"\nwritten {out} and {out.with_suffix('.parquet')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("benign", help="one benign fleet run")
    b.add_argument("--run", type=int, default=0, help="run number (seed, output folder)")
    b.add_argument("--connections", type=int, default=3300)
    b.add_argument("--postgres", type=int, default=120)
    b.add_argument("--ssh", type=int, default=30)
    b.add_argument("--minutes", type=float, default=15.0)
    b.add_argument("--ramp", type=float, default=120.0, help="seconds over which clients start")
    b.add_argument("--port-base", type=int, default=21100)
    m = sub.add_parser("miners", help="rounds of concurrent XMRig runs")
    m.add_argument("--rounds", type=int, default=1)
    m.add_argument("--first-round", type=int, default=0)
    m.add_argument("--randomx", type=int, default=14, help="rx/0 miners per round (~260 MB)")
    m.add_argument("--light", type=int, default=26, help="cn/argon2 miners per round")
    m.add_argument("--minutes", type=float, default=11.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--paced",
        action="store_true",
        help="difficulty from the expected hash rate and a 10-120 s share interval",
    )
    m.add_argument(
        "--vardiff",
        action="store_true",
        help="(implies --paced) the pools retarget difficulty to that share interval",
    )
    m.add_argument(
        "--job-schedule",
        choices=["timer", "blocks"],
        default="timer",
        help="pool job timing: a fixed timer, or exponential gaps as real pools (lab.pool)",
    )
    m.add_argument(
        "--job-intervals",
        type=float,
        nargs="+",
        metavar="S",
        help="pool job intervals to draw from (default lab.fleet.JOB_INTERVALS)",
    )
    m.add_argument(
        "--share-intervals",
        type=float,
        nargs="+",
        metavar="S",
        help="share intervals --paced draws from (default lab.fleet.SHARE_INTERVALS)",
    )
    e = sub.add_parser("evaluate", help="run the shipped model over every held-out capture")
    e.add_argument("--paths", nargs="+", default=["pcap", "softflowd"])
    e.add_argument("--rev", help="evaluate the code and model of this git revision")
    e.add_argument(
        "--candidates",
        type=float,
        nargs="+",
        default=[0.4, 0.07],
        metavar="LEVEL",
        help="calibrated levels for the probe's candidate table (default 0.4 0.07)",
    )
    e.add_argument("--json", type=Path, help="summary file (default .cache/heldout/results-REV)")
    args = ap.parse_args()
    {"benign": cmd_benign, "miners": cmd_miners, "evaluate": cmd_evaluate}[args.cmd](args)


if __name__ == "__main__":
    main()

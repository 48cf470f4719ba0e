"""Exploratory: does the timing of server pushes separate mining from benign long-lived
traffic once the pool's job timing is realistic?

    python benchmarks/push_timing.py [--data .cache/heldout] [--minutes 10] [--json out.json]
        [--model-results .cache/heldout/results-worktree.parquet]

Reads the captures of ``benchmarks/behavior_heldout.py`` (benign fleet runs and miner rounds,
on the timer and at block times) packet by packet with minewatch's own decoder and computes,
per TCP connection over its first ``--minutes`` of observation:

- **server messages**: runs of server→client payload packets with no client payload between
  them and less than 50 ms apart (a message split over TLS records or TCP segments is one);
- **pushes**: server messages that do not start within 1 s after a client payload packet,
  i.e. not a reply to a request (a pool's job notification, a broker's published message, a
  wallet's header notification, a keepalive probe from the server);
- ``push_share``: pushes / server messages; ``pushes_per_min``; ``push_cv``: the coefficient
  of variation of the gaps between pushes (0 for a clock, 1 for a Poisson process);
- ``reply_share``: client payload packets answered by a server message within 1 s / client
  payload packets (a request/response client: ≈ 1);
- ``client_cv``: the coefficient of variation of the gaps between client messages (shares
  found at random: ≈ 1; a keepalive clock: ≈ 0).

It prints the quantiles of each per group (XMRig TLS on the pool's timer, XMRig TLS at block
times, each benign family) and, for a few single-feature rules, how many connections of each
group they select. This is analysis for choosing features, not a detector: the captures it
reads must not then be used as held-out data for a model built from what it shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

# The held-out benchmark beside this file puts src/ on the path and reads its captures.
from behavior_heldout import DATA, load_batches, software_log

from minewatch.net.decode import TCP, decode
from minewatch.net.flowagg import REPLY_GAP_S as REPLY_S
from minewatch.sources.pcap import ReadStats, read_batches

MERGE_S = 0.05


def packets(pcap: Path, server_port: int) -> pl.DataFrame:
    """Payload-carrying TCP packets of one capture: client port, time, direction, length."""
    frames = []
    for batch in read_batches(str(pcap), ReadStats(path=str(pcap))):
        p = decode(batch)
        sel = p.ok & (p.proto == TCP) & (p.pay_len > 0)
        if not sel.any():
            continue
        up = p.dport[sel] == server_port
        down = p.sport[sel] == server_port
        keep = up | down
        frames.append(
            pl.DataFrame(
                {
                    "client": np.where(up, p.sport[sel], p.dport[sel])[keep],
                    "ts": p.ts_us[sel][keep] / 1e6,
                    "up": up[keep],
                    "len": p.pay_len[sel][keep],
                }
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={"client": pl.Int32, "ts": pl.Float64, "up": pl.Boolean, "len": pl.Int64}
        )
    return pl.concat(frames)


def connection_stats(pk: pl.DataFrame, minutes: float) -> pl.DataFrame:
    """One row per connection (client port) with the push statistics of its first minutes."""
    pk = pk.sort("client", "ts")
    pk = pk.with_columns(t0=pl.col("ts").min().over("client")).filter(
        pl.col("ts") - pl.col("t0") <= minutes * 60
    )
    same = pl.col("client") == pl.col("client").shift(1)
    # Last client payload time before each packet (same connection), carried forward.
    pk = pk.with_columns(
        last_up=pl.when(pl.col("up")).then(pl.col("ts")).forward_fill().over("client"),
    ).with_columns(
        prev_up=pl.when(same).then(pl.col("last_up").shift(1)),
        prev_ts=pl.when(same).then(pl.col("ts").shift(1)),
        prev_dir_up=pl.when(same).then(pl.col("up").shift(1)),
    )
    down = ~pl.col("up")
    starts = down & (
        pl.col("prev_ts").is_null()
        | pl.col("prev_dir_up").fill_null(True)
        | (pl.col("ts") - pl.col("prev_ts") > MERGE_S)
    )
    msgs = pk.filter(starts).with_columns(
        push=pl.col("prev_up").is_null() | (pl.col("ts") - pl.col("prev_up") > REPLY_S)
    )
    pushes = msgs.filter(pl.col("push")).with_columns(
        gap=pl.col("ts") - pl.col("ts").shift(1).over("client")
    )
    # Client messages (runs of client payload packets, as for the server) and their gaps.
    up_starts = pl.col("up") & (
        pl.col("prev_ts").is_null()
        | ~pl.col("prev_dir_up").fill_null(False)
        | (pl.col("ts") - pl.col("prev_ts") > MERGE_S)
    )
    up_gaps = (
        pk.filter(up_starts)
        .with_columns(gap=pl.col("ts") - pl.col("ts").shift(1).over("client"))
        .group_by("client")
        .agg(client_cv=pl.col("gap").std() / pl.col("gap").mean())
    )
    # A client payload answered by a server message within REPLY_S.
    ups = pk.filter(pl.col("up")).select("client", "ts").sort("ts")
    answered = (
        ups.join_asof(
            msgs.select("client", pl.col("ts").alias("reply_ts")).sort("reply_ts"),
            left_on="ts",
            right_on="reply_ts",
            by="client",
            strategy="forward",
            check_sortedness=False,  # both sides are sorted by time, as join_asof needs
        )
        .with_columns(ok=(pl.col("reply_ts") - pl.col("ts")) <= REPLY_S)
        .group_by("client")
        .agg(up_msgs=pl.len(), answered=pl.col("ok").fill_null(False).sum())
    )
    span = pk.group_by("client").agg(span_s=pl.col("ts").max() - pl.col("ts").min())
    per_msg = msgs.group_by("client").agg(
        server_msgs=pl.len(), pushes=pl.col("push").sum().cast(pl.Int64)
    )
    gaps = pushes.group_by("client").agg(
        push_cv=pl.col("gap").std() / pl.col("gap").mean(), push_gaps=pl.col("gap").count()
    )
    return (
        span.join(per_msg, on="client", how="left")
        .join(gaps, on="client", how="left")
        .join(answered, on="client", how="left")
        .join(up_gaps, on="client", how="left")
        .with_columns(
            push_share=pl.col("pushes") / pl.col("server_msgs"),
            pushes_per_min=pl.col("pushes") / (pl.col("span_s") / 60),
            reply_share=pl.col("answered") / pl.col("up_msgs"),
        )
    )


def load(data: Path, minutes: float) -> pl.DataFrame:
    """Per-connection statistics of every capture of ``behavior_heldout.py``, grouped by
    miner kind and job timing, or by benign family and the client's role."""
    batches = load_batches(data)
    roles = software_log(data, sorted(batches)).select(
        "batch", "family", pl.col("client_port").alias("client"), "kind"
    )
    rows = []
    for batch, entries in sorted(batches.items()):
        for e in entries:
            pk = packets(Path(e["pcap"]), int(e["server_port"]))
            st = connection_stats(pk, minutes)
            if e["label"] == 1:
                tls = "tls" if e["family"].startswith("xmrig-tls") else "plain"
                group = f"xmrig-{tls} ({e.get('job_schedule', 'timer')})"
            else:
                group = e["family"]
            st = (
                st.with_columns(
                    pl.col("client").cast(pl.Int64),
                    batch=pl.lit(batch),
                    family=pl.lit(e["family"]),
                    label=pl.lit(int(e["label"])),
                    server_port=pl.lit(int(e["server_port"])),
                )
                .join(roles, on=["batch", "family", "client"], how="left")
                .with_columns(
                    group=pl.when(pl.col("kind").is_null())
                    .then(pl.lit(group))
                    .otherwise(pl.format("{} {}", pl.lit(group), "kind"))
                )
                .drop("kind")
            )
            rows.append(st)
            print(f"{e['pcap']}: {st.height} connections", file=sys.stderr, flush=True)
    return pl.concat(rows, how="diagonal_relaxed")


RULES: dict[str, pl.Expr] = {
    "push_cv < 0.3": pl.col("push_cv") < 0.3,
    "push_cv 0.6-1.6 and push_share > 0.5": pl.col("push_cv").is_between(0.6, 1.6)
    & (pl.col("push_share") > 0.5),
    "push_share > 0.3 and reply_share > 0.9": (pl.col("push_share") > 0.3)
    & (pl.col("reply_share") > 0.9),
    "pushes ≥ 0.1/min, reply_share ≥ 0.9, client_cv 0.6-1.6": (pl.col("pushes_per_min") >= 0.1)
    & (pl.col("reply_share") >= 0.9)
    & pl.col("client_cv").is_between(0.6, 1.6),
}


def report(conns: pl.DataFrame) -> dict[str, Any]:
    # Long-lived connections only: seen for 5 minutes or more, with some server messages.
    c = conns.filter((pl.col("span_s") >= 300) & (pl.col("server_msgs") >= 3))
    feats = ["pushes_per_min", "push_share", "push_cv", "reply_share", "client_cv"]
    quant = (
        c.group_by("group")
        .agg(
            n=pl.len(),
            **{f"{f}_{q}": pl.col(f).quantile(q / 100) for f in feats for q in (10, 50, 90)},
        )
        .sort("group")
    )
    print("| group | connections | " + " | ".join(f"{f} p10 / p50 / p90" for f in feats) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in feats) + " |")
    for r in quant.iter_rows(named=True):  # a report, a few rows
        cells = [
            " / ".join(
                "" if r[f"{f}_{q}"] is None else f"{r[f'{f}_{q}']:.2f}" for q in (10, 50, 90)
            )
            for f in feats
        ]
        print(f"| {r['group']} | {r['n']} | " + " | ".join(cells) + " |")
    rules = (
        c.group_by("group")
        .agg(n=pl.len(), **{name: rule.fill_null(False).sum() for name, rule in RULES.items()})
        .sort("group")
    )
    print("\nconnections each rule selects:")
    print("| group | connections | " + " | ".join(RULES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in RULES) + " |")
    for r in rules.iter_rows(named=True):  # a report, a few rows
        print(f"| {r['group']} | {r['n']} | " + " | ".join(str(r[k]) for k in RULES) + " |")
    return {"quantiles": quant.to_dicts(), "rules": rules.to_dicts()}


def with_model(conns: pl.DataFrame, results: Path) -> dict[str, Any]:
    """Cross the rule with the behaviour model's packet-path detections of the same captures
    (``behavior_heldout.py evaluate`` writes them to ``results-REV.parquet``)."""
    rule_name = list(RULES)[-1]
    det = (
        pl.read_parquet(results)
        .filter(pl.col("path") == "pcap")
        .select(
            pl.col("dst_port").cast(pl.Int64).alias("server_port"),
            pl.col("src_port").cast(pl.Int64).alias("client"),
            pl.col("detected_10min").fill_null(False).alias("model_10min"),
            pl.col("detected").fill_null(False).alias("model"),
            pl.col("long_lived").fill_null(False),
        )
    )
    c = conns.with_columns(pl.col("server_port").cast(pl.Int64))
    c = c.join(det, on=["server_port", "client"], how="inner").filter(pl.col("long_lived"))
    rule = RULES[rule_name].fill_null(False)
    # Mining counts detections within 10 minutes, benign any detection (as behavior_heldout).
    hit = pl.when(pl.col("label") == 1).then(pl.col("model_10min")).otherwise(pl.col("model"))
    table = (
        c.group_by("group")
        .agg(
            n=pl.len(),
            model=hit.sum(),
            rule=rule.sum(),
            both=(hit & rule).sum(),
        )
        .sort("group")
    )
    print(f"\nthe model (packet path) and the rule '{rule_name}', long-lived connections:")
    print("| group | connections | model | rule | model and rule |")
    print("| --- | --- | --- | --- | --- |")
    for r in table.iter_rows(named=True):  # a report, a few rows
        print(f"| {r['group']} | {r['n']} | {r['model']} | {r['rule']} | {r['both']} |")
    return {"rule": rule_name, "table": table.to_dicts()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--model-results",
        type=Path,
        help="results-REV.parquet of behavior_heldout.py evaluate: cross the rule with the model",
    )
    args = ap.parse_args()
    conns = load(args.data, args.minutes)
    out = report(conns)
    if args.model_results:
        out["with_model"] = with_model(conns, args.model_results)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

"""``flows detect`` throughput on Parquet beside a plain pandas implementation of the same work.

Builds a FLOWS Parquet file by repeating real flow records (the behaviour training captures
turned into flows by the packet path and by softflowd, or the shared captures when those are
not there) with every repetition moved to other client addresses, so each repetition is new
connections. Then, each in its own process pinned to one core (``POLARS_MAX_THREADS=1``,
``taskset -c 0`` where available), times:

- minewatch: what ``minewatch flows detect FILE`` does:
  :func:`minewatch.net.behavior.read_flow_inputs`
  (checks the file's footer and columns, then a lazy Polars scan) and
  :func:`minewatch.net.behavior.detect` (the scan, orientation, connection ids and the gate in
  one Polars query; the sort, running totals, features, the scorecard, per-connection verdicts
  and detection records with their reasons in NumPy/Polars over the rows that remain);
- baseline: ``benchmarks/flows_detect_pandas.py`` (``pd.read_parquet``, ``sort_values``,
  ``groupby().cumsum()``, the same features and the same scorecard applied with NumPy).

Prints, for both, wall-clock and CPU seconds, records per second (wall), the ratio, whether both
found the same connections, and the machine's load average before and after (the machine is
shared: CPU seconds are the steadier figure when it is busy).

    python benchmarks/flows_detect.py                # 5 million records
    python benchmarks/flows_detect.py --records 1e6  # quick
    python benchmarks/flows_detect.py --input shared # the shared captures even when training
                                                     # flows are there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".cache" / "behavior-data"
SHARED = ROOT.parent / "shared" / "data" / "pcap"


def base_records(source: str = "auto") -> object:
    """The real flow records repeated: ``training`` (the behaviour training captures' flows,
    mostly long-lived connections), ``shared`` (the shared captures by the packet path,
    mostly short ones) or ``auto`` (training when there, else shared)."""
    import polars as pl

    from minewatch.net.flowagg import aggregate_file
    from minewatch.schema import FLOWS

    frames = []
    if source in ("auto", "training"):
        for cache in sorted(DATA.glob("*/flows-*.parquet")):
            frames.append(pl.read_parquet(cache).select(FLOWS.names))
        if not frames and source == "training":
            sys.exit(f"no training flows under {DATA} (python benchmarks/train_behavior.py)")
    if not frames:
        for pcap in sorted(SHARED.glob("*/*.pcap*")):
            try:
                t = aggregate_file(pcap, packet_stats=False).flows
            except Exception:  # a damaged shared capture: skip it, others suffice
                continue
            frames.append(pl.from_arrow(t))  # type: ignore[arg-type]
    return pl.concat(frames, how="vertical_relaxed")


def build(path: Path, records: int, source: str = "auto") -> int:
    import polars as pl

    base = base_records(source)
    assert isinstance(base, pl.DataFrame)
    reps = max(1, records // base.height)
    parts = []
    for i in range(reps):
        # A new 10.x.y.z client address per repetition keeps connections apart.
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        parts.append(
            base.with_columns(
                src_ip=pl.when(pl.col("src_port") > pl.col("dst_port"))
                .then(pl.lit(ip))
                .otherwise(pl.col("src_ip")),
                dst_ip=pl.when(pl.col("src_port") > pl.col("dst_port"))
                .then(pl.col("dst_ip"))
                .otherwise(pl.lit(ip)),
            )
        )
    big = pl.concat(parts)
    big.write_parquet(path, row_group_size=1 << 20)
    return big.height


def run_one(which: str, path: Path) -> dict[str, float | int]:
    import pyarrow.parquet as pq

    from minewatch.net.behavior import default_model

    model = default_model()
    rows = pq.read_metadata(path).num_rows
    if which == "minewatch":
        import minewatch.sources.flowstore  # noqa: F401  imports are not timed, as the baseline's
        from minewatch.net.behavior import detect, read_flow_inputs

        t, c = time.perf_counter(), time.process_time()
        inputs = read_flow_inputs([path])
        found = detect(inputs.flows, dns=inputs.dns, model=model)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        keys = {(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]) for r in found}
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from flows_detect_pandas import detect_pandas

        t, c = time.perf_counter(), time.process_time()
        hits = detect_pandas(path, model)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        keys = {(k[0], k[1], k[2], k[3]) for k in hits}
    return {"seconds": elapsed, "cpu": cpu, "rows": rows, "found": len(keys), "h": hash_keys(keys)}


def hash_keys(keys: set[tuple[object, ...]]) -> int:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(map(repr, keys)):
        h.update(k.encode())
    return int(h.hexdigest()[:12], 16)


def child(which: str, path: Path) -> dict[str, float | int]:
    env = dict(os.environ, POLARS_MAX_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", which, "--path", str(path)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def load() -> str:
    avg = Path("/proc/loadavg")
    return avg.read_text().split(" ")[0] if avg.exists() else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=float, default=5e6)
    ap.add_argument("--child", choices=["minewatch", "pandas"])
    ap.add_argument("--path", type=Path)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side (best is kept)")
    ap.add_argument(
        "--input",
        choices=["auto", "training", "shared"],
        default="auto",
        help="records to repeat: the training flows (long-lived connections), the shared "
        "captures (short ones), or training when there (default)",
    )
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.path)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flows.parquet"
        n = build(path, int(args.records), args.input)
        size = path.stat().st_size / 1e6
        print(f"{n:,} flow records ({args.input} input), {size:.0f} MB Parquet, one core each")
        before = load()
        results: dict[str, dict[str, float | int]] = {}
        for _ in range(args.repeat):
            for name in ("minewatch", "pandas"):
                r = child(name, path)
                if name not in results or r["seconds"] < results[name]["seconds"]:
                    results[name] = r
        after = load()
    mw, pd_ = results["minewatch"], results["pandas"]
    print(f"{'':12}{'seconds':>10}{'CPU s':>8}{'records/s':>14}{'connections found':>20}")
    for name, r in (("minewatch", mw), ("pandas", pd_)):
        rate = r["rows"] / r["seconds"]
        print(f"{name:12}{r['seconds']:>10.2f}{r['cpu']:>8.2f}{rate:>14,.0f}{r['found']:>20,}")
    print(f"ratio (minewatch / pandas): {pd_['seconds'] / mw['seconds']:.1f}x wall-clock, "
          f"{pd_['cpu'] / mw['cpu']:.1f}x CPU")  # fmt: skip
    print(f"minewatch per CPU second: {mw['rows'] / mw['cpu']:,.0f} records/s")
    print(f"same connections found: {mw['h'] == pd_['h'] and mw['found'] == pd_['found']}")
    print(f"load average (1 min) before/after: {before} / {after} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

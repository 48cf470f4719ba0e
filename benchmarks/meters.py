"""Meter screening at scale: the local engine beside a plain pandas implementation.

Generates benchmark readings with :mod:`minewatch.lab.meters` into a Parquet file (kept in
``--data-dir`` and reused), then runs, each in its own process on the same file:

- ``minewatch``: ``minewatch.engines.local.features`` (all ~30 features of
  ``minewatch.power.features``; each worker reads its own row-group parts of the file);
- ``pandas``: ``benchmarks/baselines/meters_pandas.py`` (12 of those features, same
  definitions, ``groupby`` + per-account ``apply``) on the first ``--pandas-accounts``
  accounts, read with ``pandas.read_parquet``.

It prints readings/s (wall clock), readings per CPU second (user + system time of the process
and its workers, which a busy shared machine distorts less) and peak resident memory for both
(``ru_maxrss`` of the process, and of the largest of the local engine's worker processes),
their ratios, and whether the shared
feature columns agree on a sample. Scoring is a pass over the feature table (one row per
account) and is not part of the timing.

    python benchmarks/meters.py                      # 20k accounts x 60 days hourly
    python benchmarks/meters.py --full-daily         # 10 M accounts x 30 daily readings
    python benchmarks/meters.py --full-hourly        # 1 M accounts x 90 days hourly
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "baselines"))


def _data(args: argparse.Namespace) -> Path:
    from minewatch.lab import meters

    spec = meters.MeterSpec(
        n_accounts=args.accounts,
        days=args.days,
        resolution=args.resolution,
        seed=args.seed,
        prevalence=0.03,
    )
    name = f"meters-{args.accounts}x{args.days}-{args.resolution}-s{args.seed}"
    out = Path(args.data_dir) / name
    done = out / "DONE"
    if not done.exists():
        t0 = time.perf_counter()
        print(f"generating {name} ...", file=sys.stderr, flush=True)
        meters.write_spec(spec, out, "parquet")
        done.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    print(f"data: {out} (generated in {json.loads(done.read_text())['seconds']:.0f} s)")
    return out / "readings.parquet"


def _worker(impl: str, path: str, limit: int, chunk: int, workers: int) -> None:
    """Runs in a child process; prints one JSON line."""
    import pyarrow.dataset as ds

    t0 = time.perf_counter()
    if impl == "minewatch":
        from minewatch.engines import local

        out = local.features(path, accounts_per_chunk=chunk, workers=workers)
        rows = ds.dataset(path).count_rows()
        n_accounts = out.num_rows
    else:
        import meters_pandas
        import pandas as pd

        dataset = ds.dataset(path)
        if limit:
            first = dataset.scanner(columns=["account_id"]).head(1).column(0)[0].as_py()
            prefix = first.rstrip("0123456789")
            last = f"{prefix}{int(first[len(prefix) :]) + limit - 1:0{len(first) - len(prefix)}d}"
            frame = pd.read_parquet(path, filters=[("account_id", "<=", last)])
        else:
            frame = pd.read_parquet(path)
        rows = len(frame)
        feats = meters_pandas.account_features(frame)
        n_accounts = len(feats)
    seconds = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the local engine's worker processes
    peak_mb = me.ru_maxrss / 1024
    worker_mb = kids.ru_maxrss / 1024  # the largest worker's peak
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    print(
        json.dumps(
            {
                "impl": impl,
                "rows": rows,
                "accounts": n_accounts,
                "seconds": seconds,
                "peak_mb": peak_mb,
                "worker_mb": worker_mb,
                "cpu_s": cpu,
            }
        )
    )


def _run(impl: str, path: Path, args: argparse.Namespace, limit: int) -> dict:
    print(f"running {impl} ...", file=sys.stderr, flush=True)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--path",
        str(path),
        "--limit",
        str(limit),
        "--chunk",
        str(args.chunk),
        "--workers",
        str(args.workers),
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _agreement(path: Path, n: int) -> tuple[int, int]:
    """Shared columns that agree (rtol 1e-5) on the first ``n`` accounts, of all compared."""
    import meters_pandas
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from minewatch.power.features import account_features

    table = ds.dataset(str(path)).head(n * 24 * 120)
    ids = table.column("account_id").unique()[: max(1, n // 2)]
    table = table.filter(pc.is_in(table.column("account_id"), value_set=ids))
    a = account_features(table).to_pandas().set_index("account_id")
    b = meters_pandas.account_features(table.to_pandas()).set_index("account_id")
    ok = 0
    for col in b.columns:
        x = a[col].astype(float)
        y = b[col].reindex(a.index).astype(float)
        same = np.isclose(x, y, rtol=1e-5, atol=1e-5) | (x.isna() & y.isna())
        ok += bool(same.all())
    return ok, len(b.columns)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--accounts", type=int, default=20_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--resolution", default="hourly", choices=["15min", "hourly", "daily"])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--chunk", type=int, default=0, help="accounts per chunk (0: ~4 M readings)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--pandas-accounts", type=int, default=0, help="accounts the pandas baseline gets (0: all)"
    )
    p.add_argument("--data-dir", default=str(HERE.parent / ".cache" / "bench"))
    p.add_argument("--full-daily", action="store_true", help="10 M accounts x 30 daily readings")
    p.add_argument("--full-hourly", action="store_true", help="1 M accounts x 90 days hourly")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker, args.path, args.limit, args.chunk, args.workers)
        return
    if args.full_daily:
        args.accounts, args.days, args.resolution = 10_000_000, 30, "daily"
        args.pandas_accounts = args.pandas_accounts or 200_000
    if args.full_hourly:
        args.accounts, args.days, args.resolution = 1_000_000, 90, "hourly"
        args.pandas_accounts = args.pandas_accounts or 20_000
    per_day = {"15min": 96, "hourly": 24, "daily": 1}[args.resolution]
    if not args.chunk:
        args.chunk = max(1000, 4_000_000 // (args.days * per_day))
    path = _data(args)

    results = [_run("minewatch", path, args, 0), _run("pandas", path, args, args.pandas_accounts)]
    ok, total = _agreement(path, 400)
    print(
        f"\n{args.accounts:,} accounts x {args.days} days {args.resolution}; "
        f"chunk {args.chunk:,} accounts, {args.workers} worker process(es); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'implementation':<16}{'accounts':>12}{'readings':>15}{'seconds':>10}"
        f"{'readings/s':>14}{'CPU s':>10}{'readings/CPU s':>16}{'peak MB':>10}{'worker MB':>10}"
    )
    for r in results:
        rate = r["rows"] / r["seconds"]
        r["rate"] = rate
        print(
            f"{r['impl']:<16}{r['accounts']:>12,}{r['rows']:>15,}{r['seconds']:>10.1f}"
            f"{rate:>14,.0f}{r['cpu_s']:>10.1f}{r['rows'] / r['cpu_s']:>16,.0f}"
            f"{r['peak_mb']:>10,.0f}{r['worker_mb']:>10,.0f}"
        )
        r["cpu_rate"] = r["rows"] / r["cpu_s"]
    print(
        f"speed-up (readings/s, minewatch / pandas): {results[0]['rate'] / results[1]['rate']:.1f}x"
    )
    print(
        "speed-up (readings per CPU second, minewatch / pandas): "
        f"{results[0]['cpu_rate'] / results[1]['cpu_rate']:.1f}x"
    )
    print(f"shared feature columns that agree on a sample: {ok}/{total}")


if __name__ == "__main__":
    main()

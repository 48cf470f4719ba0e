"""The one Typer app. Each subcommand parses arguments, calls the library, renders results.

stdout carries JSON Lines (the contracts in DESIGN.md); tables and progress go to stderr,
or to stdout with ``--format table``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from minewatch import __version__

app = typer.Typer(
    name="minewatch",
    help="Find hidden cryptocurrency mining from traffic and meter data.",
    no_args_is_help=True,
    add_completion=False,
)
# Messages are never wrapped, so a path or a reason stays on one line for grep and logs.
err_console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"minewatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """minewatch: joins what the operator sees with what the utility sees."""


def _wide_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width, or 200 columns when piped or logged."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


def _render_detections(rows: list[dict[str, Any]], title: str, to_stdout: bool) -> None:
    from rich.table import Table

    from minewatch.energy import format_rate

    table = Table(title=title, show_lines=False)
    for col in ("client", "pool", "dialect", "conf", "coin/algo", "wallet", "agent"):
        table.add_column(col)
    table.add_column("shares", justify="right")
    table.add_column("hash rate", justify="right")
    table.add_column("power W", justify="right")
    for r in rows:
        sh = r.get("shares") or {}
        pw = r.get("power_w_range")
        table.add_row(
            f"{r['src_ip']}:{r['src_port']}",
            f"{r['pool_host']}:{r['dst_port']}",
            str(r.get("dialect") or r["detector"]),
            f"{r['confidence']:.2f}",
            "/".join(x for x in (r.get("coin"), r.get("algo")) if x) or "-",
            str(r.get("wallet") or "-")[:24],
            str(r.get("agent") or "-")[:20],
            f"{sh.get('accepted', 0)}/{sh.get('submitted', 0)}",
            format_rate(r["hashrate_hs"], r.get("algo")) if r.get("hashrate_hs") else "-",
            f"{pw[0]:.0f}-{pw[1]:.0f}" if pw else "-",
        )
    _wide_console(stderr=not to_stdout).print(table)


def _demo_why(reasons: list[str]) -> str:
    """The first reason, and the first one about power when it is not the same."""
    power = next((x for x in reasons if "kW" in x), None)
    picked = reasons[:1] + ([power] if power and power not in reasons[:1] else [])
    return "; ".join(picked)


@app.command("demo")
def _demo(
    out: Path = typer.Option(Path("minewatch-demo"), "--out", help="Directory for the outputs."),
) -> None:
    """Run the main job end to end on generated data and print what it found."""
    from minewatch.lab.demo import run_network_stage

    net = run_network_stage(out)
    console = _wide_console()
    console.rule("[bold]1. Network: packet-level mining detection[/bold]")
    console.print(f"capture: {net.files['capture']} (generated access-network traffic)")
    _render_detections(net.detections, "mining sessions (minewatch scan)", to_stdout=True)
    if net.weak_leads:
        console.print(
            f"{len(net.weak_leads)} weak lead(s) below the reporting threshold, e.g. "
            f"{net.weak_leads[0]['pool_host']}: {net.weak_leads[0]['reasons'][0]}"
        )
    console.print(f"written: {net.files['detections']}")

    from rich.table import Table

    from minewatch.lab.demo import run_power_and_fusion_stage

    fu = run_power_and_fusion_stage(out)
    console.rule("[bold]2. Power: meter screening of a synthetic city[/bold]")
    flagged = sorted((r for r in fu.screened if r["flagged"]), key=lambda r: -r["score"])
    t2 = Table(title=f"{len(flagged)} of {len(fu.screened)} meters flagged (top 10)")
    for col in ("account", "score", "added kW", "since", "reasons"):
        t2.add_column(col)
    for r in flagged[:10]:
        t2.add_row(
            r["account_id"],
            f"{r['score']:.2f}",
            f"{r['added_load_kw']:.2f}",
            r["since"] or "-",
            "; ".join(r["reasons"][:2]),
        )
    console.print(t2)

    console.rule("[bold]3. Fusion: monitoring list of suspect premises[/bold]")
    t3 = Table(title="monitoring list (top 15) 监测清单")
    for col in ("#", "premises", "region", "class", "score", "net/power", "action", "why"):
        t3.add_column(col)
    for r in fu.suspects[:15]:
        t3.add_row(
            str(r["rank"]),
            str(r["premises_id"]),
            str(r.get("region") or "-"),
            str(r.get("subject_class") or "-"),
            f"{r['score']:.2f}",
            f"{r.get('score_network') or 0:.2f}/{r.get('score_power') or 0:.2f}",
            str(r.get("action_en") or r.get("action") or "-"),
            _demo_why(r.get("reasons") or []),
        )
    console.print(t3)
    hit, k = fu.truth_top
    console.print(f"ground truth of the synthetic city: {hit} of the top {k} really mine")
    for name in ("monitoring_list.xlsx", "monitoring_list.csv", "stats", "suspects"):
        if name in fu.files:
            console.print(f"written: {fu.files[name]}")


@app.command("scan")
def _scan(
    inputs: list[str] = typer.Argument(..., help="pcap/pcapng files, or - for a pcap stream."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (default) or table."),
    intel: list[Path] = typer.Option(
        [], "--intel", help="Pool list (domains, hosts, adblock or IPs); repeatable."
    ),
    no_default_intel: bool = typer.Option(
        False, "--no-default-intel", help="Do not use the curated pool list shipped with minewatch."
    ),
    min_confidence: float = typer.Option(
        None, "--min-confidence", help="Report sessions at or above this confidence (0-1)."
    ),
    idle: float = typer.Option(None, "--idle", help="Seconds before an idle session is closed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary on stderr."),
) -> None:
    """Find mining sessions in packet captures; one JSON line per session on stdout."""
    import json
    import sys

    from minewatch.config import load_settings
    from minewatch.errors import InputError, Quarantine
    from minewatch.net.intel import PoolIntel
    from minewatch.net.scan import scan_sources
    from minewatch.sources.intel import load_list

    if fmt not in ("jsonl", "table"):
        err_console.print("--format must be jsonl or table")
        raise typer.Exit(2)
    settings = load_settings()
    q = Quarantine()
    try:
        lists = [load_list(p, q) for p in intel]
    except InputError as exc:
        err_console.print(f"unusable pool list: {exc}")
        raise typer.Exit(2) from exc
    for lst in lists:
        if lst.rejected and not quiet:
            err_console.print(
                f"{lst.sources[0]}: {lst.accepted} entries read, {lst.rejected} lines "
                "not understood (skipped)"
            )
    pool_intel = PoolIntel(lists, with_default=not no_default_intel)
    rows: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        if fmt == "jsonl":
            sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            rows.append(rec)

    reports = scan_sources(
        inputs,
        intel=pool_intel,
        min_confidence=settings.min_confidence if min_confidence is None else min_confidence,
        idle_s=settings.session_idle_s if idle is None else idle,
        on_detection=emit,
    )
    if fmt == "table":
        _render_detections(rows, "mining sessions", to_stdout=True)
    failed = False
    for rep in reports:
        if rep.error:
            failed = True
            err_console.print(f"[red]unusable input[/red]: {rep.error}", highlight=False)
            continue
        if quiet:
            continue
        c, rd = rep.counters, rep.read
        line = (
            f"{rep.path}: {rd.format}, {c.packets} packets, {c.sessions_examined} sessions "
            f"examined, {c.detections} mining session(s)"
        )
        damage = []
        if rd.corrupt_records:
            damage.append(
                f"{rd.corrupt_records} corrupt record(s), {rd.skipped_bytes} bytes skipped"
            )
        if rd.truncated:
            damage.append("file cut short")
        if c.bad_json:
            damage.append(f"{c.bad_json} invalid JSON message(s) skipped")
        if c.gaps:
            damage.append(f"{c.gaps} gap(s) in TCP streams")
        if c.oversized:
            damage.append(f"{c.oversized} oversized line(s) dropped")
        if c.bad_dns:
            damage.append(f"{c.bad_dns} malformed DNS packet(s)")
        err_console.print(
            line + ("; damaged: " + "; ".join(damage) if damage else ""), highlight=False
        )
        for note in rd.notes[:5]:
            err_console.print(f"  {note}", highlight=False)
    if failed:
        raise typer.Exit(2)


lab_app = typer.Typer(help="Simulators and rigs: benchmark data, test pools.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


@lab_app.command("meters")
def _lab_meters(
    accounts: int = typer.Option(1000, "--accounts", help="Number of accounts."),
    days: int = typer.Option(90, "--days", help="Days of readings."),
    resolution: str = typer.Option("hourly", "--resolution", help="15min, hourly or daily."),
    out: str = typer.Option(..., "--out", help="Directory to write to."),
    prevalence: float = typer.Option(0.03, "--prevalence", help="Share of mining accounts."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv (long format)."),
    sgcc: bool = typer.Option(False, "--sgcc", help="Also write daily kWh in SGCC wide CSV."),
) -> None:
    """Generate realistic meter data with injected mining and a ground-truth table."""
    import json

    from minewatch.lab import meters

    if resolution not in meters.INTERVAL_S or fmt not in ("parquet", "csv"):
        err_console.print("resolution must be 15min|hourly|daily and format parquet|csv")
        raise typer.Exit(2)
    try:
        spec = meters.MeterSpec(
            n_accounts=accounts,
            days=days,
            resolution=resolution,  # type: ignore[arg-type]
            prevalence=prevalence,
            seed=seed,
        )
    except ValueError as exc:
        err_console.print(str(exc))
        raise typer.Exit(2) from exc
    paths = meters.write_spec(spec, out, fmt)  # type: ignore[arg-type]
    if sgcc:
        data = meters.MeterData.concat(list(meters.iter_blocks(spec)))
        paths["sgcc"] = str(meters.write_sgcc_wide(data, f"{out}/sgcc_wide.csv"))
    typer.echo(
        json.dumps({"n_accounts": accounts, "days": days, "resolution": resolution, **paths})
    )


flows_app = typer.Typer(
    help="Flow telemetry: ingest NetFlow/IPFIX, nfdump, Zeek, EVE, CIC.", no_args_is_help=True
)
app.add_typer(flows_app, name="flows")


@flows_app.command("ingest")
def _flows_ingest(
    sources: list[str] = typer.Argument(..., help="Files or directories to read."),
    into: str = typer.Option(..., "--into", help="Flow store directory (partitioned Parquet)."),
    fmt: str = typer.Option("auto", "--format", help="auto|netflow|nfcapd|zeek|eve|cic"),
    quarantine: str = typer.Option(None, "--quarantine", help="JSON Lines file for rejects."),
) -> None:
    """Read flow records into the store; one JSON summary line on stdout."""
    import json
    from pathlib import Path

    from minewatch.errors import InputError, Quarantine
    from minewatch.sources import flowstore

    if fmt != "auto" and fmt not in flowstore.FORMATS:
        err_console.print(f"--format must be auto or one of {', '.join(flowstore.FORMATS)}")
        raise typer.Exit(2)
    q = Quarantine(Path(quarantine) if quarantine else None)
    try:
        results = flowstore.ingest(sources, into, fmt=fmt, quarantine=q)
    except InputError as exc:
        err_console.print(f"unusable input: {exc}")
        raise typer.Exit(2) from exc
    finally:
        q.close()
    for r in results:
        files = len(r.details.get("files", []))
        err_console.print(
            f"{r.format}: {files} file(s), read {r.read}, accepted {r.accepted}, "
            f"rejected {r.rejected}; {r.flows.num_rows} flows, {r.dns.num_rows} dns, "
            f"{r.evidence.num_rows} evidence"
        )
    summary = {
        "into": into,
        "formats": [r.summary() for r in results],
        "read": sum(r.read for r in results),
        "accepted": sum(r.accepted for r in results),
        "rejected": sum(r.rejected for r in results),
        "quarantined": q.total,
    }
    typer.echo(json.dumps(summary))


@flows_app.command("detect")
def _flows_detect(
    sources: list[str] = typer.Argument(
        ..., help="Flow stores (from `flows ingest`), Parquet files, or files ingest reads."
    ),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (default) or table."),
    intel: list[Path] = typer.Option([], "--intel", help="Pool list; repeatable."),
    no_default_intel: bool = typer.Option(
        False, "--no-default-intel", help="Do not use the curated pool list shipped with minewatch."
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        help="Alert threshold (default: the model's own, see its data card); lower, e.g. 0.4, "
        "for candidates to confirm with `minewatch probe -`.",
    ),
) -> None:
    """Behaviour model over flow records; one JSON line per mining connection on stdout."""
    import json

    import polars as pl

    from minewatch.errors import InputError, Quarantine
    from minewatch.net.behavior import detect, read_flow_inputs
    from minewatch.net.intel import PoolIntel
    from minewatch.sources.intel import load_list

    if fmt not in ("jsonl", "table"):
        err_console.print("--format must be jsonl or table")
        raise typer.Exit(2)
    q = Quarantine()
    try:
        pool_intel = PoolIntel([load_list(p, q) for p in intel], with_default=not no_default_intel)
        inputs = read_flow_inputs(sources, q)
    except InputError as exc:
        err_console.print(f"unusable input: {exc}")
        raise typer.Exit(2) from exc
    try:
        found = detect(inputs.flows, dns=inputs.dns, intel=pool_intel, threshold=threshold)
    except (pl.exceptions.PolarsError, OSError) as exc:  # a Parquet input damaged past its footer
        parquet = [s["source"] for s in inputs.sources if s["format"] == "parquet"]
        if not parquet:
            raise
        err_console.print(f"unusable input: reading {', '.join(parquet)}: {exc}")
        raise typer.Exit(2) from exc
    if fmt == "table":
        _render_detections(found, "mining connections (behaviour)", to_stdout=True)
    else:
        for rec in found:
            typer.echo(json.dumps(rec, ensure_ascii=False))
    err_console.print(
        f"{inputs.rows} flow records from {len(inputs.sources)} input(s), "
        f"{q.total} rejected; {len(found)} mining connection(s)"
    )


@app.command("collect")
def _collect(
    listen: str = typer.Option("127.0.0.1:2055", "--listen", help="HOST:PORT for UDP exports."),
    out: str = typer.Option(None, "--out", help="Flow store directory for rolling files."),
    metrics: str = typer.Option(
        "127.0.0.1:9465", "--metrics", help="HOST:PORT for Prometheus /metrics ('' to disable)."
    ),
    quarantine: str = typer.Option(None, "--quarantine", help="JSON Lines file for rejects."),
    roll_s: float = typer.Option(60.0, "--roll-seconds", help="Seconds between rolling files."),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds."),
) -> None:
    """Collect NetFlow v5/v9/IPFIX over UDP; detections as JSON Lines on stdout."""
    import json
    from pathlib import Path

    from minewatch.errors import Quarantine
    from minewatch.net.collector import FlowCollector, parse_hostport, serve

    try:
        host, port = parse_hostport(listen)
        mhost_port = parse_hostport(metrics, 9465) if metrics else None
    except ValueError as exc:
        err_console.print(f"bad address: {exc}")
        raise typer.Exit(2) from exc
    qpath = Path(quarantine) if quarantine else (Path(out) / "quarantine.jsonl" if out else None)
    from minewatch.net.behavior import SlidingDetector
    from minewatch.net.intel import PoolIntel

    coll = FlowCollector(
        host,
        port,
        out=out,
        quarantine=Quarantine(qpath),
        roll_s=roll_s,
        detector=SlidingDetector(intel=PoolIntel()),
    )
    try:
        counters = serve(
            coll,
            metrics=mhost_port,
            duration_s=duration,
            on_ready=lambda info: err_console.print(f"collecting: {json.dumps(info)}"),
        )
    except OSError as exc:
        err_console.print(f"cannot listen on {listen}: {exc}")
        raise typer.Exit(2) from exc
    err_console.print(f"collector stopped: {json.dumps(counters)}")


@app.command("probe")
def _probe(
    targets: list[str] = typer.Argument(
        ..., help="HOST:PORT of servers to probe, or - for detections (JSON Lines) on stdin."
    ),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds per connection attempt."),
    login: str = typer.Option(
        None, "--login", help="Login sent to CryptoNote pools (default: minewatch-probe)."
    ),
    tls: str = typer.Option("auto", "--tls", help="auto (plain, then TLS), on or off."),
    workers: int = typer.Option(32, "--workers", help="Servers probed at once."),
    only_pools: bool = typer.Option(
        False, "--only-pools", help="Print only servers (or detections) that answered as pools."
    ),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (default) or table."),
) -> None:
    """Ask servers whether they are mining pools (a Stratum login); JSON Lines on stdout.

    With -, each detection read from stdin (from `scan`, `flows detect` or `collect`) is
    printed again, as soon as its server's probe is done and in input order, with a `probe`
    object for its server (dst_ip, dst_port) and, when the server answered as a pool, the
    probe's reason added to its reasons. Connects to the servers named: use it only where that
    is allowed."""
    import json
    import queue
    import sys
    import threading
    from concurrent.futures import Future

    from minewatch.net.collector import parse_hostport
    from minewatch.net.probe import DEFAULT_LOGIN, Prober, ProbeResult, annotate

    if fmt not in ("jsonl", "table") or tls not in ("auto", "on", "off") or timeout <= 0:
        err_console.print("--format must be jsonl or table, --tls auto, on or off, --timeout > 0")
        raise typer.Exit(2)
    try:
        named = [parse_hostport(t, None) for t in targets if t != "-"]
    except ValueError as exc:
        err_console.print(f"unusable input: {exc}")
        raise typer.Exit(2) from exc

    def emit(row: dict[str, Any]) -> None:
        if fmt != "table":  # the table (servers only) comes at the end
            typer.echo(json.dumps(row, ensure_ascii=False))

    prober = Prober(
        timeout=timeout,
        login=login or DEFAULT_LOGIN,
        tls=None if tls == "auto" else tls == "on",
        workers=workers,
    )
    for key in named:
        prober.submit(*key)
    pending: queue.Queue[tuple[dict[str, Any], Future[ProbeResult]] | None] = queue.Queue()

    def printer() -> None:
        while (item := pending.get()) is not None:
            rec, fut = item
            result = fut.result()
            if result.verdict == "pool" or not only_pools:
                emit(annotate(rec, result))

    out = threading.Thread(target=printer, name="probe-printer", daemon=True)
    out.start()
    bad = 0
    for n, line in enumerate(sys.stdin if "-" in targets else [], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (str(rec["dst_ip"]), int(rec["dst_port"]))
        except (ValueError, KeyError, TypeError) as exc:
            bad += 1
            err_console.print(f"stdin line {n}: not a detection with dst_ip/dst_port ({exc})")
            continue
        pending.put((rec, prober.submit(*key)))
    pending.put(None)
    out.join()
    for key in dict.fromkeys(named):
        result = prober.submit(*key).result()
        if result.verdict == "pool" or not only_pools:
            emit(result.to_dict())
    results = prober.results()
    prober.close()
    if fmt == "table":
        from rich.table import Table

        table = Table(title="probed servers")
        for col in ("server", "verdict", "dialect", "tls", "why"):
            table.add_column(col)
        for r in results:
            if only_pools and r.verdict != "pool":
                continue
            table.add_row(
                f"{r.host}:{r.port}", r.verdict, r.dialect or "", str(r.tls), "; ".join(r.reasons)
            )
        _wide_console().print(table)
    pools = sum(r.verdict == "pool" for r in results)
    err_console.print(
        f"{len(results)} server(s) probed: {pools} pool(s)"
        + (f"; {bad} stdin line(s) skipped" if bad else "")
    )


@lab_app.command("pool")
def _lab_pool(
    port: int = typer.Option(3333, "--port", help="TCP port on the bind address (0: any free)."),
    difficulty: float = typer.Option(
        10000, "--difficulty", help="Share difficulty (where sessions start, with --share-target)."
    ),
    share_target: float | None = typer.Option(
        None,
        "--share-target",
        help="Variable difficulty (CryptoNote): retarget to about one share per this many s.",
    ),
    job_interval: float = typer.Option(
        30.0, "--job-interval", help="Seconds between jobs (the mean, with --job-schedule blocks)."
    ),
    job_schedule: str = typer.Option(
        "timer",
        "--job-schedule",
        help="timer: a job every --job-interval s; blocks: exponential gaps, as real pools.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Reproducible block gaps."),
    tls: bool = typer.Option(False, "--tls", help="TLS with a self-signed certificate."),
    dialect: str = typer.Option("cryptonote", "--dialect", help="cryptonote or stratum1."),
    nicehash: bool = typer.Option(False, "--nicehash", help="Fixed nonce byte per connection."),
    check_wallet: bool = typer.Option(
        False, "--check-wallet", help="Refuse logins not shaped like a Monero address."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback address to bind."),
) -> None:
    """Run the loopback test mining pool until Ctrl-C; logs to stderr."""
    import logging

    from minewatch.lab.pool import PoolConfig, run_pool

    try:
        config = PoolConfig(
            host=host,
            port=port,
            dialect=dialect,  # type: ignore[arg-type]
            difficulty=difficulty,
            job_interval=job_interval,
            job_schedule=job_schedule,  # type: ignore[arg-type]
            seed=seed,
            tls=tls,
            nicehash=nicehash,
            share_target_s=share_target,
            check_wallet=check_wallet,
        )
    except ValueError as exc:
        err_console.print(str(exc))
        raise typer.Exit(2) from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        run_pool(config)
    except OSError as exc:
        err_console.print(f"cannot listen on {host}:{port}: {exc}")
        raise typer.Exit(2) from exc


meters_app = typer.Typer(help="Screen meter data for mining load.", no_args_is_help=True)
app.add_typer(meters_app, name="meters")


@meters_app.command("screen")
def _meters_screen(
    readings: Path = typer.Argument(..., help="Meter data: long CSV/Parquet or SGCC wide CSV."),
    accounts: Path | None = typer.Option(None, "--accounts", help="Accounts table (CSV/Parquet)."),
    all_accounts: bool = typer.Option(
        False, "--all", help="Print every account, not only flagged."
    ),
    engine: str = typer.Option("local", "--engine", help="local or spark (PySpark)."),
    quarantine: Path | None = typer.Option(
        None, "--quarantine", help="Write rejected records here (JSON Lines)."
    ),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (stdout) or table."),
    tz: str = typer.Option("UTC", "--tz", help="Zone of timestamps without an offset."),
    kind: str = typer.Option("auto", "--kind", help="auto, interval or register."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Verified outcomes (account_id,label) for the supervised model."
    ),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability to flag from."),
) -> None:
    """Score every account; one JSON line per flagged account (every account with --all)."""
    import json
    import os
    from collections.abc import Iterator

    from minewatch.errors import InputError, Quarantine
    from minewatch.sources.meters import (
        LoadReport,
        iter_readings,
        merge_reports,
        read_accounts,
        read_labels,
    )

    if fmt not in ("jsonl", "table") or engine not in ("local", "spark"):
        err_console.print("--format must be jsonl or table; --engine must be local or spark")
        raise typer.Exit(2)
    if kind not in ("auto", "interval", "register"):
        err_console.print("--kind must be auto, interval or register")
        raise typer.Exit(2)
    import pyarrow as pa

    from minewatch.engines import local as local_engine
    from minewatch.power.detect import score

    q = Quarantine(path=quarantine)
    reports: list[LoadReport] = []

    def parts() -> Iterator[pa.Table]:
        # a large Parquet file is read and checked in parts of whole accounts
        for part in iter_readings(readings, kind=kind, tz=tz, quarantine=q):  # type: ignore[arg-type]
            reports.append(part.report)
            yield part.readings

    try:
        acc = read_accounts(accounts, quarantine=q) if accounts else None
        lab = read_labels(labels, quarantine=q) if labels else None
        if engine == "spark":
            whole = pa.concat_tables(list(parts()))
        else:
            # features chunk by chunk of whole accounts (memory bounded by the part being
            # checked and the chunks in flight), then one scoring pass over all features
            big = readings.is_file() and readings.stat().st_size > 200_000_000
            feats = local_engine.features_of_parts(
                parts(), tz=tz, workers=min(2, os.cpu_count() or 1) if big else 1
            )
    except InputError as exc:
        err_console.print(f"unusable input: {exc}")
        raise typer.Exit(2) from exc
    finally:
        q.close()
    rep = merge_reports(reports)
    if rep.intervals == 0:
        err_console.print(
            f"unusable input: {readings}: no valid readings ({rep.rejected} of {rep.read} "
            f"rejected: {rep.rejected_by_reason}) (see --quarantine for the records)"
        )
        raise typer.Exit(2)
    if engine == "spark":
        from minewatch.engines import spark as spark_engine

        session = spark_engine.session()
        try:
            feats = spark_engine.features(whole, spark=session, tz=tz)
        finally:
            session.stop()
    scores = score(feats, acc, labels=lab, threshold=threshold)
    from minewatch.power.detect import screen_record

    rows = [screen_record(r) for r in scores.to_pylist() if all_accounts or r["flagged"]]
    if fmt == "table":
        from rich.table import Table

        table = Table(title=f"meter screen: {readings}")
        for col in ("account", "score", "added kW", "since", "reasons"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["account_id"],
                f"{r['score']:.3f}",
                f"{r['added_load_kw']:.2f}",
                r["since"] or "",
                "; ".join(r["reasons"]),
            )
        Console().print(table)
    else:
        for r in rows:
            typer.echo(json.dumps(r, ensure_ascii=False))
    n_flagged = sum(1 for r in scores.to_pylist() if r["flagged"])
    err_console.print(
        f"{readings}: {rep.read} records read = {rep.accepted} accepted + {rep.rejected} "
        f"rejected {rep.rejected_by_reason or ''}; {rep.accounts} accounts "
        f"(intervals {rep.accounts_by_interval_s}), {rep.gaps} missing intervals; "
        f"{n_flagged} flagged"
    )


@meters_app.command("plot")
def _meters_plot(
    account: str = typer.Argument(..., help="Account id to draw."),
    readings: Path = typer.Option(..., "--readings", help="Meter data file."),
    out: Path = typer.Option(..., "-o", "--out", help="PNG file to write."),
    tz: str = typer.Option("UTC", "--tz", help="Zone of timestamps without an offset."),
    kind: str = typer.Option("auto", "--kind", help="auto, interval or register."),
) -> None:
    """Draw one account's load with the detected change marked (PNG)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from minewatch.errors import InputError
    from minewatch.power.plot import plot_account
    from minewatch.sources.meters import iter_readings

    try:
        # a large Parquet file is read in parts; only this account's readings are kept
        parts = [
            p.readings.filter(pc.equal(p.readings.column("account_id"), account))
            for p in iter_readings(readings, kind=kind, tz=tz)  # type: ignore[arg-type]
        ]
        plot_account(pa.concat_tables(parts), account, out, tz=tz)
    except InputError as exc:
        err_console.print(f"unusable input: {exc}")
        raise typer.Exit(2) from exc
    err_console.print(f"wrote {out}")


@app.command("fuse")
def _fuse(
    evidence: list[Path] = typer.Option(
        ..., "--evidence", help="scan / flows detect / meters screen JSON Lines (repeatable)."
    ),
    leases: list[Path] = typer.Option(
        ..., "--leases", help="RADIUS detail, dhcpd.leases, Kea CSV, CGNAT log (repeatable)."
    ),
    subscribers: Path = typer.Option(..., "--subscribers", help="Subscribers CSV/Parquet."),
    accounts: Path = typer.Option(..., "--accounts", help="Meter accounts CSV/Parquet."),
    links: Path | None = typer.Option(None, "--links", help="Explicit subscriber_id,account_id."),
    finance: list[Path] = typer.Option([], "--finance", help="Finance leads CSV (repeatable)."),
    policy: Path | None = typer.Option(None, "--policy", help="Regional policy TOML/CSV."),
    lease_format: str | None = typer.Option(
        None, "--lease-format", help="radius, dhcpd, kea, cgnat or leases (default: sniffed)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write suspects, lists and stats here."),
    min_score: float = typer.Option(0.5, "--min-score", help="Monitoring list and stats cut-off."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (stdout) or table."),
) -> None:
    """Join evidence to premises and print ranked suspects as JSON Lines."""
    import json

    from minewatch.errors import InputError
    from minewatch.fusion.pipeline import run_fuse
    from minewatch.fusion.risk import suspect_records

    if fmt not in ("jsonl", "table"):
        err_console.print("--format must be jsonl or table")
        raise typer.Exit(2)
    try:
        run = run_fuse(
            evidence,
            leases,
            subscribers,
            accounts,
            links=links,
            finance=finance,
            policy=policy,
            lease_format=lease_format,
            out=out,
            min_score=min_score,
        )
    except InputError as exc:
        err_console.print(f"unusable input: {exc}")
        raise typer.Exit(2) from exc
    recs = suspect_records(run.result.suspects)
    if fmt == "table":
        from rich.table import Table

        table = Table(title="suspect premises")
        for col in ("rank", "premises", "region", "class", "score", "IPs", "action"):
            table.add_column(col)
        for r in recs:
            if r["score"] < min_score:
                continue
            table.add_row(
                str(r["rank"]),
                r["premises_id"],
                r.get("region") or "",
                r.get("subject_class") or "",
                f"{r['score']:.3f}",
                ", ".join(r.get("ips") or []),
                r.get("action_en") or "",
            )
        Console().print(table)
    else:
        for r in recs:
            typer.echo(json.dumps(r, ensure_ascii=False, default=str))
    s = run.summary
    err_console.print(
        f"evidence: {s['evidence']['read']} read = {s['evidence']['accepted']} accepted + "
        f"{s['evidence']['rejected']} rejected; attribution {s['attribution']}; "
        f"{s['unattributed_evidence']} evidence rows reached no premises; links {s['links']}; "
        f"{s['premises']} premises, {s['suspects_at_or_above_min_score']} at score >= {min_score}"
    )
    for ld in s["leases"]:
        err_console.print(
            f"{ld['path']} ({ld['format']}): {ld['read']} read = {ld['accepted']} accepted + "
            f"{ld['rejected']} rejected {ld['rejected_by_reason'] or ''}; {ld['leases']} leases; "
            f"repaired {ld['repaired'] or '{}'}"
        )
    if run.written:
        err_console.print(f"wrote {', '.join(sorted(run.written.values()))}")


report_app = typer.Typer(help="Monitoring lists and regional statistics.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("monitoring-list")
def _report_monitoring_list(
    suspects: Path = typer.Argument(..., help="suspects.jsonl from minewatch fuse."),
    out: Path = typer.Option(..., "-o", "--out", help="File to write: .xlsx or .csv."),
    min_score: float = typer.Option(0.5, "--min-score", help="Rows from this score."),
) -> None:
    """Write the monitoring list grouped by region, with Chinese and English headers."""
    import polars as pl

    from minewatch.report import monitoring

    try:
        df = monitoring.read_suspects(suspects)
    except (OSError, pl.exceptions.PolarsError) as exc:
        err_console.print(f"unusable input: {suspects}: {exc}")
        raise typer.Exit(2) from exc
    path, n = monitoring.write(df, out, min_score=min_score)
    err_console.print(f"wrote {path}: {n} premises")


@report_app.command("stats")
def _report_stats(
    suspects: Path = typer.Argument(..., help="suspects.jsonl from minewatch fuse."),
    min_score: float = typer.Option(0.5, "--min-score", help="Count premises from this score."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (stdout) or table."),
) -> None:
    """Mining IPs, hash rate (per algorithm) and energy per day, by region and class."""
    import json

    import polars as pl

    from minewatch.energy import format_rate
    from minewatch.report import monitoring
    from minewatch.report.stats import regional_stats

    try:
        df = monitoring.read_suspects(suspects)
    except (OSError, pl.exceptions.PolarsError) as exc:
        err_console.print(f"unusable input: {suspects}: {exc}")
        raise typer.Exit(2) from exc
    stats = regional_stats(df, min_score=min_score)
    if fmt == "table":
        from rich.table import Table

        table = Table(title="regional statistics 区域统计")
        for col in (
            "region",
            "class",
            "algorithm",
            "premises",
            "mining IPs",
            "hash rate",
            "kWh/day",
        ):
            table.add_column(col)
        for r in stats.iter_rows(named=True):
            hr = r["hashrate_hs"]
            table.add_row(
                r["region"],
                r["subject_class"],
                r["algo_family"],
                str(r["premises"]),
                str(r["mining_ips"]),
                format_rate(hr, r["algo_family"]) if hr else "",
                f"{r['kwh_day']:.0f}",
            )
        Console().print(table)
    else:
        for r in stats.to_dicts():
            typer.echo(json.dumps(r, ensure_ascii=False))


def main() -> None:
    """Run the CLI, then end the process without tearing down native thread pools.

    Arrow's Parquet/IO thread pools can abort a finished run at interpreter teardown
    (``terminate called without an active exception``, exit -6; apache/arrow#34314), seen
    here under load. So once the command has returned, Python's exit handlers run and the
    streams are flushed explicitly, and the process ends with ``os._exit`` and the command's
    exit code. An unexpected exception still ends the normal way, with its traceback.
    """
    import atexit
    import contextlib
    import os
    import sys

    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is None:
            code = 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)

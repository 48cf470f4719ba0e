"""File-level wrapper around fusion, as ``minewatch fuse`` runs it.

Reads evidence (JSON Lines from ``scan``/``flows detect``/``meters screen``, EVIDENCE
Parquet), lease files of any supported format, subscribers and accounts (CSV or Parquet),
optional explicit links, finance CSVs and a policy file; fuses; and writes, when ``out`` is
given: ``suspects.jsonl``, ``attribution.jsonl``, ``unattributed.jsonl``, ``links.csv``,
``unmatched_subscribers.csv``, ``unmatched_accounts.csv``, ``monitoring_list.xlsx`` and
``.csv``, ``stats.jsonl``, ``quarantine.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from minewatch.errors import InputError, Quarantine
from minewatch.fusion.address import link_accounts
from minewatch.fusion.evidence import load_evidence
from minewatch.fusion.policy import load_policy
from minewatch.fusion.risk import FusionResult, fuse, suspects_jsonl
from minewatch.sources.leases import concat_leases, read_leases


@dataclass
class FuseRun:
    result: FusionResult
    summary: dict[str, Any]
    written: dict[str, str]


def read_table(path: str | Path, required: list[str], what: str) -> pl.DataFrame:
    """A CSV or Parquet table with at least ``required`` columns (as strings where text)."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".parquet":
            df = pl.read_parquet(p)
        else:
            df = pl.read_csv(p, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"cannot read the {what} table: {exc}", path=p) from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"the {what} table lacks columns {missing}",
            path=p,
            line=1,
            hint=f"needs {required}",
        )
    return df


def _clean_ids(df: pl.DataFrame, key: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """Drop rows without an id and repeated ids (first kept); say how many."""
    ok = df.filter(
        pl.col(key).is_not_null() & (pl.col(key).cast(pl.String).str.strip_chars() != "")
    )
    uniq = ok.unique(subset=[key], keep="first", maintain_order=True)
    return uniq, {"without_id": df.height - ok.height, "repeated_id": ok.height - uniq.height}


def run_fuse(
    evidence: list[Path],
    leases: list[Path],
    subscribers: Path,
    accounts: Path,
    *,
    links: Path | None = None,
    finance: list[Path] | None = None,
    policy: Path | None = None,
    lease_format: str | None = None,
    out: Path | None = None,
    min_score: float = 0.5,
) -> FuseRun:
    q = Quarantine(path=(out / "quarantine.jsonl") if out else None)
    try:
        ev = load_evidence(list(evidence), finance=list(finance or []), quarantine=q)
        loads = [read_leases(p, lease_format, quarantine=q) for p in leases]
    finally:
        q.close()
    lease_df = concat_leases(loads)
    subs = read_table(subscribers, ["subscriber_id", "kind", "address", "region"], "subscribers")
    accs = read_table(accounts, ["account_id", "tariff_class", "address", "region"], "accounts")
    accs = accs.with_columns(
        pl.col("capacity_kva").cast(pl.Float64, strict=False)
        if "capacity_kva" in accs.columns
        else pl.lit(None, pl.Float64).alias("capacity_kva")
    )
    subs, subs_dropped = _clean_ids(subs, "subscriber_id")
    accs, accs_dropped = _clean_ids(accs, "account_id")
    explicit = read_table(links, ["subscriber_id", "account_id"], "links") if links else None
    pol = load_policy(policy)
    lk = link_accounts(subs, accs, explicit)
    res = fuse(ev.evidence, lease_df, subs, accs, links=lk, policy=pol)
    summary: dict[str, Any] = {
        "evidence": {
            "read": ev.read,
            "accepted": ev.accepted,
            "rejected": ev.rejected,
            "rejected_by_reason": ev.reasons,
            "files": ev.per_file,
        },
        "leases": [ld.summary() for ld in loads],
        "policy": pol.source,
        "table_rows_dropped": {"subscribers": subs_dropped, "accounts": accs_dropped},
        **res.counts,
        "suspects_at_or_above_min_score": int(
            res.suspects.filter(pl.col("score") >= min_score).height
        ),
    }
    written: dict[str, str] = {}
    if out is not None:
        written = write_outputs(res, out, summary, min_score=min_score)
    return FuseRun(result=res, summary=summary, written=written)


def _jsonl(df: pl.DataFrame, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in df.to_dicts():
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def write_outputs(
    res: FusionResult, out: Path, summary: dict[str, Any], *, min_score: float
) -> dict[str, str]:
    from minewatch.report import monitoring
    from minewatch.report.stats import regional_stats

    out.mkdir(parents=True, exist_ok=True)
    w: dict[str, str] = {}
    p = out / "suspects.jsonl"
    p.write_text(suspects_jsonl(res.suspects), encoding="utf-8")
    w["suspects"] = str(p)
    p = out / "attribution.jsonl"
    _jsonl(res.attribution, p)
    w["attribution"] = str(p)
    p = out / "unattributed.jsonl"
    _jsonl(res.unattributed, p)
    w["unattributed"] = str(p)
    for name, df in (
        ("links.csv", res.links.links),
        ("unmatched_subscribers.csv", res.links.unmatched_subscribers),
        ("unmatched_accounts.csv", res.links.unmatched_accounts),
    ):
        df.write_csv(out / name)
        w[name] = str(out / name)
    for ext in ("xlsx", "csv"):
        path, n = monitoring.write(
            res.suspects, out / f"monitoring_list.{ext}", min_score=min_score
        )
        w[f"monitoring_list.{ext}"] = str(path)
        summary["monitoring_list_rows"] = n
    p = out / "stats.jsonl"
    _jsonl(regional_stats(res.suspects, min_score=min_score), p)
    w["stats"] = str(p)
    p = out / "summary.json"
    p.write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    w["summary"] = str(p)
    return w

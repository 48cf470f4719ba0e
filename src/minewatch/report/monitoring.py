"""The monitoring list: suspect premises grouped by region, with Chinese and English headers.

Each row carries what a local officer needs on site: where (address, meter account,
subscriber), what (class, hash rate, added load, energy per day), why (an evidence summary and
any contradiction) and what to do (the policy's recommended action). Written as CSV (one
file, sorted by region then rank) or XLSX (a summary sheet, then one sheet per region).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl

from minewatch.energy import format_rate
from minewatch.report.stats import regional_stats

# (column key, header) in order. Headers are "中文 English".
COLUMNS: tuple[tuple[str, str], ...] = (
    ("region", "区域 Region"),
    ("rank", "序号 Rank"),
    ("premises_id", "场所编号 Premises"),
    ("account_id", "电力户号 Meter account"),
    ("subscribers", "宽带用户 Subscriber"),
    ("address", "地址 Address"),
    ("class", "主体类别 Subject class"),
    ("score", "风险概率 Score"),
    ("ips", "挖矿IP Mining IPs"),
    ("hashrate", "算力 Hash rate"),
    ("power_kw", "估算功率(kW) Power est. (kW)"),
    ("added_kw", "新增负荷(kW) Added load (kW)"),
    ("kwh_day", "日耗电(kWh) Energy per day (kWh)"),
    ("evidence", "证据摘要 Evidence summary"),
    ("contradictions", "矛盾 Contradictions"),
    ("action_zh", "建议处置 Recommended action (中文)"),
    ("action_en", "Recommended action (English)"),
)
HEADERS = [h for _, h in COLUMNS]


def read_suspects(path: str | Path) -> pl.DataFrame:
    """Suspects JSON Lines (as printed by ``minewatch fuse``)."""
    return pl.read_ndjson(Path(path), infer_schema_length=None)


def _join(v: Any, sep: str = "; ") -> str:
    if v is None:
        return ""
    if isinstance(v, list | pl.Series):
        return sep.join(str(x) for x in v if x is not None)
    return str(v)


def rows(
    suspects: pl.DataFrame, *, min_score: float = 0.5, in_scope_only: bool = True
) -> list[dict[str, Any]]:
    """Monitoring-list rows (keys of :data:`COLUMNS`), region by region, rank within region."""
    df = suspects
    if "score" in df.columns:
        df = df.filter(pl.col("score") >= min_score)
    if in_scope_only and "in_scope" in df.columns:
        df = df.filter(pl.col("in_scope").fill_null(True))
    df = df.sort(["region", "rank"], nulls_last=True)
    out: list[dict[str, Any]] = []
    for r in df.iter_rows(named=True):
        lo, hi = r.get("power_kw_lo"), r.get("power_kw_hi")
        hr = r.get("hashrate_hs")
        out.append(
            {
                "region": r.get("region") or "",
                "rank": r.get("rank"),
                "premises_id": r.get("premises_id"),
                "account_id": r.get("account_id") or "",
                "subscribers": _join(r.get("subscriber_ids"), ", "),
                "address": r.get("address") or "",
                "class": f"{r.get('class_zh') or ''} {r.get('subject_class') or ''}".strip(),
                "score": round(float(r["score"]), 3) if r.get("score") is not None else None,
                "ips": _join(r.get("ips"), ", "),
                "hashrate": f"{format_rate(hr, r.get('algo'))} ({r.get('algo')})" if hr else "",
                "power_kw": f"{lo:.2f}–{hi:.2f}" if lo is not None and hi is not None else "",
                "added_kw": round(float(r["added_kw"]), 2)
                if r.get("added_kw") is not None
                else None,
                "kwh_day": r.get("kwh_day"),
                "evidence": _join(r.get("reasons")),
                "contradictions": _join(r.get("contradictions")),
                "action_zh": r.get("action_zh") or "",
                "action_en": r.get("action_en") or "",
            }
        )
    return out


def write_csv(
    suspects: pl.DataFrame, path: str | Path, *, min_score: float = 0.5
) -> tuple[Path, int]:
    """CSV with bilingual headers, UTF-8 with BOM so spreadsheet programs show the Chinese."""
    p = Path(path)
    rs = rows(suspects, min_score=min_score)
    df = (
        pl.DataFrame(
            [[r[k] for k, _ in COLUMNS] for r in rs],
            schema=[(h, pl.String) for h in HEADERS],
            orient="row",
        )
        if rs
        else pl.DataFrame(schema=[(h, pl.String) for h in HEADERS])
    )
    df = df.with_columns(pl.all().cast(pl.String))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\ufeff" + df.write_csv(), encoding="utf-8")
    return p, len(rs)


_SHEET_BAD = re.compile(r"[\[\]:*?/\\]")


def _sheet_name(name: str, used: set[str]) -> str:
    base = _SHEET_BAD.sub("_", name or "未知")[:28] or "未知"
    cand, i = base, 2
    while cand in used:
        cand = f"{base[:26]}~{i}"
        i += 1
    used.add(cand)
    return cand


def write_xlsx(
    suspects: pl.DataFrame, path: str | Path, *, min_score: float = 0.5
) -> tuple[Path, int]:
    """XLSX: a summary sheet with regional statistics, then one sheet per region."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    p = Path(path)
    rs = rows(suspects, min_score=min_score)
    wb = Workbook()
    summary = wb.active
    assert summary is not None
    summary.title = "汇总 Summary"
    stats = regional_stats(suspects, min_score=min_score)
    head_font = Font(bold=True)
    fill = PatternFill("solid", fgColor="DDEBF7")
    stat_headers = [
        ("region", "区域 Region"),
        ("subject_class", "主体类别 Class"),
        ("algo_family", "算法 Algorithm"),
        ("premises", "场所数 Premises"),
        ("mining_ips", "挖矿IP数 Mining IPs"),
        ("hashrate_hs", "估算总算力(H/s) Total hash rate (H/s)"),
        ("kwh_day", "估算日耗电(kWh) Energy per day (kWh)"),
    ]
    summary.append([h for _, h in stat_headers])
    for r in stats.iter_rows(named=True):
        summary.append([r[k] for k, _ in stat_headers])
    for c in summary[1]:
        c.font = head_font
        c.fill = fill
    used: set[str] = {summary.title}
    by_region: dict[str, list[dict[str, Any]]] = {}
    for r in rs:
        by_region.setdefault(r["region"], []).append(r)
    widths = {"address": 40, "evidence": 80, "action_zh": 36, "action_en": 48, "ips": 24}
    for region, items in by_region.items():
        ws = wb.create_sheet(_sheet_name(region, used))
        ws.append(HEADERS)
        for c in ws[1]:
            c.font = head_font
            c.fill = fill
            c.alignment = Alignment(wrap_text=True, vertical="top")
        for r in items:
            ws.append([r[k] for k, _ in COLUMNS])
        for i, (k, _) in enumerate(COLUMNS, start=1):
            ws.column_dimensions[get_column_letter(i)].width = widths.get(k, 14)
        ws.freeze_panes = "A2"
    p.parent.mkdir(parents=True, exist_ok=True)
    wb.properties.title = "Monitoring list 监测名单"
    wb.save(p)
    return p, len(rs)


def write(suspects: pl.DataFrame, path: str | Path, *, min_score: float = 0.5) -> tuple[Path, int]:
    """By extension: ``.xlsx`` or ``.csv``."""
    p = Path(path)
    if p.suffix.lower() == ".xlsx":
        return write_xlsx(suspects, p, min_score=min_score)
    return write_csv(suspects, p, min_score=min_score)


def summary_json(suspects: pl.DataFrame, *, min_score: float = 0.5) -> str:
    return json.dumps(regional_stats(suspects, min_score=min_score).to_dicts(), ensure_ascii=False)

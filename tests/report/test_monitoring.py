"""Monitoring list exports (XLSX checked with openpyxl, CSV) and regional statistics."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl
from openpyxl import load_workbook

from minewatch.report import monitoring
from minewatch.report.stats import ALL, TOTAL, regional_stats


def suspects() -> pl.DataFrame:
    base = {
        "log_odds": 3.0,
        "in_scope": True,
        "action": "punitive_tariff",
        "action_zh": "居民电价挖矿：现场核查，执行惩罚性电价",
        "action_en": "Mining on a residential tariff: verify on site",
        "tariff_class": "residential",
        "kind": "residential",
        "n_sessions": 3,
        "added_kw": 3.1,
        "contradictions": [],
        "reasons": ["stratum at 10.0.0.1", "meter a1: +3.1 kW since 2026-11-01"],
    }
    rows = [
        {
            **base,
            "rank": 1,
            "premises_id": "a1",
            "account_id": "a1",
            "subscriber_ids": ["s1"],
            "score": 0.99,
            "region": "西湖区",
            "subject_class": "residential",
            "class_zh": "居民",
            "address": "西湖区文三路100号3-2-502",
            "ips": ["10.0.0.1", "10.0.0.9"],
            "hashrate_hs": 1e14,
            "algo": "sha256d",
            "power_kw_lo": 1.5,
            "power_kw_hi": 10.4,
            "kwh_day": 74.4,
        },
        {
            **base,
            "rank": 2,
            "premises_id": "a2",
            "account_id": "a2",
            "subscriber_ids": ["s2"],
            "score": 0.9,
            "region": "西湖区",
            "subject_class": "public_institution",
            "class_zh": "公共机构",
            "address": "学院路5号",
            "ips": ["10.0.0.9"],
            "hashrate_hs": 6000.0,
            "algo": "rx/0",
            "power_kw_lo": 0.08,
            "power_kw_hi": 0.5,
            "kwh_day": 4.6,
            "action_zh": "公共资源挖矿：立即关停",
            "contradictions": ["hash rate … but the meter shows only 0 kW added"],
        },
        {
            **base,
            "rank": 3,
            "premises_id": "a3",
            "account_id": "a3",
            "subscriber_ids": ["s3"],
            "score": 0.8,
            "region": "上城区/北",  # a character not allowed in sheet names
            "subject_class": "internet_cafe",
            "class_zh": "网吧",
            "address": "延安路1号",
            "ips": ["10.0.0.3"],
            "hashrate_hs": 5e8,
            "algo": "etchash",
            "power_kw_lo": 1.0,
            "power_kw_hi": 2.5,
            "kwh_day": 30.0,
        },
        {
            **base,
            "rank": 4,
            "premises_id": "a4",
            "account_id": "a4",
            "subscriber_ids": ["s4"],
            "score": 0.2,
            "region": "上城区/北",
            "subject_class": "residential",
            "class_zh": "居民",
            "address": "x",
            "ips": [],
            "hashrate_hs": None,
            "algo": None,
            "power_kw_lo": None,
            "power_kw_hi": None,
            "kwh_day": 10.0,
        },
    ]
    return pl.DataFrame(rows)


def test_xlsx_has_a_summary_and_one_sheet_per_region(tmp_path: Path) -> None:
    path, n = monitoring.write(suspects(), tmp_path / "list.xlsx")
    assert n == 3  # a4 is below the 0.5 cut
    wb = load_workbook(path)
    assert wb.sheetnames == ["汇总 Summary", "上城区_北", "西湖区"] or set(wb.sheetnames) == {
        "汇总 Summary",
        "上城区_北",
        "西湖区",
    }
    ws = wb["西湖区"]
    header = [c.value for c in ws[1]]
    assert header == monitoring.HEADERS
    assert "序号 Rank" in header and "建议处置 Recommended action (中文)" in header
    rows = list(ws.iter_rows(min_row=2, values_only=True))
    assert [r[header.index("场所编号 Premises")] for r in rows] == ["a1", "a2"]
    first = dict(zip(header, rows[0], strict=True))
    assert first["挖矿IP Mining IPs"] == "10.0.0.1, 10.0.0.9"
    assert first["算力 Hash rate"] == "100 TH/s (sha256d)"
    assert first["估算功率(kW) Power est. (kW)"] == "1.50–10.40"
    assert "meter a1" in first["证据摘要 Evidence summary"]
    assert first["建议处置 Recommended action (中文)"].startswith("居民电价挖矿")
    second = dict(zip(header, rows[1], strict=True))
    assert "meter shows only" in second["矛盾 Contradictions"]
    summary = wb["汇总 Summary"]
    sh = [c.value for c in summary[1]]
    assert sh[0] == "区域 Region" and "挖矿IP数 Mining IPs" in sh
    body = list(summary.iter_rows(min_row=2, values_only=True))
    total_sha = [r for r in body if r[0] == TOTAL and r[2] == "sha256d"]
    assert total_sha and total_sha[0][sh.index("挖矿IP数 Mining IPs")] == 2


def test_csv_is_grouped_by_region_with_bilingual_headers(tmp_path: Path) -> None:
    path, n = monitoring.write(suspects(), tmp_path / "list.csv", min_score=0.0)
    assert n == 4
    raw = path.read_bytes()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == monitoring.HEADERS
    regions = [r[0] for r in rows[1:]]
    assert regions == sorted(regions)


def test_regional_stats_keep_algorithms_apart() -> None:
    st = regional_stats(suspects())
    total = {r["algo_family"]: r for r in st.filter(pl.col("region") == TOTAL).to_dicts()}
    assert set(total) == {"sha256d", "randomx", "ethash"}
    assert total["sha256d"]["hashrate_hs"] == 1e14
    west = st.filter((pl.col("region") == "西湖区") & (pl.col("subject_class") == ALL)).row(
        0, named=True
    )
    # 10.0.0.9 appears at two premises: one mining IP, counted once
    assert west["mining_ips"] == 2 and west["premises"] == 2
    assert west["hashrate_hs"] is None  # no sum across algorithms
    assert west["kwh_day"] == 79.0


def test_read_suspects_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in suspects().to_dicts()) + "\n",
        encoding="utf-8",
    )
    df = monitoring.read_suspects(p)
    assert df.height == 4
    assert [r["premises_id"] for r in monitoring.rows(df)] == ["a3", "a1", "a2"]

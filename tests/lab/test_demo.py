"""``minewatch demo`` end to end, as ``make demo`` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from openpyxl import load_workbook


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "minewatch", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout
    for heading in ("1. Network", "2. Power", "3. Fusion"):
        assert heading in text
    assert "cryptonote" in text and "stratum1" in text and "ethproxy" in text
    detections = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    dialects = {d["dialect"] for d in detections}
    assert {"cryptonote", "stratum1", "ethproxy", "getblocktemplate", "stratum2"} <= dialects
    # The hard negatives in the capture (Electrum, a JSON-RPC API on a pool port, web) stay out.
    assert all(d["dst_port"] not in (50001, 80) for d in detections)
    assert "really mine" in text
    wb = load_workbook(out / "fused" / "monitoring_list.xlsx")
    assert len(wb.sheetnames) >= 2
    assert (
        (out / "fused" / "monitoring_list.csv")
        .read_text(encoding="utf-8-sig")
        .startswith("区域 Region")
    )

"""``minewatch scan`` as a user runs it: a real process, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minewatch.lab import traffic as T
from minewatch.schema import DETECTION_FIELDS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXE = [sys.executable, "-m", "minewatch"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args],
        input=stdin.decode("latin-1") if stdin else None,
        capture_output=True,
        text=True,
        timeout=120,
        encoding="latin-1",
    )


def test_jsonl_contract_on_the_shared_captures() -> None:
    p = run(
        "scan",
        str(SHARED / "pcap" / "mining" / "xmr.suprnova.cc.pcapng"),
        str(SHARED / "pcap" / "mining" / "zec-eu.suprnova.cc.pcapng"),
    )
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert set(DETECTION_FIELDS) <= set(r)
        assert r["reasons"]
    assert "mining session(s)" in p.stderr


def test_no_detection_still_exits_zero() -> None:
    p = run("scan", str(SHARED / "pcap" / "benign" / "bitcoin.pcap"))
    assert p.returncode == 0 and p.stdout == ""


def test_table_format() -> None:
    p = run("scan", "--format", "table", str(SHARED / "pcap" / "mining" / "xmr.suprnova.cc.pcapng"))
    assert p.returncode == 0 and "cryptonote" in p.stdout and "kvetak" in p.stdout


def test_stream_on_stdin() -> None:
    data = T.write_pcap([T.cryptonote_session(shares=5)])
    p = run("scan", "-", stdin=data)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["final"] for r in rows] == [False, True]


@pytest.mark.parametrize(
    "content, words",
    [
        (b"just some text\n", "text file"),
        (os.urandom(2000), "not a pcap"),
        (b"", "empty"),
    ],
    ids=["text", "random", "empty"],
)
def test_unusable_file_exits_2_with_a_message(tmp_path: Path, content: bytes, words: str) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    good = SHARED / "pcap" / "mining" / "xmr.suprnova.cc.pcapng"
    p = run("scan", str(bad), str(good))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and words in p.stderr and str(bad) in p.stderr
    assert len(p.stdout.splitlines()) == 1  # the good file was still scanned


def test_damaged_capture_reports_damage_and_continues(tmp_path: Path) -> None:
    data = T.write_pcap([T.cryptonote_session(shares=5)])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-7])
    p = run("scan", str(cut))
    assert p.returncode == 0 and "cut short" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stdout.splitlines()) == 1


def test_missing_file_and_bad_intel(tmp_path: Path) -> None:
    p = run("scan", str(tmp_path / "missing.pcap"))
    assert p.returncode == 2 and "no such file" in p.stderr
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"\x00" * 64)
    p = run("scan", "--intel", str(binary), str(SHARED / "pcap" / "benign" / "bitcoin.pcap"))
    assert p.returncode == 2 and "binary" in p.stderr


def test_intel_lists_from_the_shared_data() -> None:
    p = run(
        "scan",
        "--intel",
        str(SHARED / "intel" / "coinblocker-list.txt"),
        "--intel",
        str(SHARED / "intel" / "coinblocker-mining-server-ips.txt"),
        str(SHARED / "pcap" / "mining" / "zec-eu.suprnova.cc.pcapng"),
    )
    assert p.returncode == 0, p.stderr
    (row,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert any("coinblocker" in r for r in row["reasons"])

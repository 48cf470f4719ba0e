"""The synthetic city end to end through the real CLI: meters screen → fuse → reports."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from openpyxl import load_workbook
from typer.testing import CliRunner

from minewatch.cli import app
from minewatch.lab.city import City, CitySpec, build
from minewatch.schema import DETECTION_FIELDS
from minewatch.sources.leases import concat_leases, map_identities, read_leases

SPEC = CitySpec(n_premises=160, days=6, seed=5, prevalence=0.08)


@pytest.fixture(scope="module")
def city() -> City:
    return build(SPEC)


@pytest.fixture(scope="module")
def files(city: City, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return city.write(tmp_path_factory.mktemp("city"))


def test_city_is_deterministic_and_consistent(city: City) -> None:
    again = build(SPEC)
    assert again.detections == city.detections
    assert again.radius_text == city.radius_text
    t = city.truth
    assert t["premises_id"].n_unique() == t.height == SPEC.n_premises
    assert set(city.detection_truth["subscriber_id"]) <= set(t["subscriber_id"])
    for d in city.detections:
        assert set(DETECTION_FIELDS) <= set(d)
    # The two agencies write most addresses differently.
    same = (city.subscribers["address"] == city.accounts["address"]).sum()
    assert same < 0.1 * SPEC.n_premises
    # Some subscribers sit behind CGNAT, some have static addresses, all dial otherwise.
    assert t["cgnat"].sum() > 0 and t["static"].sum() > 0


def test_lease_files_parse_with_counts_conserved(files: dict[str, Path]) -> None:
    for k in ("radius", "cgnat", "static", "dhcpd", "kea"):
        ld = read_leases(files[k])
        assert ld.read == ld.accepted + ld.rejected
        # (this small city has no government office: its fixed-address file is empty)
        assert ld.leases.height > 0 or k == "static"
    radius = read_leases(files["radius"])
    assert "clock skew corrected" in " ".join(radius.notes)


def test_dhcp_leases_reach_their_subscribers_through_the_hardware_address(
    city: City, files: dict[str, Path]
) -> None:
    subs = pl.read_csv(files["subscribers"])
    dhcp = concat_leases([read_leases(files["dhcpd"]), read_leases(files["kea"])])
    assert dhcp["subscriber_id"].str.contains("^02:00:5e:").all()
    mapped, counts = map_identities(dhcp, subs)
    assert counts == {"mapped": dhcp.height, "conflicting": 0}
    # Every DHCP-served subscriber holds the address the city gave it.
    truth = city.truth.filter(pl.col("static")).select("subscriber_id")
    got = mapped.select("subscriber_id", "ip").unique()
    assert got["subscriber_id"].is_in(truth["subscriber_id"].implode()).all()
    assert got.group_by("subscriber_id").agg(pl.col("ip").n_unique())["ip"].max() == 1
    assert mapped["note"].str.contains("hwaddr 02:00:5e:").all()


def test_fuse_cli_end_to_end(city: City, files: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    screen = runner.invoke(
        app,
        [
            "meters",
            "screen",
            str(files["readings"]),
            "--accounts",
            str(files["meter_accounts"]),
            "--all",
        ],
    )
    assert screen.exit_code == 0, screen.output
    screen_path = tmp_path / "screen.jsonl"
    screen_lines = [ln for ln in screen.stdout.splitlines() if ln.startswith("{")]
    screen_path.write_text("\n".join(screen_lines) + "\n", encoding="utf-8")
    assert len(screen_lines) == SPEC.n_premises

    out = tmp_path / "out"
    args = ["fuse", "--evidence", str(files["detections"]), "--evidence", str(screen_path)]
    for k in ("radius", "cgnat", "static", "dhcpd", "kea"):
        args += ["--leases", str(files[k])]
    args += [
        "--subscribers",
        str(files["subscribers"]),
        "--accounts",
        str(files["accounts"]),
        "--links",
        str(files["links"]),
        "--finance",
        str(files["finance"]),
        "--out",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert recs and recs[0]["rank"] == 1
    assert all(r["reasons"] for r in recs if r["score"] >= 0.5)
    # The top of the list is mostly real mining (small city: a loose check, not the benchmark).
    truth = dict(zip(city.truth["premises_id"], city.truth["mining"], strict=True))
    top = [truth.get(r["premises_id"], False) for r in recs[:10]]
    assert sum(top) >= 7
    for name in (
        "suspects.jsonl",
        "attribution.jsonl",
        "unattributed.jsonl",
        "links.csv",
        "monitoring_list.xlsx",
        "monitoring_list.csv",
        "stats.jsonl",
        "summary.json",
    ):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    ev = summary["evidence"]
    assert ev["read"] == ev["accepted"] + ev["rejected"]
    att = summary["attribution"]
    assert sum(att.values()) == len(city.detections)
    wb = load_workbook(out / "monitoring_list.xlsx")
    assert wb.sheetnames[0] == "汇总 Summary" and len(wb.sheetnames) >= 2

    lst = runner.invoke(
        app,
        ["report", "monitoring-list", str(out / "suspects.jsonl"), "-o", str(tmp_path / "m.csv")],
    )
    assert lst.exit_code == 0, lst.output
    assert (tmp_path / "m.csv").read_text(encoding="utf-8-sig").startswith("区域 Region")
    st = runner.invoke(app, ["report", "stats", str(out / "suspects.jsonl")])
    assert st.exit_code == 0, st.output
    stats = pl.DataFrame([json.loads(ln) for ln in st.stdout.splitlines() if ln.startswith("{")])
    assert {"region", "subject_class", "algo_family", "mining_ips", "kwh_day"} <= set(stats.columns)


def test_fuse_cli_unusable_input_exits_2(files: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n", encoding="utf-8")
    res = CliRunner().invoke(
        app,
        [
            "fuse",
            "--evidence",
            str(files["detections"]),
            "--leases",
            str(junk),
            "--subscribers",
            str(files["subscribers"]),
            "--accounts",
            str(files["accounts"]),
        ],
    )
    assert res.exit_code == 2
    assert "cannot tell the lease format" in res.output

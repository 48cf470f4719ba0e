"""Fusion per premises: corroboration, contradiction, shared addresses, classes, policy."""

from __future__ import annotations

import math

import polars as pl
from fusion_scene import det, evidence, finance_row, meter, scene

from minewatch.fusion.policy import load_policy
from minewatch.fusion.risk import (
    CONTRADICTION_PENALTY,
    NETWORK_MISS,
    PRIOR,
    RECUR_PER_DOUBLING,
    TIMING_BONUS,
    classify,
    fuse,
    suspect_records,
)


def by_premises(suspects: pl.DataFrame) -> dict[str, dict]:
    return {r["premises_id"]: r for r in suspect_records(suspects)}


def test_corroboration_raises_and_every_score_has_reasons() -> None:
    sc = scene()
    ev = evidence(
        [
            det("10.0.0.1", 40000, 0.97, 1e14, "sha256", wallet="1Wallet"),  # s1 → a1
            det("10.0.0.4", 40001, 0.97, 1e14, "sha256"),  # s4 → a4, meter sees nothing
            meter("a1", 0.95, 3.1),
            meter("a4", 0.001, 0.0, since=None),
        ]
    )
    res = fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"])
    s = by_premises(res.suspects)
    assert s["a1"]["rank"] == 1
    assert s["a1"]["score"] > s["a4"]["score"]
    assert s["a1"]["consistency"] == "consistent"
    assert any("fits" in r for r in s["a1"]["reasons"])
    # Contradiction: 100 TH/s SHA-256 needs kilowatts; the meter shows none. Shown, and it
    # lowers the score, but does not drop the premises.
    assert s["a4"]["consistency"] == "contradiction"
    assert s["a4"]["contradictions"] and "elsewhere" in s["a4"]["contradictions"][0]
    for r in s.values():
        assert r["reasons"], r["premises_id"]


def test_contradiction_penalty_is_applied_in_log_odds() -> None:
    sc = scene()
    base = [det("10.0.0.4", 40001, 0.97, 1e14, "sha256")]
    quiet = fuse(
        evidence([*base, meter("a4", 0.03, 0.0, since=None)]),
        sc["leases"],
        sc["subscribers"],
        sc["accounts"],
    )
    row = by_premises(quiet.suspects)["a4"]
    # meter score at its base rate carries no evidence: only the penalty moves the odds.
    without = fuse(evidence(base), sc["leases"], sc["subscribers"], sc["accounts"])
    row0 = by_premises(without.suspects)["a4"]
    assert row["log_odds"] == round(row0["log_odds"] - CONTRADICTION_PENALTY, 4)


def test_cpu_mining_too_small_for_a_meter_is_not_contradicted() -> None:
    sc = scene()
    ev = evidence([det("10.0.0.2", 40000, 0.99, 6000, "rx/0"), meter("a2", 0.001, 0.0, None)])
    s = by_premises(fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"]).suspects)["a2"]
    assert s["consistency"] == "below_meter_visibility"
    assert s["contradictions"] == []
    assert s["subject_class"] == "public_institution"
    assert s["action"] == "shutdown_investigate"


def test_shared_cgnat_address_without_port_is_one_of_n_never_a_silent_pick() -> None:
    sc = scene()
    ev = evidence(
        [
            det("203.0.113.7", None, 0.97, None, None),  # shared by s5 and s6, no port
            # s6 by port, to another endpoint: nothing ties the two sightings together
            det("203.0.113.7", 2100, 0.95, None, None, detector="behavior", dst_ip="192.0.2.9"),
        ]
    )
    res = fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"])
    s = by_premises(res.suspects)
    assert set(s) == {"a5", "a6"}
    assert s["a6"]["score"] > s["a5"]["score"]
    assert any("shared by 2 subscribers" in r for r in s["a5"]["reasons"])
    # the shared session gives each candidate less than the unshared one would
    alone = fuse(
        evidence([det("10.0.0.1", 1, 0.97, None, None)]),
        sc["leases"],
        sc["subscribers"],
        sc["accounts"],
    )
    assert by_premises(alone.suspects)["a1"]["log_odds"] > s["a5"]["log_odds"]
    assert res.counts["attribution"] == {"ambiguous": 1, "attributed": 1}


def test_shared_address_without_port_is_resolved_by_the_same_endpoint_with_a_reason() -> None:
    sc = scene()
    ev = evidence(
        [
            det("203.0.113.7", None, 0.97, None, None),  # shared by s5 and s6, no port
            det("203.0.113.7", 2100, 0.95, None, None, detector="behavior"),  # s6, same pool
        ]
    )
    res = fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"])
    att = res.attribution.sort("sighting_id")
    assert att["status"].to_list() == ["attributed", "attributed"]
    assert att["method"].to_list() == ["recurrence", "lease"]
    assert att["subscriber_id"].to_list() == ["s6", "s6"]
    assert "mining endpoint 192.0.2.200:3333" in att["reason"][0]
    assert set(by_premises(res.suspects)) == {"a6"}


def test_evidence_without_lease_or_link_is_listed_not_dropped() -> None:
    sc = scene()
    ev = evidence(
        [
            det("9.9.9.9", 1, 0.99),  # no lease
            meter("a-unknown", 0.9, 2.0),  # account not in the accounts table
            finance_row({"wallet": "lonely", "kind": "exchange_deposit", "ts": "2026-11-26"}),
        ]
    )
    res = fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"])
    un = res.unattributed
    assert un.height == 2
    assert set(un["subject_id"]) == {"9.9.9.9", "lonely"}
    assert "a-unknown" in set(res.suspects["premises_id"])
    # counts are conserved: every evidence row reached a premises or is listed
    reached = res.premises_evidence["evidence_id"].n_unique()
    assert reached + un.height == ev.height


def test_finance_links_through_stratum_wallet() -> None:
    sc = scene()
    ev = evidence(
        [
            det("10.0.0.3", 40000, 0.8, None, None, detector="behavior"),
            det("10.0.0.3", 40002, 0.9, 5e8, "etchash", wallet="0xabc"),
            finance_row({"wallet": "0xabc", "kind": "pool_payout", "ts": "2026-11-26"}),
        ]
    )
    s = by_premises(fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"]).suspects)
    assert s["a3"]["score_finance"] == 0.9
    assert s["a3"]["subject_class"] == "internet_cafe"
    assert any("pool_payout" in r for r in s["a3"]["reasons"])


def test_source_subsets_for_baselines() -> None:
    sc = scene()
    ev = evidence([det("10.0.0.1", 1, 0.97), meter("a1", 0.95, 3.0), meter("a7", 0.99, 9.0)])
    net = fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"], sources={"network"})
    assert set(net.suspects["premises_id"]) == {"a1"}
    pw = fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"], sources={"power"})
    assert set(pw.suspects["premises_id"]) == {"a1", "a7"}
    # a7 has no subscriber: nothing about the network can be said of it
    both = by_premises(fuse(ev, sc["leases"], sc["subscribers"], sc["accounts"]).suspects)
    assert both["a7"]["subscriber_ids"] is None or both["a7"]["subscriber_ids"] == []


def test_score_is_the_logistic_of_log_odds() -> None:
    sc = scene()
    res = fuse(evidence([meter("a7", 0.5, 1.0)]), sc["leases"], sc["subscribers"], sc["accounts"])
    r = res.suspects.row(0, named=True)
    assert abs(r["score"] - 1 / (1 + math.exp(-r["log_odds"]))) < 1e-3
    assert r["log_odds"] > math.log(PRIOR / (1 - PRIOR))


def test_classify_from_tariff_kind_and_capacity() -> None:
    df = pl.DataFrame(
        {
            "tariff_class": [
                "residential",
                "commercial",
                "industrial",
                "industrial",
                None,
                "public",
            ],
            "kind": ["residential", "internet_cafe", "factory", None, "data_centre", None],
            "capacity_kva": [8.0, 30.0, 400.0, 20.0, None, 100.0],
        }
    )
    out = classify(df)
    assert out["subject_class"].to_list() == [
        "residential",
        "internet_cafe",
        "enterprise",
        "small_business",
        "data_centre",
        "public_institution",
    ]
    mixed = classify(
        pl.DataFrame({"tariff_class": ["residential"], "kind": ["business"], "capacity_kva": [8.0]})
    )
    assert "check the tariff" in mixed["class_reason"][0]


def test_regional_policy_overrides_default(tmp_path) -> None:
    sc = scene()
    pol_file = tmp_path / "policy.toml"
    pol_file.write_text(
        '[[rule]]\nregion = "西湖区"\nclass = "residential"\nin_scope = false\n'
        'action = "monitor"\naction_zh = "持续监测"\naction_en = "Keep monitoring"\n',
        encoding="utf-8",
    )
    ev = evidence([det("10.0.0.1", 1, 0.97), det("100.64.0.5", None, 0.97)])
    s = by_premises(
        fuse(
            ev,
            sc["leases"],
            sc["subscribers"],
            sc["accounts"],
            policy=load_policy(pol_file),
        ).suspects
    )
    assert (s["a1"]["in_scope"], s["a1"]["action"]) == (False, "monitor")
    assert s["a5"]["action"] == "rectification"  # 上城区 small business: default rule


def test_detector_families_follow_what_each_detector_can_know() -> None:
    from minewatch.fusion.risk import _family_expr

    df = pl.DataFrame(
        {
            "detector": ["stratum", "stratum2-shape", "intel", "behavior", "meters.screen", "x"],
            "source": ["network", "network", "network", "network", "power", "network"],
        }
    )
    fams = df.with_columns(f=_family_expr())["f"].to_list()
    assert fams == ["stratum", "behavior", "intel", "behavior", "meters", "network"]


def _month_leases(sc: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return sc["leases"].with_columns(end=pl.col("start") + pl.duration(days=30))


def test_sessions_to_one_far_end_on_several_days_count_a_little_more() -> None:
    sc = scene()
    rows = []
    for day in (3, 5, 9):
        rows.append(det("10.0.0.1", 40000 + day, 0.8, detector="behavior", hours=24 * day))
        # s4: the same detector and scores, but a new far end every day (a p2p node)
        rows.append(
            det(
                "10.0.0.4",
                41000 + day,
                0.8,
                detector="behavior",
                hours=24 * day,
                dst_ip=f"240.0.0.{day}",
            )
        )
    s = by_premises(
        fuse(evidence(rows), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    gain = s["a1"]["log_odds"] - s["a4"]["log_odds"]
    assert math.isclose(gain, RECUR_PER_DOUBLING * math.log2(3), abs_tol=1e-3)
    assert any("on 3 distinct days" in r for r in s["a1"]["reasons"])
    assert not any("distinct days" in r for r in s["a4"]["reasons"])


def test_a_dns_server_is_not_a_recurring_far_end() -> None:
    sc = scene()
    rows = [
        det("10.0.0.1", 40000 + day, 0.8, detector="intel", hours=24 * day, dst_ip="192.0.2.53")
        for day in (3, 5, 9)
    ]
    for r in rows:  # DNS answers naming a pool: the far end is the resolver
        r["measures"] = r["measures"].replace('"dst_port": 3333', '"dst_port": 53')
        assert '"dst_port": 53' in r["measures"]
    s = by_premises(
        fuse(evidence(rows), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    assert not any("distinct days" in r for r in s["a1"]["reasons"])


def test_meter_change_at_the_time_mining_was_first_seen_corroborates() -> None:
    sc = scene()
    rows = [
        det("10.0.0.2", 40000, 0.8, detector="behavior", hours=1),  # observation starts day 0
        det("10.0.0.1", 40001, 0.8, detector="behavior", hours=24 * 9),
        det("10.0.0.4", 40002, 0.8, detector="behavior", hours=24 * 9),
        meter("a1", 0.5, 2.0, since="2026-12-05"),  # day 10: one day after the first session
        meter("a4", 0.5, 2.0, since="2026-12-15"),  # day 20: unrelated
    ]
    s = by_premises(
        fuse(evidence(rows), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    assert math.isclose(s["a1"]["log_odds"] - s["a4"]["log_odds"], TIMING_BONUS, abs_tol=1e-3)
    assert any("both sources agree on when" in r for r in s["a1"]["reasons"])
    # A rig seen from the first day of observation may predate it: no timing evidence.
    early = [
        det("10.0.0.1", 40001, 0.8, detector="behavior", hours=1),
        meter("a1", 0.5, 2.0, since="2026-11-26"),
    ]
    e = by_premises(
        fuse(evidence(early), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    assert not any("both sources agree on when" in r for r in e["a1"]["reasons"])


def test_a_one_day_sighting_not_seen_again_for_a_week_counts_less() -> None:
    """Sessions on one day, then a week or more of network data without them: how a false
    alarm looks. Counted like the absence of network evidence, with a reason."""
    sc = scene()
    rows = [
        det("10.0.0.1", 40001, 0.8, detector="behavior", hours=24 * 1),  # day 1, never again
        det("10.0.0.4", 40002, 0.8, detector="behavior", hours=24 * 9),  # day 9
        det("10.0.0.2", 40003, 0.8, detector="behavior", hours=24 * 12),  # data runs to day 12
        det("10.0.0.2", 40004, 0.8, detector="behavior", hours=24 * 2),
    ]
    s = by_premises(
        fuse(evidence(rows), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    gap = s["a4"]["log_odds"] - s["a1"]["log_odds"]
    assert math.isclose(gap, -math.log(NETWORK_MISS), abs_tol=1e-3)
    assert any("on one day only" in r and "11 days" in r for r in s["a1"]["reasons"])
    assert not any("on one day only" in r for r in s["a4"]["reasons"])  # 3 days of data after
    assert not any("on one day only" in r for r in s["a2"]["reasons"])  # seen on two days


def test_timing_and_absence_use_only_sessions_of_the_premises_alone() -> None:
    """A session on an address shared by two subscribers (CGNAT, no port) neither dates a
    meter change for both of them nor lifts the absence term for both of them."""
    sc = scene()
    rows = [
        det("10.0.0.2", 40000, 0.8, detector="behavior", hours=1),  # observation starts day 0
        det("10.0.0.2", 40010, 0.8, detector="behavior", hours=24 * 20),  # and runs to day 20
        det("203.0.113.7", None, 0.8, detector="behavior", hours=24 * 9),  # s5 or s6
        meter("a5", 0.5, 2.0, since="2026-12-05"),  # one day after the shared session
        meter("a3", 0.5, 2.0, since="2026-12-05"),  # the same meter, no session at all
    ]
    s = by_premises(
        fuse(evidence(rows), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    assert not any("both sources agree on when" in r for r in s["a5"]["reasons"])
    assert any("only sessions on addresses shared" in r for r in s["a5"]["reasons"])
    # Both carry the absence term; the shared session still counts for a5, as one of two
    # candidates: behaviour weight 0.8 at base 0.5, then -ln(e^-LLR + (n-1) * PRIOR).
    llr = 0.8 * math.log(0.8 / 0.2)
    shared = -math.log(math.exp(-llr) + PRIOR)
    gap = s["a5"]["log_odds"] - s["a3"]["log_odds"]
    assert math.isclose(gap, shared, abs_tol=1e-3)


def test_a_named_pool_recurs_across_its_rotating_addresses() -> None:
    """Sessions to one pool host name (here through three addresses, as DNS rotates them) on
    three days recur; without a name, three addresses are three far ends."""
    sc = scene()
    rows = []
    for day in (3, 5, 9):
        named = det("10.0.0.1", 40000 + day, 0.8, hours=24 * day, dst_ip=f"192.0.2.{day}")
        rows.append(named)  # stratum: pool_host "pool.example"
        rows.append(
            det(
                "10.0.0.4",
                41000 + day,
                0.8,
                detector="behavior",  # no pool name
                hours=24 * day,
                dst_ip=f"192.0.2.{day}",
            )
        )
    s = by_premises(
        fuse(evidence(rows), _month_leases(sc), sc["subscribers"], sc["accounts"]).suspects
    )
    assert any("pool.example:3333 on 3 distinct days" in r for r in s["a1"]["reasons"])
    assert not any("distinct days" in r for r in s["a4"]["reasons"])

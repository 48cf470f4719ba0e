"""Attribution: IP (+port) + time → subscriber; ambiguity is reported, never resolved silently."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from minewatch.fusion.attribution import (
    attribute,
    attribute_windows,
    resolve_by_recurrence,
    summary,
)
from minewatch.sources.leases import empty_leases

UTC = dt.UTC
D0 = dt.datetime(2026, 11, 25, tzinfo=UTC)


def h(x: float) -> dt.datetime:
    return D0 + dt.timedelta(hours=x)


def leases(rows: list[tuple]) -> pl.DataFrame:
    df = pl.DataFrame(
        [
            {
                "ip": r[0],
                "start": r[1],
                "end": r[2],
                "subscriber_id": r[3],
                "port_lo": r[4] if len(r) > 4 else None,
                "port_hi": r[5] if len(r) > 5 else None,
                "source": "test",
                "note": None,
            }
            for r in rows
        ],
        schema=empty_leases().schema,
    )
    return df


def sightings(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ip": [r[0] for r in rows],
            "ts": [r[1] for r in rows],
            "port": [r[2] if len(r) > 2 else None for r in rows],
        },
        schema={"ip": pl.String, "ts": pl.Datetime("us", "UTC"), "port": pl.Int32},
    )


def test_daily_redials_attribute_each_day_to_its_holder() -> None:
    L = leases(
        [
            ("10.0.0.1", h(0), h(24), "alice"),
            ("10.0.0.1", h(24), h(48), "bob"),
            ("10.0.0.2", h(0), None, "carol"),
        ]
    )
    S = sightings(
        [("10.0.0.1", h(5)), ("10.0.0.1", h(30)), ("10.0.0.2", h(100)), ("9.9.9.9", h(1))]
    )
    out = attribute(S, L)
    assert out["subscriber_id"].to_list() == ["alice", "bob", "carol", None]
    assert out["status"].to_list() == ["attributed", "attributed", "attributed", "no_lease"]
    assert summary(out) == {
        "attributed": 3,
        "ambiguous": 0,
        "no_lease": 1,
        "total": 4,
        "attributed_by_recurrence": 0,
    }


def test_sighting_after_lease_end_has_no_lease() -> None:
    L = leases([("10.0.0.1", h(0), h(2), "alice")])
    out = attribute(sightings([("10.0.0.1", h(3)), ("10.0.0.1", h(2))]), L)
    assert out["status"].to_list() == ["no_lease", "no_lease"]


def test_overlapping_leases_are_ambiguous_with_all_candidates() -> None:
    L = leases(
        [
            ("10.0.0.1", h(0), h(10), "alice"),
            ("10.0.0.1", h(8), h(20), "bob"),
            ("10.0.0.3", h(0), h(10), "dave"),
            ("10.0.0.3", h(5), h(10), "dave"),
        ]
    )
    S = sightings([("10.0.0.1", h(9)), ("10.0.0.1", h(12)), ("10.0.0.1", h(1)), ("10.0.0.3", h(6))])
    out = attribute(S, L)
    assert out["status"].to_list() == ["ambiguous", "attributed", "attributed", "attributed"]
    assert out["candidates"][0].to_list() == ["alice", "bob"]
    assert out["subscriber_id"][0] is None
    assert out["subscriber_id"].to_list()[1:] == ["bob", "alice", "dave"]
    assert out["reason"][3] == "overlapping leases, all of one subscriber"


def test_long_lease_covering_a_later_short_one_is_not_missed() -> None:
    # The as-of join alone would pick bob's lease (latest start) and miss that alice's
    # lease also covers 11:00; the overlap cluster sends it to the exact join.
    L = leases([("10.0.0.1", h(0), h(24), "alice"), ("10.0.0.1", h(5), h(6), "bob")])
    out = attribute(sightings([("10.0.0.1", h(11))]), L)
    assert out["status"][0] == "attributed" and out["subscriber_id"][0] == "alice"


def test_cgnat_block_resolves_through_private_lease() -> None:
    L = leases(
        [
            ("203.0.113.7", h(0), h(24), "nat:100.64.0.5", 1024, 1535),
            ("203.0.113.7", h(0), h(24), "nat:100.64.0.6", 1536, 2047),
            ("100.64.0.5", h(0), h(24), "alice"),
            ("100.64.0.6", h(0), h(24), "bob"),
        ]
    )
    S = sightings(
        [
            ("203.0.113.7", h(1), 1600),
            ("203.0.113.7", h(1), 1100),
            ("203.0.113.7", h(1), None),
            ("203.0.113.7", h(1), 5000),
        ]
    )
    out = attribute(S, L)
    assert out["subscriber_id"].to_list()[:2] == ["bob", "alice"]
    assert out["via_nat"].to_list()[:2] == ["100.64.0.6", "100.64.0.5"]
    assert out["status"][2] == "ambiguous"
    assert out["candidates"][2].to_list() == ["alice", "bob"]
    assert "no port" in out["reason"][2]
    assert out["status"][3] == "no_lease"


def test_cgnat_private_address_without_lease_is_reported() -> None:
    L = leases([("203.0.113.7", h(0), h(24), "nat:100.64.0.9", 1024, 1535)])
    out = attribute(sightings([("203.0.113.7", h(1), 1030)]), L)
    assert out["status"][0] == "no_lease"
    assert "100.64.0.9" in out["reason"][0]


def test_session_across_a_redial_is_ambiguous() -> None:
    L = leases([("10.0.0.1", h(0), h(24), "alice"), ("10.0.0.1", h(24), h(48), "bob")])
    s = pl.DataFrame(
        {"ip": ["10.0.0.1", "10.0.0.1"], "first": [h(23), h(1)], "last": [h(25), h(2)]}
    )
    out = attribute_windows(s, L, start="first", end="last")
    assert out["status"].to_list() == ["ambiguous", "attributed"]
    assert out["candidates"][0].to_list() == ["alice", "bob"]


def test_every_sighting_comes_out_once_on_a_larger_random_case() -> None:
    rng = np.random.default_rng(3)
    n_ip, days = 50, 10
    rows = []
    for d in range(days):
        perm = rng.permutation(n_ip)
        for sub, ip_i in enumerate(perm):
            rows.append((f"10.0.1.{ip_i}", h(24 * d), h(24 * d + 24), f"s{sub}"))
    L = leases(rows)
    truth = {(r[0], d): r[3] for d in range(days) for r in rows[d * n_ip : (d + 1) * n_ip]}
    ts_h = rng.uniform(0, 24 * days, 2000)
    ips = rng.integers(0, n_ip, 2000)
    S = sightings([(f"10.0.1.{i}", h(t)) for i, t in zip(ips, ts_h, strict=True)])
    out = attribute(S, L)
    assert out.height == 2000
    expect = [truth[(f"10.0.1.{i}", int(t // 24))] for i, t in zip(ips, ts_h, strict=True)]
    assert out["subscriber_id"].to_list() == expect


def _shared_address() -> pl.DataFrame:
    """Three subscribers behind one public address, each with its own port block, every day."""
    rows = []
    for day in range(4):
        t0, t1 = h(24 * day), h(24 * day + 24)
        for i, who in enumerate(("alice", "bob", "carol")):
            rows.append(("203.0.113.9", t0, t1, who, 1024 * (i + 1), 1024 * (i + 2) - 1))
    return leases(rows)


def _identity(ids: list[str | None], ts: list[dt.datetime]) -> pl.DataFrame:
    return pl.DataFrame(
        {"sighting_id": list(range(len(ids))), "ts": ts, "identity": ids},
        schema={"sighting_id": pl.Int64, "ts": pl.Datetime("us", "UTC"), "identity": pl.String},
    )


def test_port_less_sighting_is_resolved_by_the_same_wallet_on_other_days() -> None:
    L = _shared_address()
    # 0: bob with a port (lease fact); 1: the same wallet without a port, two days later.
    S = sightings([("203.0.113.9", h(10), 2100), ("203.0.113.9", h(58))])
    att = attribute(S, L)
    assert att["status"].to_list() == ["attributed", "ambiguous"]
    out = resolve_by_recurrence(att, _identity(["wallet:W1", "wallet:W1"], [h(10), h(58)]))
    assert out["status"].to_list() == ["attributed", "attributed"]
    assert out["subscriber_id"].to_list() == ["bob", "bob"]
    assert out["method"].to_list() == ["lease", "recurrence"]
    assert "only bob was attributed by its own lease to 1 other" in out["reason"][1]
    assert "inferred" in out["reason"][1]
    assert out["candidates"][1].to_list() == ["alice", "bob", "carol"]
    assert summary(out)["attributed_by_recurrence"] == 1


def test_recurrence_needs_exactly_one_corroborated_candidate_within_the_window() -> None:
    L = _shared_address()
    S = sightings(
        [
            ("203.0.113.9", h(10), 1500),  # alice, endpoint E
            ("203.0.113.9", h(11), 3000),  # carol, endpoint E
            ("203.0.113.9", h(30)),  # E without port: alice and carol both corroborated
            ("203.0.113.9", h(31)),  # F without port: nobody else seen with F
            ("203.0.113.9", h(60), 2100),  # bob, endpoint G, but far from sighting 5
            ("203.0.113.9", h(62)),  # G without port, within 1 day of bob's anchor
        ]
    )
    ident = _identity(
        ["endpoint:E", "endpoint:E", "endpoint:E", "endpoint:F", "endpoint:G", "endpoint:G"],
        [h(10), h(11), h(30), h(31), h(60), h(62)],
    )
    att = attribute(S, L)
    out = resolve_by_recurrence(att, ident, window=dt.timedelta(days=1))
    assert out["status"].to_list() == [
        "attributed",
        "attributed",
        "ambiguous",
        "ambiguous",
        "attributed",
        "attributed",
    ]
    assert "2 of the candidates were seen with the same endpoint:E" in out["reason"][2]
    assert out["subscriber_id"][5] == "bob"
    # The same sighting 5 days after the anchor is out of a 1-day window.
    far = resolve_by_recurrence(
        att,
        ident.with_columns(ts=pl.col("ts").shift(-1).fill_null(h(160))),
        window=dt.timedelta(days=1),
    )
    assert far["status"][5] == "ambiguous"


def test_sightings_resolved_by_recurrence_do_not_anchor_others() -> None:
    L = _shared_address()
    S = sightings([("203.0.113.9", h(5), 1100), ("203.0.113.9", h(30)), ("203.0.113.9", h(90))])
    att = attribute(S, L)
    # Sighting 1 shares an identity with the lease fact 0; sighting 2 shares one only with 1.
    ident = _identity(["wallet:A", "wallet:A", None], [h(5), h(30), h(90)])
    out = resolve_by_recurrence(att, ident)
    assert out["status"].to_list() == ["attributed", "attributed", "ambiguous"]
    ident2 = _identity(["wallet:A", "wallet:A", "wallet:A"], [h(5), h(30), h(90)])
    chained = resolve_by_recurrence(att, ident2, window=dt.timedelta(hours=30))
    # 2 is 85 h from the lease fact: 1 (resolved by recurrence) may not vouch for it.
    assert chained["status"].to_list() == ["attributed", "attributed", "ambiguous"]

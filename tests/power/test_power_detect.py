"""Scoring: small synthetic populations that pin behaviour, plus the realistic generator."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
from power_synth import (
    START,
    cold_storage,
    ev_charging,
    farm,
    heat_pump,
    household,
    rig,
    storage_boiler,
    to_readings,
)

from minewatch.energy import hashrate_range
from minewatch.power.detect import SCORES, score, screen
from minewatch.power.features import account_features
from minewatch.schema import ACCOUNTS, SCREEN_FIELDS

DAYS = 84
POSITIVES = ("rig1", "rig05", "night_cafe", "from_start", "farm_rig")
HARD_NEGATIVES = ("heat", "ev", "boiler", "server", "vacation", "cold")


def _accounts(ids: list[str]) -> pa.Table:
    def tariff(a: str) -> str:
        if a.startswith("farm"):
            return "agricultural"
        if a.startswith(("cold", "night_cafe", "shop")):
            return "commercial"
        return "residential"

    return pa.table(
        {
            "account_id": ids,
            "tariff_class": [tariff(a) for a in ids],
            "capacity_kva": [8.0] * len(ids),
            "address": [None] * len(ids),
            "region": ["north"] * len(ids),
            "transformer_id": ["T1"] * len(ids),
        },
        schema=ACCOUNTS,
    )


def build_population() -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(2026)
    c = {f"h{i:03d}": household(rng, DAYS, vacation=rng.random() < 0.25) for i in range(240)}
    c |= {f"farm{i:02d}": farm(rng, DAYS) for i in range(40)}
    c |= {f"shop{i:02d}": 0.6 * household(rng, DAYS) + 0.3 for i in range(40)}
    c["rig1"] = household(rng, DAYS) + rig(DAYS, 1.0, 40)
    c["rig05"] = household(rng, DAYS) + rig(DAYS, 0.5, 30)
    c["night_cafe"] = 0.6 * household(rng, DAYS) + 0.3 + rig(DAYS, 2.0, 35, night_only=True)
    c["from_start"] = household(rng, DAYS) + rig(DAYS, 1.2, 0)
    c["farm_rig"] = farm(rng, DAYS) + rig(DAYS, 3.0, 50)
    for i in range(4):
        c[f"heat{i}"] = household(rng, DAYS) + heat_pump(rng, DAYS)
        c[f"ev{i}"] = household(rng, DAYS) + ev_charging(rng, DAYS)
        c[f"boiler{i}"] = household(rng, DAYS) + storage_boiler(DAYS, 2.5, 30)
        c[f"server{i}"] = household(rng, DAYS) + rig(DAYS, 0.08, 40)
        c[f"vacation{i}"] = household(rng, DAYS, vacation=True)
        c[f"cold{i}"] = cold_storage(rng, DAYS)
    readings = to_readings(c)
    return readings, _accounts(sorted(c))


@pytest.fixture(scope="module")
def population() -> tuple[pa.Table, pa.Table]:
    return build_population()


@pytest.fixture(scope="module")
def scored(population: tuple[pa.Table, pa.Table]) -> dict[str, dict[str, object]]:
    readings, accounts = population
    table = screen(readings, accounts)
    assert table.schema == SCORES
    assert tuple(table.schema.names[: len(SCREEN_FIELDS)]) == SCREEN_FIELDS
    return {r["account_id"]: r for r in table.to_pylist()}


def test_a_one_kilowatt_step_is_flagged_with_size_date_and_checkable_reasons(scored: dict) -> None:
    r = scored["rig1"]
    assert r["flagged"] and r["score"] > 0.9
    assert r["added_load_kw"] == pytest.approx(1.0, abs=0.05)
    assert r["since"] == START + timedelta(days=40)
    first = r["reasons"][0]
    assert first.startswith("+1.0 kW flat since 2026-02-14, ")
    assert "minimum" in first and "→" in first
    assert any(x.startswith("load factor ") for x in r["reasons"])


@pytest.mark.parametrize("name", POSITIVES)
def test_positives_are_flagged(scored: dict, name: str) -> None:
    assert scored[name]["flagged"], scored[name]


@pytest.mark.parametrize("kind", HARD_NEGATIVES)
def test_honest_hard_negatives_are_not_flagged(scored: dict, kind: str) -> None:
    for i in range(4):
        r = scored[f"{kind}{i}"]
        assert not r["flagged"], r


def test_heat_pump_in_winter_is_recognised_as_weather_driven(scored: dict) -> None:
    for i in range(4):
        r = scored[f"heat{i}"]
        assert r["score"] <= 0.05 + 1e-9
        if r["evidence"] == "step":
            assert r["reasons"][0].startswith("looks weather-driven")


def test_positives_rank_above_every_hard_negative(scored: dict) -> None:
    worst_positive = min(scored[p]["score"] for p in POSITIVES)
    best_negative = max(
        r["score"] for a, r in scored.items() if a.rstrip("0123456789") in HARD_NEGATIVES
    )
    assert worst_positive > best_negative


def test_level_night_and_peer_reasons(scored: dict) -> None:
    start = scored["from_start"]
    assert start["evidence"] == "level" and start["since"] is None
    assert any("median of" in x and "residential in north" in x for x in start["reasons"])
    assert any("present since before the data begins" in x for x in start["reasons"])
    cafe = scored["night_cafe"]
    assert cafe["reasons"][0].startswith("+2.0 kW flat since 2026-02-09, night minimum")
    farm_rig = scored["farm_rig"]
    assert farm_rig["added_load_kw"] == pytest.approx(3.0, abs=0.1)


def test_implied_hash_rates_follow_the_energy_table(scored: dict) -> None:
    small = {h["algo"]: h for h in scored["rig1"]["hashrate"]}
    assert "sha256d" not in small  # no SHA-256 ASIC draws as little as 1 kW
    assert {"randomx", "ethash"} <= set(small)
    lo, hi = hashrate_range("randomx", scored["rig1"]["added_load_kw"] * 1000)
    assert small["randomx"]["low_hs"] == pytest.approx(lo)
    assert small["randomx"]["high_hs"] == pytest.approx(hi)
    big = {h["algo"] for h in scored["farm_rig"]["hashrate"]}
    assert "sha256d" in big
    assert scored["h000"]["hashrate"] is None or scored["h000"]["added_load_kw"] > 0


def test_prior_rescales_and_scores_are_deterministic(population: tuple) -> None:
    readings, accounts = population
    features = account_features(readings)
    a = score(features, accounts).to_pylist()
    b = score(features, accounts).to_pylist()
    assert a == b
    low = {r["account_id"]: r["score"] for r in score(features, accounts, prior=0.001).to_pylist()}
    for r in a:
        if 0.06 < r["score"] < 0.89:  # between the rules' cap and floor
            assert low[r["account_id"]] < r["score"]


def test_empty_features_give_an_empty_score_table() -> None:
    assert score(account_features(to_readings({}))).num_rows == 0


@pytest.fixture(scope="module")
def realistic() -> tuple[pa.Table, pa.Table, dict[str, bool]]:
    """A small population from the benchmark generator (a seed not used for fitting)."""
    meters = pytest.importorskip("minewatch.lab.meters")
    data = meters.generate(n_accounts=1000, days=56, resolution="hourly", seed=4242)
    truth = dict(
        zip(data.truth["account_id"].to_pylist(), data.truth["mining"].to_pylist(), strict=True)
    )
    return account_features(data.readings, tz="Etc/GMT-1"), data.accounts, truth


def test_realistic_generator_ranking_and_flags(realistic: tuple) -> None:
    features, accounts, truth = realistic
    out = score(features, accounts)
    ranked = [truth[a] for a in out.column("account_id").to_pylist()]
    n_pos = sum(ranked)
    assert sum(ranked[:n_pos]) / n_pos >= 0.7  # R-precision (56 days, shorter than fitted)
    flags = out.column("flagged").to_pylist()
    flagged = [m for m, f in zip(ranked, flags, strict=True) if f]
    assert sum(flagged) / len(flagged) >= 0.85


def test_verified_outcomes_train_the_supervised_model(realistic: tuple) -> None:
    from sklearn.metrics import roc_auc_score

    features, accounts, truth = realistic
    ids = features.column("account_id").to_pylist()
    known = ids[::2]
    labels = pa.table(
        {"account_id": known, "label": pa.array([int(truth[a]) for a in known], pa.int8())}
    )
    out = score(features, accounts, labels=labels).to_pylist()
    assert all(0.0 <= r["score"] <= 1.0 for r in out)
    unseen = [r for r in out if r["account_id"] not in set(known)]
    y = [truth[r["account_id"]] for r in unseen]
    assert roc_auc_score(y, [r["score"] for r in unseen]) >= 0.9


def test_night_block_rule_tells_a_night_rig_from_storage_heating() -> None:
    from minewatch.power.detect import rule_checks, with_peers

    rng = np.random.default_rng(11)
    hours = np.arange(DAYS * 24)
    night = (hours % 24) < 7
    cold = np.repeat(np.clip(np.linspace(1.0, 4.0, DAYS) + rng.normal(0, 0.6, DAYS), 0.5, None), 24)
    curves = {
        "night_rig": household(rng, DAYS) + rig(DAYS, 2.0, 0, night_only=True),
        "storage_heating": household(rng, DAYS) + night * cold,
        "plain": household(rng, DAYS),
    }
    feats = account_features(to_readings(curves))
    _, _, block = rule_checks(with_peers(feats, None))
    got = dict(zip(feats.column("account_id").to_pylist(), block.tolist(), strict=True))
    assert got == {"night_rig": True, "plain": False, "storage_heating": False}
    rows = {r["account_id"]: r for r in score(feats).to_pylist()}
    assert rows["night_rig"]["score"] >= 0.9 and rows["night_rig"]["flagged"]
    assert any("from night to night" in r for r in rows["night_rig"]["reasons"])
    assert not any("from night to night" in r for r in rows["storage_heating"]["reasons"])

"""Address normalisation and subscriber ↔ account linking."""

from __future__ import annotations

import polars as pl
import pytest

from minewatch.fusion.address import clean, link_accounts, match_confidence, parse

FULL = "浙江省杭州市西湖区文三路100号3幢2单元502室"


@pytest.mark.parametrize(
    "variant",
    [
        FULL,
        "杭州市西湖区文三路100号3栋2单元502室",  # 栋 for 幢, no province
        "西湖区文三路100号3号楼2单元502室",  # 号楼, no province or city
        "杭州西湖区文三路１００号三栋二单元五〇二",  # full-width digits, Chinese numerals
        "西湖区文三路100号3-2-502",  # building-unit-room
        "浙江杭州西湖区文三路100号第三幢2单元502室",  # short province/city, 第三
        "杭州市西湖区翠苑街道文三路100号3幢2单元502",  # with street (街道), without 室
        "Rm 502, Unit 2, Bldg 3, No. 100 Wensan Rd, Xihu District, Hangzhou",  # Latin
        "杭州市西湖区文三路100号 Building 3 Unit 2 Room 502",  # mixed scripts
        "杭州市西湖区文三路１００號３棟２單元５０２室",  # traditional characters, full-width
    ],
)
def test_variants_of_one_flat_normalise_to_one_key(variant: str) -> None:
    assert parse(variant).key() == "wensan:road|100|3|2|502"
    conf, conflicts = match_confidence(FULL, variant)
    assert conf >= 0.9 and conflicts == []


def test_components_are_recognised() -> None:
    a = parse("浙江省杭州市西湖区翠苑街道翠苑一区社区文三路100号3幢2单元5层502室")
    assert (a.province, a.city, a.county) == ("浙江省", "杭州市", "西湖区")
    assert a.county_key == "xihu" and a.town_key == "cuiyuan"
    assert (a.number, a.building, a.unit, a.floor, a.room) == ("100", "3", "2", "5", "502")
    assert a.road == "文三路"


def test_full_width_to_half_width_and_numerals() -> None:
    assert clean("ＡＢＣ１２３－４") == "ABC123-4"
    assert clean("三幢二十三单元一百零一室") == "3幢23单元101室"


def test_different_room_or_building_is_not_a_match() -> None:
    assert match_confidence(FULL, "杭州市西湖区文三路100号3幢2单元503室")[0] == 0.0
    conf, conflicts = match_confidence(FULL, "杭州市西湖区文三路100号4幢2单元502室")
    assert conf == 0.0 and conflicts == ["building"]
    assert match_confidence(FULL, "杭州市西湖区学院路100号3幢2单元502室")[0] == 0.0


def test_typo_in_road_name_still_matches_with_lower_confidence() -> None:
    conf, _ = match_confidence(FULL, "杭州市西湖区文山路100号3幢2单元502室")  # 三 → 山
    assert 0.85 <= conf < 1.0


def test_less_detail_gives_low_confidence() -> None:
    conf, _ = match_confidence(FULL, "杭州市西湖区文三路100号")
    assert conf < 0.7


def test_latin_directions_and_abbreviations() -> None:
    assert match_confidence("杭州市上城区中山北路28号", "28 Zhongshan N. Rd, Shangcheng District")[
        0
    ] == pytest.approx(1.0)
    assert match_confidence("杭州市上城区中山北路28号", "28 Zhongshan South Road")[0] == 0.0


def test_empty_and_garbage_addresses_do_not_crash() -> None:
    assert parse("").script == "empty"
    assert parse("???").key() == "_|_|_|_|_"
    assert match_confidence("", FULL)[0] == 0.0


def test_link_explicit_first_then_address_and_list_the_rest() -> None:
    subs = pl.DataFrame(
        {
            "subscriber_id": ["s1", "s2", "s3", "s4", "s5", "s6", "s7"],
            "address": [
                FULL,
                "杭州市上城区中山北路28号",
                "杭州市西湖区文三路100号3幢2单元503室",
                "杭州市拱墅区湖墅南路9号1幢1单元101室",
                "",
                "杭州市滨江区江南大道8号1幢1单元101室",
                "杭州市滨江区江南大道8号1幢1单元101室",
            ],
        }
    )
    accs = pl.DataFrame(
        {
            "account_id": ["a1", "a2", "a3", "a4", "a5", "a6"],
            "address": [
                "西湖区文三路100号3-2-502",
                "28 Zhongshan N. Rd, Shangcheng District, Hangzhou",
                "杭州市西湖区文三路100号3栋2单元503",
                "滨江区江南大道1号",
                "meter room, north gate",
                "江南大道8号1-1-101",
            ],
        }
    )
    explicit = pl.DataFrame({"subscriber_id": ["s4", "s9"], "account_id": ["a5", "a1"]})
    res = link_accounts(subs, accs, explicit)
    got = {r["subscriber_id"]: (r["account_id"], r["method"]) for r in res.links.to_dicts()}
    assert got == {
        "s1": ("a1", "address_exact"),
        "s2": ("a2", "address_exact"),
        "s3": ("a3", "address_exact"),
        "s4": ("a5", "explicit"),
    }
    um = {r["subscriber_id"]: r["reason"] for r in res.unmatched_subscribers.to_dicts()}
    # s6 and s7 share an address: a tie, reported, not resolved.
    assert set(um) == {"s5", "s6", "s7", "s9"}
    assert "several" in um["s6"] or "another" in um["s6"]
    assert "unknown account" in um["s9"]
    assert res.unmatched_accounts["account_id"].to_list() == ["a4", "a6"]
    # Nothing vanished: each subscriber is linked or listed.
    linked = set(res.links["subscriber_id"])
    assert linked | set(um) >= set(subs["subscriber_id"])

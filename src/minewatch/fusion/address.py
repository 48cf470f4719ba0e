"""Address normalisation (Chinese and Latin script) and subscriber ↔ meter-account linking.

The operator and the utility write the same flat differently: ``浙江省杭州市西湖区文三路100号
3幢2单元502室``, ``杭州西湖区文三路１００号三栋二单元五〇二``, ``西湖区文三路100号3-2-502``,
``Rm 502, Unit 2, Bldg 3, No. 100 Wensan Rd, Xihu District, Hangzhou``. Each is parsed into
the same components (REFERENCE.md, "Chinese addresses"): province / city / district or
county / street or town / community or village / road and number / compound / building /
unit / floor / room.

What comes from libraries, and what is written here:

* ``unicodedata.normalize("NFKC")`` turns full-width digits, letters and punctuation into
  half-width ones.
* `jionlp <https://github.com/dongrixinyu/JioNLP>`_ (``parse_location``) recognises the
  administrative part — province, city, county, also when written short (``浙江杭州西湖区``)
  or left out — from its bundled administrative-division table. Where a county name alone is
  ambiguous (``西湖区`` is in Hangzhou and in Nanchang) it leaves province and city empty
  rather than guessing, which is what matching needs (``cpca`` was tried: it picks one, here
  the wrong one). Its results are cached per administrative prefix.
* `cn2an <https://github.com/Ailln/cn2an>`_ turns Chinese numerals into digits
  (``三`` → 3, ``二十三`` → 23, ``五〇二`` → 502).
* `pypinyin <https://github.com/mozillazg/python-pinyin>`_ writes Chinese road, compound and
  district names in toneless pinyin, so ``文三路`` and ``Wensan Rd`` get one key.
* `RapidFuzz <https://github.com/rapidfuzz/RapidFuzz>`_ scores name similarity (typos) for
  whole columns of candidate pairs at once.

Hand-written here, because no library above does it: the grammar below the street level
(road + 号, 栋/幢/号楼/座, 单元, 层, 室, the ``3-2-502`` forms), the Latin-script parser, and
the matching rules (which components must agree, how confidence is computed). jionlp's own
detail parsing stops at the town/village; libpostal would parse more but needs a model
download that cannot be installed here (REFERENCE.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

# Traditional characters and variants that change nothing about the place.
_VARIANTS = str.maketrans(
    {
        "號": "号",
        "棟": "栋",
        "樓": "楼",
        "單": "单",
        "區": "区",
        "縣": "县",
        "鎮": "镇",
        "鄉": "乡",
        "門": "门",
        "—": "-",
        "–": "-",
        "－": "-",
        "~": "-",
        "之": "-",
    }
)
_HAN = r"\u4e00-\u9fff"
_CN_NUM = "零〇一二两三四五六七八九十百千"
_MARKERS = "号楼|号|幢|栋|座|单元|室|层|楼|弄|巷|组|门"
_CN_NUM_RE = re.compile(rf"第?([{_CN_NUM}]+)(?=({_MARKERS})|$|[^{_HAN}])")

_ROAD_TYPES = {
    "大道": "avenue",
    "大街": "street",
    "路": "road",
    "街": "street",
    "巷": "lane",
    "弄": "lane",
    "道": "road",
}
_LATIN_ROAD_TYPES = {
    "road": "road",
    "rd": "road",
    "street": "street",
    "st": "street",
    "avenue": "avenue",
    "ave": "avenue",
    "av": "avenue",
    "boulevard": "avenue",
    "blvd": "avenue",
    "lane": "lane",
    "ln": "lane",
    "alley": "lane",
}
_DIRECTIONS = {
    "north": "bei",
    "n": "bei",
    "south": "nan",
    "s": "nan",
    "east": "dong",
    "e": "dong",
    "west": "xi",
    "w": "xi",
    "middle": "zhong",
    "central": "zhong",
    "mid": "zhong",
}

_RE_TOWN = re.compile(rf"([{_HAN}]{{2,8}}?(?:街道|镇|乡))")
_RE_COMMUNITY = re.compile(rf"([{_HAN}]{{2,8}}?(?:社区|村))(?!路|街|大道|巷)")
_RE_ROAD_NO = re.compile(rf"([{_HAN}A-Za-z]{{1,12}}?(大道|大街|路|街|巷|弄|道))\s*(\d+)\s*号(?!楼)")
_RE_ROAD = re.compile(rf"([{_HAN}]{{1,12}}?(大道|大街|路|街|巷|弄))")
_RE_COMPOUND = re.compile(
    rf"([{_HAN}A-Za-z]{{2,10}}?(?:小区|花园|家园|公寓|大厦|新村|苑|广场|中心|公馆|城))"
)
_RE_BUILDING = re.compile(r"(\d+)\s*(?:号楼|幢|栋|座|#楼|#|号院)")
_RE_UNIT = re.compile(r"(\d+)\s*单元")
_RE_ROOM = re.compile(r"(\d+)\s*(?:室|房|号房|户)")
_RE_FLOOR = re.compile(r"(\d+)\s*(?:层|楼)(?!\d)")
_RE_DASH3 = re.compile(r"(?<![\d-])(\d{1,3})-(\d{1,2})-(\d{2,4})(?![\d-])")
_RE_DASH2 = re.compile(r"(?<![\d-])(\d{1,3})-(\d{2,4})(?![\d-])")
_RE_TRAILING_NUM = re.compile(r"(\d{3,4})\s*$")

_L_ROOM = re.compile(r"\b(?:room|rm|apt|apartment|flat|suite|ste)\.?\s*#?\s*(\d+)")
_L_UNIT = re.compile(r"\b(?:unit|entrance|ent)\.?\s*#?\s*(\d+)")
_L_BUILDING = re.compile(r"\b(?:building|bldg|bld|blk|block|tower)\.?\s*#?\s*(\d+)")
_L_FLOOR = re.compile(r"\b(?:floor|fl)\.?\s*(\d+)|\b(\d+)(?:st|nd|rd|th)\s+floor")
_L_ROAD = re.compile(
    r"(?:\bno\.?\s*)?\b(\d+)?\s*,?\s*((?:[a-z]+\s+){0,3}?[a-z]+)\s+"
    r"(road|rd|street|st|avenue|ave|av|boulevard|blvd|lane|ln|alley)\b\.?"
)
_L_NO = re.compile(r"\bno\.?\s*(\d+)")
_L_DISTRICT = re.compile(r"\b([a-z]+)\s+(?:district|county|dist)\b")
_L_TOWN = re.compile(r"\b([a-z]+)\s+(?:subdistrict|sub-district|town|township)\b")
_L_COMMUNITY = re.compile(r"\b([a-z]+)\s+(?:community|village)\b")


@dataclass(frozen=True)
class Address:
    """One parsed address. Names of places are in toneless pinyin (``*_key``) for matching."""

    raw: str
    script: str  # zh, latin, mixed, empty
    province: str | None = None
    city: str | None = None
    county: str | None = None
    county_key: str | None = None
    city_key: str | None = None
    town_key: str | None = None
    community_key: str | None = None
    road: str | None = None  # as written (Chinese or Latin), for people
    road_key: str | None = None  # pinyin stem + ":" + type, e.g. "wensan:road"
    number: str | None = None
    compound_key: str | None = None
    building: str | None = None
    unit: str | None = None
    floor: str | None = None
    room: str | None = None
    latin_text: str | None = None

    def key(self) -> str:
        """A canonical string of the decisive components (empty parts kept as ``_``)."""
        parts = (self.road_key, self.number, self.building, self.unit, self.room)
        return "|".join(p or "_" for p in parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pinyin(text: str) -> str:
    from pypinyin import lazy_pinyin

    return "".join(lazy_pinyin(text)).lower().replace(" ", "")


@functools.cache
def _jionlp() -> Any:
    # jionlp prints a banner on import; stdout is reserved for JSON Lines.
    with contextlib.redirect_stdout(io.StringIO()):
        import jionlp

    return jionlp


@functools.lru_cache(maxsize=65536)
def _admin(prefix: str) -> tuple[str | None, str | None, str | None, int]:
    """(province, city, county, length of the administrative part) of a text prefix."""
    if not re.search(rf"[{_HAN}]", prefix):
        return None, None, None, 0
    jio = _jionlp()
    with contextlib.redirect_stdout(io.StringIO()):
        res = jio.parse_location(prefix)
    detail = res.get("detail") or ""
    consumed = len(prefix) - len(detail) if prefix.endswith(detail) else 0
    return res.get("province"), res.get("city"), res.get("county"), consumed


def _cn_numerals(text: str) -> str:
    import cn2an

    def conv(m: re.Match[str]) -> str:
        s = m.group(1)
        try:
            return str(int(cn2an.cn2an(s, "smart")))
        except (ValueError, KeyError):
            return m.group(0)

    return _CN_NUM_RE.sub(conv, text)


def _stem_key(name: str, suffix: str, table: dict[str, str]) -> str:
    stem = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else name
    return f"{_pinyin(stem)}:{table.get(suffix, 'road')}"


def _strip_admin_words(s: str) -> str:
    return re.sub(r"(省|市|自治区|特别行政区|区|县|旗)$", "", s)


def clean(text: str) -> str:
    """NFKC (full-width → half-width), variants, Chinese numerals, spacing."""
    s = unicodedata.normalize("NFKC", text or "").translate(_VARIANTS).strip()
    s = _cn_numerals(s)
    s = re.sub(r"\s*-\s*", "-", s)
    s = re.sub(rf"(?<=[{_HAN}\d])\s+(?=[{_HAN}\d])", "", s)
    return s


@functools.lru_cache(maxsize=262144)
def parse(text: str) -> Address:
    """Parse one address written in Chinese, Latin script, or a mix of both."""
    raw = text or ""
    s = clean(raw)
    if not s:
        return Address(raw=raw, script="empty")
    has_han = bool(re.search(rf"[{_HAN}]", s))
    has_latin = bool(re.search(r"[A-Za-z]{3,}", s))
    script = "mixed" if has_han and has_latin else ("zh" if has_han else "latin")
    f: dict[str, str | None] = {}
    rest = s
    if has_han:
        m = re.search(r"\d", rest)
        prefix = rest[: m.start()] if m else rest
        # The administrative part ends at its last 省/市/区/县/州/盟/旗 before the first digit;
        # cutting there keeps jionlp's cache keyed by administrative names, not by roads.
        ends = [i for i, ch in enumerate(prefix) if ch in "省市区县州盟旗"]
        prefix = prefix[: ends[-1] + 1] if ends else ""
        province, city, county, consumed = _admin(prefix)
        f["province"], f["city"], f["county"] = province, city, county
        rest = rest[consumed:]
        if county:
            f["county_key"] = _pinyin(_strip_admin_words(county))
        if city:
            f["city_key"] = _pinyin(_strip_admin_words(city))
        _parse_zh(rest, f)
    if has_latin:
        _parse_latin(s.lower(), f)
        f["latin_text"] = re.sub(r"[^a-z0-9]", "", s.lower())
    if not f.get("room") and not f.get("unit") and f.get("building") is None:
        m3 = _RE_DASH3.search(s)
        if m3:
            f["building"], f["unit"], f["room"] = m3.group(1), m3.group(2), m3.group(3)
    for k in ("number", "building", "unit", "floor", "room"):
        if f.get(k) is not None:
            f[k] = str(int(str(f[k])))
    return Address(raw=raw, script=script, **f)


def _take(pattern: re.Pattern[str], s: str) -> tuple[re.Match[str] | None, str]:
    m = pattern.search(s)
    if not m:
        return None, s
    return m, s[: m.start()] + " " + s[m.end() :]


def _parse_zh(s: str, f: dict[str, str | None]) -> None:
    rest = re.sub(r"^[" + _HAN + r"]{2,6}?(?:省|市|区|县)(?=[" + _HAN + r"])", "", s)
    m, rest = _take(_RE_TOWN, rest)
    if m:
        f["town_key"] = _pinyin(re.sub(r"(街道|镇|乡)$", "", m.group(1)))
    m, rest = _take(_RE_COMMUNITY, rest)
    if m:
        f["community_key"] = _pinyin(re.sub(r"(社区|村)$", "", m.group(1)))
    m, rest = _take(_RE_ROAD_NO, rest)
    if m:
        f["road"], f["number"] = m.group(1), m.group(3)
        f["road_key"] = _stem_key(m.group(1), m.group(2), _ROAD_TYPES)
    else:
        m, rest = _take(_RE_ROAD, rest)
        if m:
            f["road"] = m.group(1)
            f["road_key"] = _stem_key(m.group(1), m.group(2), _ROAD_TYPES)
    m, rest = _take(_RE_COMPOUND, rest)
    if m:
        f["compound_key"] = _pinyin(m.group(1))
    m, rest = _take(_RE_BUILDING, rest)
    if m:
        f["building"] = m.group(1)
    m, rest = _take(_RE_UNIT, rest)
    if m:
        f["unit"] = m.group(1)
    m, rest = _take(_RE_ROOM, rest)
    if m:
        f["room"] = m.group(1)
    m, rest = _take(_RE_FLOOR, rest)
    if m:
        f["floor"] = m.group(1)
    if f.get("building") is None and f.get("room") is None:
        m3 = _RE_DASH3.search(rest)
        if m3:
            f["building"], f["unit"], f["room"] = m3.group(1), m3.group(2), m3.group(3)
        else:
            m2 = _RE_DASH2.search(rest)
            if m2:
                f["building"], f["room"] = m2.group(1), m2.group(2)
    elif f.get("room") is None:
        m4 = _RE_TRAILING_NUM.search(rest.strip())
        if m4 and re.search(r"[\u4e00-\u9fff\d]", rest):
            f["room"] = m4.group(1)
    if f.get("number") is None:
        mn = re.search(r"(\d+)\s*号(?!楼)", rest)
        if mn:
            f["number"] = mn.group(1)


def _parse_latin(s: str, f: dict[str, str | None]) -> None:
    s = re.sub(r"[,;]", " , ", s)
    s = re.sub(r"(?<=[a-z])\.", " ", s)
    for key, pat in (("room", _L_ROOM), ("unit", _L_UNIT), ("building", _L_BUILDING)):
        if f.get(key) is None:
            m = pat.search(s)
            if m:
                f[key] = m.group(1)
    if f.get("floor") is None:
        m = _L_FLOOR.search(s)
        if m:
            f["floor"] = m.group(1) or m.group(2)
    if f.get("road_key") is None:
        for m in _L_ROAD.finditer(s):
            words = m.group(2).split()
            words = [w for w in words if w not in ("no", "and", "the")]
            while words and words[0].isdigit():
                words = words[1:]
            if not words:
                continue
            stem = "".join(_DIRECTIONS.get(w, w) if i else w for i, w in enumerate(words))
            f["road"] = f"{' '.join(words)} {m.group(3)}"
            f["road_key"] = f"{stem}:{_LATIN_ROAD_TYPES[m.group(3)]}"
            if m.group(1) and f.get("number") is None:
                f["number"] = m.group(1)
            break
    if f.get("number") is None:
        m = _L_NO.search(s)
        if m:
            f["number"] = m.group(1)
    if f.get("county_key") is None:
        m = _L_DISTRICT.search(s)
        if m:
            f["county_key"] = m.group(1)
    if f.get("town_key") is None:
        m = _L_TOWN.search(s)
        if m:
            f["town_key"] = m.group(1)
    if f.get("community_key") is None:
        m = _L_COMMUNITY.search(s)
        if m:
            f["community_key"] = m.group(1)


# --------------------------------------------------------------------------------------------
# Matching

# Weight of each component in the confidence. Decisive components (number, building, unit,
# room) must not conflict: a different room is a different premises, whatever else agrees.
WEIGHTS: dict[str, float] = {
    "road_key": 0.25,
    "number": 0.15,
    "building": 0.15,
    "unit": 0.1,
    "room": 0.2,
    "compound_key": 0.05,
    "county_key": 0.05,
    "town_key": 0.025,
    "community_key": 0.025,
}
DECISIVE = ("number", "building", "unit", "room")
ROAD_MIN_SIMILARITY = 0.85
LINK_THRESHOLD = 0.7
TIE_MARGIN = 0.05

_PARTS = list(WEIGHTS)


def parse_frame(ids: list[str], addresses: list[str | None]) -> pl.DataFrame:
    """Parsed components of many addresses as a frame (one parse per distinct address)."""
    rows = [parse(a or "").as_dict() for a in addresses]
    df = pl.DataFrame(rows, schema={k: pl.String for k in Address.__dataclass_fields__})
    return df.with_columns(pl.Series("id", ids, dtype=pl.String))


def _score_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """Confidence and reasons for candidate pairs (columns ``<part>_a``/``<part>_b``)."""
    from rapidfuzz import fuzz, process

    road_sim = process.cpdist(
        pairs["road_key_a"].fill_null("").to_list(),
        pairs["road_key_b"].fill_null("").to_list(),
        scorer=fuzz.ratio,
        workers=1,
    )
    pairs = pairs.with_columns(pl.Series("road_sim", road_sim / 100.0))
    agree: list[pl.Expr] = []
    both: list[pl.Expr] = []
    either: list[pl.Expr] = []
    conflicts: list[pl.Expr] = []
    for part, w in WEIGHTS.items():
        a, b = pl.col(f"{part}_a"), pl.col(f"{part}_b")
        present = a.is_not_null() & b.is_not_null()
        if part == "road_key":
            ok = pl.col("road_sim") >= ROAD_MIN_SIMILARITY
            val = pl.when(present & ok).then(pl.col("road_sim") * w).otherwise(0.0)
            bad = present & ~ok
        elif part == "county_key":
            # A Latin address may name the district or city anywhere in its text.
            ok = (
                (a == b)
                | pl.col("latin_text_a").str.contains(b, literal=True).fill_null(False)
                | pl.col("latin_text_b").str.contains(a, literal=True).fill_null(False)
            )
            val = pl.when(present & ok).then(pl.lit(w)).otherwise(0.0)
            bad = present & ~ok
        else:
            val = pl.when(present & (a == b)).then(pl.lit(w)).otherwise(0.0)
            bad = present & (a != b)
        agree.append(val)
        both.append(pl.when(present).then(pl.lit(w)).otherwise(0.0))
        either.append(pl.when(a.is_not_null() | b.is_not_null()).then(pl.lit(w)).otherwise(0.0))
        label = part.removesuffix("_key")
        conflicts.append(pl.when(bad).then(pl.lit(label)))
    pairs = pairs.with_columns(
        agree=pl.sum_horizontal(agree),
        both=pl.sum_horizontal(both),
        either=pl.sum_horizontal(either),
        conflicts=pl.concat_list(conflicts).list.drop_nulls(),
    )
    decisive_conflict = pl.col("conflicts").list.eval(pl.element().is_in(list(DECISIVE))).list.any()
    road_conflict = pl.col("conflicts").list.contains("road")
    coverage = pl.col("both") / pl.col("either")
    conf = (pl.col("agree") / pl.col("both")) * coverage
    pairs = pairs.with_columns(
        confidence=pl.when(decisive_conflict | road_conflict | (pl.col("both") <= 0))
        .then(0.0)
        .otherwise(conf)
        .fill_nan(0.0)
        .round(3)
    )
    return pairs


def _pairs(sub: pl.DataFrame, acc: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    a = sub.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in on]))
    b = acc.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in on]))
    return (
        a.rename({c: f"{c}_a" for c in a.columns if c not in on})
        .join(b.rename({c: f"{c}_b" for c in b.columns if c not in on}), on=on, how="inner")
        .with_columns(
            [pl.col(c).alias(f"{c}_a") for c in on] + [pl.col(c).alias(f"{c}_b") for c in on]
        )
    )


@dataclass
class LinkResult:
    """Subscriber ↔ account links, and what could not be linked (with the reason)."""

    links: pl.DataFrame  # subscriber_id, account_id, method, confidence, reason
    unmatched_subscribers: pl.DataFrame  # subscriber_id, address, reason
    unmatched_accounts: pl.DataFrame  # account_id, address, reason

    def summary(self) -> dict[str, int]:
        by = self.links.group_by("method").len()
        out = {str(k): int(v) for k, v in by.iter_rows()}
        out["unmatched_subscribers"] = self.unmatched_subscribers.height
        out["unmatched_accounts"] = self.unmatched_accounts.height
        return out


def link_accounts(
    subscribers: pl.DataFrame,
    accounts: pl.DataFrame,
    explicit: pl.DataFrame | None = None,
    *,
    threshold: float = LINK_THRESHOLD,
) -> LinkResult:
    """Link subscribers to meter accounts: explicit id links first, then by address.

    ``explicit`` has ``subscriber_id, account_id`` (a ``account_id`` column on
    ``subscribers`` works too). Address links are one-to-one: a pair is linked when each is
    the other's best candidate, the confidence reaches ``threshold`` and no other candidate
    comes within ``TIE_MARGIN`` (a tie is reported, not resolved).
    """
    subs = subscribers.select(
        pl.col("subscriber_id").cast(pl.String), pl.col("address").cast(pl.String)
    )
    accs = accounts.select(pl.col("account_id").cast(pl.String), pl.col("address").cast(pl.String))
    ex = explicit
    if ex is None and "account_id" in subscribers.columns:
        ex = subscribers.select("subscriber_id", "account_id")
    link_frames: list[pl.DataFrame] = []
    unmatched_s: list[pl.DataFrame] = []
    if ex is not None and ex.height:
        ex = ex.select(
            pl.col("subscriber_id").cast(pl.String), pl.col("account_id").cast(pl.String)
        ).drop_nulls()
        ex = ex.filter(pl.col("account_id") != "")
        known = ex.join(subs.select("subscriber_id"), on="subscriber_id", how="semi").join(
            accs.select("account_id"), on="account_id", how="semi"
        )
        unknown = ex.join(known, on=["subscriber_id", "account_id"], how="anti")
        link_frames.append(
            known.unique().with_columns(
                method=pl.lit("explicit"),
                confidence=pl.lit(1.0),
                reason=pl.lit("explicit account link"),
            )
        )
        if unknown.height:
            unmatched_s.append(
                unknown.join(subs, on="subscriber_id", how="left").select(
                    "subscriber_id",
                    "address",
                    pl.format("explicit link names unknown account {}", "account_id").alias(
                        "reason"
                    ),
                )
            )
    linked_s = pl.concat([f.select("subscriber_id") for f in link_frames]) if link_frames else None
    linked_a = pl.concat([f.select("account_id") for f in link_frames]) if link_frames else None
    rest_s = subs if linked_s is None else subs.join(linked_s, on="subscriber_id", how="anti")
    rest_a = accs if linked_a is None else accs.join(linked_a, on="account_id", how="anti")

    ps = parse_frame(rest_s["subscriber_id"].to_list(), rest_s["address"].to_list())
    pa_ = parse_frame(rest_a["account_id"].to_list(), rest_a["address"].to_list())
    cols = ["id", "raw", "latin_text", *_PARTS]
    ps, pa_ = ps.select(cols), pa_.select(cols)
    # Blocking: candidates share the decisive numbers, or the road and number.
    cand = pl.concat(
        [
            _pairs(ps, pa_, ["number", "building", "room"]),
            _pairs(ps, pa_, ["building", "unit", "room"]),
            _pairs(ps, pa_, ["road_key", "number"]),
            _pairs(ps, pa_, ["compound_key", "building", "room"]),
        ],
        how="diagonal_relaxed",
    )
    cand = cand.select(
        pl.col("id_a"),
        pl.col("id_b"),
        pl.col("raw_a"),
        pl.col("raw_b"),
        pl.col("latin_text_a"),
        pl.col("latin_text_b"),
        *[pl.col(f"{p}_a") for p in _PARTS],
        *[pl.col(f"{p}_b") for p in _PARTS],
    ).unique(subset=["id_a", "id_b"])
    address_links = pl.DataFrame(
        schema={
            "subscriber_id": pl.String,
            "account_id": pl.String,
            "method": pl.String,
            "confidence": pl.Float64,
            "reason": pl.String,
        }
    )
    ties = pl.DataFrame(schema={"id_a": pl.String, "reason": pl.String})
    if cand.height:
        scored = _score_pairs(cand).filter(pl.col("confidence") > 0)
        scored = scored.with_columns(
            rank_a=pl.col("confidence").rank("ordinal", descending=True).over("id_a"),
            rank_b=pl.col("confidence").rank("ordinal", descending=True).over("id_b"),
            second_a=pl.col("confidence")
            .sort(descending=True)
            .get(1, null_on_oob=True)
            .over("id_a"),
            second_b=pl.col("confidence")
            .sort(descending=True)
            .get(1, null_on_oob=True)
            .over("id_b"),
        )
        best = scored.filter((pl.col("rank_a") == 1) & (pl.col("rank_b") == 1))
        tie = (pl.col("confidence") - pl.col("second_a").fill_null(-1.0) < TIE_MARGIN) | (
            pl.col("confidence") - pl.col("second_b").fill_null(-1.0) < TIE_MARGIN
        )
        good = best.filter((pl.col("confidence") >= threshold) & ~tie)
        exact = pl.col("confidence") >= 0.999
        address_links = good.select(
            pl.col("id_a").alias("subscriber_id"),
            pl.col("id_b").alias("account_id"),
            pl.when(exact)
            .then(pl.lit("address_exact"))
            .otherwise(pl.lit("address_fuzzy"))
            .alias("method"),
            pl.col("confidence"),
            pl.format("address: {} ≈ {}", pl.col("raw_a"), pl.col("raw_b")).alias("reason"),
        )
        ties = (
            scored.filter((pl.col("rank_a") == 1) & (pl.col("confidence") >= threshold))
            .join(
                address_links.select(pl.col("subscriber_id").alias("id_a")), on="id_a", how="anti"
            )
            .select(
                "id_a",
                pl.when(tie)
                .then(pl.format("several accounts match equally well (best {})", "confidence"))
                .otherwise(pl.lit("its best account matches another subscriber better"))
                .alias("reason"),
            )
        )
    links = pl.concat([*link_frames, address_links], how="diagonal_relaxed").select(
        "subscriber_id", "account_id", "method", "confidence", "reason"
    )
    um_s = (
        subs.join(links.select("subscriber_id"), on="subscriber_id", how="anti")
        .join(
            pl.concat(unmatched_s).select("subscriber_id")
            if unmatched_s
            else pl.DataFrame(schema={"subscriber_id": pl.String}),
            on="subscriber_id",
            how="anti",
        )
        .join(ties.rename({"id_a": "subscriber_id"}), on="subscriber_id", how="left")
        .with_columns(reason=pl.coalesce(pl.col("reason"), pl.lit("no account address matches")))
    )
    um_s = pl.concat([um_s, *unmatched_s], how="diagonal_relaxed")
    um_a = accs.join(links.select("account_id"), on="account_id", how="anti").with_columns(
        reason=pl.lit("no subscriber address matches")
    )
    return LinkResult(links=links, unmatched_subscribers=um_s, unmatched_accounts=um_a)


def match_confidence(a: str, b: str) -> tuple[float, list[str]]:
    """Confidence that two addresses name the same premises, and the conflicting parts."""
    pa_, pb = parse(a), parse(b)
    row: dict[str, Any] = {"latin_text_a": pa_.latin_text, "latin_text_b": pb.latin_text}
    for p in _PARTS:
        row[f"{p}_a"] = getattr(pa_, p)
        row[f"{p}_b"] = getattr(pb, p)
    df = pl.DataFrame([row], schema={k: pl.String for k in row})
    out = _score_pairs(df).row(0, named=True)
    return float(out["confidence"]), list(out["conflicts"])

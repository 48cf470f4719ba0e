"""A small synthetic city with ground truth, for measuring attribution and fusion.

What is in it, and how each part is made (every number below is a parameter of
:class:`CitySpec`, chosen as an assumption and stated in docs/fusion.md):

Premises and meters
    The meter side is :func:`minewatch.lab.meters.generate` (published household and business
    load profiles, mining injected in several disguises, honest hard negatives such as heat
    pumps, EV charging and always-on businesses). Each meter account is one premises. Its
    tariff class decides what the premises is: residential accounts are households;
    commercial accounts become internet cafés, shops, offices (enterprise), schools and
    government offices (public institutions, billed on a ``public`` tariff); agricultural
    accounts are farms (small business); industrial accounts are factories (enterprise). A
    few non-mining offices and schools get CPU cryptojacking on top (``cpu_jacking``): a
    0.08–0.3 kW load is added to their readings from a random day and a CPU miner to the
    network side.

Subscribers, addresses and links
    Every premises has one broadband subscriber. The operator and the utility write its
    address differently: one with province and city, with 幢, ``3-2-502`` or Latin script;
    the other without province, with 栋/号楼, full-width digits, Chinese numerals, and
    occasionally a typo in the road name or a missing unit. A share of subscribers carries an
    explicit account link (``explicit_link_share``); the rest must be linked by address.

Leases
    Households, shops, cafés and farms dial PPPoE every day at a random time between 02:00 and
    05:00 local time and get a new address from their BRAS pool (RADIUS Start / Stop per
    session; ``interim_share`` of sessions also send an Interim-Update every 8 hours). A share
    of the households (``cgnat_share``) is behind CGNAT:
    RADIUS gives them a 100.64.0.0/10 address and the CGNAT log a block of ports on a shared
    public address for that session. Offices, schools and government offices have fixed
    addresses: government offices from a canonical lease file, schools by DHCP reservation
    from an ISC dhcpd (``dhcpd.leases``, renewed every 12 h, one-day lease time), enterprises
    from a Kea server (memfile CSV, the same rhythm). DHCP leases name the client's hardware
    address; the subscribers table carries it (``hwaddr``) for those subscribers. Damage is
    injected on purpose (RADIUS): one NAS whose clock is ``skew_s`` off, duplicate
    (retransmitted) records, lost Start and lost Stop records, and a few sessions with no
    record at all.

Network evidence (what ``minewatch scan`` / ``flows detect`` would print)
    Generated per rig and day, at the address (and port) the rig's subscriber held at that
    moment — looked up in the true sessions, never in the parsed leases:

    * each rig is ``hidden`` (VPN / proxy: never seen) with ``p_hidden``, speaks clear-text
      Stratum with ``p_cleartext``, otherwise TLS;
    * on each day the rig runs, the operator's collectors see a session with ``p_seen``;
    * clear text gives a ``stratum`` detection, confidence U(0.9, 0.99), the hash rate from
      shares with ±25% (log-normal) error, wallet and pool; TLS gives a ``behavior``
      detection, confidence U(0.55, 0.9), no hash rate; a third of TLS sightings also give an
      ``intel`` hit (pool domain in DNS/SNI), confidence U(0.4, 0.7);
    * sessions from behind CGNAT carry the public address and a port from the block, except
      ``p_no_port`` of them (collectors that aggregate ports away);
    * a rig's sessions go to its pool's address (one address per pool, ``POOL_IPS``);
      look-alike sessions go to a peer drawn per session from 240.0.0.0/15;
    * false positives: full nodes and other look-alike traffic at ``node_share`` of the
      non-mining premises (``behavior``, U(0.5, 0.9), on half the days, a new peer each
      time), look-alikes pinned to one far end (VPN/tunnel keep-alives) at ``pinned_share``
      (the same, always to one address of 241.0.0.0/16, port 1194), random one-off
      ``behavior`` false alarms at a rate of ``fp_rate`` per premises-day, and ``intel`` hits
      from exchange and crypto-site visits at ``intel_share`` of premises.

Finance
    Pool payouts to the wallets of a share of the clear-text rigs, and exchange deposits of
    wallets that never appear in a Stratum login.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch import energy

_TS = pl.Datetime("us", "UTC")

DISTRICTS = ("西湖区", "上城区", "拱墅区", "滨江区", "余杭区", "萧山区")
DISTRICT_PY = ("Xihu", "Shangcheng", "Gongshu", "Binjiang", "Yuhang", "Xiaoshan")
STREETS = ("翠苑街道", "文新街道", "湖滨街道", "长庆街道", "西兴街道", "五常街道", "城厢街道")
ROADS = (
    "文三路",
    "文一路",
    "学院路",
    "教工路",
    "古墩路",
    "莫干山路",
    "湖墅南路",
    "江南大道",
    "滨盛路",
    "文二西路",
    "五常大道",
    "金城路",
    "建设一路",
    "庆春路",
    "延安路",
    "解放路",
    "中山北路",
    "凤起路",
    "天目山路",
    "紫荆花路",
    "丰潭路",
    "益乐路",
    "萍水街",
    "登云路",
)
# A typo the other agency might make: one character swapped for a homophone or neighbour.
TYPOS = {"三": "山", "一": "壹", "学": "雪", "工": "公", "墩": "敦", "干": "甘", "南": "楠"}
COMPOUNDS = ("翠苑一区", "嘉绿苑", "金都花园", "星洲花园", "阳光家园", "和睦新村", "紫金公寓")
PINYIN_ROADS = {
    "文三路": "Wensan Rd",
    "文一路": "Wenyi Rd",
    "学院路": "Xueyuan Rd",
    "教工路": "Jiaogong Rd",
    "古墩路": "Gudun Rd",
    "中山北路": "Zhongshan N. Rd",
    "延安路": "Yan'an Rd",
    "庆春路": "Qingchun Rd",
}
CN_DIGITS = "〇一二三四五六七八九"

COMMERCIAL_KINDS = ("internet_cafe", "business", "enterprise", "school", "government")
COMMERCIAL_SHARES = (0.15, 0.45, 0.25, 0.10, 0.05)
POOLS = (
    ("pool.supportxmr.example", "xmr", "rx/0", 3333),
    ("btc.viabtc.example", "btc", "sha256d", 3333),
    ("ltc.f2pool.example", "ltc", "scrypt", 8888),
    ("etc.2miners.example", "etc", "etchash", 1010),
    ("rvn.nanopool.example", "rvn", "kawpow", 12433),
)
#: Each pool's address (documentation range); look-alike traffic talks to other peers.
POOL_IPS = ("192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.40", "192.0.2.50")


@dataclass(frozen=True)
class CitySpec:
    n_premises: int = 4000
    days: int = 28
    resolution: str = "hourly"
    prevalence: float = 0.03
    seed: int = 0
    cgnat_share: float = 0.2
    explicit_link_share: float = 0.4
    cpu_jacking: int = 10
    # network observation model
    p_hidden: float = 0.15
    p_cleartext: float = 0.55
    p_seen: float = 0.6
    p_no_port: float = 0.08
    node_share: float = 0.01
    pinned_share: float = 0.01
    fp_rate: float = 0.0005
    intel_share: float = 0.02
    # lease damage
    skew_s: int = 900
    dup_share: float = 0.005
    lost_start_share: float = 0.003
    lost_stop_share: float = 0.003
    unlogged_share: float = 0.002
    interim_share: float = 0.1
    # finance
    payout_share: float = 0.3
    unrelated_wallets: int = 40


@dataclass
class City:
    spec: CitySpec
    window_start: dt.datetime
    subscribers: pl.DataFrame
    accounts: pl.DataFrame  # the utility's accounts as fusion sees them
    meter_accounts: pa.Table  # the accounts the meter generator made (for screening)
    readings: pa.Table
    explicit_links: pl.DataFrame
    truth: pl.DataFrame  # one row per premises
    sessions: pl.DataFrame  # true address holdings (dynamic, CGNAT and static)
    radius_text: str
    cgnat_csv: str
    static_csv: str
    detections: list[dict[str, Any]]
    detection_truth: pl.DataFrame  # row → true subscriber (None for no subscriber), mining
    finance_csv: str
    notes: dict[str, Any] = field(default_factory=dict)
    dhcpd_text: str = ""
    kea_csv: str = ""

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write every input the CLI takes (and the truth) into ``out``."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        paths = {
            "radius": d / "radius-detail",
            "cgnat": d / "cgnat.csv",
            "static": d / "static-leases.csv",
            "dhcpd": d / "dhcpd.leases",
            "kea": d / "kea-leases4.csv",
            "subscribers": d / "subscribers.csv",
            "accounts": d / "accounts.csv",
            "links": d / "links.csv",
            "detections": d / "detections.jsonl",
            "finance": d / "finance.csv",
            "readings": d / "readings.parquet",
            "meter_accounts": d / "meter-accounts.parquet",
            "truth": d / "truth.parquet",
            "detection_truth": d / "detection-truth.parquet",
        }
        paths["radius"].write_text(self.radius_text, encoding="utf-8")
        paths["cgnat"].write_text(self.cgnat_csv, encoding="utf-8")
        paths["static"].write_text(self.static_csv, encoding="utf-8")
        paths["dhcpd"].write_text(self.dhcpd_text, encoding="utf-8")
        paths["kea"].write_text(self.kea_csv, encoding="utf-8")
        self.subscribers.write_csv(paths["subscribers"])
        self.accounts.write_csv(paths["accounts"])
        self.explicit_links.write_csv(paths["links"])
        with paths["detections"].open("w", encoding="utf-8") as fh:
            for r in self.detections:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        paths["finance"].write_text(self.finance_csv, encoding="utf-8")
        import pyarrow.parquet as pq

        pq.write_table(self.readings, paths["readings"])
        pq.write_table(self.meter_accounts, paths["meter_accounts"])
        self.truth.write_parquet(paths["truth"])
        self.detection_truth.write_parquet(paths["detection_truth"])
        return paths


# --------------------------------------------------------------------------------------------
# Addresses


def _cn_num(n: int) -> str:
    """Small numbers in Chinese numerals (1-99), the way people write building numbers."""
    if n < 10:
        return CN_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else CN_DIGITS[tens]) + "十" + (CN_DIGITS[ones] if ones else "")


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "0" <= c <= "9" else c for c in s)


def _addresses(
    rng: np.random.Generator, kind: np.ndarray, district: np.ndarray
) -> tuple[list[str], list[str]]:
    """(telecom address, utility address) per premises, unique per premises."""
    n = len(kind)
    flat = kind == "residential"
    road = rng.integers(0, len(ROADS), n)
    street = rng.integers(0, len(STREETS), n)
    compound = rng.integers(0, len(COMPOUNDS), n)
    # Unique (road, number) per non-flat premises; flats share buildings.
    number = rng.integers(1, 400, n)
    building = rng.integers(1, 30, n)
    unit = rng.integers(1, 7, n)
    room = rng.integers(1, 19, n) * 100 + rng.integers(1, 5, n)
    seen: set[tuple[int, ...]] = set()
    for i in range(n):
        while True:
            key = (
                (
                    int(district[i]),
                    int(road[i]),
                    int(number[i]),
                    int(building[i]),
                    int(unit[i]),
                    int(room[i]),
                )
                if flat[i]
                else (int(district[i]), int(road[i]), int(number[i]), -1, -1, -1)
            )
            if key not in seen:
                seen.add(key)
                break
            number[i] = rng.integers(1, 900)
    style_t = rng.random(n)
    style_u = rng.random(n)
    typo = rng.random(n) < 0.03
    no_unit = rng.random(n) < 0.02
    telecom: list[str] = []
    utility: list[str] = []
    for i in range(n):
        dn = DISTRICTS[district[i]]
        rd = ROADS[road[i]]
        st = STREETS[street[i]]
        b, u, r, no = int(building[i]), int(unit[i]), int(room[i]), int(number[i])
        if flat[i]:
            if style_t[i] < 0.45:
                t = f"浙江省杭州市{dn}{st}{rd}{no}号{COMPOUNDS[compound[i]]}{b}幢{u}单元{r}室"
            elif style_t[i] < 0.8:
                t = f"杭州市{dn}{rd}{no}号{b}-{u}-{r}"
            elif style_t[i] < 0.97:
                t = f"浙江杭州{dn}{rd}{no}号{b}栋{u}单元{r}"
            elif rd in PINYIN_ROADS:
                t = (
                    f"Rm {r}, Unit {u}, Bldg {b}, No. {no} {PINYIN_ROADS[rd]}, "
                    f"{DISTRICT_PY[district[i]]} District, Hangzhou"
                )
            else:
                t = f"杭州市{dn}{rd}{no}号{b}幢{u}单元{r}室"
            rd_u = rd
            if typo[i]:
                for a, z in TYPOS.items():
                    if a in rd_u:
                        rd_u = rd_u.replace(a, z, 1)
                        break
            unit_txt = "" if no_unit[i] else f"{u}单元"
            if style_u[i] < 0.35:
                v = f"{dn}{rd_u}{no}号{b}号楼{unit_txt}{r}"
            elif style_u[i] < 0.6:
                fw_no, fw_b, fw_r = _fullwidth(str(no)), _fullwidth(str(b)), _fullwidth(str(r))
                v = f"杭州市{dn}{rd_u}{fw_no}号{fw_b}栋{unit_txt}{fw_r}室"
            elif style_u[i] < 0.8:
                cn_unit = "" if no_unit[i] else f"{_cn_num(u)}单元"
                v = f"{dn}{rd_u}{no}号{_cn_num(b)}幢{cn_unit}{r}室"
            else:
                v = (
                    f"杭州{dn}{rd_u}{no}号{b}-{u}-{r}"
                    if not no_unit[i]
                    else f"杭州{dn}{rd_u}{no}号{b}栋{r}室"
                )
        else:
            t = f"浙江省杭州市{dn}{st}{rd}{no}号" if style_t[i] < 0.6 else f"杭州市{dn}{rd}{no}号"
            rd_u = rd
            if typo[i]:
                for a, z in TYPOS.items():
                    if a in rd_u:
                        rd_u = rd_u.replace(a, z, 1)
                        break
            v = f"{dn}{rd_u}{_fullwidth(str(no)) if style_u[i] < 0.3 else no}号"
        telecom.append(t)
        utility.append(v)
    return telecom, utility


# --------------------------------------------------------------------------------------------
# Leases


def _ip(prefix: str, idx: np.ndarray) -> pl.Series:
    return pl.Series([f"{prefix}.{int(i) // 250}.{int(i) % 250 + 2}" for i in idx], dtype=pl.String)


def _sessions(
    rng: np.random.Generator,
    spec: CitySpec,
    t0: dt.datetime,
    sub_ids: list[str],
    dynamic: np.ndarray,
    cgnat: np.ndarray,
    utc_offset_h: int,
) -> pl.DataFrame:
    """True address holdings: one PPPoE session per dynamic subscriber per day."""
    days = spec.days
    dyn = np.flatnonzero(dynamic)
    n = len(dyn)
    # Re-dial between 02:00 and 05:00 local time each day; session d runs from the re-dial of
    # day d to the re-dial of day d+1. The first session began the day before the window.
    off = rng.uniform(2 * 3600, 5 * 3600, (n, days + 1))
    day_s = (np.arange(days + 1) - 1) * 86400.0 - utc_offset_h * 3600.0
    starts = day_s[None, :] + off
    ends = np.empty_like(starts)
    ends[:, :-1] = starts[:, 1:] - rng.uniform(2, 20, (n, days))
    ends[:, -1] = starts[:, -1] + 86400.0
    is_cg = cgnat[dyn]
    n_pub = int((~is_cg).sum())
    n_cg = int(is_cg.sum())
    # A BRAS never hands out an address still in use: consecutive days draw from the two
    # halves of each pool (a session of day d ends before any session of day d+2 starts).
    pub_half = max(1, int(n_pub * 1.25))
    cg_half = max(1, int(n_cg * 1.25))
    block = 1024
    blocks_per_ip = (65536 - 1024) // block
    blk_half = max(1, int(np.ceil(n_cg * 1.1 / blocks_per_ip))) * blocks_per_ip
    ip_idx = np.empty((n, days + 1), dtype=np.int64)
    blk_idx = np.full((n, days + 1), -1, dtype=np.int64)
    for d in range(days + 1):
        half = d % 2
        ip_idx[~is_cg, d] = half * pub_half + rng.permutation(pub_half)[:n_pub]
        ip_idx[is_cg, d] = half * cg_half + rng.permutation(cg_half)[:n_cg]
        blk_idx[is_cg, d] = half * blk_half + rng.permutation(blk_half)[:n_cg]
    rows_sub = np.repeat(dyn, days + 1)
    cg_flat = np.repeat(is_cg, days + 1)
    ipf = ip_idx.ravel()
    bf = blk_idx.ravel()
    base = pl.DataFrame(
        {
            "sub_i": rows_sub,
            "day": np.tile(np.arange(days + 1), n),
            "start_s": starts.ravel(),
            "end_s": ends.ravel(),
            "cgnat": cg_flat,
            "ip_i": ipf,
            "blk": bf,
        }
    )
    t0_us = int(t0.timestamp() * 1e6)
    base = base.with_columns(
        start=(pl.lit(t0_us) + (pl.col("start_s") * 1e6).cast(pl.Int64)).cast(_TS),
        end=(pl.lit(t0_us) + (pl.col("end_s") * 1e6).cast(pl.Int64)).cast(_TS),
    )
    base = base.with_columns(
        subscriber_id=pl.Series("s", np.asarray(sub_ids, dtype=object)[rows_sub], dtype=pl.String),
        private_ip=pl.when(pl.col("cgnat")).then(
            pl.format("100.64.{}.{}", (pl.col("ip_i") // 250), (pl.col("ip_i") % 250 + 2))
        ),
        ip=pl.when(pl.col("cgnat"))
        .then(pl.format("100.64.{}.{}", (pl.col("ip_i") // 250), (pl.col("ip_i") % 250 + 2)))
        .otherwise(
            pl.format(
                "198.{}.{}.{}",
                18 + pl.col("ip_i") // 62500,
                (pl.col("ip_i") % 62500) // 250,
                pl.col("ip_i") % 250 + 2,
            )
        ),
        public_ip=pl.when(pl.col("cgnat")).then(
            pl.format("203.0.113.{}", 10 + pl.col("blk") // blocks_per_ip)
        ),
        port_lo=pl.when(pl.col("cgnat")).then(
            (1024 + (pl.col("blk") % blocks_per_ip) * block).cast(pl.Int32)
        ),
        port_hi=pl.when(pl.col("cgnat")).then(
            (1024 + (pl.col("blk") % blocks_per_ip) * block + block - 1).cast(pl.Int32)
        ),
        nas=pl.format("192.0.2.{}", 1 + pl.col("sub_i") % 4),
    )
    return base.drop("start_s", "end_s", "ip_i", "blk")


def _radius_text(
    rng: np.random.Generator, spec: CitySpec, sess: pl.DataFrame
) -> tuple[str, dict[str, int], pl.DataFrame]:
    """FreeRADIUS detail text for the sessions, with damage; and which sessions are unlogged."""
    n = sess.height
    u = rng.random((n, 4))
    lost_start = u[:, 0] < spec.lost_start_share
    lost_stop = u[:, 1] < spec.lost_stop_share
    unlogged = u[:, 2] < spec.unlogged_share
    dup = u[:, 3] < spec.dup_share
    s = sess.with_columns(
        sid=pl.format("{}-{}", pl.col("subscriber_id"), pl.col("day")),
        lost_start=pl.Series(lost_start),
        lost_stop=pl.Series(lost_stop),
        unlogged=pl.Series(unlogged),
        dup=pl.Series(dup),
        skew=pl.when(pl.col("nas") == "192.0.2.4").then(spec.skew_s).otherwise(0),
    )
    start_rec = s.filter(~pl.col("lost_start") & ~pl.col("unlogged")).select(
        "sid",
        "subscriber_id",
        "ip",
        "nas",
        "skew",
        "dup",
        pl.lit("Start").alias("status"),
        pl.col("start").alias("t"),
        pl.lit(0).alias("stime"),
    )
    stop_rec = s.filter(~pl.col("lost_stop") & ~pl.col("unlogged")).select(
        "sid",
        "subscriber_id",
        "ip",
        "nas",
        "skew",
        pl.lit(False).alias("dup"),
        pl.lit("Stop").alias("status"),
        pl.col("end").alias("t"),
        ((pl.col("end") - pl.col("start")).dt.total_seconds()).cast(pl.Int64).alias("stime"),
    )
    # A share of the sessions send an Interim-Update every 8 hours.
    interim_sel = s.filter(~pl.col("unlogged") & pl.Series(rng.random(n) < spec.interim_share))
    interims = [
        interim_sel.with_columns(t=pl.col("start") + pl.duration(hours=8 * k))
        .filter(pl.col("t") < pl.col("end"))
        .select(
            "sid",
            "subscriber_id",
            "ip",
            "nas",
            "skew",
            pl.lit(False).alias("dup"),
            pl.lit("Interim-Update").alias("status"),
            "t",
            pl.lit(8 * 3600 * k).alias("stime"),
        )
        for k in (1, 2)
    ]
    recs = pl.concat(
        [start_rec, stop_rec, start_rec.filter(pl.col("dup")), *interims],
        how="vertical_relaxed",
    )
    recs = recs.sort("t")
    ev = pl.col("t") - pl.duration(seconds=pl.col("skew"))
    text_col = pl.format(
        '{}\n\tAcct-Status-Type = {}\n\tAcct-Session-Id = "{}"\n\tUser-Name = "{}"\n'
        '\tFramed-IP-Address = {}\n\tNAS-IP-Address = {}\n\tEvent-Timestamp = "{} UTC"\n'
        "\tAcct-Session-Time = {}\n\tAcct-Delay-Time = 0\n\tTimestamp = {}\n",
        pl.col("t").dt.strftime("%a %b %d %H:%M:%S %Y"),
        pl.col("status"),
        pl.col("sid"),
        pl.col("subscriber_id"),
        pl.col("ip"),
        pl.col("nas"),
        ev.dt.strftime("%b %d %Y %H:%M:%S"),
        pl.col("stime"),
        pl.col("t").dt.epoch("s"),
    )
    text = "\n".join(recs.select(text_col.alias("x"))["x"].to_list()) + "\n"
    counts = {
        "records": recs.height,
        "lost_start": int(lost_start.sum()),
        "lost_stop": int(lost_stop.sum()),
        "unlogged_sessions": int(unlogged.sum()),
        "duplicates": int(start_rec["dup"].sum()),
        "skewed_nas": 1,
    }
    return text, counts, s.select("subscriber_id", "day", "unlogged")


def _cgnat_csv(sess: pl.DataFrame) -> str:
    cg = sess.filter(pl.col("cgnat"))
    alloc = cg.select(
        pl.lit("alloc").alias("event"),
        pl.col("start").alias("t"),
        "private_ip",
        "public_ip",
        "port_lo",
        "port_hi",
    )
    rel = cg.select(
        pl.lit("release").alias("event"),
        pl.col("end").alias("t"),
        "private_ip",
        "public_ip",
        "port_lo",
        "port_hi",
    )
    df = (
        pl.concat([alloc, rel])
        .sort("t")
        .with_columns(ts=pl.col("t").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    return df.select("event", "ts", "private_ip", "public_ip", "port_lo", "port_hi").write_csv()


# --------------------------------------------------------------------------------------------
# Rigs and network evidence


def _rig_hardware(
    rng: np.random.Generator, added_kw: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool index, algo, true hash rate H/s) per rig from its power draw."""
    n = len(added_kw)
    w = added_kw * 1000.0
    pool = np.empty(n, dtype=np.int64)
    hs = np.empty(n)
    cpu = added_kw < 0.35
    gpu = (added_kw >= 0.35) & (added_kw < 1.5)
    asic = added_kw >= 1.5
    pool[cpu] = 0
    hs[cpu] = w[cpu] / rng.uniform(0.0125, 0.04, int(cpu.sum()))
    g_kaw = gpu & (rng.random(n) < 0.3)
    pool[gpu] = 3
    pool[g_kaw] = 4
    hs[gpu] = w[gpu] / rng.uniform(2.0e-6, 5.0e-6, int(gpu.sum()))
    hs[g_kaw] = w[g_kaw] / rng.uniform(4.5e-6, 6.0e-6, int(g_kaw.sum()))
    scr = asic & (rng.random(n) < 0.25)
    sha = asic & ~scr
    pool[sha] = 1
    pool[scr] = 2
    sha_eff = np.array([h.j_per_hash for h in energy.HARDWARE if h.algo == "sha256d"])
    hs[sha] = w[sha] / rng.choice(sha_eff, int(sha.sum()))
    hs[scr] = w[scr] / rng.uniform(0.2e-9, 1.6e-9, int(scr.sum()))
    algo = np.asarray([POOLS[p][2] for p in pool], dtype=object)
    return pool, algo, hs


def _detections(
    rng: np.random.Generator,
    spec: CitySpec,
    t0: dt.datetime,
    truth: pl.DataFrame,
    sess: pl.DataFrame,
    static: pl.DataFrame,
    utc_offset_h: int,
) -> tuple[list[dict[str, Any]], pl.DataFrame, list[tuple[str, str]]]:
    days = spec.days
    rigs = truth.filter(pl.col("mining"))
    n_r = rigs.height
    hidden = rng.random(n_r) < spec.p_hidden
    clear = rng.random(n_r) < spec.p_cleartext
    start_day = (
        rigs.select(
            ((pl.col("rig_start") - pl.lit(t0)).dt.total_seconds() / 86400.0)
            .fill_null(0.0)
            .clip(0, days)
        )
        .to_series()
        .to_numpy()
    )
    night = (rigs["disguise"] == "night_only").to_numpy()
    outages = (rigs["disguise"] == "outages").to_numpy()
    day_idx = np.arange(days)
    on = (day_idx[None, :] >= np.ceil(start_day)[:, None]) & ~hidden[:, None]
    on &= ~(outages[:, None] & (rng.random((n_r, days)) < 0.2))
    seen = on & (rng.random((n_r, days)) < spec.p_seen)
    r_i, d_i = np.nonzero(seen)
    # Local hour of the session start: 06-23 (or 22-01 for night-only rigs).
    hour = np.where(night[r_i], rng.uniform(22, 25.5, len(r_i)), rng.uniform(6, 23, len(r_i)))
    first_s = d_i * 86400.0 + (hour - utc_offset_h) * 3600.0
    dur_s = rng.uniform(600, 3 * 3600, len(r_i))
    rig_rows = pl.DataFrame(
        {
            "rig": r_i,
            "first_s": first_s,
            "dur_s": dur_s,
            "kind_det": np.where(clear[r_i], "stratum", "behavior"),
        }
    )
    wallets = np.array(
        [f"4{rng.integers(10**15, 10**16)}{i:05d}" for i in range(n_r)], dtype=object
    )
    # A few rigs of one operator share a wallet across premises (a farm split over homes).
    share = rng.random(n_r) < 0.1
    wallets[share] = wallets[0] if n_r else wallets[share]
    rig_meta = rigs.with_columns(
        wallet=pl.Series(wallets, dtype=pl.String), clear=pl.Series(clear), hidden=pl.Series(hidden)
    ).with_row_index("rig")
    rig_rows = rig_rows.with_columns(pl.col("rig").cast(pl.UInt32)).join(
        rig_meta.select(
            "rig", "subscriber_id", "premises_id", "pool", "algo", "hashrate_hs", "wallet"
        ),
        on="rig",
    )
    # Intel side-hits for a third of TLS sightings.
    extra = (
        rig_rows.filter(pl.col("kind_det") == "behavior")
        .sample(fraction=1 / 3, seed=int(rng.integers(1 << 31)))
        .with_columns(kind_det=pl.lit("intel"))
    )
    rig_rows = pl.concat([rig_rows, extra])
    rig_rows = rig_rows.with_columns(mining=pl.lit(True), fixed_peer=pl.lit(None, pl.Int64))

    # False positives at non-mining premises.
    non = truth.filter(~pl.col("mining"))
    n_n = non.height
    node = rng.random(n_n) < spec.node_share
    node_days = node[:, None] & (rng.random((n_n, days)) < 0.5)
    fp_days = rng.random((n_n, days)) < spec.fp_rate
    intel_p = rng.random(n_n) < spec.intel_share
    intel_days = intel_p[:, None] & (rng.random((n_n, days)) < 0.15)
    parts = []
    for mask, kind in ((node_days | fp_days, "behavior"), (intel_days, "intel")):
        p_i, pd_i = np.nonzero(mask)
        parts.append(
            pl.DataFrame(
                {
                    "nrow": p_i,
                    "first_s": pd_i * 86400.0
                    + (rng.uniform(6, 23, len(p_i)) - utc_offset_h) * 3600.0,
                    "dur_s": rng.uniform(300, 4 * 3600, len(p_i)),
                    "kind_det": [kind] * len(p_i),
                }
            )
        )
    # Look-alikes with one fixed far end (a VPN or tunnel keep-alive, a node pinned to one
    # peer), drawn from their own stream so the draws above stay as they were.
    vrng = np.random.default_rng([spec.seed, 0x76706E])
    vpn_days = (vrng.random(n_n) < spec.pinned_share)[:, None] & (vrng.random((n_n, days)) < 0.5)
    v_i, vd_i = np.nonzero(vpn_days)
    parts = [p.with_columns(fixed_peer=pl.lit(None, pl.Int64)) for p in parts]
    parts.append(
        pl.DataFrame(
            {
                "nrow": v_i,
                "first_s": vd_i * 86400.0 + (vrng.uniform(6, 23, len(v_i)) - utc_offset_h) * 3600.0,
                "dur_s": vrng.uniform(300, 4 * 3600, len(v_i)),
                "kind_det": ["behavior"] * len(v_i),
                "fixed_peer": v_i.astype(np.int64),
            }
        )
    )
    fps = (
        pl.concat(parts)
        .join(
            non.with_row_index("nrow").select(
                pl.col("nrow").cast(pl.Int64), "subscriber_id", "premises_id"
            ),
            on="nrow",
        )
        .drop("nrow")
        .with_columns(
            pool=pl.lit(None, pl.Int64),
            algo=pl.lit(None, pl.String),
            hashrate_hs=pl.lit(None, pl.Float64),
            wallet=pl.lit(None, pl.String),
            mining=pl.lit(False),
        )
    )
    rows = pl.concat(
        [
            rig_rows.drop("rig").with_columns(pl.col("pool").cast(pl.Int64)),
            fps.select(rig_rows.drop("rig").columns),
        ],
        how="vertical_relaxed",
    ).with_row_index("det")
    t0_us = int(t0.timestamp() * 1e6)
    rows = rows.with_columns(
        first=(pl.lit(t0_us) + (pl.col("first_s") * 1e6).cast(pl.Int64)).cast(_TS),
    )
    # Where was the subscriber at that moment? The true holding (session or static address).
    holdings = pl.concat(
        [
            sess.select(
                "subscriber_id",
                "start",
                "end",
                "ip",
                "public_ip",
                "port_lo",
                "port_hi",
                pl.col("unlogged").fill_null(False),
            ),
            static.select(
                "subscriber_id",
                "start",
                pl.col("end").fill_null(pl.lit(dt.datetime(2200, 1, 1, tzinfo=dt.UTC)).cast(_TS)),
                "ip",
                pl.lit(None, pl.String).alias("public_ip"),
                pl.lit(None, pl.Int32).alias("port_lo"),
                pl.lit(None, pl.Int32).alias("port_hi"),
                pl.lit(False).alias("unlogged"),
            ),
        ]
    ).sort("start")
    rows = (
        rows.sort("first")
        .join_asof(
            holdings,
            left_on="first",
            right_on="start",
            by="subscriber_id",
            strategy="backward",
            check_sortedness=False,
        )
        .filter(pl.col("start").is_not_null())
    )
    rows = rows.with_columns(
        last=pl.min_horizontal(
            pl.col("first") + pl.duration(seconds=pl.col("dur_s")),
            pl.col("end") - pl.duration(seconds=1),
        )
    )
    n = rows.height
    no_port = rng.random(n) < spec.p_no_port
    rnd_port = rng.integers(0, 1024, n)
    eph = rng.integers(32768, 61000, n)
    rows = rows.with_columns(
        src_ip=pl.coalesce(pl.col("public_ip"), pl.col("ip")),
        src_port=pl.when(pl.col("public_ip").is_not_null())
        .then(
            pl.when(pl.Series(no_port))
            .then(None)
            .otherwise(pl.col("port_lo") + pl.Series(rnd_port))
        )
        .otherwise(pl.Series(eph))
        .cast(pl.Int32),
        conf=pl.when(pl.col("kind_det") == "stratum")
        .then(pl.Series(rng.uniform(0.9, 0.99, n)))
        .when(pl.col("kind_det") == "behavior")
        .then(pl.Series(rng.uniform(0.55, 0.9, n)))
        .otherwise(pl.Series(rng.uniform(0.4, 0.7, n))),
        hr_noise=pl.Series(rng.lognormal(0.0, 0.25, n)),
    )
    # Where sessions without a pool go (full nodes, false alarms, exchange visits): a peer
    # drawn per session from another documentation range. Own stream, so the draws above
    # stay as they were.
    drng = np.random.default_rng([spec.seed, 0x647374])
    # Far ends from the reserved 240.0.0.0/4, which no range of the city uses.
    peer = drng.integers(1, 1 << 17, n)
    peer_ip = [f"240.{x >> 16}.{(x >> 8) & 255}.{x & 255}" for x in peer]
    peer_port = drng.choice(np.array([443, 8333, 18080, 30303]), n)
    out: list[dict[str, Any]] = []
    truth_rows = []
    for i, r in enumerate(rows.iter_rows(named=True)):
        kind = r["kind_det"]
        pool = POOLS[int(r["pool"])] if r["pool"] is not None else None
        hr = r["hashrate_hs"] * r["hr_noise"] if (kind == "stratum" and r["hashrate_hs"]) else None
        algo = pool[2] if (pool and kind == "stratum") else None
        pwr = energy.power_w_range(algo, hr) if hr else None
        dur = (r["last"] - r["first"]).total_seconds()
        reasons: list[str]
        if kind == "stratum":
            shares = {
                "submitted": max(1, int(dur / 30)),
                "accepted": max(1, int(dur / 31)),
                "rejected": 0,
            }
            reasons = [
                f"Stratum login and {shares['submitted']} share submissions to "
                f"{pool[0] if pool else '?'}"
            ]
        elif kind == "behavior":
            shares = None
            reasons = ["long-lived TLS session with periodic small upstream bursts (flow model)"]
        else:
            shares = None
            reasons = ["DNS/SNI name on the mining-pool list"]
        out.append(
            {
                "src_ip": r["src_ip"],
                "src_port": r["src_port"],
                "dst_ip": POOL_IPS[int(r["pool"])]
                if pool
                else (
                    peer_ip[i]
                    if r["fixed_peer"] is None
                    else f"241.0.{(r['fixed_peer'] >> 8) & 255}.{r['fixed_peer'] & 255}"
                ),
                "dst_port": pool[3]
                if pool
                else (int(peer_port[i]) if r["fixed_peer"] is None else 1194),
                "proto": "tcp",
                "first_seen": r["first"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "last_seen": r["last"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "detector": kind,
                "dialect": ("stratum_v1" if pool and pool[1] != "xmr" else "cryptonote")
                if kind == "stratum"
                else None,
                "confidence": round(float(r["conf"]), 3),
                "coin": pool[1] if pool and kind == "stratum" else None,
                "algo": algo,
                "pool_host": pool[0] if pool and kind != "behavior" else None,
                "wallet": r["wallet"] if kind == "stratum" else None,
                "worker": "rig1" if kind == "stratum" else None,
                "agent": "XMRig/6.16.0"
                if kind == "stratum" and pool and pool[1] == "xmr"
                else None,
                "shares": shares,
                "hashrate_hs": round(hr, 1) if hr else None,
                "power_w_range": [round(pwr[0], 1), round(pwr[1], 1)] if pwr else None,
                "reasons": reasons,
            }
        )
        truth_rows.append(
            {
                "row": len(out) - 1,
                "subscriber_id": r["subscriber_id"],
                "premises_id": r["premises_id"],
                "mining": bool(r["mining"]),
                "ip": r["src_ip"],
                "port": r["src_port"],
                "ts": r["first"],
                "has_lease": not r["unlogged"],
            }
        )
    wallet_list = [
        (str(w), str(p))
        for w, p in rig_meta.filter(pl.col("clear")).select("wallet", "premises_id").iter_rows()
    ]
    return out, pl.DataFrame(truth_rows), wallet_list


# --------------------------------------------------------------------------------------------


def build(spec: CitySpec | None = None) -> City:
    """Make the city. Deterministic for a given spec."""
    from minewatch.lab import meters

    sp = spec or CitySpec()
    rng = np.random.default_rng([sp.seed, 0x63697479])
    md = meters.generate(
        n_accounts=sp.n_premises,
        days=sp.days,
        resolution=sp.resolution,  # type: ignore[arg-type]
        prevalence=sp.prevalence,
        seed=sp.seed,
    )
    t0 = md.spec.window_start_utc
    utc_off = md.spec.utc_offset_hours
    macc = pl.from_arrow(md.accounts)
    mtruth = pl.from_arrow(md.truth)
    assert isinstance(macc, pl.DataFrame) and isinstance(mtruth, pl.DataFrame)
    n = macc.height
    tariff = macc["tariff_class"].to_numpy()
    kind = np.full(n, "residential", dtype=object)
    com = tariff == "commercial"
    kind[com] = rng.choice(COMMERCIAL_KINDS, int(com.sum()), p=COMMERCIAL_SHARES)
    kind[tariff == "agricultural"] = "business"
    kind[tariff == "industrial"] = "enterprise"
    city_tariff = tariff.copy()
    city_tariff[np.isin(kind, ["school", "government"])] = "public"
    district = rng.integers(0, len(DISTRICTS), n)
    telecom, utility = _addresses(rng, kind, district)
    sub_ids = [f"S{i:06d}" for i in range(n)]
    acc_ids = macc["account_id"].to_list()

    # CPU cryptojacking at offices and schools that do not already mine.
    mining = mtruth["mining"].to_numpy().copy()
    added = mtruth["added_kw"].to_numpy().copy()
    rig_start = mtruth["start"].to_list()
    disguise = mtruth["disguise"].to_list()
    cand = np.flatnonzero(np.isin(kind, ["enterprise", "school", "government"]) & ~mining)
    jack: Any = rng.choice(cand, min(sp.cpu_jacking, len(cand)), replace=False) if len(cand) else []
    readings = md.readings
    if len(jack):
        jack_kw = rng.uniform(0.08, 0.3, len(jack))
        jack_day = rng.integers(0, max(1, sp.days // 2), len(jack))
        for j, kw, d0 in zip(jack, jack_kw, jack_day, strict=True):
            mining[j] = True
            added[j] = kw
            rig_start[j] = t0 + dt.timedelta(days=int(d0))
            disguise[j] = "cpu_jacking"
        add = pl.DataFrame(
            {
                "account_id": [acc_ids[j] for j in jack],
                "add_kw": jack_kw,
                "from": [t0 + dt.timedelta(days=int(d)) for d in jack_day],
            },
            schema={"account_id": pl.String, "add_kw": pl.Float64, "from": _TS},
        )
        rd = pl.from_arrow(readings)
        assert isinstance(rd, pl.DataFrame)
        rd = rd.join(add, on="account_id", how="left").with_columns(
            kwh=pl.when(pl.col("add_kw").is_not_null() & (pl.col("ts") > pl.col("from")))
            .then(pl.col("kwh") + pl.col("add_kw") * pl.col("interval_s") / 3600.0)
            .otherwise(pl.col("kwh"))
        )
        readings = rd.drop("add_kw", "from").to_arrow().cast(readings.schema)

    pool_i, algo, hs = _rig_hardware(rng, np.where(mining, added, 0.0))
    truth = pl.DataFrame(
        {
            "premises_id": acc_ids,
            "account_id": acc_ids,
            "subscriber_id": sub_ids,
            "kind": kind.tolist(),
            "tariff_class": city_tariff.tolist(),
            "district": [DISTRICTS[d] for d in district],
            "mining": mining,
            "added_kw": np.where(mining, added, 0.0),
            "hard_negative": mtruth["hard_negative"].to_list(),
            "disguise": disguise,
            "rig_start": rig_start,
            "pool": np.where(mining, pool_i, -1),
            "algo": [a if m else None for a, m in zip(algo, mining, strict=True)],
            "hashrate_hs": np.where(mining, hs, np.nan),
        },
        schema_overrides={"rig_start": _TS},
    ).with_columns(
        pl.col("hashrate_hs").fill_nan(None),
        pl.when(pl.col("pool") >= 0).then(pl.col("pool")).alias("pool"),
    )
    static_kind = np.isin(kind, ["enterprise", "school", "government"])
    dynamic = ~static_kind
    cgnat = dynamic & (rng.random(n) < sp.cgnat_share) & (kind == "residential")
    truth = truth.with_columns(cgnat=pl.Series(cgnat), static=pl.Series(static_kind))
    sess = _sessions(rng, sp, t0, sub_ids, dynamic, cgnat, utc_off)
    radius_text, radius_counts, unlogged = _radius_text(rng, sp, sess)
    cg_csv = _cgnat_csv(sess)
    st_idx = np.flatnonzero(static_kind)
    static = pl.DataFrame(
        {
            "ip": [f"203.0.{114 + i // 250}.{i % 250 + 2}" for i in range(len(st_idx))],
            "start": [t0 - dt.timedelta(days=400)] * len(st_idx),
            "end": [None] * len(st_idx),
            "subscriber_id": [sub_ids[i] for i in st_idx],
            "port_lo": [None] * len(st_idx),
            "port_hi": [None] * len(st_idx),
        },
        schema={
            "ip": pl.String,
            "start": _TS,
            "end": _TS,
            "subscriber_id": pl.String,
            "port_lo": pl.Int32,
            "port_hi": pl.Int32,
        },
    )
    st_kind = kind[st_idx]
    hwaddr = [f"02:00:5e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}" for i in st_idx]
    static = static.with_columns(
        served_by=pl.Series(
            np.where(
                st_kind == "school", "dhcpd", np.where(st_kind == "enterprise", "kea", "fixed")
            )
        ),
        hwaddr=pl.Series(hwaddr, dtype=pl.String),
    )
    static_csv = (
        static.filter(pl.col("served_by") == "fixed")
        .select("ip", "start", "end", "subscriber_id", "port_lo", "port_hi")
        .with_columns(
            pl.col("start").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            pl.col("end").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        .write_csv()
    )
    dhcpd_text, kea_csv = _dhcp_files(static, t0, sp.days)
    sess = sess.join(unlogged, on=["subscriber_id", "day"], how="left")
    detections, det_truth, wallets = _detections(rng, sp, t0, truth, sess, static, utc_off)
    subscribers = pl.DataFrame(
        {
            "subscriber_id": sub_ids,
            "kind": kind.tolist(),
            "address": telecom,
            "region": [DISTRICTS[d] for d in district],
        }
    ).join(
        static.filter(pl.col("served_by") != "fixed").select("subscriber_id", "hwaddr"),
        on="subscriber_id",
        how="left",
    )
    accounts = pl.DataFrame(
        {
            "account_id": acc_ids,
            "tariff_class": city_tariff.tolist(),
            "capacity_kva": macc["capacity_kva"].to_list(),
            "address": utility,
            "region": [DISTRICTS[d] for d in district],
            "transformer_id": macc["transformer_id"].to_list(),
        }
    )
    explicit = rng.random(n) < sp.explicit_link_share
    links = pl.DataFrame(
        {
            "subscriber_id": [s for s, e in zip(sub_ids, explicit, strict=True) if e],
            "account_id": [a for a, e in zip(acc_ids, explicit, strict=True) if e],
        },
        schema={"subscriber_id": pl.String, "account_id": pl.String},
    )
    # Finance: pool payouts to a share of clear-text rigs' wallets; unrelated deposits.
    fin_rows = []
    for w, _p in wallets:
        if rng.random() < sp.payout_share:
            fin_rows.append(
                {
                    "wallet": w,
                    "ts": (t0 + dt.timedelta(days=float(rng.uniform(1, sp.days)))).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                    "kind": "pool_payout",
                    "amount": round(float(rng.uniform(0.001, 0.2)), 5),
                    "coin": "xmr",
                    "counterparty": "pool",
                }
            )
    for i in range(sp.unrelated_wallets):
        fin_rows.append(
            {
                "wallet": f"bc1q{rng.integers(10**15, 10**16)}{i:04d}",
                "ts": (t0 + dt.timedelta(days=float(rng.uniform(0, sp.days)))).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
                "kind": "exchange_deposit",
                "amount": round(float(rng.uniform(0.01, 1)), 5),
                "coin": "btc",
                "counterparty": "exchange",
            }
        )
    finance_csv = pl.DataFrame(
        fin_rows,
        schema={
            "wallet": pl.String,
            "ts": pl.String,
            "kind": pl.String,
            "amount": pl.Float64,
            "coin": pl.String,
            "counterparty": pl.String,
        },
    ).write_csv()
    return City(
        spec=sp,
        window_start=t0,
        subscribers=subscribers,
        accounts=accounts,
        meter_accounts=md.accounts,
        readings=readings,
        explicit_links=links,
        truth=truth,
        sessions=sess,
        radius_text=radius_text,
        cgnat_csv=cg_csv,
        static_csv=static_csv,
        detections=detections,
        detection_truth=det_truth,
        finance_csv=finance_csv,
        notes={"radius": radius_counts, "cpu_jacking": len(jack)},
        dhcpd_text=dhcpd_text,
        kea_csv=kea_csv,
    )


def _dhcp_files(static: pl.DataFrame, t0: dt.datetime, days: int) -> tuple[str, str]:
    """dhcpd.leases and Kea memfile text for the fixed addresses served by DHCP: a renewal
    every 12 h with a one-day lease time, from a day before the window to a day after."""
    n_ren = 2 * (days + 2)
    ren = [t0 - dt.timedelta(days=1) + dt.timedelta(hours=12 * k) for k in range(n_ren)]
    lines: list[str] = [
        "# The format of this file is documented in the dhcpd.leases(5) manual page."
    ]
    for r in static.filter(pl.col("served_by") == "dhcpd").iter_rows(named=True):
        for t in ren:
            e = t + dt.timedelta(days=1)
            lines.append(
                f"lease {r['ip']} {{\n"
                f"  starts {t.isoweekday() % 7} {t:%Y/%m/%d %H:%M:%S};\n"
                f"  ends {e.isoweekday() % 7} {e:%Y/%m/%d %H:%M:%S};\n"
                f"  cltt {t.isoweekday() % 7} {t:%Y/%m/%d %H:%M:%S};\n"
                "  binding state active;\n"
                "  next binding state free;\n"
                f"  hardware ethernet {r['hwaddr']};\n"
                f'  client-hostname "{r["subscriber_id"].lower()}";\n'
                "}"
            )
    kea = static.filter(pl.col("served_by") == "kea")
    kea_rows = pl.DataFrame(
        {
            "address": np.repeat(kea["ip"].to_numpy(), n_ren),
            "hwaddr": np.repeat(kea["hwaddr"].to_numpy(), n_ren),
            "expire": np.tile(
                np.array([int((t + dt.timedelta(days=1)).timestamp()) for t in ren]),
                kea.height,
            ),
        }
    ).select(
        "address",
        "hwaddr",
        pl.lit("").alias("client_id"),
        pl.lit(86400).alias("valid_lifetime"),
        "expire",
        pl.lit(1).alias("subnet_id"),
        pl.lit(0).alias("fqdn_fwd"),
        pl.lit(0).alias("fqdn_rev"),
        pl.lit("").alias("hostname"),
        pl.lit(0).alias("state"),
        pl.lit("").alias("user_context"),
    )
    return "\n".join(lines) + "\n", kea_rows.write_csv()


def power_evidence(city: City) -> list[dict[str, Any]]:
    """Run the project's meter screen over the city's readings; one SCREEN_FIELDS object per
    account (``meters screen --all``)."""
    from minewatch.power.detect import screen

    scores = pl.from_arrow(screen(city.readings, city.meter_accounts))
    assert isinstance(scores, pl.DataFrame)
    from minewatch.schema import SCREEN_FIELDS

    rows = scores.select(list(SCREEN_FIELDS)).with_columns(
        pl.col("since").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return rows.to_dicts()

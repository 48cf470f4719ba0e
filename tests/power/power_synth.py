"""Small synthetic hourly load curves for the power tests (not the benchmark generator).

Each function returns average kW per hour for ``days`` days; :func:`to_readings` turns a
mapping of account id to such a curve into canonical readings. The shapes are deliberately
simple so a test can say exactly what it expects: a household with morning and evening peaks
and a noisy always-on base, plus the loads that the screen must find or must not flag.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from minewatch.schema import READINGS

START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday


def household(rng: np.random.Generator, days: int, *, vacation: bool = False) -> np.ndarray:
    hours = np.arange(days * 24)
    hod = hours % 24
    dow = (hours // 24) % 7
    base = rng.uniform(0.08, 0.3)
    load = base + np.abs(rng.normal(0.0, 0.03, hours.size))
    amp = rng.uniform(0.3, 1.2)
    shape = np.exp(-0.5 * ((hod - 7.5) / 1.2) ** 2) + 1.4 * np.exp(-0.5 * ((hod - 19.5) / 2.0) ** 2)
    day_factor = np.repeat(rng.lognormal(0.0, 0.25, days), 24)
    weekend = np.where(dow >= 5, 1.2, 1.0)
    load += amp * shape * day_factor * weekend
    events = rng.random(hours.size) < 0.04
    load += events * rng.uniform(0.5, 2.0, hours.size) * (hod >= 7)
    if vacation:
        first = rng.integers(10, max(days - 24, 11))
        sl = slice(int(first) * 24, int(first + rng.integers(7, 15)) * 24)
        load[sl] = base + np.abs(rng.normal(0.0, 0.02, load[sl].size))
    return load


def rig(days: int, kw: float, start_day: int, *, night_only: bool = False) -> np.ndarray:
    hours = np.arange(days * 24)
    on = hours >= start_day * 24
    if night_only:
        on &= (hours % 24) < 7
    return kw * on * (1.0 + 0.01 * np.sin(hours))


def heat_pump(rng: np.random.Generator, days: int, kw_per_degree: float = 0.12) -> np.ndarray:
    """Heating driven by a temperature that falls from 14 °C to about -2 °C with weather noise."""
    day_temp = np.linspace(14, -2, days) + np.cumsum(rng.normal(0, 1.2, days)) * 0.5
    temp = np.repeat(day_temp, 24) - 3 * np.cos(2 * np.pi * (np.arange(days * 24) % 24 - 15) / 24)
    demand = np.clip(16 - temp, 0, None) * kw_per_degree
    cycling = rng.uniform(0.6, 1.2, temp.size)
    return demand * cycling


def ev_charging(rng: np.random.Generator, days: int, kw: float = 7.0) -> np.ndarray:
    load = np.zeros(days * 24)
    for d in range(days):
        if rng.random() < 0.45:
            start = d * 24 + int(rng.integers(0, 3))
            load[start : start + int(rng.integers(2, 5))] = kw
    return load


def storage_boiler(days: int, kw: float, start_day: int) -> np.ndarray:
    """An electric water heater on a night timer: 3 hours every night."""
    hours = np.arange(days * 24)
    return kw * ((hours % 24) >= 1) * ((hours % 24) < 4) * (hours >= start_day * 24)


def cold_storage(rng: np.random.Generator, days: int) -> np.ndarray:
    hours = np.arange(days * 24)
    hod = hours % 24
    compressor = 3.0 + 0.6 * (rng.random(hours.size) < 0.5)
    return compressor + 1.5 * ((hod >= 8) & (hod < 18)) * rng.uniform(0.6, 1.2, hours.size)


def farm(rng: np.random.Generator, days: int) -> np.ndarray:
    """Irrigation pumps by day on about half the days, a small base otherwise."""
    hours = np.arange(days * 24)
    hod = hours % 24
    pumping = np.repeat(rng.random(days) < 0.5, 24) & (hod >= 6) & (hod < 18)
    return 0.15 + np.abs(rng.normal(0, 0.03, hours.size)) + pumping * rng.uniform(3, 6)


def to_readings(curves: dict[str, np.ndarray], *, interval_s: int = 3600) -> pa.Table:
    """Canonical readings of hourly kW curves (interval_s 900 spreads each hour evenly)."""
    ids, ts, kwh = [], [], []
    for acct, curve in curves.items():
        per_hour = 3600 // interval_s
        energy = np.repeat(curve / per_hour, per_hour)
        n = energy.size
        stamps = [START + timedelta(seconds=interval_s * (i + 1)) for i in range(n)]
        ids.extend([acct] * n)
        ts.extend(stamps)
        kwh.extend(energy.tolist())
    return pa.table(
        {
            "account_id": pa.array(ids, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "kwh": pa.array(kwh, pa.float64()),
            "interval_s": pa.array([interval_s] * len(ids), pa.int32()),
        },
        schema=READINGS,
    )

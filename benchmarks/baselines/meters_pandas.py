"""Baseline for ``benchmarks/meters.py``: the screening features written in plain pandas.

This is how the features of :mod:`minewatch.power.features` would usually be written: a
``groupby`` over accounts and days for the aggregates, and a per-account ``apply`` for the
change point. It follows the same definitions (hourly kW, base = daily minimum of days with
at least 20 hours, night base = daily minimum over 00-06, strongest upward mean shift by the
two-sample t statistic with the noise from the MAD of day-to-day differences, at least 7 valid
days on each side, medians before/after, load factors, coefficient of variation of daily
energy, night/day and weekend/weekday ratios, duty cycle, missing share), so the benchmark
can check that both give the same numbers on the columns they share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_SEGMENT_DAYS = 7
MIN_HOURS_PER_DAY = 20
NOISE_FLOOR_KW = 0.01
COLUMNS = (
    "mean_kw",
    "peak_kw",
    "base_kw",
    "lf",
    "cv_daily",
    "night_day_ratio",
    "weekend_ratio",
    "missing_share",
    "stat_all_day",
    "added_all_day_kw",
    "stat_night",
    "added_night_kw",
)


def _noise(s: pd.Series) -> float:
    d = s.diff().dropna()
    if d.empty:
        return NOISE_FLOOR_KW
    mad = (d - d.median()).abs().median()
    return max(1.4826 * mad / np.sqrt(2.0), NOISE_FLOOR_KW)


def _change(s: pd.Series) -> pd.Series:
    """Strongest upward mean shift of one account's daily series (index = day number)."""
    s = s.sort_index()
    full = s.reindex(range(int(s.index.min()), int(s.index.max()) + 1))
    noise = _noise(full)
    valid = full.notna()
    cs = full.fillna(0.0).cumsum()
    cn = valid.cumsum()
    sb, nb = cs.shift(1), cn.shift(1)  # before day k: days < k
    sa, na = cs.iloc[-1] - sb, cn.iloc[-1] - nb
    t = (sa / na - sb / nb) / (noise * np.sqrt(1.0 / nb + 1.0 / na))
    t = t.where((nb >= MIN_SEGMENT_DAYS) & (na >= MIN_SEGMENT_DAYS) & valid)
    if t.notna().sum() == 0:
        return pd.Series({"stat": np.nan, "added": np.nan, "k": np.nan})
    k = t.idxmax()
    added = full.loc[k:].median() - full.loc[: k - 1].median()
    return pd.Series({"stat": t.loc[k], "added": added, "k": k})


def _per_account(s: pd.Series) -> pd.Series:
    return _change(s.droplevel("account_id"))


def _daily_features(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["date"] = (df["ts"] - pd.to_timedelta(df["interval_s"], unit="s")).dt.floor("D")
    daily = df.groupby(["account_id", "date"])["kwh"].sum().div(24.0).rename("kw").reset_index()
    daily["day"] = (daily["date"] - daily["date"].min()).dt.days
    daily["weekend"] = daily["date"].dt.weekday >= 5
    g = daily.groupby("account_id")["kw"]
    out = pd.DataFrame({"mean_kw": g.mean(), "base_kw": g.median()})
    out["cv_daily"] = g.std() / g.mean().where(g.mean() > 0)
    we = daily[daily["weekend"]].groupby("account_id")["kw"].mean()
    wd = daily[~daily["weekend"]].groupby("account_id")["kw"].mean()
    out["weekend_ratio"] = we / wd.where(wd > 0)
    span = daily.groupby("account_id")["day"].agg(["min", "max"])
    out["missing_share"] = 1.0 - g.size() / (span["max"] - span["min"] + 1)
    ch = daily.set_index(["account_id", "day"])["kw"].groupby("account_id").apply(_per_account)
    ch = ch.unstack()
    out["stat_all_day"] = ch["stat"]
    out["added_all_day_kw"] = ch["added"]
    return out.reset_index()


def account_features(readings: pd.DataFrame) -> pd.DataFrame:
    """Features per account of ``readings`` (account_id, ts, kwh, interval_s), all hourly or
    finer, or all daily."""
    if (readings["interval_s"] >= 86400).all():
        return _daily_features(readings)
    df = readings.copy()
    df["slot"] = (df["ts"] - pd.to_timedelta(df["interval_s"], unit="s")).dt.floor("h")
    hourly = df.groupby(["account_id", "slot"]).agg(
        kw=("kwh", "sum"), n=("kwh", "size"), iv=("interval_s", "first")
    )
    hourly = hourly[hourly["n"] * hourly["iv"] >= 3600].reset_index()
    hourly["day"] = (hourly["slot"] - hourly["slot"].min().floor("D")).dt.days
    hourly["hour"] = hourly["slot"].dt.hour
    hourly["weekend"] = hourly["slot"].dt.weekday >= 5

    per_day = hourly.groupby(["account_id", "day"]).agg(
        day_min=("kw", "min"), n=("kw", "size"), day_sum=("kw", "sum")
    )
    night = hourly[hourly["hour"] < 6].groupby(["account_id", "day"])["kw"].min()
    per_day["night_min"] = night
    per_day = per_day[per_day["n"] >= MIN_HOURS_PER_DAY]
    per_day["kwh"] = per_day["day_sum"] * 24.0 / per_day["n"]

    out = hourly.groupby("account_id").agg(mean_kw=("kw", "mean"), peak_kw=("kw", "max"))
    out["base_kw"] = per_day.groupby("account_id")["day_min"].median()
    out["lf"] = out["mean_kw"] / out["peak_kw"].where(out["peak_kw"] > 0)
    kwh = per_day["kwh"].groupby("account_id")
    out["cv_daily"] = kwh.std() / kwh.mean().where(kwh.mean() > 0)
    night_mean = hourly[hourly["hour"] < 6].groupby("account_id")["kw"].mean()
    day_mean = hourly[(hourly["hour"] >= 10) & (hourly["hour"] < 18)].groupby("account_id")["kw"]
    out["night_day_ratio"] = night_mean / day_mean.mean().where(day_mean.mean() > 0)
    weekend_day = hourly.groupby(["account_id", "day"])["weekend"].first()
    per_day["weekend"] = weekend_day
    we = per_day[per_day["weekend"]].groupby("account_id")["kwh"].mean()
    wd = per_day[~per_day["weekend"]].groupby("account_id")["kwh"].mean()
    out["weekend_ratio"] = we / wd.where(wd > 0)
    span = hourly.groupby("account_id")["slot"].agg(["min", "max"])
    hours = (span["max"] - span["min"]).dt.total_seconds() / 3600 + 1
    out["missing_share"] = 1.0 - hourly.groupby("account_id").size() / hours

    by_day = per_day.reset_index(level="day").set_index("day", append=True)
    all_day = by_day["day_min"].groupby("account_id").apply(_per_account).unstack()
    night_ch = by_day["night_min"].groupby("account_id").apply(_per_account).unstack()
    out["stat_all_day"] = all_day["stat"]
    out["added_all_day_kw"] = all_day["added"]
    out["stat_night"] = night_ch["stat"]
    out["added_night_kw"] = night_ch["added"]
    return out.reset_index()

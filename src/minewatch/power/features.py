"""Per-account load features for mining screening, computed over whole accounts × time matrices.

The entry point is :func:`account_features`, a **pure function** from canonical ``readings``
(an Arrow table holding any set of *whole* accounts) to one row of features per account. It
looks at nothing but the readings it is given, and the features of an account do not depend
on which other accounts share the call, so an engine may cut the accounts into groups in any
way (the Spark engine runs it per group through ``applyInArrow``) and concatenate the
results. Peer comparison and scoring are a second pure step over the feature table
(:func:`minewatch.power.detect.score`).

How it works
------------
Readings at 5/15/30/60 minutes are summed into clock hours (an hour is missing unless all of
its intervals are present); an account's hourly energy is its average power in kW. Accounts
become rows of a matrix ``H`` (accounts × hours, NaN = missing) laid on a grid of local days
(``tz``), and every feature is a NumPy reduction over that matrix, never a loop per account.
Daily-only accounts get a matrix of daily mean power instead and the features that need the
hour of day are null.

- **base load**: per local day the lowest hourly power (the load that never switches off) and
  the lowest at night (00:00–06:00 local, where night-only mining shows);
- **level shift**: on each base series, the single upward change point that maximises the
  two-sample t statistic of the means before and after (binary segmentation's first step,
  the CUSUM-of-means statistic), with the noise taken from the median absolute day-to-day
  difference so that the step itself does not inflate it; at least ``MIN_SEGMENT_DAYS``
  valid days on either side. The size is the difference of the *medians* of the two segments
  (robust to vacations and outages); the date is the first day after the change;
- **flat added component**: ``persist`` (share of days after the change whose base stays above
  the midpoint of the step: ~1 for a rig, lower for weather-driven heating), ``sharpness``
  (the step over one week on each side of the date relative to the whole shift: ~1 for a
  switched-on load, small for a seasonal drift), ``duty_cycle`` (share of hours after the
  change at or above the old base plus 70 % of the shift) and ``median_shift_ratio`` (how much
  the median hour moved relative to the base: ~1 when a constant load was added, large when
  heating or new appliances moved the whole profile);
- load factor (mean / peak hourly power) overall, before and after the change; day-to-day
  variability (coefficient of variation of daily energy); night/day and weekend/weekday
  ratios; missing-data share over the account's own span.

Float features are rounded to 1e-6 (undefined ones are null) so that engines which group
accounts differently agree bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

#: Fewest valid days on each side of a change point.
MIN_SEGMENT_DAYS = 7
#: Local hours counted as night (start inclusive, end exclusive) and as daytime.
NIGHT_HOURS = (0, 6)
DAY_HOURS = (10, 18)
#: A day counts for the base series when at least this many of its hours are present.
MIN_HOURS_PER_DAY = 20
#: Lower bound of the base-load noise estimate (kW): metering resolution.
NOISE_FLOOR_KW = 0.01

TS = pa.timestamp("us", tz="UTC")

FEATURES = pa.schema(
    [
        ("account_id", pa.string()),
        ("interval_s", pa.int32()),
        ("first_ts", TS),
        ("last_ts", TS),
        ("n_days", pa.int32()),
        ("missing_share", pa.float64()),
        ("mean_kw", pa.float64()),
        ("peak_kw", pa.float64()),
        ("base_kw", pa.float64()),
        ("night_base_kw", pa.float64()),
        ("base_noise_kw", pa.float64()),
        ("base_share", pa.float64()),
        ("change_series", pa.string()),
        ("since", TS),
        ("change_stat", pa.float64()),
        ("added_kw", pa.float64()),
        ("base_before_kw", pa.float64()),
        ("base_after_kw", pa.float64()),
        ("persist", pa.float64()),
        ("sharpness", pa.float64()),
        ("after_spread", pa.float64()),
        ("noise_ratio", pa.float64()),
        ("stat_all_day", pa.float64()),
        ("added_all_day_kw", pa.float64()),
        ("stat_night", pa.float64()),
        ("added_night_kw", pa.float64()),
        ("lf", pa.float64()),
        ("lf_before", pa.float64()),
        ("lf_after", pa.float64()),
        ("cv_daily", pa.float64()),
        ("cv_daily_after", pa.float64()),
        ("night_day_ratio", pa.float64()),
        ("weekend_ratio", pa.float64()),
        ("duty_cycle", pa.float64()),
        ("median_shift_ratio", pa.float64()),
        ("night_noise_kw", pa.float64()),
    ]
)


def account_features(readings: pa.Table, *, tz: str = "UTC") -> pa.Table:
    """Per-account features (schema :data:`FEATURES`) from canonical readings.

    Pure: the result depends only on ``readings`` (any set of whole accounts; an account's
    readings must not be split across calls) and ``tz``, the local zone used for days,
    night and weekends. Readings whose ``interval_s`` differs from the account's usual one
    (a register reading spanning a gap) are left out and count as missing.
    """
    frame = pl.from_arrow(readings.select(["account_id", "ts", "kwh", "interval_s"]))
    assert isinstance(frame, pl.DataFrame)
    if frame.height == 0:
        return FEATURES.empty_table()
    if any(frame.get_column(c).null_count() for c in ("kwh", "account_id", "ts")):
        frame = frame.filter(
            pl.col("kwh").is_not_null()
            & pl.col("account_id").is_not_null()
            & pl.col("ts").is_not_null()
        )
    if frame.height == 0:
        return FEATURES.empty_table()
    if not frame.get_column("account_id").is_sorted():
        # rows in account and time order, so that sums into hours add up in the same order
        # (and give the same bits) however the input was ordered
        frame = frame.sort("account_id", "ts", maintain_order=True)
    acc = _Accounts.of(frame, checked=True)
    keep = acc.usual_iv[acc.code] == acc.iv
    parts = []
    fine = keep & (acc.iv < 86400)
    if fine.any():
        parts.append(_hourly_part(acc, fine, frame.get_column("kwh").to_numpy(), tz))
    daily = keep & (acc.iv >= 86400)
    if daily.any():
        parts.append(_daily_part(frame.filter(pl.Series(daily)), tz))
    if not parts:
        return FEATURES.empty_table()
    usual = pl.DataFrame(
        {
            "account_id": acc.ids,
            "interval_s": pl.Series(acc.usual_iv, dtype=pl.Int32),
            "first_ts": pl.Series(acc.first_us, dtype=pl.Datetime("us", "UTC")),
            "last_ts": pl.Series(acc.last_us, dtype=pl.Datetime("us", "UTC")),
        }
    )
    out = pl.concat(parts, how="diagonal_relaxed").join(usual, on="account_id", how="left")
    floats = [f.name for f in FEATURES if pa.types.is_float64(f.type)]
    out = out.with_columns([pl.col(c).cast(pl.Float64).round(6).fill_nan(None) for c in floats])
    out = out.select(FEATURES.names).sort("account_id")
    return out.to_arrow().cast(FEATURES)


@dataclass
class _Accounts:
    """Readings sorted by account as NumPy columns, with an integer index per account."""

    ids: pl.Series  # account ids, sorted
    code: np.ndarray  # per reading: index into ids
    ts_us: np.ndarray  # per reading: end of the interval, microseconds since the epoch (UTC)
    iv: np.ndarray  # per reading: interval_s (-1 where null)
    usual_iv: np.ndarray  # per account: the most common interval (smallest on ties; -1: none)
    first_us: np.ndarray  # per account: first and last ts
    last_us: np.ndarray

    @classmethod
    def of(cls, frame: pl.DataFrame, *, checked: bool = False) -> _Accounts:
        col = frame.get_column("account_id")
        if not checked and not col.is_sorted():
            raise ValueError("readings must be sorted by account_id")
        code = col.rle_id().to_numpy().astype(np.int64)
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        ids = col.gather(starts)
        n = len(ids)
        ts = frame.get_column("ts").dt.epoch("us").to_numpy()
        iv = frame.get_column("interval_s").fill_null(-1).to_numpy().astype(np.int64)
        first = np.minimum.reduceat(ts, starts)  # rows of an account are contiguous
        last = np.maximum.reduceat(ts, starts)
        lo, hi = int(iv.min()), int(iv.max())
        if lo == hi:  # one interval throughout (the usual case): no tally needed
            return cls(ids, code, ts, iv, np.full(n, lo, dtype=np.int64), first, last)
        values = np.sort(pl.Series(iv).unique().to_numpy())
        iv_index = np.searchsorted(values, iv)
        tally = np.bincount(code * len(values) + iv_index, minlength=n * len(values)).reshape(
            n, len(values)
        )
        tally[:, values < 0] = 0  # a null interval is never the usual one
        usual = np.where(tally.any(axis=1), values[np.argmax(tally, axis=1)], -1)
        return cls(ids, code, ts, iv, usual, first, last)


# --------------------------------------------------------------------------- matrices


@dataclass
class _Grid:
    """Columns of a matrix: local day index, local hour and weekday of each column."""

    start_utc: np.datetime64
    step_s: int
    day: np.ndarray  # int, per column
    hour: np.ndarray  # int, per column (0 for daily matrices)
    weekend: np.ndarray  # bool, per column
    day_start_utc: np.ndarray  # datetime64[us] per local day index


def _local_grid(lo_utc: object, hi_utc: object, step_s: int, tz: str) -> _Grid:
    """An hourly (or daily) UTC grid from the local midnight before ``lo`` up to ``hi``."""
    bounds = pl.DataFrame({"t": [lo_utc, hi_utc]}).with_columns(
        pl.col("t").cast(pl.Datetime("us", "UTC"))
    )
    first_local_day = bounds.select(
        pl.col("t").first().dt.convert_time_zone(tz).dt.date().alias("d")
    ).item()
    start = (
        pl.DataFrame({"d": [first_local_day]})
        .select(
            pl.col("d")
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
        )
        .item()
    )
    if start is None:  # a zone whose midnight does not exist that day: fall back to the bound
        start = bounds.get_column("t")[0]
    hi = bounds.get_column("t")[1]
    n = int((hi - start).total_seconds() // step_s) + 1
    cols = pl.DataFrame(
        {
            "t": pl.datetime_range(
                start,
                start + timedelta(seconds=step_s * (n - 1)),
                interval=f"{step_s}s",
                eager=True,
                time_zone="UTC",
            )
        }
    ).with_columns(local=pl.col("t").dt.convert_time_zone(tz))
    cols = cols.with_columns(
        ldate=pl.col("local").dt.date(),
        hour=pl.col("local").dt.hour().cast(pl.Int32),
        weekend=pl.col("local").dt.weekday() >= 6,
    )
    ldays = cols.get_column("ldate").cast(pl.Int32)
    day = (ldays - ldays[0]).to_numpy().astype(np.int64)
    day_starts = cols.group_by("ldate", maintain_order=True).agg(pl.col("t").min()).get_column("t")
    return _Grid(
        start_utc=np.datetime64(start.replace(tzinfo=None), "us"),
        step_s=step_s,
        day=day,
        hour=cols.get_column("hour").to_numpy(),
        weekend=cols.get_column("weekend").to_numpy(),
        day_start_utc=day_starts.dt.replace_time_zone(None).to_numpy(),
    )


def _matrix(
    frame: pl.DataFrame, slot_col: str, value_col: str, step_s: int, tz: str
) -> tuple[list[str], np.ndarray, _Grid]:
    """Scatter ``value_col`` at UTC slot starts ``slot_col`` into accounts × slots."""
    ids = frame.get_column("account_id").unique().sort()
    index = pl.DataFrame({"account_id": ids, "_i": np.arange(len(ids), dtype=np.int64)})
    lo = frame.get_column(slot_col).min()
    hi = frame.get_column(slot_col).max()
    grid = _local_grid(lo, hi, step_s, tz)
    placed = frame.join(index, on="account_id").with_columns(
        _j=(
            (
                pl.col(slot_col).dt.replace_time_zone(None) - pl.lit(grid.start_utc)
            ).dt.total_seconds()
            // step_s
        ).cast(pl.Int64)
    )
    mat = np.full((len(ids), len(grid.day)), np.nan, dtype=np.float64)
    mat[placed.get_column("_i").to_numpy(), placed.get_column("_j").to_numpy()] = placed.get_column(
        value_col
    ).to_numpy()
    return ids.to_list(), mat, grid


# --------------------------------------------------------------------------- statistics


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence NumPy's warnings about all-NaN rows: a NaN result is the intended answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _row_quantiles(x: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """NaN-aware quantiles of every row at once (linear interpolation, as NumPy's default).

    NumPy's ``nanmedian``/``nanpercentile`` fall back to a Python loop over rows for wide
    arrays; sorting the whole matrix once (NaN sorts last) keeps this a single C-level pass.
    """
    srt = np.sort(x, axis=1)
    n = (~np.isnan(x)).sum(axis=1)
    last = np.maximum(n - 1, 0)
    out = []
    for q in qs:
        pos = q * last
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, last)
        frac = pos - lo
        a = np.take_along_axis(srt, lo[:, None], axis=1)[:, 0]
        b = np.take_along_axis(srt, hi[:, None], axis=1)[:, 0]
        out.append(np.where(n > 0, a + (b - a) * frac, np.nan))
    return out


def _row_median(x: np.ndarray) -> np.ndarray:
    return _row_quantiles(x, (0.5,))[0]


def _mad(d: np.ndarray) -> np.ndarray:
    """Robust standard deviation of each row (NaN-aware MAD x 1.4826)."""
    med = _row_median(d)[:, None]
    return np.asarray(1.4826 * _row_median(np.abs(d - med)))


def _noise(series: np.ndarray) -> np.ndarray:
    """Robust day-to-day noise of each row: MAD of first differences / sqrt(2)."""
    d = np.diff(series, axis=1)
    med = _row_median(d)[:, None]
    mad = _row_median(np.abs(d - med))
    return np.fmax(1.4826 * mad / np.sqrt(2.0), NOISE_FLOOR_KW)


@dataclass
class _Change:
    k: np.ndarray  # first day index after the change (-1: none)
    stat: np.ndarray
    added: np.ndarray
    before: np.ndarray
    after: np.ndarray
    persist: np.ndarray
    sharpness: np.ndarray
    spread: np.ndarray
    noise_ratio: np.ndarray
    noise: np.ndarray


def _change_point(series: np.ndarray) -> _Change:
    """The strongest upward mean shift per row, with robust size and shape measures."""
    n, d = series.shape
    valid = ~np.isnan(series)
    noise = _noise(series) if d > 1 else np.full(n, NOISE_FLOOR_KW)
    if d < 2:
        empty = np.full(n, np.nan)
        return _Change(
            np.full(n, -1), empty, empty, empty, empty, empty, empty, empty, empty, noise
        )
    x = np.where(valid, series, 0.0)
    cs = np.cumsum(x, axis=1)
    cn = np.cumsum(valid, axis=1)
    nb = cn[:, :-1].astype(np.float64)
    na = cn[:, -1:] - nb
    sb = cs[:, :-1]
    sa = cs[:, -1:] - sb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (sa / na - sb / nb) / (noise[:, None] * np.sqrt(1.0 / nb + 1.0 / na))
    ok = (nb >= MIN_SEGMENT_DAYS) & (na >= MIN_SEGMENT_DAYS) & valid[:, 1:]
    t = np.where(ok, t, -np.inf)
    best = np.argmax(t, axis=1)
    stat = t[np.arange(n), best]
    found = np.isfinite(stat)
    k = np.where(found, best + 1, -1)
    days = np.arange(d)[None, :]
    after_mask = days >= k[:, None]
    with _quiet():
        before = _row_median(np.where(~after_mask & valid, series, np.nan))
        after = _row_median(np.where(after_mask & valid, series, np.nan))
        added = after - before
        mid = before + 0.5 * added
        above = (series > mid[:, None]) & after_mask & valid
        persist = above.sum(axis=1) / np.maximum((after_mask & valid).sum(axis=1), 1)
        w = MIN_SEGMENT_DAYS
        kk = np.where(found, k, 0)[:, None]
        idx_b = np.clip(kk + np.arange(-w, 0)[None, :], 0, d - 1)
        idx_a = np.clip(kk + np.arange(0, w)[None, :], 0, d - 1)
        local = _row_median(np.take_along_axis(series, idx_a, axis=1)) - _row_median(
            np.take_along_axis(series, idx_b, axis=1)
        )
        sharp = np.where(np.abs(added) > 1e-9, local / np.where(added == 0, 1, added), np.nan)
        after_vals = np.where(after_mask & valid, series, np.nan)
        q10, q90 = _row_quantiles(after_vals, (0.1, 0.9))
        # Weather-driven loads make the base wander from day to day after the change; a rig
        # adds a constant and leaves the day-to-day noise as it was.
        d = np.diff(series, axis=1)
        d_after = after_mask[:, 1:] & after_mask[:, :-1]
        noise_before = _mad(np.where(~d_after & ~after_mask[:, 1:], d, np.nan))
        noise_after = _mad(np.where(d_after, d, np.nan))
        noise_ratio = np.fmax(noise_after, NOISE_FLOOR_KW) / np.fmax(noise_before, NOISE_FLOOR_KW)
        spread = np.where(
            np.abs(added) > 1e-9, (q90 - q10) / np.where(added == 0, 1, added), np.nan
        )
    nan = np.full(n, np.nan)
    return _Change(
        k=k,
        stat=np.where(found, stat, np.nan),
        added=np.where(found, added, nan),
        before=np.where(found, before, nan),
        after=np.where(found, after, nan),
        persist=np.where(found, persist, nan),
        sharpness=np.where(found, np.clip(sharp, -1.0, 2.0), nan),
        spread=np.where(found, np.clip(spread, -10.0, 10.0), nan),
        noise_ratio=np.where(found, np.clip(noise_ratio, 0.0, 100.0), nan),
        noise=noise,
    )


def _masked_mean(mat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask & ~np.isnan(mat)
    s = np.where(m, mat, 0.0).sum(axis=1)
    return _div(s, m.sum(axis=1))


def _div(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean from a sum and a count (NaN where the count is 0)."""
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _cv(mat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask & ~np.isnan(mat)
    c = m.sum(axis=1)
    mean = _masked_mean(mat, mask)
    var = np.where(m, (mat - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(c - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((c > 1) & (mean > 0), np.sqrt(var) / mean, np.nan)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / b, np.nan)


# --------------------------------------------------------------------------- hourly accounts


def _hour_matrix(
    acc: _Accounts, rows: np.ndarray, kwh: np.ndarray, tz: str
) -> tuple[pl.Series, np.ndarray, _Grid]:
    """Accounts × clock hours of average power (kW) from the readings selected by ``rows``.

    Each reading goes to the UTC clock hour in which its interval starts; an hour's energy is
    the sum of its readings, and the hour counts only when those cover all of it (readings ×
    interval ≥ 3600 s). One ``bincount`` over ``account index × hours + hour`` does the sums
    and the counts; accounts without a complete hour are left out.
    """
    hour_us = 3_600_000_000
    if rows.all() and (acc.usual_iv == 3600).all():
        fast = _hour_matrix_hourly(acc, kwh, tz)
        if fast is not None:
            return fast
    code = acc.code[rows]
    iv = acc.iv[rows]
    slot = (acc.ts_us[rows] - iv * 1_000_000) // hour_us  # floor: hours since the epoch
    used = np.zeros(len(acc.ids), dtype=bool)
    used[code] = True
    code = (np.cumsum(used) - 1)[code]
    n = int(used.sum())
    h0 = int(slot.min())
    width = int(slot.max()) - h0 + 1
    cell = code * width + (slot - h0)
    sums = np.bincount(cell, weights=kwh[rows], minlength=n * width).reshape(n, width)
    counts = np.bincount(cell, minlength=n * width).reshape(n, width)
    complete = counts * acc.usual_iv[used][:, None] >= 3600
    keep = complete.any(axis=1)
    hours = np.flatnonzero(complete.any(axis=0))
    ids = acc.ids.filter(pl.Series(used)).filter(pl.Series(keep))
    if not len(hours):
        return ids, np.empty((0, 0)), _hour_grid(h0, h0, tz)[0]
    lo, hi = int(hours[0]), int(hours[-1])
    grid, j0 = _hour_grid(h0 + lo, h0 + hi, tz)
    mat = np.full((len(ids), len(grid.day)), np.nan, dtype=np.float64)
    block = slice(lo, hi + 1)
    mat[:, j0 : j0 + hi - lo + 1] = np.where(complete[keep, block], sums[keep, block], np.nan)
    return ids, mat, grid


def _hour_matrix_hourly(
    acc: _Accounts, kwh: np.ndarray, tz: str
) -> tuple[pl.Series, np.ndarray, _Grid] | None:
    """:func:`_hour_matrix` when every reading is hourly: one reading is one complete hour.

    The matrix is then a scatter of the readings, with no sums; ``None`` when two readings
    fall into the same hour or are out of time order (the general path handles those).
    """
    hour_us = 3_600_000_000
    slot = acc.ts_us // hour_us
    slot -= 1  # (ts - 1 h) // 1 h: the hour in which the interval starts
    h0, h1 = int(slot.min()), int(slot.max())
    grid, j0 = _hour_grid(h0, h1, tz)
    cols = len(grid.day)
    cell = acc.code * cols
    cell += slot
    cell += j0 - h0
    if not bool((cell[1:] > cell[:-1]).all()):
        return None
    mat = np.full((len(acc.ids), cols), np.nan, dtype=np.float64)
    # + 0.0 turns -0.0 into 0.0, as the bincount sums of the general path do
    mat.reshape(-1)[cell] = kwh + 0.0
    return acc.ids, mat, grid


def _utc(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _hour_grid(first: int, last: int, tz: str) -> tuple[_Grid, int]:
    """The local hour grid over UTC hours ``first`` .. ``last`` (hours since the epoch), and
    the grid column of hour ``first``."""
    hour_us = 3_600_000_000
    grid = _local_grid(_utc(first * hour_us), _utc(last * hour_us), 3600, tz)
    start_us = int(grid.start_utc.astype("datetime64[us]").astype(np.int64))
    return grid, (first * hour_us - start_us) // 1_000_000 // 3600


def _hourly_part(acc: _Accounts, rows: np.ndarray, kwh: np.ndarray, tz: str) -> pl.DataFrame:
    ids, mat, grid = _hour_matrix(acc, rows, kwh, tz)
    if not len(ids):
        return pl.DataFrame({"account_id": ids})
    valid = ~np.isnan(mat)
    mat0 = np.where(valid, mat, 0.0)  # missing hours as 0 for sums (counted apart)
    starts = np.flatnonzero(np.r_[True, np.diff(grid.day) != 0])
    with _quiet():
        # per local day: lowest hour, energy and hours present (one pass each)
        day_counts = np.add.reduceat(valid, starts, axis=1)
        has_hours = day_counts > 0
        day_min = np.where(has_hours, np.fmin.reduceat(mat, starts, axis=1), np.nan)
        day_sum = np.add.reduceat(mat0, starts, axis=1)
        full_day = day_counts >= MIN_HOURS_PER_DAY
        base = np.where(full_day, day_min, np.nan)
        night_cols = (grid.hour >= NIGHT_HOURS[0]) & (grid.hour < NIGHT_HOURS[1])
        # the night minimum over the night columns only (a quarter of the matrix)
        night_idx = np.flatnonzero(night_cols)
        night_min = np.full(base.shape, np.nan)
        if len(night_idx):
            night_day = grid.day[night_idx]
            n_starts = np.flatnonzero(np.r_[True, np.diff(night_day) != 0])
            night_min[:, night_day[n_starts]] = np.fmin.reduceat(
                mat[:, night_idx], n_starts, axis=1
            )
        night = np.where(full_day, night_min, np.nan)
        day_kwh = np.where(full_day, day_sum * 24.0 / np.maximum(day_counts, 1), np.nan)

        ch_all = _change_point(base)
        ch_night = _change_point(night)
        use_night = np.nan_to_num(ch_night.stat, nan=-np.inf) > np.nan_to_num(
            ch_all.stat, nan=-np.inf
        )
        ch = _pick_change(ch_all, ch_night, use_night)
        has = ch.k >= 0
        after_cols = (grid.day[None, :] >= ch.k[:, None]) & has[:, None]

        n_valid = valid.sum(axis=1)
        n_after = (valid & after_cols).sum(axis=1)
        n_before = n_valid - n_after
        sum_after = np.where(after_cols, mat0, 0.0).sum(axis=1)
        sum_before = np.where(after_cols, 0.0, mat0).sum(axis=1)
        mat_after = np.where(after_cols, mat, np.nan)  # for the peaks and medians
        mat_before = np.where(after_cols, np.nan, mat)
        mean_kw = _div(mat0.sum(axis=1), n_valid)
        peak_kw = np.fmax.reduce(mat, axis=1)
        base_kw = _row_median(base)
        lf = _ratio(mean_kw, peak_kw)
        lf_before = _ratio(_div(sum_before, n_before), np.fmax.reduce(mat_before, axis=1))
        lf_after = np.where(
            has,
            _ratio(
                _div(sum_after, n_after),
                np.fmax.reduce(mat_after, axis=1),
            ),
            np.nan,
        )
        day_idx = np.arange(day_kwh.shape[1])[None, :]
        after_days = (day_idx >= ch.k[:, None]) & has[:, None]
        cv_daily = _cv(day_kwh, np.ones_like(after_days))
        cv_after = np.where(has, _cv(day_kwh, after_days), np.nan)
        day_cols = (grid.hour >= DAY_HOURS[0]) & (grid.hour < DAY_HOURS[1])
        nd = _ratio(
            _div(mat0[:, night_cols].sum(axis=1), valid[:, night_cols].sum(axis=1)),
            _div(mat0[:, day_cols].sum(axis=1), valid[:, day_cols].sum(axis=1)),
        )
        day_weekend = np.zeros(day_kwh.shape[1], dtype=bool)
        day_weekend[grid.day] = grid.weekend
        we = _ratio(
            _masked_mean(day_kwh, day_weekend[None, :]),
            _masked_mean(day_kwh, ~day_weekend[None, :]),
        )
        thresh = ch.before + 0.7 * ch.added
        above = ((mat >= thresh[:, None]) & after_cols).sum(axis=1)  # NaN compares False
        duty = np.where(has & (ch.added > 0), above / np.maximum(n_after, 1), np.nan)
        med_before = _row_median(mat_before)
        med_after = _row_median(mat_after)
        msr = np.where(
            has & (np.abs(ch.added) > 1e-6),
            (med_after - med_before) / np.where(ch.added == 0, 1, ch.added),
            np.nan,
        )
    span = _span_counts(valid)
    return pl.DataFrame(
        {
            "account_id": ids,
            "n_days": full_day.sum(axis=1).astype(np.int32),
            "missing_share": 1.0 - valid.sum(axis=1) / np.maximum(span, 1),
            "mean_kw": mean_kw,
            "peak_kw": peak_kw,
            "base_kw": base_kw,
            "night_base_kw": _row_median(night),
            "base_noise_kw": ch_all.noise,
            "base_share": _ratio(base_kw, mean_kw),
            "change_series": pl.Series(np.where(use_night, "night", "all_day")).set(
                pl.Series(~has), None
            ),
            "since": _since(ch.k, grid),
            "change_stat": ch.stat,
            "added_kw": ch.added,
            "base_before_kw": ch.before,
            "base_after_kw": ch.after,
            "persist": ch.persist,
            "sharpness": ch.sharpness,
            "after_spread": ch.spread,
            "noise_ratio": ch.noise_ratio,
            "stat_all_day": ch_all.stat,
            "added_all_day_kw": ch_all.added,
            "stat_night": ch_night.stat,
            "added_night_kw": ch_night.added,
            "lf": lf,
            "lf_before": lf_before,
            "lf_after": lf_after,
            "cv_daily": cv_daily,
            "cv_daily_after": cv_after,
            "night_day_ratio": nd,
            "weekend_ratio": we,
            "duty_cycle": duty,
            "median_shift_ratio": msr,
            "night_noise_kw": ch_night.noise,
        },
        strict=False,
    )


def _pick_change(a: _Change, b: _Change, use_b: np.ndarray) -> _Change:
    def sel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where(use_b, y, x)

    return _Change(
        k=sel(a.k, b.k),
        stat=sel(a.stat, b.stat),
        added=sel(a.added, b.added),
        before=sel(a.before, b.before),
        after=sel(a.after, b.after),
        persist=sel(a.persist, b.persist),
        sharpness=sel(a.sharpness, b.sharpness),
        spread=sel(a.spread, b.spread),
        noise_ratio=sel(a.noise_ratio, b.noise_ratio),
        noise=sel(a.noise, b.noise),
    )


def _span_counts(valid: np.ndarray) -> np.ndarray:
    """Columns from each row's first to last valid column (inclusive)."""
    any_valid = valid.any(axis=1)
    first = np.argmax(valid, axis=1)
    last = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    return np.where(any_valid, last - first + 1, 0)


def _since(k: np.ndarray, grid: _Grid) -> pl.Series:
    starts = grid.day_start_utc
    idx = np.clip(k, 0, len(starts) - 1)
    values = starts[idx]
    out = pl.Series("since", values).dt.replace_time_zone("UTC")
    return out.set(pl.Series(k < 0), None) if (k < 0).any() else out


# --------------------------------------------------------------------------- daily accounts


def _daily_part(frame: pl.DataFrame, tz: str) -> pl.DataFrame:
    """Daily-only accounts: the base series is the daily mean power; no hour-of-day features."""
    days = frame.with_columns(
        _slot=(pl.col("ts") - pl.duration(seconds=pl.col("interval_s").cast(pl.Int64)))
        .dt.convert_time_zone(tz)
        .dt.date()
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC"),
        _kw=pl.col("kwh") / 24.0,
    )
    ids, mat, grid = _matrix(
        days.group_by("account_id", "_slot").agg(pl.col("_kw").sum()), "_slot", "_kw", 86400, "UTC"
    )
    valid = ~np.isnan(mat)
    with _quiet():
        ch = _change_point(mat)
        has = ch.k >= 0
        all_cols = np.ones_like(valid)
        after_cols = (grid.day[None, :] >= ch.k[:, None]) & has[:, None]
        mean_kw = _masked_mean(mat, all_cols)
        base_kw = _row_median(mat)
        we = _ratio(
            _masked_mean(mat, grid.weekend[None, :]), _masked_mean(mat, ~grid.weekend[None, :])
        )
    nan = np.full(len(ids), np.nan)
    span = _span_counts(valid)
    return pl.DataFrame(
        {
            "account_id": ids,
            "n_days": valid.sum(axis=1).astype(np.int32),
            "missing_share": 1.0 - valid.sum(axis=1) / np.maximum(span, 1),
            "mean_kw": mean_kw,
            "peak_kw": nan,
            "base_kw": base_kw,
            "night_base_kw": nan,
            "base_noise_kw": ch.noise,
            "base_share": nan,
            "change_series": pl.Series(np.full(len(ids), "daily_mean")).set(pl.Series(~has), None),
            "since": _since(ch.k, grid),
            "change_stat": ch.stat,
            "added_kw": ch.added,
            "base_before_kw": ch.before,
            "base_after_kw": ch.after,
            "persist": ch.persist,
            "sharpness": ch.sharpness,
            "after_spread": ch.spread,
            "noise_ratio": ch.noise_ratio,
            "stat_all_day": ch.stat,
            "added_all_day_kw": ch.added,
            "stat_night": nan,
            "added_night_kw": nan,
            "lf": nan,
            "lf_before": nan,
            "lf_after": nan,
            "cv_daily": _cv(mat, all_cols),
            "cv_daily_after": np.where(has, _cv(mat, after_cols), np.nan),
            "night_day_ratio": nan,
            "weekend_ratio": we,
            "duty_cycle": nan,
            "median_shift_ratio": nan,
            "night_noise_kw": nan,
        },
        strict=False,
    )

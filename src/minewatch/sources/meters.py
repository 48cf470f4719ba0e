"""Meter data into the canonical ``readings`` and ``accounts`` tables.

Formats read (CSV, optionally gzip-compressed, or Parquet):

- **long interval energy**: one row per account and interval: account id, timestamp, kWh.
  15-minute, half-hourly, hourly and daily data are detected per account, so a file may mix
  resolutions across accounts.
- **long register readings**: the meter's cumulative index (kWh) instead of interval energy,
  detected from the column name or from the values (or forced with ``kind="register"``).
  Consecutive readings are differenced; a register that wraps at a power of ten (rollover) is
  unwrapped; a register that restarts low (meter replacement, or a change of the optional
  meter-serial column) starts a new series without inventing energy for the changeover.
- **SGCC wide**: the State Grid theft data set layout, one row per customer with ``CONS_NO``,
  an optional ``FLAG`` (1 = verified theft) and one column per date holding daily kWh.
- **accounts**: account id, tariff class, contracted capacity (kVA), region, transformer id,
  address.

Timestamps with an offset (``2026-03-29T01:00:00+01:00``, ``...Z``) are converted to UTC.
Timestamps without one are local time in ``tz``; across a daylight-saving change the repeated
hour is resolved by order of appearance (first = summer time) and times that do not exist
(the skipped hour) are quarantined. A date without a time labels the whole day. A timestamp
marks the *end* of its interval unless ``label="start"``.

Every record read is either accepted or quarantined with a reason (``read = accepted +
rejected``, see :class:`LoadReport`). Duplicates keep the first occurrence. Gaps are not
records and are not quarantined; they are counted in the report and the features see them as
missing data. A file that cannot be used at all raises :class:`~minewatch.errors.InputError`
naming the file, line and field and saying what to do.

All work is done column-wise in Polars; no Python loop runs per reading.
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch.errors import InputError, Quarantine
from minewatch.schema import ACCOUNTS, READINGS

SOURCE = "meters"

#: Interval lengths (seconds) a meter series may have; others are snapped or refused.
INTERVALS: tuple[int, ...] = (300, 900, 1800, 3600, 86400)

#: Tariff classes of the accounts table; synonyms map onto these, anything else is "other".
TARIFF_CLASSES: tuple[str, ...] = ("residential", "commercial", "agricultural", "industrial")

_TARIFF_SYNONYMS: dict[str, str] = {
    "residential": "residential",
    "household": "residential",
    "domestic": "residential",
    "home": "residential",
    "res": "residential",
    "居民": "residential",
    "commercial": "commercial",
    "business": "commercial",
    "shop": "commercial",
    "com": "commercial",
    "商业": "commercial",
    "agricultural": "agricultural",
    "agriculture": "agricultural",
    "farm": "agricultural",
    "agri": "agricultural",
    "农业": "agricultural",
    "industrial": "industrial",
    "industry": "industrial",
    "ind": "industrial",
    "工业": "industrial",
}

_ACCOUNT_COLS = ("account_id", "account", "customer_id", "customer", "cons_no", "consumer_id")
_METER_COLS = ("meter_serial", "meter_id", "meter_no", "serial")
_TS_COLS = (
    "ts",
    "timestamp",
    "time",
    "datetime",
    "date_time",
    "interval_end",
    "reading_time",
    "date",
)
_INTERVAL_VALUE_COLS = ("kwh", "energy_kwh", "consumption_kwh", "consumption", "energy")
_REGISTER_COLS = (
    "register",
    "register_kwh",
    "register_reading",
    "meter_reading",
    "cumulative_kwh",
    "total_kwh",
    "index",
    "meter_index",
)
_AMBIGUOUS_VALUE_COLS = ("value", "reading", "usage")
_INTERVAL_S_COLS = ("interval_s", "interval_seconds")

_TS_FORMATS_AWARE = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M%#z",
    "%Y-%m-%d %H:%M%#z",
)
_TS_FORMATS_NAIVE = (
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
)
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d", "%d.%m.%Y")

Kind = Literal["auto", "interval", "register"]


@dataclass
class LoadReport:
    """What happened to every record of one file.

    ``read`` records were found; each was ``accepted`` or ``rejected`` (quarantined) with a
    reason in ``rejected_by_reason``. For register files an accepted reading that starts a
    series (the first reading of a meter) yields no interval, so ``intervals`` can be smaller
    than ``accepted``. ``gaps`` counts missing intervals inside each account's span.
    """

    path: str
    format: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    accounts: int = 0
    intervals: int = 0
    accounts_by_interval_s: dict[int, int] = field(default_factory=dict)
    gaps: int = 0
    rollovers: int = 0
    replacements: int = 0
    empty_cells: int = 0

    @property
    def conserved(self) -> bool:
        return self.read == self.accepted + self.rejected

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "accounts": self.accounts,
            "intervals": self.intervals,
            "accounts_by_interval_s": {str(k): v for k, v in self.accounts_by_interval_s.items()},
            "gaps": self.gaps,
            "rollovers": self.rollovers,
            "replacements": self.replacements,
            "empty_cells": self.empty_cells,
        }


@dataclass
class MeterData:
    """The canonical readings of one file, verified labels if the file had any, the report."""

    readings: pa.Table
    report: LoadReport
    labels: pa.Table | None = None  # account_id (string), label (int8: 1 = verified positive)


# --------------------------------------------------------------------------- file loading


def _load_frame(path: Path) -> tuple[pl.DataFrame, bool]:
    """The file as a DataFrame (CSV: every column a string) and whether it is CSV."""
    if not path.exists():
        raise InputError("file not found", path=path, hint="check the path")
    if path.is_dir():
        raise InputError("is a directory, not a file", path=path, hint="name a CSV/Parquet file")
    with path.open("rb") as fh:
        head = fh.read(4096)
    if not head:
        raise InputError("empty file", path=path, hint="export the meter data again")
    if head[:4] == b"PAR1":
        try:
            return pl.read_parquet(path), False
        except Exception as exc:
            raise InputError(
                f"unreadable Parquet file ({exc.__class__.__name__}: {exc})",
                path=path,
                hint="the file is damaged; export it again",
            ) from exc
    data: bytes | Path = path
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                data = gz.read()
        except (OSError, EOFError) as exc:
            raise InputError(
                f"damaged gzip file ({exc})", path=path, hint="compress the CSV again"
            ) from exc
        head = data[:4096]
    if b"\x00" in head:
        raise InputError(
            "binary data, not a CSV or Parquet file",
            path=path,
            line=1,
            hint="give a CSV (comma-separated, header row) or a Parquet file",
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut in the middle of a multi-byte character at 4096 is fine; anything else is not.
        if exc.start < len(head) - 4:
            raise InputError(
                "not UTF-8 text",
                path=path,
                line=head[: exc.start].count(b"\n") + 1,
                hint="save the CSV as UTF-8",
            ) from exc
    first_line = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    separator = ","
    if first_line.count(";") > first_line.count(",") and first_line.count(";") >= 1:
        separator = ";"
    elif first_line.count("\t") > first_line.count(",") and first_line.count("\t") >= 1:
        separator = "\t"
    try:
        frame = pl.read_csv(
            data,
            infer_schema=False,
            separator=separator,
            truncate_ragged_lines=True,
            raise_if_empty=False,
        )
    except Exception as exc:
        raise InputError(
            f"cannot parse as CSV ({exc.__class__.__name__}: {str(exc).splitlines()[0]})",
            path=path,
            hint="give a CSV with a header row, or a Parquet file",
        ) from exc
    frame = frame.rename({c: c.strip().lstrip("\ufeff") for c in frame.columns})
    return frame, True


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    low = {c.lower().strip(): c for c in columns}
    for name in names:
        if name in low:
            return low[name]
    return None


def _where(path: Path, is_csv: bool) -> pl.Expr:
    """The place of each record for the quarantine: ``file:line N`` or ``file:record N``."""
    if is_csv:
        return pl.format("{}:line {}", pl.lit(str(path)), pl.col("_row") + 2)
    return pl.format("{}:record {}", pl.lit(str(path)), pl.col("_row") + 1)


# --------------------------------------------------------------------------- timestamps


def _sample_parses(sample: pl.Series, fmt: str, aware: bool) -> bool:
    tz = "UTC" if aware else None
    try:
        parsed = sample.str.to_datetime(fmt, strict=False, time_zone=tz)
    except Exception:
        return False
    return parsed.null_count() < len(sample)


def _parse_ts(frame: pl.DataFrame, col: str, tz: str, path: Path) -> pl.DataFrame:
    """Add ``_ts`` (UTC, or null when unparseable), ``_ts_reason`` and ``_date_only``."""
    dtype = frame.schema[col]
    n = frame.height
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            return frame.with_columns(
                _ts=pl.col(col).dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
                _date_only=pl.lit(False),
                _aware=pl.lit(True),
            ).pipe(_localise, tz)
        return frame.with_columns(
            _naive=pl.col(col).dt.cast_time_unit("us"),
            _date_only=pl.lit(False),
            _aware=pl.lit(False),
        ).pipe(_localise, tz)
    if dtype == pl.Date:
        return frame.with_columns(
            _naive=pl.col(col).cast(pl.Datetime("us")),
            _date_only=pl.lit(True),
            _aware=pl.lit(False),
        ).pipe(_localise, tz)
    if dtype.is_integer() or dtype.is_float():
        secs = pl.col(col).cast(pl.Float64)
        secs = pl.when(secs > 1e11).then(secs / 1000.0).otherwise(secs)  # milliseconds
        return frame.with_columns(
            _ts=pl.from_epoch((secs * 1e6).cast(pl.Int64), time_unit="us").dt.replace_time_zone(
                "UTC"
            ),
            _date_only=pl.lit(False),
            _aware=pl.lit(True),
        ).pipe(_localise, tz)
    text = pl.col(col).cast(pl.String).str.strip_chars()
    frame = frame.with_columns(_tstext=text)
    sample = frame.get_column("_tstext").drop_nulls().head(2000)
    if sample.len() == 0 and n > 0:
        raise InputError(
            "the timestamp column is empty",
            path=path,
            line=2,
            field=col,
            hint="fill in a timestamp per reading (ISO 8601, e.g. 2026-03-14T01:00:00+01:00)",
        )
    aware_fmts = [f for f in _TS_FORMATS_AWARE if _sample_parses(sample, f, True)]
    naive_fmts = [f for f in _TS_FORMATS_NAIVE if _sample_parses(sample, f, False)]
    date_fmts = [
        f
        for f in _DATE_FORMATS
        if sample.str.strptime(pl.Date, f, strict=False).null_count() < sample.len()
    ]
    epoch = sample.str.contains(r"^\d{9,13}$").any()
    if not (aware_fmts or naive_fmts or date_fmts or epoch):
        raise InputError(
            f"no timestamp could be read (first value {sample[0]!r})",
            path=path,
            line=2,
            field=col,
            hint="use ISO 8601 timestamps, e.g. 2026-03-14T01:00:00+01:00 or 2026-03-14 01:00",
        )
    aware_exprs = [
        pl.col("_tstext").str.to_datetime(f, strict=False, time_zone="UTC", time_unit="us")
        for f in aware_fmts
    ]
    if epoch:
        number = pl.col("_tstext").cast(pl.Int64, strict=False)
        digits = (
            pl.when(~pl.col("_tstext").str.contains(r"^\d{9,13}$"))
            .then(pl.lit(None, dtype=pl.Int64))
            .when(number > 100_000_000_000)
            .then(number * 1000)
            .otherwise(number * 1_000_000)
        )
        aware_exprs.append(pl.from_epoch(digits, time_unit="us").dt.replace_time_zone("UTC"))
    naive_exprs = [
        pl.col("_tstext").str.to_datetime(f, strict=False, time_unit="us") for f in naive_fmts
    ]
    date_exprs = [
        pl.col("_tstext").str.strptime(pl.Date, f, strict=False).cast(pl.Datetime("us"))
        for f in date_fmts
    ]
    null_ts = pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    null_naive = pl.lit(None, dtype=pl.Datetime("us"))
    frame = frame.with_columns(
        _aware_ts=pl.coalesce([*aware_exprs, null_ts]),
        _naive_dt=pl.coalesce([*naive_exprs, null_naive]),
        _date_dt=pl.coalesce([*date_exprs, null_naive]),
    )
    frame = frame.with_columns(
        _aware=pl.col("_aware_ts").is_not_null(),
        _date_only=pl.col("_aware_ts").is_null()
        & pl.col("_naive_dt").is_null()
        & pl.col("_date_dt").is_not_null(),
        _naive=pl.coalesce(["_naive_dt", "_date_dt"]),
        _ts=pl.col("_aware_ts"),
    )
    return _localise(frame.drop("_aware_ts", "_naive_dt", "_date_dt"), tz)


def _localise(frame: pl.DataFrame, tz: str) -> pl.DataFrame:
    """Turn the naive local ``_naive`` column into UTC, resolving the repeated DST hour."""
    if "_naive" not in frame.columns:
        return frame.with_columns(_ts_reason=pl.lit(None, dtype=pl.String))
    # Repeated local times (the hour after a fall-back transition) appear twice per account:
    # the first is summer time ("earliest"), the second winter time ("latest").
    frame = frame.with_columns(
        _occurrence=pl.col("_row").rank("ordinal").over(["_acct", "_naive"]).cast(pl.Int64)
    )
    ambiguous = (
        pl.when(pl.col("_occurrence") == 2).then(pl.lit("latest")).otherwise(pl.lit("earliest"))
    )
    try:
        local = pl.col("_naive").dt.replace_time_zone(tz, ambiguous=ambiguous, non_existent="null")
        frame = frame.with_columns(_local=local)
    except Exception as exc:  # unknown zone name
        raise InputError(
            f"unknown time zone {tz!r}", hint="give an IANA name such as Europe/Berlin"
        ) from exc
    converted = pl.col("_local").dt.convert_time_zone("UTC")
    if "_ts" in frame.columns:
        ts = pl.when(pl.col("_aware")).then(pl.col("_ts")).otherwise(converted)
    else:
        ts = converted
    reason = (
        pl.when(pl.col("_aware"))
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("_naive").is_null())
        .then(pl.lit("unparseable timestamp"))
        .when(pl.col("_local").is_null())
        .then(pl.lit("local time does not exist (daylight-saving gap)"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return frame.with_columns(_ts=ts, _ts_reason=reason).drop("_local", "_occurrence", "_naive")


# --------------------------------------------------------------------------- common path


def _reject(frame: pl.DataFrame, reason: pl.Expr, current: str = "_reason") -> pl.DataFrame:
    """Set ``_reason`` where it is still empty and ``reason`` is not null."""
    return frame.with_columns(pl.coalesce([pl.col(current), reason]).alias(current))


def _send_to_quarantine(
    rejected: pl.DataFrame, quarantine: Quarantine | None, record_cols: list[str]
) -> None:
    if quarantine is None or rejected.height == 0:
        return
    if quarantine.path is None:
        counts = rejected.group_by("_reason").len()
        for reason, n in counts.iter_rows():
            quarantine.counts[reason] += n
        return
    records = rejected.select(
        "_where", "_reason", pl.struct([pl.col(c).cast(pl.String) for c in record_cols]).alias("r")
    )
    # One call per rejected record: the quarantine's own API writes its JSON Lines format.
    for where, reason, record in records.iter_rows():
        quarantine.reject(SOURCE, where, reason, record)


def _snap_interval(seconds: pl.Expr) -> pl.Expr:
    """The allowed interval nearest to ``seconds`` if within 10 %, else null."""
    best: pl.Expr = pl.lit(None, dtype=pl.Int32)
    for iv in INTERVALS:
        best = (
            pl.when((seconds - iv).abs() <= 0.1 * iv)
            .then(pl.lit(iv, dtype=pl.Int32))
            .otherwise(best)
        )
    return best


def _finish(
    frame: pl.DataFrame,
    *,
    path: Path,
    report: LoadReport,
    quarantine: Quarantine | None,
    record_cols: list[str],
    max_kw: float,
    label: str,
    interval_col: str | None,
    register: bool,
    meter_col: str | None,
) -> pl.DataFrame:
    """Checks shared by every format; returns accepted rows as READINGS columns."""
    # -- values that are wrong whatever their neighbours (so a bad reading never wins a
    # duplicate against a good one)
    if not register:
        bad = pl.col("_reason").is_null() & pl.col("_kwh").is_not_null()
        frame = _reject(
            frame,
            pl.when(bad & (pl.col("_kwh") < 0))
            .then(pl.lit("negative energy"))
            .when(bad & ~pl.col("_kwh").is_finite())
            .then(pl.lit("non-finite energy")),
        )
    # -- duplicates: same account and instant; keep the first occurrence in the file
    ok = pl.col("_reason").is_null()
    frame = frame.with_columns(
        _dup_rank=pl.when(ok).then(pl.col("_row").rank("ordinal").over(["_acct", "_ts", ok]))
    )
    first_val = pl.col("_value").sort_by("_row").first().over(["_acct", "_ts", ok])
    frame = _reject(
        frame,
        pl.when(ok & (pl.col("_dup_rank") > 1)).then(
            pl.when(pl.col("_value") == first_val)
            .then(pl.lit("duplicate reading"))
            .otherwise(pl.lit("conflicting duplicate reading (first kept)"))
        ),
    )
    # -- interval per account: the most common spacing of its valid readings (ties: the
    # smaller), snapped; gaps are multiples of it and do not move it
    frame = frame.sort(["_acct", "_ts", "_row"])
    ok = pl.col("_reason").is_null()
    good = frame.filter(ok)
    spacing = (
        good.with_columns(_dt=(pl.col("_ts").diff().over("_acct").dt.total_seconds()))
        .group_by("_acct")
        .agg(
            _spacing=pl.col("_dt").filter(pl.col("_dt") > 0).mode().min(),
            _date_only_all=pl.col("_date_only").all(),
        )
    )
    if interval_col is not None:
        given = good.group_by("_acct").agg(
            _given=pl.col(interval_col).cast(pl.Float64, strict=False).median()
        )
        spacing = spacing.join(given, on="_acct", how="left").with_columns(
            _spacing=pl.coalesce(["_given", "_spacing"])
        )
    spacing = spacing.with_columns(
        _spacing=pl.when(pl.col("_date_only_all"))
        .then(pl.lit(86400.0))
        .otherwise(pl.col("_spacing"))
    )
    file_mode = spacing.select(_snap_interval(pl.col("_spacing")).drop_nulls().mode().first())
    fallback = file_mode.item() if file_mode.height else None
    spacing = spacing.with_columns(
        _interval=pl.when(pl.col("_spacing").is_null())
        .then(pl.lit(fallback, dtype=pl.Int32))
        .otherwise(_snap_interval(pl.col("_spacing")))
    )
    frame = frame.join(spacing.select("_acct", "_interval"), on="_acct", how="left")
    frame = _reject(
        frame,
        pl.when(pl.col("_reason").is_null() & pl.col("_interval").is_null()).then(
            pl.lit("account interval not one of 5/15/30/60 min or 1 day")
        ),
    )
    # -- date-only stamps label the whole day; "start" labels move to the interval's end
    shift_s = (
        pl.when(pl.col("_date_only"))
        .then(pl.lit(86400))
        .otherwise(pl.lit(0) if label == "end" else pl.col("_interval"))
    )
    frame = frame.with_columns(_ts=pl.col("_ts") + pl.duration(seconds=shift_s.cast(pl.Int64)))
    frame = frame.with_columns(_span=pl.col("_interval"))
    if register:
        frame = _registers_to_energy(frame, report, meter_col)
    # -- negative and absurd energy
    ok = pl.col("_reason").is_null() & pl.col("_kwh").is_not_null()
    avg_kw = pl.col("_kwh") / (pl.col("_span").cast(pl.Float64) / 3600.0)
    frame = _reject(
        frame,
        pl.when(ok & (pl.col("_kwh") < 0))
        .then(pl.lit("negative energy"))
        .when(ok & ~pl.col("_kwh").is_finite())
        .then(pl.lit("non-finite energy"))
        .when(ok & (avg_kw > max_kw))
        .then(pl.lit(f"absurd value (average power above {max_kw:g} kW)")),
    )
    # -- timestamps out of any plausible range
    frame = _reject(
        frame,
        pl.when(
            pl.col("_reason").is_null()
            & ((pl.col("_ts").dt.year() < 1990) | (pl.col("_ts").dt.year() > 2100))
        ).then(pl.lit("timestamp out of range (before 1990 or after 2100)")),
    )
    # -- bookkeeping and the quarantine
    rejected = frame.filter(pl.col("_reason").is_not_null())
    _send_to_quarantine(rejected, quarantine, record_cols)
    report.read = frame.height
    report.rejected = rejected.height
    report.accepted = frame.height - rejected.height
    report.rejected_by_reason = dict(rejected.group_by("_reason").len().sort("_reason").iter_rows())
    accepted = frame.filter(pl.col("_reason").is_null() & pl.col("_kwh").is_not_null())
    out = accepted.select(
        pl.col("_acct").alias("account_id"),
        pl.col("_ts").alias("ts"),
        pl.col("_kwh").cast(pl.Float64).alias("kwh"),
        pl.col("_span").cast(pl.Int32).alias("interval_s"),
    ).sort(["account_id", "ts"])
    per_acct = (
        frame.filter(pl.col("_reason").is_null())
        .group_by("_acct")
        .agg(
            n=pl.len(),
            lo=pl.col("_ts").min(),
            hi=pl.col("_ts").max(),
            iv=pl.col("_interval").first(),
        )
        .with_columns(
            expected=((pl.col("hi") - pl.col("lo")).dt.total_seconds() / pl.col("iv")).floor() + 1
        )
    )
    report.accounts = per_acct.height
    report.intervals = out.height
    report.gaps = int(per_acct.select((pl.col("expected") - pl.col("n")).clip(0).sum()).item() or 0)
    report.accounts_by_interval_s = {
        int(k): int(v) for k, v in per_acct.group_by("iv").len().sort("iv").iter_rows()
    }
    return out


def _registers_to_energy(
    frame: pl.DataFrame, report: LoadReport, meter_col: str | None
) -> pl.DataFrame:
    """Difference cumulative register readings into interval energy (``_kwh``, ``_span``).

    Within an account (ordered by time), a reading below its predecessor is a *rollover* when
    the predecessor was within the top 10 % of the register's decimal range and the reading in
    the bottom 10 % (the energy is ``range - previous + reading``); any other large drop, or a
    change of the meter-serial column, is a *meter replacement*: the new meter's first reading
    starts a new series. A small step backwards is a misread and is quarantined.
    """
    ok = pl.col("_reason").is_null()
    live = frame.filter(ok)
    rest = frame.filter(~ok).with_columns(_kwh=pl.lit(None, dtype=pl.Float64))
    if live.height == 0:
        return pl.concat(
            [live.with_columns(_kwh=pl.lit(None, dtype=pl.Float64)), rest], how="diagonal_relaxed"
        )
    meter = pl.col(meter_col).cast(pl.String) if meter_col else pl.lit("")
    live = live.with_columns(_meter=meter.fill_null(""))
    # Decimal range of each meter's register: the next power of ten above its largest reading.
    live = live.with_columns(
        _range=(
            pl.lit(10.0)
            ** (pl.col("_value").max().over(["_acct", "_meter"]).clip(1.0, None).log10().ceil())
        )
    )
    prev = pl.col("_value").shift(1).over("_acct")
    prev_meter = pl.col("_meter").shift(1).over("_acct")
    prev_ts = pl.col("_ts").shift(1).over("_acct")
    live = live.with_columns(_prev=prev, _prev_meter=prev_meter, _prev_ts=prev_ts)
    diff = pl.col("_value") - pl.col("_prev")
    rollover = (
        (diff < 0)
        & (pl.col("_prev") >= 0.9 * pl.col("_range"))
        & (pl.col("_value") <= 0.1 * pl.col("_range"))
        & (pl.col("_meter") == pl.col("_prev_meter"))
    )
    replaced = (pl.col("_meter") != pl.col("_prev_meter")) | (
        (diff < 0) & ~rollover & (pl.col("_value") < 0.5 * pl.col("_prev"))
    )
    backwards = (diff < 0) & ~rollover & ~replaced
    live = live.with_columns(
        _rollover=rollover.fill_null(False),
        _replaced=replaced.fill_null(False),
        _backwards=backwards.fill_null(False),
    )
    live = live.with_columns(
        _reason=pl.when(pl.col("_backwards"))
        .then(pl.lit("register went backwards (misread)"))
        .otherwise(pl.col("_reason"))
    )
    # Second pass without the misreads, so that the next reading differences against the last
    # good one.
    good = live.filter(pl.col("_reason").is_null()).with_columns(
        _prev=pl.col("_value").shift(1).over("_acct"),
        _prev_ts=pl.col("_ts").shift(1).over("_acct"),
    )
    diff = pl.col("_value") - pl.col("_prev")
    good = good.with_columns(
        _kwh=pl.when(pl.col("_prev").is_null() | pl.col("_replaced"))
        .then(pl.lit(None, dtype=pl.Float64))
        .when(pl.col("_rollover"))
        .then(pl.col("_range") - pl.col("_prev") + pl.col("_value"))
        .when(diff < 0)
        .then(pl.lit(None, dtype=pl.Float64))
        .otherwise(diff),
        _span=(pl.col("_ts") - pl.col("_prev_ts")).dt.total_seconds().cast(pl.Int32),
    )
    # A reading after a second backwards step (left after the first pass) starts a new series.
    report.rollovers = int(good.get_column("_rollover").sum())
    report.replacements = int(good.get_column("_replaced").sum())
    bad = live.filter(pl.col("_reason").is_not_null()).with_columns(
        _kwh=pl.lit(None, dtype=pl.Float64)
    )
    return pl.concat([good, bad, rest], how="diagonal_relaxed")


# --------------------------------------------------------------------------- public readers


def read_readings(
    path: str | Path,
    *,
    kind: Kind = "auto",
    tz: str = "UTC",
    label: Literal["end", "start"] = "end",
    max_kw: float = 2000.0,
    quarantine: Quarantine | None = None,
) -> MeterData:
    """Read one meter-data file (long interval, long register or SGCC wide) into READINGS.

    ``tz`` is the zone of timestamps that carry no offset; ``label`` says whether a timestamp
    marks the end (default, as in the canonical table) or the start of its interval;
    ``max_kw`` is the average power above which a reading is absurd for any single meter.
    ``kind`` forces interval energy or register readings; ``auto`` decides from the column
    name, or for ambiguous names (``value``, ``reading``) from whether the values climb.
    """
    path = Path(path)
    frame, is_csv = _load_frame(path)
    if frame.width == 0 or (frame.height == 0 and frame.width <= 1):
        raise InputError("empty file", path=path, hint="export the meter data again")
    if _pick(frame.columns, ("cons_no",)) is not None and _pick(frame.columns, _TS_COLS) is None:
        return _read_sgcc(frame, path, is_csv, tz=tz, max_kw=max_kw, quarantine=quarantine)
    return _read_long(
        frame, path, is_csv, kind=kind, tz=tz, label=label, max_kw=max_kw, quarantine=quarantine
    )


def _read_long(
    frame: pl.DataFrame,
    path: Path,
    is_csv: bool,
    *,
    kind: Kind,
    tz: str,
    label: Literal["end", "start"],
    max_kw: float,
    quarantine: Quarantine | None,
) -> MeterData:
    """Long interval or register readings of a loaded frame (the whole file or a part of it
    holding whole accounts; a part carries each record's place in the file as ``_row``)."""
    cols = [c for c in frame.columns if c != "_row"]
    acct_col = _pick(cols, _ACCOUNT_COLS)
    meter_col = _pick(cols, _METER_COLS)
    if acct_col is None and meter_col is not None:
        acct_col, meter_col = meter_col, None
    ts_col = _pick(cols, _TS_COLS)
    interval_col = _pick(cols, _INTERVAL_S_COLS)
    value_col = _pick(cols, _INTERVAL_VALUE_COLS)
    register_col = _pick(cols, _REGISTER_COLS)
    ambiguous_col = _pick(cols, _AMBIGUOUS_VALUE_COLS)
    found = ", ".join(repr(c) for c in cols[:12])
    for needed, col, names in (
        ("account id", acct_col, _ACCOUNT_COLS),
        ("timestamp", ts_col, _TS_COLS),
    ):
        if col is None:
            raise InputError(
                f"no {needed} column (found {found})",
                path=path,
                line=1 if is_csv else None,
                field=names[0],
                hint=f"name the column one of: {', '.join(names)}",
            )
    if kind == "interval":
        value = value_col or ambiguous_col or register_col
        register = False
    elif kind == "register":
        value = register_col or ambiguous_col or value_col
        register = True
    else:
        value = value_col or register_col or ambiguous_col
        register = value is not None and value == register_col and value_col is None
    if value is None:
        raise InputError(
            f"no energy column (found {found})",
            path=path,
            line=1 if is_csv else None,
            field="kwh",
            hint="name interval energy 'kwh' or register readings 'register' (both in kWh)",
        )
    if frame.height == 0:
        raise InputError(
            "no readings, only a header",
            path=path,
            line=2 if is_csv else None,
            hint="the export stopped before the data; export it again",
        )
    assert acct_col is not None and ts_col is not None
    record_cols = list(cols)
    if "_row" not in frame.columns:
        frame = frame.with_row_index("_row")
    frame = frame.with_columns(
        _acct=pl.col(acct_col).cast(pl.String).str.strip_chars(),
        _value=pl.col(value).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        if frame.schema[value] == pl.String
        else pl.col(value).cast(pl.Float64, strict=False),
    )
    frame = _parse_ts(frame, ts_col, tz, path)
    if kind == "auto" and value == ambiguous_col and value_col is None and register_col is None:
        register = _looks_cumulative(frame)
    reason = (
        pl.when(pl.col("_acct").is_null() | (pl.col("_acct") == ""))
        .then(pl.lit("missing account id"))
        .when(pl.col("_ts_reason").is_not_null())
        .then(pl.col("_ts_reason"))
        .when(pl.col("_ts").is_null())
        .then(pl.lit("unparseable timestamp"))
        .when(pl.col("_value").is_null())
        .then(pl.lit("missing or unparseable energy value"))
    )
    frame = frame.with_columns(_reason=reason, _where=_where(path, is_csv))
    frame = frame.with_columns(
        _kwh=pl.lit(None, dtype=pl.Float64) if register else pl.col("_value")
    )
    report = LoadReport(path=str(path), format="long-register" if register else "long-interval")
    out = _finish(
        frame,
        path=path,
        report=report,
        quarantine=quarantine,
        record_cols=record_cols,
        max_kw=max_kw,
        label=label,
        interval_col=interval_col,
        register=register,
        meter_col=meter_col,
    )
    return MeterData(readings=_to_arrow(out), report=report)


#: A Parquet file of long readings with more rows than this is read in parts of whole accounts
#: (the checks peak at roughly 700 bytes per row: measured 7.2 GB for parts of 10 M rows).
PART_ROWS = 4_000_000


def merge_reports(reports: Sequence[LoadReport]) -> LoadReport:
    """One report for a file read in parts (counts added, reasons and intervals merged)."""
    out = LoadReport(path=reports[0].path, format=reports[0].format)
    for f in fields(LoadReport):
        if isinstance(getattr(out, f.name), dict):
            merged: dict[object, int] = {}
            for r in reports:
                for k, n in getattr(r, f.name).items():
                    merged[k] = merged.get(k, 0) + n
            setattr(out, f.name, dict(sorted(merged.items())))
        elif isinstance(getattr(out, f.name), int):
            setattr(out, f.name, sum(getattr(r, f.name) for r in reports))
    return out


def iter_readings(
    path: str | Path,
    *,
    kind: Kind = "auto",
    tz: str = "UTC",
    label: Literal["end", "start"] = "end",
    max_kw: float = 2000.0,
    quarantine: Quarantine | None = None,
    part_rows: int | None = None,
    spill_dir: str | Path | None = None,
) -> Iterator[MeterData]:
    """:func:`read_readings` in parts of whole accounts, so a large file is never held whole.

    A Parquet file of long readings with more than ``part_rows`` rows (default
    :data:`PART_ROWS`) is cut into parts of whole accounts: along its row groups when it is
    ordered by account (checked from the row-group statistics, then part by part), otherwise
    through hash buckets of the account id spilled to ``spill_dir``. Every part goes through
    the same checks as :func:`read_readings`; quarantined records keep their record number in
    the file, and :func:`merge_reports` of the parts' reports conserves the counts. The kind
    (interval or register) is decided once, on the first part. Two things are per part rather
    than per file: the fallback interval of accounts with a single reading (the most common
    interval of the part) and the order of the output. CSV, SGCC wide and smaller files are
    read whole (one part).
    """
    from minewatch.engines import local

    path = Path(path)
    limit = PART_ROWS if part_rows is None else part_rows

    def whole() -> MeterData:
        return read_readings(
            path, kind=kind, tz=tz, label=label, max_kw=max_kw, quarantine=quarantine
        )

    try:
        with path.open("rb") as fh:
            parquet = fh.read(4) == b"PAR1"
    except OSError:
        parquet = False
    if not parquet:
        yield whole()
        return
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:
        yield whole()  # raises the clear error
        return
    names = meta.schema.to_arrow_schema().names
    acct_col = _pick(names, _ACCOUNT_COLS) or _pick(names, _METER_COLS)
    sgcc = _pick(names, ("cons_no",)) is not None and _pick(names, _TS_COLS) is None
    if meta.num_rows <= limit or acct_col is None or sgcc:
        yield whole()
        return
    try:
        parts = local.plan_parts(path, limit, key=acct_col)
    except local.UnorderedInput:
        parts = None
    decided: Kind = kind
    if parts is not None:
        last: str | None = None
        # the parts are consecutive runs of the file's rows (each starts right after the rows
        # its predecessor read on into), so record numbers continue from part to part
        first_row = 0
        for part in parts:
            batches = list(local._part_batches(part, local.BATCH_READINGS, acct_col))
            table = pa.Table.from_batches(batches)
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            frame = frame.with_columns(
                _row=pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64)
            )
            first_row += frame.height
            data = _read_part(frame, path, decided, tz, label, max_kw, quarantine)
            decided = "register" if data.report.format == "long-register" else "interval"
            ids = data.readings.column("account_id")
            if len(ids):
                if last is not None and ids[0].as_py() <= last:
                    raise InputError(
                        f"account {ids[0].as_py()!r} appears again after {last!r}: the file "
                        "is ordered by account only with the spaces around the ids",
                        path=path,
                        field=acct_col,
                        hint="strip the account ids, or sort the file by account",
                    )
                last = ids[-1].as_py()
            yield data
        return
    yield from _read_spilled(
        path, acct_col, limit, spill_dir, decided, tz, label, max_kw, quarantine
    )


def _read_part(
    frame: pl.DataFrame,
    path: Path,
    kind: Kind,
    tz: str,
    label: Literal["end", "start"],
    max_kw: float,
    quarantine: Quarantine | None,
) -> MeterData:
    if frame.height == 0:
        return MeterData(
            readings=READINGS.empty_table(),
            report=LoadReport(path=str(path), format="long-interval"),
        )
    return _read_long(
        frame, path, False, kind=kind, tz=tz, label=label, max_kw=max_kw, quarantine=quarantine
    )


def _read_spilled(
    path: Path,
    acct_col: str,
    part_rows: int,
    spill_dir: str | Path | None,
    kind: Kind,
    tz: str,
    label: Literal["end", "start"],
    max_kw: float,
    quarantine: Quarantine | None,
) -> Iterator[MeterData]:
    """Parts of a Parquet file not ordered by account: hash buckets of the stripped id."""
    import math

    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from minewatch.engines import local

    dataset = ds.dataset(str(path), format="parquet")
    n_buckets = max(1, math.ceil(dataset.count_rows() / part_rows))

    def numbered() -> Iterator[pa.Table]:
        row = 0
        for batch in dataset.to_batches(batch_size=local.BATCH_READINGS):
            key = pc.utf8_trim_whitespace(pc.cast(batch.column(acct_col), pa.string()))
            table = pa.Table.from_batches([batch]).append_column("_key", key)
            table = table.append_column(
                "_row", pa.array(np.arange(row, row + batch.num_rows, dtype=np.int64))
            )
            row += batch.num_rows
            yield table

    decided = kind
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix="minewatch-readings-") as tmp:
        for bucket in local.spill_buckets(numbered(), tmp, n_buckets, key="_key"):
            frame = pl.from_arrow(pq.read_table(bucket).drop_columns(["_key"]))
            assert isinstance(frame, pl.DataFrame)
            frame = frame.sort("_row")  # file order inside the bucket (first duplicate wins)
            data = _read_part(frame, path, decided, tz, label, max_kw, quarantine)
            decided = "register" if data.report.format == "long-register" else "interval"
            yield data


def _looks_cumulative(frame: pl.DataFrame) -> bool:
    """Register readings climb: almost every step is non-negative and small next to the level."""
    stats = (
        frame.filter(pl.col("_ts").is_not_null() & pl.col("_value").is_not_null())
        .sort(["_acct", "_ts"])
        .with_columns(_d=pl.col("_value").diff().over("_acct"))
        .select(
            up=(pl.col("_d") >= 0).mean(),
            level=pl.col("_value").median(),
            step=pl.col("_d").abs().median(),
        )
    )
    up, level, step = stats.row(0)
    if up is None or level is None or step is None:
        return False
    return bool(up >= 0.98 and level > 20 * max(step, 1e-9))


def _read_sgcc(
    frame: pl.DataFrame,
    path: Path,
    is_csv: bool,
    *,
    tz: str,
    max_kw: float,
    quarantine: Quarantine | None,
) -> MeterData:
    cols = frame.columns
    cons = _pick(cols, ("cons_no",))
    flag = _pick(cols, ("flag",))
    assert cons is not None
    others = [c for c in cols if c not in (cons, flag)]
    parsed = pl.DataFrame({"name": others}).with_columns(
        d=pl.coalesce(
            [pl.col("name").str.strptime(pl.Date, f, strict=False) for f in _DATE_FORMATS]
        )
    )
    date_cols = parsed.filter(pl.col("d").is_not_null()).get_column("name").to_list()
    if not date_cols:
        raise InputError(
            f"SGCC layout (CONS_NO) but no date columns (found {', '.join(others[:8])})",
            path=path,
            line=1,
            field=others[0] if others else None,
            hint="one column per day named like 2014/1/1 or 2014-01-01",
        )
    if frame.height == 0:
        raise InputError(
            "no customers, only a header", path=path, line=2, hint="export the table again"
        )
    frame = frame.with_row_index("_row")
    labels = None
    if flag is not None:
        labels_df = (
            frame.select(
                pl.col(cons).cast(pl.String).str.strip_chars().alias("account_id"),
                pl.col(flag)
                .cast(pl.String)
                .str.strip_chars()
                .cast(pl.Int8, strict=False)
                .alias("label"),
            )
            .filter(pl.col("account_id").is_not_null() & pl.col("label").is_not_null())
            .unique("account_id", keep="first", maintain_order=True)
        )
        labels = labels_df.to_arrow().cast(
            pa.schema([("account_id", pa.string()), ("label", pa.int8())])
        )
    long = frame.select(
        "_row",
        pl.col(cons).cast(pl.String).str.strip_chars().alias("_acct"),
        *[pl.col(c).cast(pl.String).alias(c) for c in date_cols],
    ).unpivot(index=["_row", "_acct"], on=date_cols, variable_name="_date", value_name="_raw")
    long = long.with_columns(_raw=pl.col("_raw").str.strip_chars())
    empty = long.filter(pl.col("_raw").is_null() | (pl.col("_raw") == ""))
    long = long.filter(pl.col("_raw").is_not_null() & (pl.col("_raw") != ""))
    date_map = parsed.filter(pl.col("d").is_not_null()).select(
        pl.col("name").alias("_date"), pl.col("d").cast(pl.Datetime("us")).alias("_naive")
    )
    long = long.join(date_map, on="_date", how="left").with_columns(
        _value=pl.col("_raw").cast(pl.Float64, strict=False),
        _date_only=pl.lit(True),
        _aware=pl.lit(False),
    )
    long = _localise(long, tz)
    long = long.with_columns(
        _reason=pl.when(pl.col("_acct").is_null() | (pl.col("_acct") == ""))
        .then(pl.lit("missing account id (CONS_NO)"))
        .when(pl.col("_ts_reason").is_not_null())
        .then(pl.col("_ts_reason"))
        .when(pl.col("_value").is_null())
        .then(pl.lit("unparseable energy value")),
        _where=pl.format(
            "{}:line {} field {}", pl.lit(str(path)), pl.col("_row") + 2, pl.col("_date")
        )
        if is_csv
        else pl.format(
            "{}:record {} field {}", pl.lit(str(path)), pl.col("_row") + 1, pl.col("_date")
        ),
        _kwh=pl.col("_value"),
    )
    report = LoadReport(path=str(path), format="sgcc-wide", empty_cells=empty.height)
    out = _finish(
        long,
        path=path,
        report=report,
        quarantine=quarantine,
        record_cols=["_acct", "_date", "_raw"],
        max_kw=max_kw,
        label="end",
        interval_col=None,
        register=False,
        meter_col=None,
    )
    return MeterData(readings=_to_arrow(out), report=report, labels=labels)


def _to_arrow(frame: pl.DataFrame) -> pa.Table:
    return frame.to_arrow().cast(READINGS)


def read_accounts(path: str | Path, *, quarantine: Quarantine | None = None) -> pa.Table:
    """Read an accounts table (CSV or Parquet) into the canonical ACCOUNTS schema.

    Tariff classes are normalised (``household`` → ``residential``, ``farm`` →
    ``agricultural`` ...; unknown names become ``other``). Records without an account id,
    with a capacity that is not a positive number, or repeating an account id are
    quarantined.
    """
    path = Path(path)
    frame, is_csv = _load_frame(path)
    cols = frame.columns
    acct = _pick(cols, (*_ACCOUNT_COLS, *_METER_COLS))
    if acct is None:
        raise InputError(
            f"no account id column (found {', '.join(repr(c) for c in cols[:12])})",
            path=path,
            line=1 if is_csv else None,
            field="account_id",
            hint=f"name the column one of: {', '.join(_ACCOUNT_COLS)}",
        )
    if frame.height == 0:
        raise InputError(
            "no accounts, only a header",
            path=path,
            line=2 if is_csv else None,
            hint="export the accounts table again",
        )

    def text(names: Sequence[str]) -> pl.Expr:
        col = _pick(cols, names)
        if col is None:
            return pl.lit(None, dtype=pl.String)
        return pl.col(col).cast(pl.String).str.strip_chars()

    cap_text = text(("capacity_kva", "capacity", "contracted_kva", "kva"))
    frame = frame.with_row_index("_row").with_columns(
        account_id=text((acct,)),
        _tariff_raw=text(("tariff_class", "tariff", "class", "customer_class")),
        capacity_kva=cap_text.cast(pl.Float64, strict=False),
        _cap_raw=cap_text,
        address=text(("address", "addr")),
        region=text(("region", "district", "area")),
        transformer_id=text(("transformer_id", "transformer", "substation")),
        _where=_where(path, is_csv),
    )
    mapping = pl.DataFrame(
        {"_tariff_key": list(_TARIFF_SYNONYMS), "tariff_class": list(_TARIFF_SYNONYMS.values())}
    )
    frame = (
        frame.with_columns(_tariff_key=pl.col("_tariff_raw").str.to_lowercase())
        .join(mapping, on="_tariff_key", how="left")
        .with_columns(tariff_class=pl.col("tariff_class").fill_null("other"))
        .sort("_row")
    )
    bad_cap = pl.col("_cap_raw").is_not_null() & (
        pl.col("capacity_kva").is_null() | (pl.col("capacity_kva") <= 0)
    )
    frame = frame.with_columns(
        _reason=pl.when(pl.col("account_id").is_null() | (pl.col("account_id") == ""))
        .then(pl.lit("missing account id"))
        .when(bad_cap)
        .then(pl.lit("capacity is not a positive number"))
    )
    ok = pl.col("_reason").is_null()
    frame = frame.with_columns(
        _reason=pl.when(ok & (pl.col("_row").rank("ordinal").over(["account_id", ok]) > 1))
        .then(pl.lit("duplicate account id (first kept)"))
        .otherwise(pl.col("_reason"))
    )
    _send_to_quarantine(frame.filter(pl.col("_reason").is_not_null()), quarantine, list(cols))
    out = frame.filter(pl.col("_reason").is_null()).select(ACCOUNTS.names)
    return out.to_arrow().cast(ACCOUNTS)


def read_labels(path: str | Path, *, quarantine: Quarantine | None = None) -> pa.Table:
    """Verified outcomes (CSV or Parquet): account id and label (1 = mining/theft found, 0 = not).

    Accepts ``label``, ``flag``, ``outcome`` or ``mining`` for the label column (``true``/
    ``false`` and ``yes``/``no`` too). Unreadable labels are quarantined.
    """
    path = Path(path)
    frame, is_csv = _load_frame(path)
    acct = _pick(frame.columns, (*_ACCOUNT_COLS, *_METER_COLS))
    label = _pick(frame.columns, ("label", "flag", "outcome", "mining", "verified"))
    for needed, col, names in (
        ("account id", acct, _ACCOUNT_COLS),
        ("label", label, ("label", "flag", "outcome", "mining")),
    ):
        if col is None:
            raise InputError(
                f"no {needed} column (found {', '.join(repr(c) for c in frame.columns[:12])})",
                path=path,
                line=1 if is_csv else None,
                field=names[0],
                hint=f"name the column one of: {', '.join(names)}",
            )
    assert acct is not None and label is not None
    text = pl.col(label).cast(pl.String).str.strip_chars().str.to_lowercase()
    frame = frame.with_row_index("_row").with_columns(
        account_id=pl.col(acct).cast(pl.String).str.strip_chars(),
        label=pl.when(text.is_in(["1", "true", "yes", "y", "1.0"]))
        .then(pl.lit(1, dtype=pl.Int8))
        .when(text.is_in(["0", "false", "no", "n", "0.0"]))
        .then(pl.lit(0, dtype=pl.Int8)),
        _where=_where(path, is_csv),
    )
    frame = frame.with_columns(
        _reason=pl.when(pl.col("account_id").is_null() | (pl.col("account_id") == ""))
        .then(pl.lit("missing account id"))
        .when(pl.col("label").is_null())
        .then(pl.lit("label is not 0/1"))
    )
    _send_to_quarantine(frame.filter(pl.col("_reason").is_not_null()), quarantine, [acct, label])
    out = frame.filter(pl.col("_reason").is_null()).unique(
        "account_id", keep="first", maintain_order=True
    )
    return (
        out.select("account_id", "label")
        .to_arrow()
        .cast(pa.schema([("account_id", pa.string()), ("label", pa.int8())]))
    )


__all__ = [
    "INTERVALS",
    "TARIFF_CLASSES",
    "LoadReport",
    "MeterData",
    "read_accounts",
    "read_labels",
    "read_readings",
]

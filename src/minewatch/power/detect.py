"""Scoring accounts for hidden mining load: peers, evidence terms, models, reasons.

Entry points (pure functions over Arrow tables; see :mod:`minewatch.power.features`):

- :func:`score` ``(features, accounts) -> scores``: one row per account with the contract
  fields ``account_id, score, flagged, added_load_kw, since, reasons`` plus ``evidence``,
  ``anomaly``, ``tariff_class`` and ``hashrate`` (implied hash-rate range per likely
  algorithm). It runs once over the whole feature table, because peers are compared there.
- :func:`screen` ``(readings, accounts) -> scores``: :func:`account_features` then
  :func:`score`, locally.

How an account is scored
------------------------
1. **Peers.** Accounts are grouped by tariff class and region (falling back to the tariff
   class, then to everyone, when a group has fewer than :data:`MIN_PEERS` accounts); each
   account is compared with its group's median base load, median night base and median mean
   power.
2. **Evidence terms.** :data:`TERMS` are named, bounded transformations of the features: the
   size of the upward base-load step in noise units and in kW, its t statistic, sharpness and
   persistence, the spread after it, the duty cycle, whether the step is night-only, how far
   the all-day base sits above the peers' (``level``) and how flat it is, how far the night
   base exceeds the all-day base, the change of load factor, day-to-day variability, the
   base-load share, the scale against peers and the tariff class.
3. **Unsupervised model.** An :class:`~sklearn.ensemble.IsolationForest` over the robust
   terms of the whole population gives each account an anomaly rank (0–1, 1 = most isolated).
   It is one more term.
4. **Scorecard.** The calibrated score is a logistic model over the standardised terms and
   their pairwise products (a quadratic scorecard). Its weights were fitted by
   :func:`minewatch.power.scorecard.fit` on ground truth from the synthetic benchmark
   generator (:mod:`minewatch.lab.meters`, seeds listed in the weights module, not the seeds
   of the quality report) at 3 % prevalence; the output is a probability *at that prior*.
   ``prior`` shifts the log-odds to another prevalence (Bayes' rule on the odds). Hourly
   and daily-only accounts have separate scorecards.
5. **Supervised model (optional).** With verified outcomes (``labels``: account id and 0/1),
   a gradient-boosted classifier over the same terms plus the scorecard's log-odds is fitted
   on 5 folds (the labelled accounts get out-of-fold predictions, the others the mean of the
   fold models) and one isotonic regression from the out-of-fold predictions to the labels
   turns them into probabilities.
6. **Reasons** are rule checks a field officer can verify on site (step size and date,
   night minimum before and after, load factor, persistence, peers, contracted capacity); the
   ``added_load_kw`` and ``since`` come from the same rules, not from the model. An account
   is ``flagged`` when its score reaches the threshold *and* a rule found checkable evidence
   (a step, a base level above the peers', or a raised night minimum).
7. **Rules over the model.** A step that built up gradually while the base started to wander
   from day to day (see :data:`WEATHER_SHARPNESS`) is what heating does in winter: its
   probability is capped at :data:`WEATHER_CAP` and the reasons say so. A rig switched on adds
   a constant: the step is sharp, persists and leaves the day-to-day noise as it was; such a
   clear step (see :data:`CLEAR_SHARPNESS`) gets at least :data:`CLEAR_FLOOR`, whatever the
   scorecard makes of the rest of the account.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from minewatch.energy import HARDWARE, algorithms, hashrate_range
from minewatch.power.features import account_features

#: Fewest accounts in a peer group before falling back to a wider group.
MIN_PEERS = 30
#: Probability at or above which an account is flagged.
FLAG_PROBABILITY = 0.5
#: A base-load step counts as evidence from this t statistic and size (kW) on.
STEP_MIN_STAT = 5.0
STEP_MIN_KW = 0.1
#: Weather rule: a step that built up gradually (less than ``WEATHER_SHARPNESS[i]`` of it
#: within a week of the date) while the base wanders from day to day (noise ratio above
#: ``WEATHER_NOISE_RATIO[i]``), for either pair i, looks like heating; its probability is
#: capped at :data:`WEATHER_CAP`.
WEATHER_SHARPNESS = (0.4, 0.6)
WEATHER_NOISE_RATIO = (1.5, 2.0)
WEATHER_CAP = 0.05
#: ... unless the base stays flat at its new level (spread after the change below
#: ``FLAT_AFTER_SPREAD`` of the shift, on at least ``FLAT_AFTER_PERSIST`` of the days): heating
#: follows the weather after the change too, rigs added one by one do not.
FLAT_AFTER_SPREAD = 0.4
FLAT_AFTER_PERSIST = 0.9
#: Night-block rule: a night minimum at least ``NIGHT_BLOCK_MIN_KW`` above the all-day minimum
#: that is the same every night (day-to-day noise of the night minimum at most
#: ``NIGHT_BLOCK_FLATNESS`` of that excess) is a constant load switched on at night; night
#: storage heating charges with the weather and varies more (in the benchmark generator at
#: least 7 % of its night excess, heat pumps 25 %). Its probability is raised to at least
#: :data:`CLEAR_FLOOR`.
NIGHT_BLOCK_MIN_KW = 0.5
NIGHT_BLOCK_FLATNESS = 0.04
#: Clear-step rule: a sharp (``CLEAR_SHARPNESS``), persistent (``CLEAR_PERSIST``) step of at
#: least ``CLEAR_MIN_KW`` with a t statistic of ``CLEAR_MIN_STAT`` that left the day-to-day
#: noise as it was (``CLEAR_NOISE_RATIO``) is what switching on a rig looks like; its
#: probability is raised to at least :data:`CLEAR_FLOOR`.
CLEAR_SHARPNESS = 0.8
CLEAR_PERSIST = 0.9
CLEAR_MIN_KW = 0.5
CLEAR_MIN_STAT = 20.0
CLEAR_NOISE_RATIO = 1.5
CLEAR_FLOOR = 0.9
#: Standardised terms are clipped to +-Z_CLIP before the scorecard's products are formed.
Z_CLIP = 4.0

TERMS: tuple[str, ...] = (
    "step",
    "step_shaped",
    "step_kw",
    "stat",
    "sharp",
    "persist",
    "spread",
    "noise_ratio",
    "duty",
    "msr",
    "night",
    "night_step",
    "level",
    "level_flat",
    "noise_rel",
    "night_ex",
    "dlf",
    "cv",
    "base_share",
    "scale",
    "res",
    "agr",
    "ind",
    "anomaly",
)

_IF_TERMS = (
    "step",
    "stat",
    "level_flat",
    "night_ex",
    "dlf",
    "cv",
    "base_share",
    "noise_rel",
    "noise_ratio",
)

HASHRATE_TYPE = pa.list_(
    pa.struct([("algo", pa.string()), ("low_hs", pa.float64()), ("high_hs", pa.float64())])
)

_HASHRATE_DTYPE = pl.List(
    pl.Struct({"algo": pl.String, "low_hs": pl.Float64, "high_hs": pl.Float64})
)

SCORES = pa.schema(
    [
        ("account_id", pa.string()),
        ("score", pa.float64()),
        ("flagged", pa.bool_()),
        ("added_load_kw", pa.float64()),
        ("since", pa.timestamp("us", tz="UTC")),
        ("reasons", pa.list_(pa.string())),
        ("evidence", pa.string()),
        ("anomaly", pa.float64()),
        ("tariff_class", pa.string()),
        ("hashrate", HASHRATE_TYPE),
    ]
)


# --------------------------------------------------------------------------- peers and terms


def with_peers(features: pa.Table | pl.DataFrame, accounts: pa.Table | None) -> pl.DataFrame:
    """Features joined with the account's tariff class, region, capacity and peer medians."""
    frame = features if isinstance(features, pl.DataFrame) else pl.from_arrow(features)
    assert isinstance(frame, pl.DataFrame)
    df: pl.DataFrame = frame
    if accounts is not None and accounts.num_rows:
        acc = pl.from_arrow(accounts)
        assert isinstance(acc, pl.DataFrame)
        acc = acc.select("account_id", "tariff_class", "region", "capacity_kva").unique(
            "account_id", keep="first"
        )
        df = df.join(acc, on="account_id", how="left")
    else:
        df = df.with_columns(
            tariff_class=pl.lit(None, dtype=pl.String),
            region=pl.lit(None, dtype=pl.String),
            capacity_kva=pl.lit(None, dtype=pl.Float64),
        )
    df = df.with_columns(
        tariff_class=pl.col("tariff_class").fill_null("unknown"),
        region=pl.col("region").fill_null("unknown"),
        _daily=pl.col("interval_s") >= 86400,
    )

    def stats(keys: list[str], suffix: str) -> pl.DataFrame:
        return df.group_by(keys).agg(
            pl.len().alias(f"_n{suffix}"),
            pl.col("base_kw").median().alias(f"_base{suffix}"),
            (pl.col("base_kw") - pl.col("base_kw").median()).abs().median().alias(f"_mad{suffix}"),
            pl.col("mean_kw").median().alias(f"_mean{suffix}"),
            pl.col("night_base_kw").median().alias(f"_night{suffix}"),
        )

    levels = [
        (["_daily", "tariff_class", "region"], "_cr"),
        (["_daily", "tariff_class"], "_c"),
        (["_daily"], "_all"),
    ]
    for keys, suffix in levels:
        df = df.join(stats(keys, suffix), on=keys, how="left")
    use_cr = pl.col("_n_cr") >= MIN_PEERS
    use_c = pl.col("_n_c") >= MIN_PEERS

    def pick(name: str) -> pl.Expr:
        return (
            pl.when(use_cr)
            .then(pl.col(f"_{name}_cr"))
            .when(use_c)
            .then(pl.col(f"_{name}_c"))
            .otherwise(pl.col(f"_{name}_all"))
        )

    df = df.with_columns(
        peer_n=pick("n"),
        peer_base_kw=pick("base"),
        peer_base_mad_kw=pick("mad"),
        peer_mean_kw=pick("mean"),
        peer_night_kw=pick("night"),
        peer_group=pl.when(use_cr)
        .then(pl.format("{} in {}", pl.col("tariff_class"), pl.col("region")))
        .when(use_c)
        .then(pl.col("tariff_class"))
        .otherwise(pl.lit("all accounts")),
    )
    return df.drop(
        [c for c in df.columns if c.startswith(("_n_", "_base_", "_mad_", "_mean_", "_night_"))]
    )


def evidence_terms(df: pl.DataFrame) -> pl.DataFrame:
    """The named evidence terms (:data:`TERMS` without ``anomaly``) for each account."""

    def c(e: pl.Expr) -> pl.Expr:
        return e.cast(pl.Float64).fill_nan(None).fill_null(0.0)

    added = c(pl.col("added_kw")).clip(0, None)
    sharp = c(pl.col("sharpness")).clip(0, 1)
    persist = c(pl.col("persist"))
    noise = c(pl.col("base_noise_kw"))
    step = (added / (noise + 0.05)).log1p()
    night = (pl.col("change_series") == "night").fill_null(False).cast(pl.Float64)
    excess = c(pl.col("base_kw") - pl.col("peer_base_kw")).clip(0, None)
    return df.select(
        "account_id",
        step=step,
        step_shaped=step * sharp * persist,
        step_kw=(added / 0.1).log1p() * sharp * persist,
        stat=c(pl.col("change_stat")).clip(0, None).log1p(),
        sharp=sharp,
        persist=persist,
        spread=c(pl.col("after_spread")).clip(0, 5),
        noise_ratio=c(pl.col("noise_ratio")).clip(0.1, 100).log(),
        duty=c(pl.col("duty_cycle")),
        msr=c(pl.col("median_shift_ratio")).clip(-2, 3),
        night=night,
        night_step=night * step * sharp,
        level=(excess / (c(pl.col("peer_base_mad_kw")) + 0.05)).log1p(),
        level_flat=(excess / (noise + 0.05)).log1p(),
        noise_rel=(noise / (c(pl.col("base_kw")).clip(0, None) + 0.05)).clip(0, 5),
        night_ex=(
            c(pl.col("night_base_kw") - pl.col("base_kw")).clip(0, None) / (noise + 0.05)
        ).log1p(),
        dlf=c(pl.col("lf_after") - pl.col("lf_before")),
        cv=c(pl.col("cv_daily_after")).clip(0, 2),
        base_share=c(pl.col("base_share")).clip(0, 2),
        scale=c((pl.col("mean_kw") / pl.col("peer_mean_kw")).log()).clip(-5, 5),
        res=(pl.col("tariff_class") == "residential").cast(pl.Float64),
        agr=(pl.col("tariff_class") == "agricultural").cast(pl.Float64),
        ind=(pl.col("tariff_class") == "industrial").cast(pl.Float64),
    )


def anomaly_rank(terms: pl.DataFrame, daily: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Isolation-forest anomaly rank in [0, 1] within hourly and within daily accounts."""
    from sklearn.ensemble import IsolationForest

    out = np.full(terms.height, 0.5)
    x_all = terms.select(_IF_TERMS).to_numpy()
    for group in (False, True):
        idx = np.flatnonzero(daily == group)
        if idx.size < 50:
            continue
        forest = IsolationForest(
            n_estimators=100, max_samples=min(1024, idx.size), random_state=seed
        )
        forest.fit(x_all[idx])
        raw = -forest.score_samples(x_all[idx])
        ranks = raw.argsort().argsort()
        out[idx] = (ranks + 0.5) / idx.size
    return out


# --------------------------------------------------------------------------- scorecard


@dataclass(frozen=True)
class Scorecard:
    """A quadratic logistic scorecard: standardise, add pairwise products, standardise, dot."""

    terms: tuple[str, ...]
    mean1: np.ndarray
    scale1: np.ndarray
    mean2: np.ndarray
    scale2: np.ndarray
    coef: np.ndarray
    intercept: float
    prevalence: float

    def expand(self, x: np.ndarray) -> np.ndarray:
        # Clipping keeps the pairwise products from extrapolating wildly on accounts unlike
        # anything the scorecard was fitted on.
        z = np.clip((x - self.mean1) / self.scale1, -Z_CLIP, Z_CLIP)
        i, j = np.triu_indices(z.shape[1])
        return np.hstack([z, z[:, i] * z[:, j]])

    def logit(self, x: np.ndarray) -> np.ndarray:
        e = (self.expand(x) - self.mean2) / self.scale2
        return np.asarray(e @ self.coef + self.intercept)


def load_scorecard(kind: str) -> Scorecard:
    """The shipped scorecard for ``hourly`` or ``daily`` accounts."""
    from minewatch.power import _scorecard_weights as w

    data = w.WEIGHTS[kind]
    return Scorecard(
        terms=tuple(data["terms"]),
        mean1=np.asarray(data["mean1"]),
        scale1=np.asarray(data["scale1"]),
        mean2=np.asarray(data["mean2"]),
        scale2=np.asarray(data["scale2"]),
        coef=np.asarray(data["coef"]),
        intercept=float(data["intercept"]),
        prevalence=float(data["prevalence"]),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def _logit_prior(p: float) -> float:
    return math.log(p / (1.0 - p))


# --------------------------------------------------------------------------- supervised


def supervised_probability(
    x: np.ndarray, labelled: np.ndarray, y: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """Calibrated probabilities from verified outcomes (see module docs, step 6).

    Gradient-boosted trees are fitted on k folds of the labelled accounts; each labelled
    account gets the prediction of the model that did not see it, every other account the
    mean of the fold models. One isotonic regression from those out-of-fold predictions to
    the labels then maps every raw prediction to a probability.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import StratifiedKFold

    xl, yl = x[labelled], y
    n_pos, n_neg = int(yl.sum()), int((1 - yl).sum())
    folds = min(5, n_pos, n_neg)
    if folds < 2:
        raise ValueError("labels need at least two positive and two negative accounts")
    raw = np.zeros(len(x))
    rest = ~labelled
    lab_idx = np.flatnonzero(labelled)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in skf.split(xl, yl):
        model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
        model.fit(xl[train], yl[train])
        raw[lab_idx[test]] = model.predict_proba(xl[test])[:, 1]
        if rest.any():
            raw[rest] += model.predict_proba(x[rest])[:, 1] / folds
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(raw[labelled], yl)
    return np.asarray(iso.predict(raw))


# --------------------------------------------------------------------------- reasons


def _fmt_kw(e: pl.Expr, digits: int = 2) -> pl.Expr:
    return e.round(digits).cast(pl.String)


def _reasons(df: pl.DataFrame) -> pl.DataFrame:
    """Reason strings (vectorised with Polars string expressions)."""
    step_ok = (pl.col("change_stat") >= STEP_MIN_STAT) & (pl.col("added_kw") >= STEP_MIN_KW)
    series = (
        pl.when(pl.col("change_series") == "night")
        .then(pl.lit("night"))
        .when(pl.col("change_series") == "daily_mean")
        .then(pl.lit("daily mean"))
        .otherwise(pl.lit("all-day"))
    )
    since = pl.col("since").dt.strftime("%Y-%m-%d")
    r_step = pl.when(step_ok).then(
        pl.format(
            "+{} kW flat since {}, {} minimum {} → {} kW",
            _fmt_kw(pl.col("added_kw"), 1),
            since,
            series,
            _fmt_kw(pl.col("base_before_kw")),
            _fmt_kw(pl.col("base_after_kw")),
        )
    )
    r_lf = pl.when(
        step_ok & pl.col("lf_before").is_not_null() & pl.col("lf_after").is_not_null()
    ).then(
        pl.format("load factor {} → {}", _fmt_kw(pl.col("lf_before")), _fmt_kw(pl.col("lf_after")))
    )
    r_persist = pl.when(step_ok & pl.col("duty_cycle").is_not_null()).then(
        pl.format(
            "added load present on {}% of days and {}% of hours since",
            (pl.col("persist") * 100).round(0).cast(pl.Int64, strict=False),
            (pl.col("duty_cycle") * 100).round(0).cast(pl.Int64, strict=False),
        )
    )
    ratio = pl.col("base_kw") / pl.col("peer_base_kw")
    r_level = pl.when(
        (pl.col("evidence") == "level") | ((ratio >= 3) & (pl.col("base_kw") >= 0.3))
    ).then(
        pl.format(
            "base load {} kW around the clock, {}× the median of {} peers ({}, {} kW)",
            _fmt_kw(pl.col("base_kw")),
            ratio.round(1).cast(pl.String),
            pl.col("peer_n"),
            pl.col("peer_group"),
            _fmt_kw(pl.col("peer_base_kw")),
        )
    )
    r_night = pl.when(pl.col("evidence") == "night").then(
        pl.format(
            "night minimum {} kW against {} kW all-day minimum",
            _fmt_kw(pl.col("night_base_kw")),
            _fmt_kw(pl.col("base_kw")),
        )
    )
    r_block = pl.when(pl.col("night_block")).then(
        pl.format(
            "the night minimum is {} kW above the all-day minimum and varies only ±{} kW "
            "from night to night (a constant load on at night, not weather-driven heating)",
            _fmt_kw(pl.col("night_base_kw") - pl.col("base_kw"), 1),
            _fmt_kw(pl.col("night_noise_kw")),
        )
    )
    r_start = pl.when(pl.col("evidence").is_in(["level", "night"])).then(
        pl.format(
            "present since before the data begins ({})", pl.col("first_ts").dt.strftime("%Y-%m-%d")
        )
    )
    r_flat = pl.when(
        (pl.col("evidence") != "none")
        & (pl.col("cv_daily_after").fill_null(pl.col("cv_daily")) < 0.1)
    ).then(
        pl.format(
            "daily energy varies only {}% day to day",
            (pl.col("cv_daily_after").fill_null(pl.col("cv_daily")) * 100)
            .round(0)
            .cast(pl.Int64, strict=False),
        )
    )
    cap_use = pl.col("peak_kw") / pl.col("capacity_kva")
    r_cap = pl.when(cap_use >= 0.8).then(
        pl.format(
            "peak {} kW uses {}% of the contracted {} kVA",
            _fmt_kw(pl.col("peak_kw"), 1),
            (cap_use * 100).round(0).cast(pl.Int64, strict=False),
            _fmt_kw(pl.col("capacity_kva"), 1),
        )
    )
    r_scale = pl.when(
        (pl.col("evidence") != "none") & (pl.col("mean_kw") >= 3 * pl.col("peer_mean_kw"))
    ).then(
        pl.format(
            "uses {}× the median of its peers ({})",
            (pl.col("mean_kw") / pl.col("peer_mean_kw")).round(1).cast(pl.String),
            pl.col("peer_group"),
        )
    )
    r_anom = pl.when(pl.col("anomaly") >= 0.99).then(
        pl.format(
            "among the {}% most unusual load curves (isolation forest)",
            ((1 - pl.col("anomaly")) * 100).round(1).clip(0.1, None).cast(pl.String),
        )
    )
    r_missing = pl.when(pl.col("missing_share") >= 0.2).then(
        pl.format(
            "{}% of readings missing",
            (pl.col("missing_share") * 100).round(0).cast(pl.Int64, strict=False),
        )
    )
    r_weather = pl.when(pl.col("weather")).then(
        pl.format(
            "looks weather-driven: only {}% of the rise came within a week of the date and the "
            "base varies {}× more from day to day since (heating?)",
            (pl.col("sharpness").clip(0, 1) * 100).round(0).cast(pl.Int64, strict=False),
            pl.col("noise_ratio").round(1).cast(pl.String),
        )
    )
    parts = [
        r_weather,
        r_step,
        r_lf,
        r_persist,
        r_level,
        r_night,
        r_block,
        r_start,
        r_flat,
        r_cap,
        r_scale,
        r_anom,
        r_missing,
    ]
    return df.with_columns(reasons=pl.concat_list(parts).list.drop_nulls())


# --------------------------------------------------------------------------- hash rate


def likely_algorithms(added_w: float) -> list[str]:
    """Algorithms whose smallest listed device draws no more than ``added_w`` watts."""
    smallest: dict[str, float] = {}
    for hw in HARDWARE:
        smallest[hw.algo] = min(smallest.get(hw.algo, math.inf), hw.power_w)
    return [a for a in algorithms() if smallest.get(a, math.inf) <= added_w]


def _hashrates(added_kw: np.ndarray) -> list[list[dict[str, object]] | None]:
    # One entry per distinct load (to the watt) rather than per account.
    rounded = np.round(np.nan_to_num(added_kw, nan=0.0), 3)
    table: dict[float, list[dict[str, object]] | None] = {}
    for kw in np.unique(rounded):
        watts = float(kw) * 1000.0
        items: list[dict[str, object]] = []
        for algo in likely_algorithms(watts):
            rng = hashrate_range(algo, watts)
            if rng is not None:
                items.append({"algo": algo, "low_hs": rng[0], "high_hs": rng[1]})
        table[float(kw)] = items or None
    return [table[float(k)] for k in rounded]


# --------------------------------------------------------------------------- scoring


def rule_checks(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weather, clear-step and night-block rules (see the constants above) per account."""
    step = pl.col("change_stat") >= STEP_MIN_STAT
    sharp, noise = pl.col("sharpness"), pl.col("noise_ratio")
    flat_after = (pl.col("after_spread") < FLAT_AFTER_SPREAD) & (
        pl.col("persist") >= FLAT_AFTER_PERSIST
    )
    night_ex = pl.col("night_base_kw") - pl.col("base_kw")
    night_block = (night_ex >= NIGHT_BLOCK_MIN_KW) & (
        pl.col("night_noise_kw") <= NIGHT_BLOCK_FLATNESS * night_ex
    )
    weather = (
        step
        & ~flat_after.fill_null(False)
        & ~night_block.fill_null(False)
        & (
            ((sharp < WEATHER_SHARPNESS[0]) & (noise > WEATHER_NOISE_RATIO[0]))
            | ((sharp < WEATHER_SHARPNESS[1]) & (noise > WEATHER_NOISE_RATIO[1]))
        )
    )
    clear = (
        (pl.col("change_stat") >= CLEAR_MIN_STAT)
        & (pl.col("added_kw") >= CLEAR_MIN_KW)
        & (sharp >= CLEAR_SHARPNESS)
        & (pl.col("persist") >= CLEAR_PERSIST)
        & (noise <= CLEAR_NOISE_RATIO)
    )
    out = df.select(
        weather.fill_null(False).alias("w"),
        clear.fill_null(False).alias("c"),
        night_block.fill_null(False).alias("n"),
    )
    return tuple(out.get_column(c).to_numpy() for c in ("w", "c", "n"))  # type: ignore[return-value]


def score(
    features: pa.Table,
    accounts: pa.Table | None = None,
    *,
    labels: pa.Table | None = None,
    prior: float | None = None,
    threshold: float = FLAG_PROBABILITY,
    seed: int = 0,
) -> pa.Table:
    """Score every account of a feature table (schema :data:`SCORES`, sorted by score).

    Pure over its inputs: ``features`` from :func:`account_features` (all accounts, however
    they were computed), ``accounts`` (canonical ACCOUNTS, optional), ``labels`` (optional
    verified outcomes: ``account_id``, ``label`` 0/1). ``prior`` re-bases the probabilities to
    another prevalence; ``threshold`` is the probability from which ``flagged`` is true.
    """
    df = with_peers(features, accounts)
    if df.height == 0:
        return SCORES.empty_table()
    terms = evidence_terms(df)
    daily = df.get_column("_daily").to_numpy()
    anomaly = anomaly_rank(terms, daily, seed=seed)
    terms = terms.with_columns(anomaly=pl.Series(anomaly))
    x = terms.select(TERMS).to_numpy()
    logit = np.zeros(len(x))
    for kind, mask in (("hourly", ~daily), ("daily", daily)):
        if mask.any():
            card = load_scorecard(kind)
            shift = 0.0 if prior is None else _logit_prior(prior) - _logit_prior(card.prevalence)
            logit[mask] = card.logit(x[mask][:, [TERMS.index(t) for t in card.terms]]) + shift
    weather, clear, night_block = rule_checks(df)
    logit = np.where(clear | night_block, np.maximum(logit, _logit_prior(CLEAR_FLOOR)), logit)
    logit = np.where(weather, np.minimum(logit, _logit_prior(WEATHER_CAP)), logit)
    prob = _sigmoid(logit)
    if labels is not None and labels.num_rows:
        lab = pl.from_arrow(labels)
        assert isinstance(lab, pl.DataFrame)
        lab = lab.select(pl.col("account_id").cast(pl.String), pl.col("label").cast(pl.Int8))
        joined = df.select("account_id").join(lab.unique("account_id"), on="account_id", how="left")
        y = joined.get_column("label").to_numpy()
        labelled = ~np.isnan(y.astype(np.float64))
        xs = np.hstack([x, logit[:, None]])
        prob = supervised_probability(xs, labelled, y[labelled].astype(int), seed=seed)

    df = df.with_columns(
        score=pl.Series(prob),
        anomaly=pl.Series(anomaly),
        weather=pl.Series(weather),
        night_block=pl.Series(night_block),
    )
    step_ok = (pl.col("change_stat") >= STEP_MIN_STAT) & (pl.col("added_kw") >= STEP_MIN_KW)
    level_kw = pl.col("base_kw") - pl.col("peer_base_kw")
    night_kw = pl.col("night_base_kw") - pl.col("base_kw")
    df = df.with_columns(
        evidence=pl.when(step_ok)
        .then(pl.lit("step"))
        .when((level_kw >= STEP_MIN_KW) & (level_kw >= 2 * pl.col("peer_base_mad_kw")))
        .then(pl.lit("level"))
        .when(night_kw.fill_null(0) >= STEP_MIN_KW)
        .then(pl.lit("night"))
        .otherwise(pl.lit("none"))
    )
    df = df.with_columns(
        added_load_kw=pl.when(pl.col("evidence") == "step")
        .then(pl.col("added_kw"))
        .when(pl.col("evidence") == "level")
        .then(level_kw)
        .when(pl.col("evidence") == "night")
        .then(night_kw)
        .otherwise(pl.lit(0.0))
        .round(3),
        since=pl.when(pl.col("evidence") == "step").then(pl.col("since")),
        flagged=(pl.col("score") >= threshold) & (pl.col("evidence") != "none"),
    )
    df = _reasons(df)
    hashrate = _hashrates(df.get_column("added_load_kw").to_numpy())
    df = df.with_columns(hashrate=pl.Series("hashrate", hashrate, dtype=_HASHRATE_DTYPE))
    out = df.select(SCORES.names).sort(["score", "account_id"], descending=[True, False])
    return out.to_arrow().cast(SCORES)


def screen(
    readings: pa.Table,
    accounts: pa.Table | None = None,
    *,
    tz: str = "UTC",
    labels: pa.Table | None = None,
    prior: float | None = None,
    threshold: float = FLAG_PROBABILITY,
) -> pa.Table:
    """Features then scores, locally: ``score(account_features(readings), accounts)``."""
    features = account_features(readings, tz=tz)
    return score(features, accounts, labels=labels, prior=prior, threshold=threshold)


def screen_record(row: dict[str, Any]) -> dict[str, Any]:
    """One ``meters screen`` JSON Lines object from a SCORES row: the contract fields
    (DESIGN.md) first, then the evidence and the implied hash rates per algorithm."""
    since = row.get("since")
    return {
        "account_id": row["account_id"],
        "score": round(float(row["score"]), 4),
        "flagged": bool(row["flagged"]),
        "added_load_kw": row["added_load_kw"],
        "since": since.date().isoformat() if since is not None else None,
        "reasons": list(row["reasons"] or []),
        "evidence": row["evidence"],
        "hashrate_hs": {h["algo"]: [h["low_hs"], h["high_hs"]] for h in row["hashrate"] or []},
    }

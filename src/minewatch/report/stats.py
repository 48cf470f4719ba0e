"""Regional statistics like the provincial reports: mining IPs, hash rate, energy per day.

Per region × subject class × algorithm family (hash rates of different algorithms are never
added together: REFERENCE.md, "Hash rate ↔ power"), plus a total per region and an overall
total. Counts only premises at or above ``min_score`` (default 0.5: more likely than not).
"""

from __future__ import annotations

import polars as pl

from minewatch import energy

TOTAL = "合计 Total"
ALL = "全部 All"


def regional_stats(suspects: pl.DataFrame, *, min_score: float = 0.5) -> pl.DataFrame:
    """Columns: region, subject_class, algo_family, premises, mining_ips, hashrate_hs,
    kwh_day."""
    df = suspects
    if "score" in df.columns:
        df = df.filter(pl.col("score") >= min_score)
    if df.height == 0:
        return pl.DataFrame(
            schema={
                "region": pl.String,
                "subject_class": pl.String,
                "algo_family": pl.String,
                "premises": pl.UInt32,
                "mining_ips": pl.UInt32,
                "hashrate_hs": pl.Float64,
                "kwh_day": pl.Float64,
            }
        )
    algos = df.select("algo").drop_nulls().unique()
    fam = algos.with_columns(
        algo_family=pl.col("algo").map_elements(energy.algo_family, return_dtype=pl.String)
    )
    df = df.join(fam, on="algo", how="left").with_columns(
        pl.col("algo_family").fill_null("unknown"),
        pl.col("region").fill_null("未知"),
        pl.col("ips").fill_null(pl.lit([], pl.List(pl.String))),
    )

    def agg(keys: list[str]) -> pl.DataFrame:
        return df.group_by(keys).agg(
            premises=pl.len(),
            mining_ips=pl.col("ips").list.explode(keep_nulls=False, empty_as_null=False).n_unique(),
            hashrate_hs=pl.col("hashrate_hs").fill_null(0.0).sum(),
            kwh_day=pl.col("kwh_day").fill_null(0.0).sum().round(1),
        )

    detail = agg(["region", "subject_class", "algo_family"])
    per_region = agg(["region"]).with_columns(
        subject_class=pl.lit(ALL), algo_family=pl.lit(ALL), hashrate_hs=pl.lit(None, pl.Float64)
    )
    overall = agg(["algo_family"]).with_columns(region=pl.lit(TOTAL), subject_class=pl.lit(ALL))
    cols = [
        "region",
        "subject_class",
        "algo_family",
        "premises",
        "mining_ips",
        "hashrate_hs",
        "kwh_day",
    ]
    out = pl.concat(
        [detail.select(cols), per_region.select(cols), overall.select(cols)],
        how="vertical_relaxed",
    )
    # Mining IPs counted once per IP even when two premises shared it.
    return out.with_columns(
        pl.col("premises").cast(pl.UInt32), pl.col("mining_ips").cast(pl.UInt32)
    ).sort(["region", "subject_class", "algo_family"])

"""A PNG of one account's load curve with the detected change marked.

People would rather look at a load curve than read numbers: the plot shows hourly power, the
daily minimum (the base load the screen watches), the detected change date and the base level
before and after it. It uses Matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pyarrow as pa

from minewatch.errors import InputError
from minewatch.power.features import account_features


def plot_account(
    readings: pa.Table, account_id: str, out: str | Path, *, tz: str = "UTC"
) -> dict[str, object]:
    """Draw ``account_id``'s load to ``out`` (PNG); returns the account's change features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pl.from_arrow(readings)
    assert isinstance(frame, pl.DataFrame)
    mine = frame.filter(pl.col("account_id") == account_id).sort("ts")
    if mine.height == 0:
        raise InputError(
            f"account {account_id!r} has no accepted readings",
            hint="check the account id (screen with --all lists every account)",
        )
    feats = pl.from_arrow(account_features(mine.to_arrow(), tz=tz))
    assert isinstance(feats, pl.DataFrame)
    info = feats.row(0, named=True)
    power = mine.with_columns(
        kw=pl.col("kwh") / (pl.col("interval_s").cast(pl.Float64) / 3600.0),
        local=pl.col("ts").dt.convert_time_zone(tz).dt.replace_time_zone(None),
    )
    daily = (
        power.group_by(pl.col("local").dt.date().alias("day"))
        .agg(pl.col("kw").min().alias("min_kw"))
        .sort("day")
    )
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    ax.plot(power["local"].to_list(), power["kw"].to_list(), lw=0.4, color="0.6", label="power")
    ax.step(
        daily["day"].to_list(),
        daily["min_kw"].to_list(),
        where="post",
        lw=1.6,
        color="tab:blue",
        label="daily minimum",
    )
    since = info.get("since")
    title = f"{account_id}: no upward base-load change found"
    if since is not None and info.get("added_kw") is not None and info["added_kw"] > 0:
        since_local = since.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
        ax.axvline(since_local, color="tab:red", lw=1.5, ls="--", label="detected change")
        first, last = power["local"][0], power["local"][-1]
        ax.hlines(
            info["base_before_kw"], first, since_local, color="tab:green", label="base before"
        )
        ax.hlines(info["base_after_kw"], since_local, last, color="tab:orange", label="base after")
        title = (
            f"{account_id}: +{info['added_kw']:.2f} kW since {since:%Y-%m-%d} "
            f"({info['change_series']} minimum {info['base_before_kw']:.2f} → "
            f"{info['base_after_kw']:.2f} kW)"
        )
    ax.set_title(title)
    ax.set_ylabel("kW")
    ax.set_xlabel(f"local time ({tz})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return info

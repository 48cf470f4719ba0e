"""Baseline for ``benchmarks/flows_detect.py``: the behaviour features and scoring in pandas.

The same computation as :func:`minewatch.net.behavior.detect` up to the per-connection
verdict (orientation, running totals per connection, one row per connection and record end,
the features, the scorecard and its calibration, the threshold), written the way a plain
pandas implementation would be: ``sort_values`` and ``groupby(...).cumsum()`` over a DataFrame
read from Parquet, then the model's bin edges and tables applied with NumPy. It shares nothing
with minewatch but the model's arrays and thresholds, and returns the set of detected
connection keys so the benchmark can check both implementations agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from minewatch.net.behavior import (
    CONN_KEY,
    FLOW_COLUMNS,
    MAX_UP_BYTES_PER_PACKET,
    MAX_UP_DOWN_RATIO,
    MIN_PACKETS,
    MIN_SPAN_S,
    BehaviorModel,
)


def _disp(n: pd.Series, s: pd.Series, s2: pd.Series) -> pd.Series:
    k = n.clip(lower=1).astype("float64")
    mean = s / k
    var = (s2 / k - mean * mean).clip(lower=0.0)
    d = (var / mean.clip(lower=1e-9)).where(n >= 2, 1.0)
    return np.log1p(d.clip(0.0, 50.0))


def features(o: pd.DataFrame) -> pd.DataFrame:
    age_min = (o["age_s"] / 60.0).clip(lower=0.5)
    log_age = np.log(age_min.clip(upper=120.0))
    log_age_full = np.log(age_min)
    lpu = np.log(o["PU"] + 1.0)
    lpd = np.log(o["PD"] + 1.0)
    lbu = np.log(o["BU"] + 1.0)
    lbd = np.log(o["BD"] + 1.0)
    ppm_up = lpu - log_age_full
    return pd.DataFrame(
        {
            "log_age_min": log_age,
            "log_ppm_up": ppm_up,
            "log_ppm_down": lpd - log_age_full,
            "log_bpp_up": lbu - lpu,
            "log_bpp_down": lbd - lpd,
            "log_byte_ratio": lbu - lbd,
            "log_pkt_ratio": lpu - lpd,
            "disp_up": _disp(o["NU"], o["PU"], o["PU2"]),
            "disp_down": _disp(o["ND"], o["PD"], o["PD2"]),
            "log_ppm_up_x_age": ppm_up * log_age,
        }
    )


def scorecard_logit(f: pd.DataFrame, model: BehaviorModel) -> np.ndarray:
    card = model.card
    codes = {}
    for j, name in enumerate(model.features):
        z = ((f[name] - card.lo[j]) * card.scale[j]).clip(0.0, card.nbins - 1.0)  # NaN stays
        codes[name] = z.fillna(0.0).astype("int64").to_numpy()
    logit = np.full(len(f), card.intercept)
    for j, name in enumerate(model.features):
        logit += card.single[j][codes[name]]
    for p, (a, b) in enumerate(card.pairs):
        logit += card.pair_tables[p][codes[model.features[a]], codes[model.features[b]]]
    return logit


def detect_pandas(path: Path, model: BehaviorModel) -> set[tuple[object, ...]]:
    df = pd.read_parquet(path, columns=list(FLOW_COLUMNS))
    df = df[df["proto"] == 6]
    two_way = ((df["packets_down"] > 0) | (df["bytes_down"] > 0)).fillna(False)
    sc = (
        two_way
        | (df["src_port"] > df["dst_port"])
        | ((df["src_port"] == df["dst_port"]) & (df["src_ip"] >= df["dst_ip"]))
    )
    scale = df["sampling"].fillna(1).clip(lower=1).astype("int64")
    start = df["ts_start"].fillna(df["ts_end"]).dt.as_unit("us").astype("int64")
    end = df["ts_end"].fillna(df["ts_start"]).dt.as_unit("us").astype("int64")
    o = pd.DataFrame(
        {
            "src_ip": df["src_ip"].where(sc, df["dst_ip"]),
            "src_port": df["src_port"].where(sc, df["dst_port"]),
            "dst_ip": df["dst_ip"].where(sc, df["src_ip"]),
            "dst_port": df["dst_port"].where(sc, df["src_port"]),
            "proto": df["proto"],
            "t0": start,
            "t1": end,
            "packets_up": df["packets_up"].where(sc, df["packets_down"]).fillna(0) * scale,
            "packets_down": df["packets_down"].where(sc, df["packets_up"]).fillna(0) * scale,
            "bytes_up": df["bytes_up"].where(sc, df["bytes_down"]).fillna(0) * scale,
            "bytes_down": df["bytes_down"].where(sc, df["bytes_up"]).fillna(0) * scale,
        }
    )
    key = list(CONN_KEY)
    o = o.sort_values([*key, "t1"], kind="stable")
    o["nu"] = (o["packets_up"] > 0).astype("int64")
    o["nd"] = (o["packets_down"] > 0).astype("int64")
    o["pu2"] = o["packets_up"] ** 2
    o["pd2"] = o["packets_down"] ** 2
    g = o.groupby(key, sort=False)
    o["first_us"] = g["t0"].cummin()
    o["PU"] = g["packets_up"].cumsum()
    o["PD"] = g["packets_down"].cumsum()
    o["BU"] = g["bytes_up"].cumsum()
    o["BD"] = g["bytes_down"].cumsum()
    o["NU"] = g["nu"].cumsum()
    o["ND"] = g["nd"].cumsum()
    o["PU2"] = g["pu2"].cumsum()
    o["PD2"] = g["pd2"].cumsum()
    # Records of a connection that end at the same instant: only the last holds the moment.
    o = o[~o.duplicated([*key, "t1"], keep="last")]
    o["age_s"] = o["t1"] / 1e6 - o["first_us"] / 1e6
    ok = (
        (o["age_s"] >= MIN_SPAN_S)
        & (o["PU"] >= MIN_PACKETS)
        & (o["PD"] >= MIN_PACKETS)
        & (o["BU"] <= MAX_UP_BYTES_PER_PACKET * o["PU"])
        & (o["BU"] <= MAX_UP_DOWN_RATIO * o["BD"])
    )
    e = o[ok]
    if e.empty:
        return set()
    conf = np.interp(scorecard_logit(features(e), model), model.iso_x, model.iso_y)
    hits = e.loc[conf >= model.threshold, key]
    return set(hits.drop_duplicates().itertuples(index=False, name=None))

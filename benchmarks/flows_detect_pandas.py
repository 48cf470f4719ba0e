"""Baseline for ``benchmarks/flows_detect.py``: the behaviour features and scoring in pandas.

The same computation as :func:`minewatch.net.behavior.detect` up to the per-connection
verdict (orientation, running totals per connection, features, model, threshold), written the
way a plain pandas implementation would be: ``groupby(...).cumsum()`` and friends over a
DataFrame read from Parquet. It returns the set of detected connection keys so the benchmark
can check both implementations agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from minewatch.net.behavior import (
    CONN_KEY,
    MAX_UP_BYTES_PER_PACKET,
    MAX_UP_DOWN_RATIO,
    MIN_PACKETS,
    MIN_SPAN_S,
    BehaviorModel,
)


def detect_pandas(path: Path, model: BehaviorModel) -> set[tuple[object, ...]]:
    df = pd.read_parquet(path)
    df = df[df["proto"] == 6].copy()
    two_way = (df["packets_down"] > 0) | (df["bytes_down"] > 0)
    sc = (
        two_way
        | (df["src_port"] > df["dst_port"])
        | ((df["src_port"] == df["dst_port"]) & (df["src_ip"] >= df["dst_ip"]))
    )
    scale = df["sampling"].fillna(1).clip(lower=1).astype("int64")
    o = pd.DataFrame(
        {
            "src_ip": df["src_ip"].where(sc, df["dst_ip"]),
            "src_port": df["src_port"].where(sc, df["dst_port"]),
            "dst_ip": df["dst_ip"].where(sc, df["src_ip"]),
            "dst_port": df["dst_port"].where(sc, df["src_port"]),
            "proto": df["proto"],
            "t0": df["ts_start"].astype("int64") / 1e6,
            "t1": df["ts_end"].astype("int64") / 1e6,
            "packets_up": df["packets_up"].where(sc, df["packets_down"]).fillna(0) * scale,
            "packets_down": df["packets_down"].where(sc, df["packets_up"]).fillna(0) * scale,
            "bytes_up": df["bytes_up"].where(sc, df["bytes_down"]).fillna(0) * scale,
            "bytes_down": df["bytes_down"].where(sc, df["bytes_up"]).fillna(0) * scale,
        }
    )
    key = list(CONN_KEY)
    o = o.sort_values([*key, "t1", "t0"], kind="stable")
    g = o.groupby(key, sort=False)
    o["first_t"] = g["t0"].cummin()
    o["last_t"] = g["t1"].cummax()
    o["PU"] = g["packets_up"].cumsum()
    o["PD"] = g["packets_down"].cumsum()
    o["BU"] = g["bytes_up"].cumsum()
    o["BD"] = g["bytes_down"].cumsum()
    o["nu"] = (o["packets_up"] > 0).astype("int64")
    o["nd"] = (o["packets_down"] > 0).astype("int64")
    o["pu2"] = o["packets_up"] ** 2
    o["pd2"] = o["packets_down"] ** 2
    g = o.groupby(key, sort=False)
    o["NU"] = g["nu"].cumsum()
    o["ND"] = g["nd"].cumsum()
    o["PU2"] = g["pu2"].cumsum()
    o["PD2"] = g["pd2"].cumsum()
    o["age_s"] = o["last_t"] - o["first_t"]

    age_min = (o["age_s"] / 60.0).clip(lower=0.5)
    f = pd.DataFrame(index=o.index)

    def disp(n: pd.Series, s: pd.Series, s2: pd.Series) -> pd.Series:
        k = n.clip(lower=1)
        mean = s / k
        var = (s2 / k - mean * mean).clip(lower=0)
        return (var / mean.clip(lower=1e-9)).where(n >= 2, 1.0)

    ppm_up = np.log((o["PU"] + 1) / age_min)
    f["log_age_min"] = np.log(age_min.clip(upper=120.0))
    f["log_ppm_up"] = ppm_up
    f["log_ppm_down"] = np.log((o["PD"] + 1) / age_min)
    f["log_bpp_up"] = np.log((o["BU"] + 1) / (o["PU"] + 1))
    f["log_bpp_down"] = np.log((o["BD"] + 1) / (o["PD"] + 1))
    f["log_byte_ratio"] = np.log((o["BU"] + 1) / (o["BD"] + 1))
    f["log_pkt_ratio"] = np.log((o["PU"] + 1) / (o["PD"] + 1))
    f["disp_up"] = np.log1p(disp(o["NU"], o["PU"], o["PU2"]).clip(0, 50))
    f["disp_down"] = np.log1p(disp(o["ND"], o["PD"], o["PD2"]).clip(0, 50))
    f["log_ppm_up_x_age"] = ppm_up * np.log(age_min.clip(upper=120.0))
    ok = (
        (o["age_s"] >= MIN_SPAN_S)
        & (o["PU"] >= MIN_PACKETS)
        & (o["PD"] >= MIN_PACKETS)
        & (o["BU"] <= MAX_UP_BYTES_PER_PACKET * o["PU"])
        & (o["BU"] <= MAX_UP_DOWN_RATIO * o["BD"])
    )
    x = np.nan_to_num(f.loc[ok, list(model.features)].to_numpy(dtype=np.float64))
    conf = model.calibrate(model.raw(x)) if len(x) else np.zeros(0)
    hits = o.loc[ok, key][conf >= model.threshold]
    return set(hits.drop_duplicates().itertuples(index=False, name=None))

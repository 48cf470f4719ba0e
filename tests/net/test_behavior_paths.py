"""The fast detect path of minewatch.net.behavior against its plain reference.

:func:`detect` orients, keys, gates, sorts and totals whole NumPy columns; the reference is
the Polars path the live detector and training use (:func:`connection_features`,
:func:`score`, :func:`summarize`). Both must report the same connections, at the same record,
with the same confidence, whatever the order of the input rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from minewatch.lab.behavior_data import flows_from_pcap
from minewatch.net.behavior import (
    CONN_KEY,
    PACKET_FEATURES,
    connection_features,
    default_model,
    detect,
    feature_matrix,
    model_for,
    packet_feature_columns,
    score,
    summarize,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"


def _flows() -> pl.DataFrame:
    """Real flow records: every shared mining capture and a few benign ones, by the packet
    path (many short connections, a few long ones)."""
    paths = (
        sorted((SHARED / "mining").glob("*.pcap*"))
        + sorted((SHARED / "benign").glob("*.pcap*"))[:25]
    )
    frames = [pl.from_arrow(flows_from_pcap(p)) for p in paths]
    return pl.concat([f for f in frames if isinstance(f, pl.DataFrame)], how="vertical_relaxed")


@pytest.fixture(scope="module")
def flows() -> pl.DataFrame:
    return _flows()


def _reference(flows: pl.DataFrame, threshold: float) -> dict[tuple[Any, ...], tuple[float, float]]:
    m = model_for(flows)  # the packet model where one is shipped (these records carry packets)
    s = summarize(score(connection_features(flows), m), threshold, m)
    return {
        tuple(r[k] for k in CONN_KEY[:4]): (r["detected_at"], r["confidence"])
        for r in s.iter_rows(named=True)
    }


def _fast(flows: pl.DataFrame, threshold: float) -> dict[tuple[Any, ...], tuple[float, float]]:
    out = {}
    for d in detect(flows, threshold=threshold):
        at = pl.Series([d["detected_at"]]).str.to_datetime().dt.epoch("ms")[0] / 1e3
        out[(d["src_ip"], d["src_port"], d["dst_ip"], d["dst_port"])] = (at, d["confidence"])
    return out


@pytest.mark.parametrize("threshold", [0.0, 0.3, None])
def test_fast_path_equals_the_reference(flows: pl.DataFrame, threshold: float | None) -> None:
    thr = model_for(flows).threshold if threshold is None else threshold
    ref = _reference(flows, thr)
    fast = _fast(flows, thr)
    assert fast.keys() == ref.keys()
    if threshold == 0.0:
        assert len(ref) >= 3  # every eligible connection is "detected" at 0
    for k, (at, conf) in ref.items():
        assert fast[k][0] == pytest.approx(at, abs=1e-3)
        assert fast[k][1] == pytest.approx(round(conf, 3), abs=1e-9)


def test_packet_features_of_a_pool_like_connection() -> None:
    """The per-message features from packet totals, by hand: ten minutes of 20 submissions
    of 250 bytes every 30 s, each answered with 90 bytes, and 10 job pushes of 400 bytes."""
    t = {
        "age_s": np.array([600.0]),
        "pay_pkts_up": np.array([20]),
        "pay_pkts_down": np.array([30]),
        "pay_bytes_up": np.array([20 * 250]),
        "pay_bytes_down": np.array([20 * 90 + 10 * 400]),
        "small_up": np.array([20]),
        "pushes_down": np.array([10]),
        "gap_n_up": np.array([19]),
        "gap_sum_up": np.array([19 * 30.0]),
        "gap_sq_up": np.array([19 * 900.0]),
        "pay_sq_up": np.array([20 * 250.0**2]),
        "pay_sq_down": np.array([20 * 90.0**2 + 10 * 400.0**2]),
        "push_bytes_down": np.array([10 * 400]),
        "push_sq_down": np.array([10 * 400.0**2]),
    }
    got = dict(zip(PACKET_FEATURES, (c[0] for c in packet_feature_columns(t)), strict=True))
    want = {
        "log_push_pm": np.log(11.0) - np.log(10.0),
        "push_share": 10 / 30,
        "log_push_size": np.log1p(400.0),
        "log_reply_size": np.log1p(90.0),
        "log_msg_size_up": np.log1p(250.0),
        "cv_msg_up": 0.0,
        "cv_reply": 0.0,
        "cv_gap_up": 0.0,  # clockwork gaps
        "reply_per_msg": 1.0,
        "small_share_up": 1.0,
    }
    assert got == pytest.approx(want, abs=1e-6)


def test_row_order_and_one_way_exports_do_not_change_verdicts(flows: pl.DataFrame) -> None:
    """Shuffled rows, and every two-way record split into the two one-way records an
    exporter like softflowd sends (ending at the same instant), give the same detections."""
    base = {
        (d["src_ip"], d["src_port"], d["dst_ip"], d["dst_port"])
        for d in detect(flows, threshold=0.0)
    }
    shuffled = flows.sample(fraction=1.0, shuffle=True, seed=3)
    assert {
        (d["src_ip"], d["src_port"], d["dst_ip"], d["dst_port"])
        for d in detect(shuffled, threshold=0.0)
    } == base
    tcp = flows.filter(pl.col("proto") == 6)
    up = tcp.with_columns(packets_down=pl.lit(0, pl.Int64), bytes_down=pl.lit(0, pl.Int64))
    down = tcp.select(
        pl.col("ts_start"), pl.col("ts_end"),
        src_ip=pl.col("dst_ip"), src_port=pl.col("dst_port"),
        dst_ip=pl.col("src_ip"), dst_port=pl.col("src_port"),
        proto=pl.col("proto"), packets_up=pl.col("packets_down"), packets_down=pl.lit(0, pl.Int64),
        bytes_up=pl.col("bytes_down"), bytes_down=pl.lit(0, pl.Int64),
        tcp_flags=pl.col("tcp_flags"), sni=pl.col("sni"), exporter=pl.col("exporter"),
        sampling=pl.col("sampling"),
    ).filter(pl.col("packets_up") > 0)  # fmt: skip
    one_way = pl.concat([down, up.select(down.columns)]).sample(fraction=1.0, shuffle=True, seed=4)
    # Port orientation only holds where the client has the higher port (as in these captures).
    two_way_keys = {k for k in base if k[1] > k[3]}
    got = {
        (d["src_ip"], d["src_port"], d["dst_ip"], d["dst_port"])
        for d in detect(one_way, threshold=0.0)
    }
    assert two_way_keys <= got


def test_gate_keeps_every_connection_that_can_qualify(flows: pl.DataFrame) -> None:
    """The gate before the sort drops only connections with < 8 packets one way."""
    from minewatch.net.behavior import _hot

    # ``sni`` (carried through the gate) holds each record's row number here, to follow it.
    numbered = flows.with_columns(sni=pl.int_range(pl.len()).cast(pl.Utf8))
    kept = {int(r) for r in _hot(numbered).frame["sni"].to_list()}
    feats = connection_features(flows)
    big = feats.group_by(CONN_KEY).agg(pl.col("PU").max(), pl.col("PD").max())
    big = big.filter((pl.col("PU") >= 8) & (pl.col("PD") >= 8))
    assert big.height > 0
    rows = flows.with_row_index("row").filter(pl.col("proto") == 6)
    # every record of a qualifying connection (either orientation) is kept
    k1 = rows.join(big.select(CONN_KEY), on=list(CONN_KEY), how="semi")
    swapped = big.select(
        src_ip=pl.col("dst_ip"), src_port=pl.col("dst_port"),
        dst_ip=pl.col("src_ip"), dst_port=pl.col("src_port"), proto=pl.col("proto"),
    )  # fmt: skip
    k2 = rows.join(swapped, on=list(CONN_KEY), how="semi")
    assert set(k1["row"].to_list()) | set(k2["row"].to_list()) <= kept
    assert len(kept) < rows.height  # and it did drop short connections


def test_gate_over_a_lazy_scan_of_many_files_keeps_whole_connections(
    flows: pl.DataFrame, tmp_path: Path
) -> None:
    """The bucket gate runs inside the lazy query; over a scan of several Parquet files,
    larger than a streaming morsel, it must still see whole columns (a gate applied per
    chunk would drop connections whose records fall in different chunks)."""
    from minewatch.net.behavior import (
        _client_counts,
        _conn_id,
        _hot,
        _src_is_client,
        read_flow_inputs,
    )

    copies = []
    for i in range(max(1, 400_000 // flows.height)):
        ip = f"10.200.{i >> 8 & 255}.{i & 255}"
        swap = pl.col("src_port") > pl.col("dst_port")
        copies.append(
            flows.with_columns(
                src_ip=pl.when(swap).then(pl.lit(ip)).otherwise(pl.col("src_ip")),
                dst_ip=pl.when(swap).then(pl.col("dst_ip")).otherwise(pl.lit(ip)),
            )
        )
    big = pl.concat(copies)
    # records of one connection spread over all files: file k takes rows k, k+3, ...
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"part{k}.parquet")
        big.gather_every(3, offset=k).write_parquet(paths[-1], row_group_size=50_000)
    # the exact gate alone, eagerly, over the whole input
    sc = pl.col("_sc")
    counts = _client_counts(sc)
    exact = (
        big.filter(pl.col("proto") == 6)
        .with_columns(_sc=_src_is_client())
        .with_columns(_cid=_conn_id(sc), up=counts["packets_up"], down=counts["packets_down"])
        .filter((pl.col("up").sum().over("_cid") >= 8) & (pl.col("down").sum().over("_cid") >= 8))
    )
    assert big.height > 300_000 and exact.height > 0
    assert _hot(read_flow_inputs(paths).flows).frame.height == exact.height


def test_sliding_detector_sums_packet_statistics_across_batches() -> None:
    """The live detector keeps per-connection sums of the packet statistics (for the reasons
    of ``scan``'s detections): the same sums as the records', whichever batch they came in,
    and dropped with the connection."""
    from minewatch.net.behavior import PACKET_TOTALS, SlidingDetector
    from minewatch.net.flowagg import aggregate_file

    recs = aggregate_file(SHARED / "mining" / "xmr.suprnova.cc.pcapng", window_s=7.0).flows
    frame = pl.from_arrow(recs)
    assert isinstance(frame, pl.DataFrame)
    tcp = frame.filter(pl.col("proto") == 6)
    assert tcp.height >= 4 and tcp["pushes_down"].sum() > 0
    det = SlidingDetector(threshold=1.1)  # nothing reported: only the sums are looked at
    for part in np.array_split(np.arange(recs.num_rows), 3):
        det(recs.take(part))
    want = tcp.group_by(CONN_KEY).agg(pl.col(c).sum() for c in PACKET_TOTALS)
    got = det.state.select(want.columns).sort(CONN_KEY)
    want = want.sort(CONN_KEY).cast(got.schema)  # type: ignore[arg-type]
    ints = [c for c in want.columns if got[c].dtype != pl.Float64]
    assert got.select(ints).equals(want.select(ints))
    for c in set(want.columns) - set(ints):  # float sums: summed in another order
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=1e-9)
    det.finish()
    assert det.state.height == 0


@pytest.mark.parametrize("ids", ["mixed", "clustered"])
def test_bucket_gate_never_drops_a_qualifying_connection(ids: str) -> None:
    """The coarse gate keeps every row of every connection with >= 8 packets each way, with
    ids spread as the mixed connection ids are, and when ids share their top bits (all
    connections in one bucket)."""
    from minewatch.net.behavior import _bucket_gate

    rng = np.random.default_rng(7)
    n = 200_000
    if ids == "mixed":
        pool = rng.integers(0, 2**63, 150_000, dtype=np.uint64) * np.uint64(2)
    else:
        pool = np.arange(150_000, dtype=np.uint64)
    frame = pl.DataFrame(
        {
            "_cid": pool[rng.integers(0, len(pool), n)],
            "_packets_up": rng.integers(0, 6, n),
            "_packets_down": rng.integers(0, 6, n),
        }
    )
    keep = frame.select(
        pl.struct("_cid", "_packets_up", "_packets_down").map_batches(
            _bucket_gate, return_dtype=pl.Boolean
        )
    ).to_series()
    exact = frame.select(
        (pl.col("_packets_up").sum().over("_cid") >= 8)
        & (pl.col("_packets_down").sum().over("_cid") >= 8)
    ).to_series()
    assert 0 < exact.sum() < n
    assert not (exact & ~keep).any()
    if ids == "mixed":  # the buckets do drop rows
        assert keep.sum() < n


@pytest.mark.parametrize("spread", [1_000, 2**61])
def test_segmented_running_minimum(spread: int) -> None:
    """Per segment, the running minimum of its values (a later record that started earlier
    lowers it from there on), in segments where it does and does not fall, with spreads
    that can be shifted and one too wide to shift."""
    from minewatch.net.behavior import _seg_cummin

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, 400)
    starts = np.cumsum(lengths) - lengths
    v = rng.integers(0, spread, int(lengths.sum()), dtype=np.int64)
    v[starts[::2]] = -1  # every other segment starts at its minimum: no fall there
    want = np.concatenate(
        [np.minimum.accumulate(v[s : s + n]) for s, n in zip(starts, lengths, strict=True)]
    )
    assert np.array_equal(_seg_cummin(v, starts, lengths), want)


def test_feature_matrix_is_finite_on_real_totals(flows: pl.DataFrame) -> None:
    feats = connection_features(flows)
    x = feature_matrix(feats)
    assert np.isfinite(x).all() and x.shape[0] == feats.height


def test_connection_ids_wrap_on_unsigned_overflow() -> None:
    """Connection ids multiply 64-bit hashes by odd constants and rely on Polars wrapping
    (not saturating, not raising) on unsigned overflow."""
    big = pl.DataFrame({"h": [2**63 + 5, 2**64 - 1]}, schema={"h": pl.UInt64})
    got = big.select(pl.col("h") * pl.lit(3, dtype=pl.UInt64))["h"].to_list()
    assert got == [(2**63 + 5) * 3 % 2**64, (2**64 - 1) * 3 % 2**64]


def test_detect_reads_a_lazy_scan_like_a_frame(flows: pl.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "flows.parquet"
    flows.write_parquet(path)
    eager = detect(flows, threshold=0.0)
    lazy = detect(pl.scan_parquet(path), threshold=0.0)
    assert eager and lazy == eager


def test_score_log_odds_are_the_uncalibrated_scores(flows: pl.DataFrame) -> None:
    m = default_model()
    s = score(connection_features(flows), m, log_odds=True)
    ok = s["log_odds"].is_finite()
    assert ok.any() and not ok.all()
    # Ineligible rows: −inf and no confidence; eligible ones: calibrated from the log-odds.
    assert (s.filter(~ok)["confidence"] == 0).all()
    e = s.filter(ok)
    np.testing.assert_allclose(e["confidence"], m.calibrate(e["log_odds"].to_numpy()))
    assert s.drop("log_odds").equals(score(connection_features(flows), m))

"""Helpers for the engine tests: a small pure per-account function and a table comparison."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

SUMMARY = pa.schema(
    [
        ("account_id", pa.string()),
        ("n", pa.int64()),
        ("kwh", pa.float64()),
        ("peak", pa.float64()),
        ("first_ts", pa.timestamp("us", tz="UTC")),
        ("roughness", pa.float64()),
    ]
)


def summary(readings: pa.Table) -> pa.Table:
    """A pure per-account function that also depends on the order of readings in time."""
    frame = pl.from_arrow(readings)
    assert isinstance(frame, pl.DataFrame)
    out = (
        frame.sort("account_id", "ts")
        .group_by("account_id", maintain_order=True)
        .agg(
            n=pl.len().cast(pl.Int64),
            kwh=pl.col("kwh").sum().round(6),
            peak=pl.col("kwh").max(),
            first_ts=pl.col("ts").min(),
            roughness=(pl.col("kwh").diff().abs().sum() / pl.len()).round(6),
        )
    )
    return out.to_arrow().cast(SUMMARY)


def assert_same(a: pa.Table, b: pa.Table) -> None:
    """Equal tables, NaN equal to NaN, after sorting by account."""
    assert a.schema.equals(b.schema), (a.schema, b.schema)
    a = a.sort_by("account_id")
    b = b.sort_by("account_id")
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        same = [
            u == v or (isinstance(u, float) and isinstance(v, float) and u != u and v != v)
            for u, v in zip(x, y, strict=True)
        ]
        assert all(same), f"column {name} differs in {same.count(False)} rows"

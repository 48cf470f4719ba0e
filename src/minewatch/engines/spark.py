"""The Spark engine: the same pure per-account function, run per account group in PySpark.

Two ways to cut the readings into groups of whole accounts, both through Arrow:

- ``grouped`` (default): every reading gets a bucket ``pmod(hash(account_id), n_buckets)``;
  ``groupBy(bucket).applyInArrow`` hands each bucket (a set of whole accounts) to the function
  as one ``pyarrow.Table``. A bucket must fit in an executor's Python worker, so choose
  ``n_buckets`` from the data size (:func:`buckets_for`).
- ``mapped``: ``repartition(n, account_id)`` then ``sortWithinPartitions(account_id)`` and
  ``mapInArrow``; inside each partition the record batches (``maxRecordsPerBatch`` rows) are
  regrouped into chunks of whole accounts by the local engine's chunker, so a worker never
  holds more than one chunk.

Features are computed per group, collected as Arrow, and scored in one pass on the driver
(:func:`minewatch.power.detect.score` compares each account with its peers, so it needs all
accounts' features; a feature row is small, ~300 bytes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pyarrow as pa

from minewatch.engines.local import KEY, iter_account_chunks
from minewatch.schema import READINGS

AccountFn = Callable[[pa.Table], pa.Table]
Mode = Literal["grouped", "mapped"]
_BUCKET = "_mw_bucket"


def session(
    master: str = "local[2]",
    *,
    app_name: str = "minewatch",
    shuffle_partitions: int = 4,
    conf: dict[str, str] | None = None,
) -> Any:
    """A SparkSession with UTC session time and this interpreter for the Python workers.

    On a cluster pass ``master`` (or leave it to ``spark-submit``) and set
    ``PYSPARK_PYTHON`` to an interpreter that has minewatch installed on every node.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
    )
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def buckets_for(n_readings: int, readings_per_bucket: int = 8_000_000) -> int:
    """How many account buckets keep each under ``readings_per_bucket`` readings on average."""
    return max(1, -(-n_readings // readings_per_bucket))


def to_spark(spark: Any, readings: Any) -> Any:
    """A Spark DataFrame of readings from a DataFrame, an Arrow table or a Parquet path."""
    if isinstance(readings, pa.Table):
        return spark.createDataFrame(readings.select(READINGS.names).cast(READINGS))
    if isinstance(readings, str | os.PathLike):
        return spark.read.parquet(str(readings))
    return readings


def _conform(table: pa.Table) -> pa.Table:
    """Readings as the function expects them, whatever Spark did to the types."""
    return table.select(READINGS.names).cast(READINGS)


def map_accounts(
    fn: AccountFn,
    readings: Any,
    schema: pa.Schema,
    *,
    spark: Any,
    n_buckets: int = 8,
    mode: Mode = "grouped",
    accounts_per_chunk: int | None = None,
) -> Any:
    """A Spark DataFrame of ``fn`` applied to groups of whole accounts (schema ``schema``)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    df = to_spark(spark, readings)
    out_type = from_arrow_schema(schema)

    if mode == "grouped":

        def per_group(group: pa.Table) -> pa.Table:
            return fn(_conform(group)).cast(schema)

        keyed = df.withColumn(_BUCKET, F.pmod(F.hash(F.col(KEY)), F.lit(n_buckets)))
        return keyed.groupBy(_BUCKET).applyInArrow(per_group, out_type)

    if mode == "mapped":

        def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            tables = (_conform(pa.Table.from_batches([b])) for b in batches if b.num_rows)
            for chunk in iter_account_chunks(tables, accounts_per_chunk):
                yield from fn(chunk).cast(schema).to_batches()

        clustered = df.repartition(n_buckets, KEY).sortWithinPartitions(KEY)
        return clustered.mapInArrow(per_partition, out_type)

    raise ValueError(f"mode must be 'grouped' or 'mapped', not {mode!r}")


def run(
    fn: AccountFn,
    readings: Any,
    schema: pa.Schema,
    *,
    spark: Any,
    n_buckets: int = 8,
    mode: Mode = "grouped",
    accounts_per_chunk: int | None = None,
) -> pa.Table:
    """:func:`map_accounts` collected to the driver as an Arrow table sorted by account."""
    df = map_accounts(
        fn,
        readings,
        schema,
        spark=spark,
        n_buckets=n_buckets,
        mode=mode,
        accounts_per_chunk=accounts_per_chunk,
    )
    table = df.toArrow().cast(schema)
    if KEY in table.column_names:
        table = table.sort_by([(KEY, "ascending")])
    return table


def features(
    readings: Any,
    *,
    spark: Any,
    tz: str = "UTC",
    n_buckets: int = 8,
    mode: Mode = "grouped",
    accounts_per_chunk: int | None = None,
) -> pa.Table:
    """Per-account screening features (``minewatch.power.features``) computed on Spark."""
    from minewatch.power import features as feat

    def fn(chunk: pa.Table) -> pa.Table:
        return feat.account_features(chunk, tz=tz)

    return run(
        fn,
        readings,
        feat.FEATURES,
        spark=spark,
        n_buckets=n_buckets,
        mode=mode,
        accounts_per_chunk=accounts_per_chunk,
    )


def screen(
    readings: Any,
    accounts: pa.Table | None = None,
    *,
    spark: Any,
    tz: str = "UTC",
    n_buckets: int = 8,
    mode: Mode = "grouped",
) -> pa.Table:
    """Features on Spark, then one scoring pass over all accounts on the driver."""
    from minewatch.power import detect

    table = features(readings, spark=spark, tz=tz, n_buckets=n_buckets, mode=mode)
    return detect.score(table, accounts)

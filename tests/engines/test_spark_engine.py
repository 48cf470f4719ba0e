"""Local/Spark parity: the same pure per-account function gives identical results on both."""

from __future__ import annotations

from collections.abc import Iterator

import engine_support
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from engine_support import SUMMARY, assert_same, summary

from minewatch.engines import local
from minewatch.engines import spark as spark_engine
from minewatch.lab import meters
from minewatch.power.features import FEATURES

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark import cloudpickle

    # the test's own function lives in a test module the Python workers cannot import
    cloudpickle.register_pickle_by_value(engine_support)
    session = spark_engine.session("local[2]", shuffle_partitions=4)
    yield session
    session.stop()


@pytest.mark.parametrize("mode", ["grouped", "mapped"])
def test_trivial_function_parity(spark, small_hourly: meters.MeterData, mode: str) -> None:
    got = spark_engine.run(
        summary,
        small_hourly.readings,
        SUMMARY,
        spark=spark,
        n_buckets=3,
        mode=mode,  # type: ignore[arg-type]
        accounts_per_chunk=25,
    )
    assert_same(got, local.run(summary, small_hourly.readings, accounts_per_chunk=64))


@pytest.mark.parametrize("mode", ["grouped", "mapped"])
def test_feature_parity_from_parquet(spark, tmp_path, mode: str) -> None:
    data = meters.generate(n_accounts=300, days=40, resolution="hourly", prevalence=0.1, seed=77)
    path = tmp_path / "readings.parquet"
    pq.write_table(data.readings, path)
    on_spark = spark_engine.features(str(path), spark=spark, n_buckets=4, mode=mode)  # type: ignore[arg-type]
    on_local = local.features(path, accounts_per_chunk=50)
    assert on_spark.schema.equals(FEATURES)
    assert on_spark.num_rows == 300
    assert_same(on_spark, on_local)


def test_daily_and_mixed_resolutions_parity(spark) -> None:
    daily = meters.generate(n_accounts=150, days=30, resolution="daily", seed=78)
    quarter = meters.generate(n_accounts=60, days=20, resolution="15min", seed=79, id_prefix="Q")
    mixed = pa.concat_tables([daily.readings, quarter.readings])
    on_spark = spark_engine.features(mixed, spark=spark, n_buckets=2)
    assert_same(on_spark, local.features(mixed, accounts_per_chunk=40))


def test_bad_mode(spark, small_hourly: meters.MeterData) -> None:
    with pytest.raises(ValueError, match="mode"):
        spark_engine.map_accounts(
            summary,
            small_hourly.readings,
            SUMMARY,
            spark=spark,
            mode="scatter",  # type: ignore[arg-type]
        )

"""Engines: run one pure per-account function over readings, locally or on Spark.

- :mod:`minewatch.engines.local`: chunks of whole accounts with Polars/NumPy, memory bounded
  by the chunk size;
- :mod:`minewatch.engines.spark`: the same function per account group through
  ``applyInArrow`` (or ``mapInArrow`` over account-clustered partitions).
"""

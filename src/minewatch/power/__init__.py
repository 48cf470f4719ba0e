"""Meter screening for hidden mining load.

- :mod:`minewatch.power.features`: ``account_features(readings) -> features``, a pure
  per-account function over any set of whole accounts (what the engines run per group);
- :mod:`minewatch.power.detect`: ``score(features, accounts) -> scores`` (peer comparison,
  rules, models, calibration, reasons) and ``screen(readings, accounts)`` doing both locally;
- :mod:`minewatch.power.plot`: a PNG of one account's load with the detected change marked.
"""

"""Fixtures for the engine tests."""

from __future__ import annotations

import pytest

from minewatch.lab import meters


@pytest.fixture(scope="session")
def small_hourly() -> meters.MeterData:
    return meters.generate(n_accounts=400, days=35, resolution="hourly", prevalence=0.1, seed=21)

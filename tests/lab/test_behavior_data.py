"""``lab.behavior_data.generate`` passes the pools' job timing to every miner of a wave.

The XMRig runs themselves are covered by ``tests/lab/test_xmrig.py`` (a real XMRig against
the lab pool, with both job schedules in ``tests/lab/test_pool.py``); here ``run_miner`` is
replaced by a recorder so that the wave's bookkeeping is checked in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from minewatch.lab import behavior_data
from minewatch.lab.behavior_data import MINER_VARIANTS


def _record(calls: list[tuple[Any, ...]]) -> Any:
    def fake(out_dir: Path, variant: Any, duration: float, schedule: str, seed: Any) -> dict:
        calls.append((variant.name, duration, schedule, seed))
        return {"variant": variant.name, "settings": {"job_schedule": schedule}}

    return fake


@pytest.mark.parametrize("schedule", ["timer", "blocks"])
def test_generate_gives_every_miner_the_wave_schedule(
    schedule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(behavior_data, "run_miner", _record(calls))
    entries = behavior_data.generate(
        tmp_path,
        wave=1,
        duration=5.0,
        benign=(),
        seed=7,
        job_schedule=schedule,  # type: ignore[arg-type]
    )
    assert [c[0] for c in calls] == [v.name for v in MINER_VARIANTS[1]]
    assert {c[2] for c in calls} == {schedule}
    seeds = [c[3] for c in calls]
    if schedule == "timer":
        assert seeds == [None] * len(calls)
    else:  # one seed per miner, fixed by (seed, wave, place): a wave can be remade
        assert len(set(seeds)) == len(seeds)
        assert seeds == [7000 + 100 + 50 + k for k in range(len(calls))]
    manifest = json.loads((tmp_path / "manifest-w1.json").read_text())
    assert manifest == entries and len(entries) == len(calls)

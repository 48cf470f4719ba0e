"""The held-out fleets: a tiny real benign fleet is captured connection by connection, and the
miner plans stay on their ports and off the training variants."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from minewatch.lab.behavior_data import MINER_VARIANTS
from minewatch.lab.fleet import (
    EXPECTED_HS,
    MINER_PORTS,
    SHARE_INTERVALS,
    BenignPlan,
    idle_wrapper,
    plan_miners,
    run_benign_fleet,
)
from minewatch.net.flowagg import aggregate_file

FAMILIES = ("mqtt", "mqtt-tls", "redis", "websocket-tls", "http2", "electrum")


def test_tiny_benign_fleet_captures_every_connection(tmp_path: Path) -> None:
    plan = BenignPlan(connections=20, duration_s=12.0, ramp_s=2.0, seed=7, families=FAMILIES)
    counts = plan.counts()
    assert sum(counts.values()) == 20
    entries = run_benign_fleet(tmp_path / "fleet", plan, port_base=21950)
    assert {e["family"] for e in entries} == set(FAMILIES)
    assert json.loads((tmp_path / "fleet" / "errors.json").read_text()) == {}
    logged = (tmp_path / "fleet" / "connections.jsonl").read_text().splitlines()
    assert len(logged) == 20
    for e in entries:
        flows = pl.from_arrow(aggregate_file(e["pcap"]).flows)
        assert isinstance(flows, pl.DataFrame)
        # Every record of the capture is on the family's server port (one label per capture).
        server_side = (flows["dst_port"] == e["server_port"]) | (
            flows["src_port"] == e["server_port"]
        )
        assert server_side.all()
        client = pl.when(pl.col("dst_port") == e["server_port"]).then("src_port")
        conns = (
            flows.with_columns(client=client.otherwise("dst_port"))
            .group_by("client")
            .agg(
                first=pl.col("ts_start").min(),
                last=pl.col("ts_end").max(),
                packets=(pl.col("packets_up") + pl.col("packets_down")).sum(),
            )
        )
        # Every planned client holds its connection until the end of the run (the launcher's
        # readiness probes are the only short connections). The run's clock starts with the
        # first client; on a loaded machine (CI) a client may take seconds to connect.
        held = conns.filter(
            (pl.col("last") - pl.col("first")).dt.total_seconds() >= plan.duration_s / 3
        )
        assert held.height == e["planned_connections"], e["family"]
        # A readiness probe sent before the server listened is a SYN and a RST; the probes
        # that got through are the only other short connections.
        refused = conns.filter(pl.col("packets") <= 2)
        assert conns.height - held.height - refused.height <= 2, e["family"]


def test_miner_plans_are_held_out_and_on_their_ports(tmp_path: Path) -> None:
    specs = plan_miners(4, 6, round_no=3, seed=1)
    assert specs == plan_miners(4, 6, round_no=3, seed=1)  # seeded
    assert [s.algo for s in specs[:4]] == ["rx/0"] * 4
    assert all(s.port in MINER_PORTS for s in specs)
    assert len({s.port for s in specs}) == len(specs)
    training = {(v.difficulty, v.job_interval) for wave in MINER_VARIANTS for v in wave}
    assert not any((s.difficulty, s.job_interval) in training for s in specs)
    assert not any(s.job_interval in {v.job_interval for w in MINER_VARIANTS for v in w}
                   for s in specs)  # fmt: skip
    # The same round with irregular pool jobs: the same miners, only the timing and the ports
    # (so that both can run at once) differ.
    blocks = plan_miners(4, 6, round_no=3, seed=1, job_schedule="blocks")
    assert {s.job_schedule for s in specs} == {"timer"}
    assert {s.job_schedule for s in blocks} == {"blocks"}
    pairs = list(zip(specs, blocks, strict=True))
    assert [replace(b, name=s.name, port=s.port, job_schedule="timer") for s, b in pairs] == specs
    assert not {s.port for s in specs} & {b.port for b in blocks}
    assert all(b.port in MINER_PORTS for b in blocks)
    assert all(b.name.endswith("-blocks") for b in blocks)
    # With the pools' vardiff: the paced miners, each pool aiming at the share interval that
    # set the miner's starting difficulty.
    paced = plan_miners(4, 6, round_no=3, seed=1, paced=True, job_schedule="blocks")
    vd = plan_miners(4, 6, round_no=3, seed=1, vardiff=True, job_schedule="blocks")
    assert all(s.share_target_s is None for s in paced)
    assert [replace(v, name=p.name, share_target_s=None) for p, v in zip(paced, vd, strict=True)
            ] == paced  # fmt: skip
    assert all(v.name == p.name + "-vd" for p, v in zip(paced, vd, strict=True))
    assert all(v.share_target_s in SHARE_INTERVALS for v in vd)
    assert all(v.difficulty == max(1, round(EXPECTED_HS[v.algo] * v.share_target_s))
               for v in vd if v.share_target_s)  # fmt: skip
    # Rounds aimed at settings a model missed: other choices, the same seeded draws otherwise.
    aimed = plan_miners(4, 6, round_no=3, seed=1, paced=True, job_intervals=[150.0, 240.0],
                        share_intervals=[3.0])  # fmt: skip
    assert {s.job_interval for s in aimed} <= {150.0, 240.0}
    assert all(s.difficulty == max(1, round(EXPECTED_HS[s.algo] * 3.0)) for s in aimed)
    assert [s.tls for s in aimed] == [s.tls for s in paced]
    with pytest.raises(ValueError, match="positive"):
        plan_miners(1, 1, round_no=3, job_intervals=[0.0])
    launcher = idle_wrapper(tmp_path, Path("/opt/xmrig"))
    text = launcher.read_text()
    assert 'exec nice -n 19 "/opt/xmrig" "$@"' in text
    assert "/proc/self/autogroup" in text

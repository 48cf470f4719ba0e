"""Shared fixtures.

Lab fixtures: real mining sessions captured on loopback for detection tests.

- ``xmrig_capture``: the real XMRig 6.16 against the lab CryptoNote pool over plain TCP;
- ``xmrig_tls_capture``: the same over TLS, with ``--nicehash`` and ``--keepalive``;
- ``stratum_v1_capture``: the scripted Stratum V1 client (not a miner) against the lab pool.

Each is session-scoped and runs once per test session. The XMRig fixtures take about
``XMRIG_SECONDS`` each; tests that use them are marked ``@pytest.mark.miner``.

XMRig runs with ``--threads=1 --randomx-mode=light``; on the 2-core development machine it
reports about 25-30 H/s that way when the machine is otherwise idle, and as little as 7 H/s
when other work competes for both cores. ``XMRIG_DIFFICULTY`` is chosen so that even then it
finds about a share a second (and three a second when idle): with 60+ shares a minute the
pool-side estimate (sum of difficulty / time) lands within +-30% of XMRig's own 60 s figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from minewatch.lab.behavior_data import service_port
from minewatch.lab.stratum_client import StratumV1Session, capture_stratum_v1_session
from minewatch.lab.xmrig import XmrigSession, capture_xmrig_session, fake_monero_address

#: Seconds of mining per XMRig fixture: long enough for XMRig to log a 60 s hash rate (it logs
#: every 10 s from its start, and a loaded machine may delay the first hash by several).
XMRIG_SECONDS = 85.0
#: Fixed CryptoNote difficulty for the XMRig fixtures (see the module doc).
XMRIG_DIFFICULTY = 8
#: Seconds between jobs pushed by the pool in the XMRig fixtures.
XMRIG_JOB_INTERVAL = 20.0

XMRIG_WALLET = fake_monero_address("minewatch-lab-xmrig-plain")
XMRIG_TLS_WALLET = fake_monero_address("minewatch-lab-xmrig-tls")


@pytest.fixture(scope="session")
def xmrig_capture(tmp_path_factory: pytest.TempPathFactory) -> XmrigSession:
    """Real XMRig over plain TCP for ``XMRIG_SECONDS``: pcap, pool record and XMRig's log.

    Fields (see :class:`minewatch.lab.xmrig.XmrigSession`): ``pcap``, ``pool_host``,
    ``pool_port``, ``wallet``, ``rig_id``, ``password``, ``agent``, ``tls``, ``difficulty``,
    ``reported_hashrate_hs`` / ``reported_window``, ``logins``, ``submits``, ``accepted``,
    ``xmrig`` (the run's result with the log text), ``capture`` (tcpdump's counts).
    """
    out: Path = tmp_path_factory.mktemp("xmrig-plain")
    return capture_xmrig_session(
        out,
        wallet=XMRIG_WALLET,
        rig_id="rig-plain-01",
        password="x",
        duration=XMRIG_SECONDS,
        difficulty=XMRIG_DIFFICULTY,
        job_interval=XMRIG_JOB_INTERVAL,
    )


@pytest.fixture(scope="session")
def xmrig_tls_capture(tmp_path_factory: pytest.TempPathFactory) -> XmrigSession:
    """Real XMRig over TLS (``--tls --nicehash --keepalive``); same fields as ``xmrig_capture``."""
    out: Path = tmp_path_factory.mktemp("xmrig-tls")
    return capture_xmrig_session(
        out,
        wallet=XMRIG_TLS_WALLET,
        rig_id="rig-tls-01",
        password="worker-tls",
        port=service_port(),
        duration=XMRIG_SECONDS,
        difficulty=XMRIG_DIFFICULTY,
        job_interval=XMRIG_JOB_INTERVAL,
        tls=True,
        nicehash=True,
        keepalive=True,
    )


@pytest.fixture(scope="session")
def stratum_v1_capture(tmp_path_factory: pytest.TempPathFactory) -> StratumV1Session:
    """The scripted Stratum V1 client for 4 s at 2 shares/s, difficulty 65536.

    Fields (see :class:`minewatch.lab.stratum_client.StratumV1Session`): ``pcap``,
    ``pool_host``, ``pool_port``, ``wallet``, ``worker``, ``password``, ``agent``,
    ``difficulty``, ``shares_per_second``, ``implied_hashrate_hs``, ``logins``, ``submits``,
    ``client``, ``capture``.
    """
    out: Path = tmp_path_factory.mktemp("stratum-v1")
    return capture_stratum_v1_session(
        out,
        wallet="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        worker="rig01",
        agent="cgminer/4.12.1",
        difficulty=65536.0,
        shares_per_second=2.0,
        duration=4.0,
    )

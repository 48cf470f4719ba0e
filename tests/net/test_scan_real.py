"""The scanner on traffic from real clients on loopback: XMRig 6.16 and a live tcpdump pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from minewatch.lab.pool import PoolConfig, PoolThread
from minewatch.lab.stratum_client import StratumV1Session, run_stratum_client
from minewatch.lab.xmrig import XmrigSession
from minewatch.net.scan import Scanner
from minewatch.sources.pcap import read_batches


def _mining(pcap: object) -> list[dict]:
    sc = Scanner()
    return [r for r in sc.run(read_batches(str(pcap))) if sc.passes(r)]


@pytest.mark.miner
@pytest.mark.slow
def test_real_xmrig_session(xmrig_capture: XmrigSession) -> None:
    cap = xmrig_capture
    assert cap.reported_hashrate_hs, "XMRig reported no hash rate"
    (r,) = _mining(cap.pcap)
    assert r["dialect"] == "cryptonote" and r["confidence"] >= 0.95
    assert r["dst_port"] == cap.pool_port
    assert r["wallet"] == cap.wallet
    assert r["worker"] == cap.rig_id
    assert r["agent"] == cap.agent and r["agent"].startswith("XMRig/6.16")
    assert (r["coin"], r["algo"]) == ("xmr", "randomx")
    assert r["shares"]["accepted"] == len(cap.accepted)
    ratio = r["hashrate_hs"] / cap.reported_hashrate_hs
    assert 0.7 <= ratio <= 1.3, (r["hashrate_hs"], cap.reported_hashrate_hs, cap.reported_window)
    lo, hi = r["power_w_range"]
    assert 0 < lo < hi


def test_scripted_stratum_v1_session(stratum_v1_capture: StratumV1Session) -> None:
    cap = stratum_v1_capture
    (r,) = _mining(cap.pcap)
    assert r["dialect"] == "stratum1" and r["confidence"] == 0.99
    assert (r["wallet"], r["worker"], r["agent"]) == (cap.wallet, cap.worker, cap.agent)
    assert r["coin"] == "btc" and r["algo"] == "sha256d"
    assert r["shares"]["accepted"] == len(cap.submits)
    # The scanner reconstructs from the capture what the pool saw (same shares, same times to
    # the millisecond); the scripted rate is a schedule a loaded machine may stretch.
    assert r["hashrate_hs"] == pytest.approx(cap.record.hashrate_estimate(), rel=0.02)
    assert r["hashrate_hs"] == pytest.approx(cap.implied_hashrate_hs, rel=0.3)


def test_live_pipe_reports_while_the_session_runs() -> None:
    """`tcpdump -i lo -U -w - port P | minewatch scan -` prints a detection before the end."""
    config = PoolConfig(port=0, dialect="stratum1", difficulty=1024.0, job_interval=1.0)
    with PoolThread(config) as pool:
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-w", "-", "-s", "0", f"tcp port {pool.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        scan = subprocess.Popen(
            [sys.executable, "-m", "minewatch", "scan", "-", "--quiet"],
            stdin=dump.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert dump.stdout is not None and scan.stdout is not None
        dump.stdout.close()
        try:
            _wait_listening(dump)
            done = threading.Event()
            client = threading.Thread(
                target=lambda: (
                    run_stratum_client(
                        pool.host,
                        pool.port,
                        worker="bc1qlive.rig9",
                        shares_per_second=2.0,
                        duration=20.0,
                    ),
                    done.set(),
                )
            )
            client.start()
            first = json.loads(scan.stdout.readline())
            assert not done.is_set(), "the detection came only after the session had ended"
            assert first["final"] is False and first["dialect"] == "stratum1"
            assert first["worker"] == "rig9"
            client.join(30)
            time.sleep(0.5)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
        out, _ = scan.communicate(timeout=30)
    last = json.loads(out.splitlines()[-1])
    assert last["final"] is True and last["session_id"] == first["session_id"]
    assert first["shares"]["accepted"] < last["shares"]["accepted"]  # reported mid-session
    assert last["shares"]["accepted"] >= 10


def _wait_listening(proc: subprocess.Popen[bytes]) -> None:
    """tcpdump says 'listening on lo' on stderr once it captures."""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    buf = b""
    deadline = time.monotonic() + 10
    while b"listening on" not in buf and time.monotonic() < deadline:
        chunk = proc.stderr.read()
        buf += chunk or b""
        time.sleep(0.05)
    assert b"listening on" in buf, buf

"""The real XMRig against the lab pool, the tcpdump capture around it, and the V1 client.

Tests marked ``miner`` use the session fixtures ``xmrig_capture`` / ``xmrig_tls_capture``
(see ``tests/conftest.py``), which run XMRig once each for the whole test session.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from minewatch.lab.capture import Capture
from minewatch.lab.pool import PoolConfig, PoolThread, target_from_difficulty
from minewatch.lab.stratum_client import StratumV1Session
from minewatch.lab.xmrig import (
    MAX_RUN_SECONDS,
    XmrigSession,
    agent_from_log,
    fake_monero_address,
    find_xmrig,
    parse_log,
    run_xmrig,
)

MINEWATCH = (sys.executable, "-c", "from minewatch.cli import main; main()")


def tcp_payloads(pcap: Path, port: int) -> tuple[bytes, bytes]:
    """All TCP payload bytes to and from ``port`` in capture order (no reassembly needed:
    loopback captures have no loss or reordering)."""
    up = bytearray()
    down = bytearray()
    with pcap.open("rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) or not isinstance(
                ip.data, dpkt.tcp.TCP
            ):
                continue
            tcp = ip.data
            if tcp.dport == port:
                up += tcp.data
            elif tcp.sport == port:
                down += tcp.data
    return bytes(up), bytes(down)


# --------------------------------------------------------------------------- no XMRig needed


def test_fake_monero_address_looks_like_a_standard_address() -> None:
    address = fake_monero_address("seed")
    assert len(address) == 95
    assert address[0] == "4" and address[1] in "123456789AB"
    assert set(address) <= set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
    assert fake_monero_address("seed") == address
    assert fake_monero_address("other") != address


SAMPLE_LOG = """\
 * ABOUT        XMRig/6.16.0 gcc/5.4.0
 * LIBS         libuv/1.42.0 OpenSSL/1.1.1l hwloc/2.5.0
[2026-11-28 09:03:29.801]  cpu      READY threads 1/1 (1) huge pages 0% 0/1 memory 2048 KB (0 ms)
[2026-11-28 09:03:32.649]  cpu      accepted (1/0) diff 20 (0 ms)
[2026-11-28 09:03:39.812]  miner    speed 10s/60s/15m n/a n/a n/a H/s max n/a H/s
[2026-11-28 09:03:42.649]  cpu      rejected (1/1) diff 20 "Low difficulty share" (0 ms)
[2026-11-28 09:03:44.283]  cpu      accepted (2/1) diff 20 (1 ms)
[2026-11-28 09:03:49.828]  miner    speed 10s/60s/15m 27.74 n/a n/a H/s max 28.39 H/s
[2026-11-28 09:04:52.884]  miner    speed 10s/60s/15m 26.15 28.25 n/a H/s max 36.91 H/s
"""


def test_parse_log_reads_speeds_and_share_counts() -> None:
    speeds, accepted, rejected = parse_log(SAMPLE_LOG)
    assert [(s.h10, s.h60, s.h15m, s.max) for s in speeds] == [
        (None, None, None, None),
        (27.74, None, None, 28.39),
        (26.15, 28.25, None, 36.91),
    ]
    assert (accepted, rejected) == (2, 1)
    assert agent_from_log(SAMPLE_LOG) == "XMRig/6.16.0 (Linux x86_64) libuv/1.42.0 gcc/5.4.0"


def test_find_xmrig_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MINEWATCH_XMRIG", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="make xmrig"):
        find_xmrig()
    binary = tmp_path / "xmrig"
    binary.write_bytes(b"")
    monkeypatch.setenv("MINEWATCH_XMRIG", str(binary))
    assert find_xmrig() == binary


@pytest.mark.parametrize("url", ["192.0.2.1:3333", "pool.example.org:443", "0.0.0.0:3333"])
def test_run_xmrig_refuses_anything_but_loopback(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_xmrig(url, user="4x", duration=1, log_dir=tmp_path, binary=tmp_path / "never-run")
    assert not (tmp_path / "xmrig.log").exists()


def test_run_xmrig_is_bounded_in_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duration"):
        run_xmrig(
            "127.0.0.1:3333",
            user="4x",
            duration=MAX_RUN_SECONDS + 1,
            log_dir=tmp_path,
            binary=tmp_path / "never-run",
        )


def test_capture_records_loopback_traffic_on_the_port(tmp_path: Path) -> None:
    pcap = tmp_path / "echo.pcap"
    with PoolThread(PoolConfig()) as pool:
        with Capture(pcap, port=pool.port) as capture:
            with socket.create_connection((pool.host, pool.port), timeout=5) as sock:
                sock.sendall(b'{"id":1,"method":"login","params":{"login":"4capture"}}\n')
                sock.recv(65536)
            time.sleep(0.3)
        port = pool.port
    result = capture.result
    assert result is not None and result.packets_captured and result.packets_captured >= 6
    assert result.packets_dropped == 0
    up, down = tcp_payloads(pcap, port)
    assert b'"login":"4capture"' in up
    assert b'"status":"OK"' in down


def test_capture_needs_a_port_or_a_filter(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Capture(tmp_path / "x.pcap")


def test_cli_pool_runs_until_interrupted_and_refuses_public_binds() -> None:
    refused = subprocess.run(
        [*MINEWATCH, "lab", "pool", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr

    process = subprocess.Popen(
        [
            *MINEWATCH,
            "lab",
            "pool",
            "--port",
            "0",
            "--difficulty",
            "777",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = []
        for _ in range(50):
            line = process.stderr.readline()
            seen.append(line)
            if "listening on 127.0.0.1:" in line or not line:
                break
        assert "listening on 127.0.0.1:" in line, seen
        port = int(line.split("listening on 127.0.0.1:")[1].split(",")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b'{"id":1,"method":"login","params":{"login":"4cli"}}\n')
            reply = sock.recv(65536)
        assert b'"status":"OK"' in reply
        assert target_from_difficulty(777).encode() in reply
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


# --------------------------------------------------------------------------- real XMRig


def check_session(session: XmrigSession) -> None:
    assert session.xmrig.returncode is not None, "XMRig was not stopped"
    assert len(session.logins) == 1
    login = session.logins[0]
    assert login.login == session.wallet
    assert login.password == session.password
    assert login.rig_id == session.rig_id
    assert "rx/0" in login.algos
    assert session.agent is not None and session.agent.startswith("XMRig/6.16.0 ")
    assert session.agent == login.agent and session.xmrig.agent_source == "login"
    # Many shares were found and every one was accepted.
    accepted = session.accepted
    assert len(accepted) >= 30, session.xmrig.log_text[-2000:]
    assert all(s.accepted for s in session.submits), {s.reason for s in session.submits}
    assert all(s.difficulty == session.difficulty for s in accepted)
    # XMRig's own count agrees (a share in flight at SIGTERM may be missing from its log).
    assert len(accepted) - 1 <= session.xmrig.accepted <= len(accepted)
    # XMRig reported its 60 s hash rate, and the pool's estimate is close to it.
    assert session.reported_window == "60s"
    assert session.reported_hashrate_hs is not None and session.reported_hashrate_hs > 0
    estimate = session.record.hashrate_estimate()
    assert estimate is not None
    assert estimate == pytest.approx(session.reported_hashrate_hs, rel=0.3)
    # The capture is complete.
    assert session.capture.packets_captured and session.capture.packets_dropped == 0
    assert session.pcap.stat().st_size > 0


@pytest.mark.miner
def test_xmrig_mines_against_the_pool_over_tcp(xmrig_capture: XmrigSession) -> None:
    check_session(xmrig_capture)
    assert "new job from 127.0.0.1" in xmrig_capture.xmrig.log_text
    assert "algo rx/0" in xmrig_capture.xmrig.log_text


@pytest.mark.miner
def test_plain_capture_contains_the_login_with_the_wallet(xmrig_capture: XmrigSession) -> None:
    up, down = tcp_payloads(xmrig_capture.pcap, xmrig_capture.pool_port)
    first = up.split(b"\n", 1)[0]
    assert b'"method":"login"' in first
    assert f'"login":"{xmrig_capture.wallet}"'.encode() in first
    assert xmrig_capture.agent is not None and xmrig_capture.agent.encode() in first
    assert up.count(b'"method":"submit"') == len(xmrig_capture.submits)
    assert down.count(b'"method":"job"') >= 2
    assert b'"status":"OK"' in down


@pytest.mark.miner
def test_xmrig_mines_over_tls_with_nicehash(xmrig_tls_capture: XmrigSession) -> None:
    check_session(xmrig_tls_capture)
    assert xmrig_tls_capture.tls and xmrig_tls_capture.logins[0].tls
    # NiceHash mode: every nonce keeps the pool's fixed top byte.
    top_bytes = {bytes.fromhex(s.nonce)[3] for s in xmrig_tls_capture.submits}
    assert len(top_bytes) == 1


@pytest.mark.miner
def test_tls_capture_hides_the_wallet(xmrig_tls_capture: XmrigSession) -> None:
    up, down = tcp_payloads(xmrig_tls_capture.pcap, xmrig_tls_capture.pool_port)
    assert up[:1] == b"\x16" and down[:1] == b"\x16"  # TLS handshake records
    assert xmrig_tls_capture.wallet.encode() not in up
    assert b'"method"' not in up and b'"method"' not in down


def test_stratum_v1_capture(stratum_v1_capture: StratumV1Session) -> None:
    session = stratum_v1_capture
    client = session.client
    assert client.submits_sent >= 7 and client.accepted == client.submits_sent
    assert client.difficulty == session.difficulty
    assert session.logins[0].login == f"{session.wallet}.{session.worker}"
    assert session.logins[0].agent == session.agent
    estimate = session.record.hashrate_estimate()
    assert estimate == pytest.approx(session.implied_hashrate_hs, rel=0.3)
    up, down = tcp_payloads(session.pcap, session.pool_port)
    assert up.count(b'"mining.submit"') == client.submits_sent
    assert f"{session.wallet}.{session.worker}".encode() in up
    assert b'"mining.subscribe"' in up and b'"mining.authorize"' in up
    assert b'"mining.set_difficulty"' in down and b'"mining.notify"' in down


@pytest.mark.miner
def test_xmrig_follows_the_pools_variable_difficulty(tmp_path: Path) -> None:
    """XMRig mines at each new target the pool's vardiff sends: a session that starts far
    too hard for one thread gets easier jobs, and XMRig's shares at those are accepted."""
    from minewatch.lab.xmrig import capture_xmrig_session

    session = capture_xmrig_session(
        tmp_path,
        wallet=fake_monero_address("vardiff"),
        duration=45.0,
        difficulty=20_000,  # minutes per share on one thread at cn-pico's ~100 H/s here
        job_interval=4.0,  # pushes retarget a share-less session: halved each time
        job_schedule="blocks",
        pool_seed=3,
        share_target_s=2.0,
        algo="cn-pico",  # starts in seconds; the pool does not check the hash
    )
    difficulties = [j.difficulty for j in session.record.jobs]
    assert difficulties[0] == 20_000 and min(difficulties) <= 20_000 / 8, difficulties
    accepted = session.accepted
    assert accepted, session.xmrig.log_text[-2000:]
    assert all(s.accepted for s in session.submits), {s.reason for s in session.submits}
    assert {s.difficulty for s in accepted} <= set(difficulties[1:])  # only retargeted jobs

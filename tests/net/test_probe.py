"""Active pool confirmation against real servers on loopback: the lab pool in every dialect
and transport, and the real benign servers the behaviour model's look-alikes come from."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minewatch.lab.behavior_data import BENIGN_SCENARIOS, Peers, _start_on, service_port, wait_port
from minewatch.lab.fleet import BENIGN_FAMILIES, BenignPlan, family_ports, run_benign_fleet
from minewatch.lab.pool import PoolConfig, PoolThread
from minewatch.lab.xmrig import fake_monero_address
from minewatch.net.probe import _pool_evidence, probe, probe_many

HOST = "127.0.0.1"


@pytest.mark.parametrize(
    ("config", "dialect"),
    [
        (PoolConfig(), "cryptonote"),
        (PoolConfig(tls=True), "cryptonote"),
        (PoolConfig(tls=True, nicehash=True, share_target_s=30.0), "cryptonote"),
        (PoolConfig(dialect="stratum1", difficulty=1), "stratum1"),
        (PoolConfig(dialect="stratum1", difficulty=1, tls=True), "stratum1"),
    ],
    ids=["cryptonote", "cryptonote-tls", "cryptonote-tls-nicehash-vardiff", "v1", "v1-tls"],
)
def test_lab_pools_are_confirmed(config: PoolConfig, dialect: str) -> None:
    with PoolThread(config) as pool:
        r = probe(HOST, pool.port, timeout=5)
        logins = len(pool.record.logins)
    assert r.verdict == "pool", r.reasons
    assert (r.dialect, r.tls) == (dialect, config.tls)
    if dialect == "cryptonote":
        assert (r.algo, r.difficulty) == ("rx/0", pytest.approx(config.difficulty, rel=1e-3))
        assert r.reasons[0].startswith("answered a CryptoNote login")
        assert "algo rx/0" in r.reasons[0] and "height" in r.reasons[0]
        assert logins == 1  # one login, nothing submitted
    else:
        assert "extranonce1" in r.reasons[0]
    # A Stratum V1 pool answers the second question; a TLS port is asked again in TLS after
    # the plain attempt was closed.
    assert len(r.attempts) == 1 + (dialect == "stratum1") + config.tls


def test_a_pool_that_checks_wallets_is_confirmed_by_its_refusal() -> None:
    with PoolThread(PoolConfig(check_wallet=True, tls=True)) as pool:
        refused = probe(HOST, pool.port, timeout=5)
        wallet = probe(HOST, pool.port, timeout=5, login=fake_monero_address("probe") + ".rig1")
        by_name = probe("localhost", pool.port, timeout=5)  # a name: sent as SNI in TLS
        bad = [b.kind for b in pool.record.bad_inputs]
    assert refused.verdict == "pool" and refused.tls is True
    assert "Invalid payment address provided" in refused.reasons[0]
    assert refused.algo is None  # no job was given
    assert wallet.verdict == "pool" and wallet.algo == "rx/0"
    assert by_name.verdict == "pool" and by_name.host == "localhost"
    assert "bad-wallet" in bad


@pytest.fixture(scope="module")
def benign_servers() -> Iterator[dict[str, int]]:
    """Every benign scenario of the behaviour training data (real mosquitto plain and TLS,
    redis-server, OpenSSH, websockets, hypercorn HTTP/2 and HTTP/1.1, the Electrum-style
    JSON-RPC server plain and TLS), each with its clients running. The PostgreSQL pool
    scenario is left out: it uses a server already on the machine, which CI may not have.
    Not under pytest's tmp_path (mode 0700 under /tmp/pytest-of-root): mosquitto drops root
    before it reads its certificate."""
    work = Path(tempfile.mkdtemp(prefix="minewatch-probe-"))
    work.chmod(0o755)
    peers: list[Peers] = []
    ports: dict[str, int] = {}
    try:
        for name in BENIGN_SCENARIOS:
            if name == "postgres-pool":
                continue
            p = Peers()
            peers.append(p)
            d = work / name
            d.mkdir()
            port = service_port()
            _start_on(name, p, d, port, random.Random(name))
            ports[name] = port
        for port in ports.values():
            wait_port(port, 30.0)  # some scenarios start their server in a thread
        yield ports
    finally:
        for p in peers:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_real_benign_servers_are_not_pools(benign_servers: dict[str, int]) -> None:
    results = probe_many([(HOST, port) for port in benign_servers.values()], timeout=4)
    by_name = dict(zip(benign_servers, results, strict=True))
    for name, r in by_name.items():
        assert r.verdict == "not_pool", (name, r.reasons)
        assert r.reasons and r.attempts, name
    # The JSON-RPC look-alike was asked both questions and gave no pool's answer.
    assert [a.request for a in by_name["electrum"].attempts] == [
        "cryptonote-login",
        "stratum1-subscribe",
    ]
    assert by_name["electrum"].attempts[0].outcome == "json-rpc"
    # A TLS server is tried in TLS after the plain attempt was closed.
    assert any(a.tls for a in by_name["mqtt-tls"].attempts)


def test_held_out_fleet_servers_are_not_pools() -> None:
    """The servers of the held-out benign fleet (docs/behavior-heldout.md), whose clients are
    the flow model's false positives, probed while a tiny fleet runs: mosquitto plain and TLS,
    redis-server (redis-py pooled and pub/sub clients), websockets plain and TLS, hypercorn
    HTTP/2 and HTTP/1.1, the fleet's Electrum-style server plain and TLS, a PostgreSQL
    instance started for the run and OpenSSH."""
    plan = BenignPlan(
        connections=24, postgres=2, ssh=1, duration_s=25.0, ramp_s=2.0, seed=11,
        families=BENIGN_FAMILIES,
    )  # fmt: skip
    base = 21970
    ports = family_ports(base)
    work = Path(tempfile.mkdtemp(prefix="minewatch-probe-fleet-"))
    work.chmod(0o755)  # PostgreSQL and mosquitto drop root before writing or reading there
    done: list[object] = []
    fleet = threading.Thread(
        target=lambda: done.append(run_benign_fleet(work / "fleet", plan, port_base=base))
    )
    fleet.start()
    try:
        for port in ports.values():
            wait_port(port, 60.0)
        results = probe_many([(HOST, p) for p in ports.values()], timeout=4)
    finally:
        fleet.join(120)
        shutil.rmtree(work, ignore_errors=True)
    assert done, "the fleet did not finish"
    for family, r in zip(ports, results, strict=True):
        assert r.verdict == "not_pool", (family, r.reasons)


def test_closed_and_silent_servers() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        closed = s.getsockname()[1]  # bound, not listening: refused
        r = probe(HOST, closed, timeout=1)
    assert r.verdict == "unreachable"
    assert r.reasons == ["plain cryptonote-login: connection refused"]

    srv = socket.create_server((HOST, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accept and say nothing
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        r = probe(HOST, srv.getsockname()[1], timeout=0.5)
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
    assert r.verdict == "not_pool"
    assert r.attempts[0].outcome == "silent"
    assert took < 3.0  # every attempt is bounded by the timeout


def test_pool_evidence_rules() -> None:
    login = "cryptonote-login"
    refuse = {"id": 1, "jsonrpc": "2.0", "error": {"code": -1, "message": "Invalid address"}}
    assert _pool_evidence(login, [refuse])["why"] == "refusal"  # type: ignore[index]
    stratum_style = {"error": [-3, "login", None], "id": 1, "result": None}
    assert _pool_evidence(login, [stratum_style])["why"] == "refusal"  # type: ignore[index]
    assert _pool_evidence(login, [{"id": 1, "error": [-1, "Method not found", None]}]) is None
    no_method = {"id": 1, "error": {"code": -32601, "message": "Method not found: login"}}
    assert _pool_evidence(login, [no_method]) is None
    unknown = {"id": 1, "error": {"code": -32601, "message": "unknown method login"}}
    assert _pool_evidence(login, [unknown]) is None
    assert _pool_evidence(login, [{"id": 1, "result": None}]) is None
    assert _pool_evidence(login, [{"id": 1, "result": {"job": {"blob": "00"}}}]) is None
    pushed = {"jsonrpc": "2.0", "method": "job", "params": {"blob": "00", "target": "ff"}}
    assert _pool_evidence(login, [pushed])["why"] == "pushed a job"  # type: ignore[index]
    eth = {"id": 1, "result": [["mining.notify", "ae6812eb", "EthereumStratum/1.0.0"], "080c"]}
    assert _pool_evidence("stratum1-subscribe", [eth])["dialect"] == "stratum1"  # type: ignore[index]
    assert _pool_evidence("stratum1-subscribe", [{"id": 1, "result": ["x", "nothex"]}]) is None
    notify = {"id": None, "method": "mining.set_difficulty", "params": [1]}
    assert _pool_evidence("stratum1-subscribe", [notify])["why"].startswith("pushed")  # type: ignore[index]


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minewatch", "probe", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_probes_servers_and_annotates_detections(tmp_path: Path) -> None:
    with PoolThread(PoolConfig(tls=True)) as pool:
        out = _cli(f"{HOST}:{pool.port}", "--timeout", "5")
        assert out.returncode == 0, out.stderr
        (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
        assert rec["verdict"] == "pool" and rec["tls"] is True and rec["attempts"]
        assert "1 server(s) probed: 1 pool(s)" in out.stderr

        detection = {
            "src_ip": "10.0.0.2",
            "src_port": 40000,
            "dst_ip": HOST,
            "dst_port": pool.port,
            "detector": "behavior",
            "reasons": ["behaviour model 1.000 ≥ 1.000"],
        }
        stdin = json.dumps(detection) + "\nnot json\n" + json.dumps({"src_ip": "x"}) + "\n"
        out = _cli("-", "--timeout", "5", stdin=stdin)
    assert out.returncode == 0, out.stderr
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["probe"]["verdict"] == "pool" and rec["src_ip"] == "10.0.0.2"
    assert rec["reasons"][-1].startswith("probe: the server answered a CryptoNote login over TLS")
    assert "stdin line 2" in out.stderr and "stdin line 3" in out.stderr
    assert "2 stdin line(s) skipped" in out.stderr

    bad = _cli("not-an-endpoint")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_cli_only_pools_keeps_confirmed_detections_and_named_servers() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        closed = s.getsockname()[1]
        with PoolThread(PoolConfig()) as pool:
            lines = [
                {"src_ip": "10.0.0.3", "dst_ip": HOST, "dst_port": pool.port, "reasons": []},
                {"src_ip": "10.0.0.4", "dst_ip": HOST, "dst_port": closed, "reasons": []},
            ]
            stdin = "".join(json.dumps(d) + "\n" for d in lines)
            out = _cli("-", f"{HOST}:{pool.port}", "--only-pools", "--timeout", "2", stdin=stdin)
    assert out.returncode == 0, out.stderr
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r.get("src_ip") for r in recs] == ["10.0.0.3", None]  # the detection, the server
    assert recs[1]["verdict"] == "pool" and recs[1]["port"] == recs[0]["dst_port"]
    assert "2 server(s) probed: 1 pool(s)" in out.stderr


def test_cli_annotates_each_detection_as_it_comes() -> None:
    """`collect | probe -`: a detection is printed once its server is probed, before stdin
    ends (the collector runs for hours)."""
    with PoolThread(PoolConfig()) as pool:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minewatch", "probe", "-", "--timeout", "5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            det = {"src_ip": "10.0.0.5", "dst_ip": HOST, "dst_port": pool.port, "reasons": []}
            proc.stdin.write(json.dumps(det) + "\n")
            proc.stdin.flush()
            got: list[str] = []
            reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()))  # type: ignore[union-attr]
            reader.start()
            reader.join(60)
            assert got and json.loads(got[0])["probe"]["verdict"] == "pool"
            assert proc.poll() is None  # still reading stdin
        finally:
            proc.stdin.close()
            proc.wait(60)
    assert proc.returncode == 0

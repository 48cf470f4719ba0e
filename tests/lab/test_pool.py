"""The lab pool over real sockets: CryptoNote and Stratum V1, plain and TLS, bad input."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import ssl
import statistics
import struct
import time
from typing import Any

import pytest

from minewatch.lab.pool import (
    LabPool,
    PoolConfig,
    PoolThread,
    VarDiff,
    difficulty_from_target,
    job_gaps,
    monero_hashing_blob,
    require_loopback,
    seed_height,
    target_from_difficulty,
)
from minewatch.lab.stratum_client import run_stratum_client
from minewatch.lab.xmrig import fake_monero_address

WALLET = fake_monero_address("test-pool")


class LineClient:
    """A newline-delimited JSON client on a real socket (optionally TLS)."""

    def __init__(self, pool: PoolThread, *, verify: bool = True) -> None:
        raw = socket.create_connection((pool.host, pool.port), timeout=5)
        if pool.config.tls:
            context = ssl.create_default_context()
            files = pool.pool.tls_files
            assert files is not None
            if verify:
                context.load_verify_locations(files.cert)
            else:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname=pool.host)
        else:
            self.sock = raw
        self.buffer = b""
        self.next_id = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("pool closed the connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def call(self, method: str, params: Any) -> dict[str, Any]:
        msg_id = self.next_id
        self.next_id += 1
        payload = {"id": msg_id, "jsonrpc": "2.0", "method": method, "params": params}
        self.send_raw(json.dumps(payload).encode() + b"\n")
        while True:
            message = self.read()
            if message.get("id") == msg_id:
                return message

    def close(self) -> None:
        self.sock.close()


def login(client: LineClient, wallet: str = WALLET, **extra: Any) -> dict[str, Any]:
    params = {"login": wallet, "pass": "x", "agent": "XMRig/6.16.0 (Linux x86_64)", **extra}
    params.setdefault("algo", ["rx/0", "cn/r"])
    return client.call("login", params)


def good_result(zero_tail: bool = True) -> str:
    """A claimed hash whose last 8 bytes (the value compared with the target) are small."""
    return "ab" * 24 + ("00" * 8 if zero_tail else "ff" * 8)


# --------------------------------------------------------------------------- pure helpers


def test_target_conversions_match_the_reference_figures() -> None:
    assert target_from_difficulty(10_000) == "b88d0600"
    assert target_from_difficulty(20_000) == "dc460300"
    assert int(difficulty_from_target("b88d0600")) == 10_000
    assert int(difficulty_from_target("dc460300")) == 20_000
    assert difficulty_from_target("ffffffff") == 1.0
    with pytest.raises(ValueError):
        target_from_difficulty(0)
    with pytest.raises(ValueError):
        difficulty_from_target("abc")


def test_hashing_blob_is_76_bytes_with_the_nonce_at_offset_39() -> None:
    blob = monero_hashing_blob(
        timestamp=1_790_000_000,
        prev_id=b"\x11" * 32,
        tree_root=b"\x22" * 32,
        tx_count=17,
        nonce=0xDEADBEEF,
    )
    assert len(blob) == 76
    assert blob[:2] == bytes([16, 16])
    assert struct.unpack_from("<I", blob, 39)[0] == 0xDEADBEEF
    assert blob[7:39] == b"\x11" * 32


def test_seed_height_follows_the_2048_block_epochs() -> None:
    assert seed_height(100) == 0
    assert seed_height(2048 + 64) == 0
    assert seed_height(2048 + 65) == 2048
    assert seed_height(3_150_001) == 3_149_824


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "localhost", "", "10.0.0.1"])
def test_pool_refuses_non_loopback_bind_addresses(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        PoolConfig(host=host)
    with pytest.raises(ValueError, match="loopback"):
        LabPool(host=host)
    with pytest.raises(ValueError, match="loopback"):
        require_loopback(host)


def test_pool_accepts_loopback_addresses() -> None:
    assert PoolConfig(host="127.0.0.1").host == "127.0.0.1"
    assert PoolConfig(host="127.0.0.2").host == "127.0.0.2"
    assert PoolConfig(host="::1").host == "::1"


# --------------------------------------------------------------------------- CryptoNote


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_cryptonote_login_submit_keepalive(tls: bool) -> None:
    with PoolThread(PoolConfig(difficulty=10_000, job_interval=60, tls=tls)) as pool:
        client = LineClient(pool)
        reply = login(client, rigid="rig7")
        assert reply["error"] is None
        result = reply["result"]
        assert result["status"] == "OK"
        job = result["job"]
        assert set(job) >= {"blob", "job_id", "target", "algo", "height", "seed_hash"}
        assert job["target"] == "b88d0600"
        assert job["algo"] == "rx/0"
        assert len(bytes.fromhex(job["blob"])) == 76
        assert len(bytes.fromhex(job["seed_hash"])) == 32
        assert isinstance(job["height"], int)
        assert "keepalive" in result["extensions"]
        assert ("tls" in result["extensions"]) is tls

        session = result["id"]
        ok = client.call(
            "submit",
            {"id": session, "job_id": job["job_id"], "nonce": "01000000", "result": good_result()},
        )
        assert ok["error"] is None and ok["result"] == {"status": "OK"}
        dup = client.call(
            "submit",
            {"id": session, "job_id": job["job_id"], "nonce": "01000000", "result": good_result()},
        )
        assert dup["error"]["message"] == "Duplicate share"
        low = client.call(
            "submit",
            {
                "id": session,
                "job_id": job["job_id"],
                "nonce": "02000000",
                "result": good_result(False),
            },
        )
        assert low["error"]["message"] == "Low difficulty share"
        stale = client.call(
            "submit",
            {"id": session, "job_id": "nope", "nonce": "03000000", "result": good_result()},
        )
        assert stale["error"] is not None
        alive = client.call("keepalived", {"id": session})
        assert alive["result"] == {"status": "KEEPALIVED"}
        client.close()

        record = pool.record
        assert [login.login for login in record.logins] == [WALLET]
        assert record.logins[0].rig_id == "rig7"
        assert record.logins[0].tls is tls
        assert len(record.submits) == 4
        assert [s.accepted for s in record.submits] == [True, False, False, False]
        assert record.submits[0].difficulty == 10_000
        assert len(record.keepalives) == 1


def test_tls_certificate_verifies_for_127_0_0_1() -> None:
    with PoolThread(PoolConfig(tls=True)) as pool:
        client = LineClient(pool, verify=True)
        assert login(client)["result"]["status"] == "OK"
        assert pool.tls_fingerprint is not None and len(pool.tls_fingerprint) == 64
        client.close()


def test_cryptonote_pushes_jobs_at_the_interval() -> None:
    with PoolThread(PoolConfig(difficulty=500, job_interval=0.3)) as pool:
        client = LineClient(pool)
        first = login(client)["result"]["job"]
        pushed = [client.read(timeout=3) for _ in range(3)]
        client.close()
    assert all(m["method"] == "job" for m in pushed)
    ids = [first["job_id"], *(m["params"]["job_id"] for m in pushed)]
    assert len(set(ids)) == 4
    assert all(m["params"]["target"] == target_from_difficulty(500) for m in pushed)
    heights = [first["height"], *(m["params"]["height"] for m in pushed)]
    assert heights == sorted(heights)


def test_vardiff_follows_the_hash_rate_within_limits() -> None:
    v = VarDiff(1000, target_s=10.0, now=0.0)
    assert not v.retarget(19.0)  # a window is at least two share targets long
    for _ in range(3):
        v.add(1000)
    assert v.retarget(20.0) and v.difficulty == 1500  # 3000 / 20 s * 10 s
    v.add(3750)
    assert not v.retarget(40.0) and v.difficulty == 1500  # 1875 is within 30%: kept
    assert not v.retarget(59.0)  # ... but a new window started at 40 s
    assert v.retarget(60.0) and v.difficulty == 750  # no share in a window: halved
    v.add(1e9)
    assert v.retarget(80.0) and v.difficulty == 3000  # at most 4x per window
    with pytest.raises(ValueError, match="cryptonote"):
        PoolConfig(dialect="stratum1", difficulty=1.0, share_target_s=5.0)
    slow = VarDiff(3, target_s=1.0, now=0.0)
    for t in range(2, 12, 2):
        slow.retarget(float(t))
    assert slow.difficulty == 1  # never below 1


def test_vardiff_session_sends_the_new_target_with_a_job() -> None:
    config = PoolConfig(difficulty=1000, job_interval=60, share_target_s=0.2)
    with PoolThread(config) as pool:
        client = LineClient(pool)
        result = login(client)["result"]
        session, job = result["id"], result["job"]
        assert job["target"] == target_from_difficulty(1000)
        pushed = None
        for i in range(300):  # shares every ~10 ms: far more than one per 0.2 s
            params = {"id": session, "job_id": job["job_id"], "nonce": f"{i:08x}"}
            request = {
                "id": i + 10,
                "method": "submit",
                "params": {**params, "result": good_result()},
            }
            client.send_raw(json.dumps(request).encode() + b"\n")
            reply = client.read()
            while reply.get("method") == "job":  # a job pushed before this reply
                pushed = reply
                reply = client.read()
            assert reply["id"] == i + 10 and reply["error"] is None
            if pushed is not None:
                break
            time.sleep(0.01)
            with contextlib.suppress(TimeoutError, OSError):
                pushed = client.read(timeout=0.01)  # the job that follows a retargeting reply
            if pushed is not None:
                break
        client.close()
    assert pushed is not None and pushed["method"] == "job"
    assert pushed["params"]["target"] == target_from_difficulty(4000)  # 4x, the limit
    assert [j.difficulty for j in pool.record.jobs] == [1000, 4000]
    assert all(s.difficulty == 1000 for s in pool.record.accepted)


def test_job_gaps_timer_and_blocks() -> None:
    timer = list(itertools.islice(job_gaps(PoolConfig(job_interval=7.0)), 5))
    assert timer == [7.0] * 5
    blocks = PoolConfig(job_interval=7.0, job_schedule="blocks", seed=3)
    gaps = list(itertools.islice(job_gaps(blocks, session=0), 4000))
    # Exponential: mean close to the interval, spread about as large as the mean.
    assert 6.5 < statistics.fmean(gaps) < 7.5
    assert 0.9 < statistics.pstdev(gaps) / statistics.fmean(gaps) < 1.1
    assert min(gaps) >= 0.05
    # Reproducible per session number with a seed; other sessions get other gaps.
    assert list(itertools.islice(job_gaps(blocks, session=0), 10)) == gaps[:10]
    assert list(itertools.islice(job_gaps(blocks, session=1), 10)) != gaps[:10]
    with pytest.raises(ValueError, match="job_schedule"):
        PoolConfig(job_schedule="hourly")  # type: ignore[arg-type]


def test_blocks_schedule_pushes_jobs_at_irregular_gaps() -> None:
    config = PoolConfig(difficulty=500, job_interval=0.2, job_schedule="blocks", seed=11)
    with PoolThread(config) as pool:
        client = LineClient(pool)
        login(client)
        pushed = [client.read(timeout=5) for _ in range(12)]
        client.close()
        jobs = [j for j in pool.record.jobs if j.session_id == pool.record.logins[0].session_id]
    assert all(m["method"] == "job" for m in pushed)
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(jobs)]
    assert len(gaps) >= 12
    # A timer would give gaps within a few ms of each other; blocks spread them out.
    assert max(gaps) - min(gaps) > 0.15


def test_nicehash_fixes_the_top_nonce_byte() -> None:
    with PoolThread(PoolConfig(nicehash=True, job_interval=60)) as pool:
        client = LineClient(pool)
        result = login(client)["result"]
        assert "nicehash" in result["extensions"]
        job = result["job"]
        fixed = bytes.fromhex(job["blob"])[42]
        keep = "000000" + f"{fixed:02x}"
        lose = "000000" + f"{(fixed + 1) % 256:02x}"
        base = {"id": result["id"], "job_id": job["job_id"], "result": good_result()}
        assert client.call("submit", {**base, "nonce": keep})["result"] == {"status": "OK"}
        assert "NiceHash" in client.call("submit", {**base, "nonce": lose})["error"]["message"]
        client.close()


def test_submit_before_login_is_refused() -> None:
    with PoolThread(PoolConfig()) as pool:
        client = LineClient(pool)
        reply = client.call("submit", {"id": "x", "job_id": "y", "nonce": "00", "result": "00"})
        assert reply["error"]["message"] == "Unauthenticated"
        client.close()
        assert pool.record.submits == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_bad_input_does_not_crash_the_pool(tls: bool) -> None:
    with PoolThread(PoolConfig(tls=tls, max_line_bytes=4096)) as pool:
        client = LineClient(pool)
        client.send_raw(b"\x00\xff garbage \xfe\n")
        assert client.read()["error"]["code"] == -32700
        client.send_raw(b"{not json at all\n")
        assert client.read()["error"]["code"] == -32700
        client.send_raw(b"[1, 2, 3]\n")
        assert client.read()["error"]["code"] == -32600
        client.send_raw(b'{"id": 5, "params": {}}\n')
        assert client.read()["error"]["code"] == -32600
        client.send_raw(b'{"id": 6, "method": "login", "params": ["not", "an", "object"]}\n')
        assert client.read()["error"]["code"] == -32602
        client.send_raw(b'{"id": 7, "method": "mining.frobnicate", "params": []}\n')
        assert client.read()["error"]["code"] == -32601
        client.send_raw(b"[" * 4000 + b"\n")  # nesting deeper than the parser allows
        assert client.read()["error"]["code"] == -32700
        client.send_raw(b"[" * 100_000 + b"\n")  # deep nesting, over the line limit
        client.send_raw(b"x" * 3_000_000 + b"\n")  # an absurdly long line
        client.send_raw(b'{"id": 8, "method": "login", "params": {"login": 42}}\n')
        assert client.read(timeout=10)["id"] == 8
        # The same connection still works after all of that.
        assert login(client)["result"]["status"] == "OK"
        client.close()

        # So does a new one, and one that sends half a line and hangs up.
        cut = LineClient(pool)
        cut.send_raw(b'{"id": 1, "method": "login", "params": {"login": "4abc')
        cut.close()
        other = LineClient(pool)
        assert login(other, wallet=WALLET[::-1])["result"]["status"] == "OK"
        other.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kinds = [bad.kind for bad in pool.record.bad_inputs]
            if "truncated" in kinds:
                break
            time.sleep(0.05)
    assert kinds.count("not-json") == 3
    assert kinds.count("too-long") == 2
    assert {"not-an-object", "no-method", "bad-params", "unknown-method", "truncated"} <= set(kinds)
    assert len(pool.record.logins) == 2


def test_a_client_that_is_not_tls_does_not_stop_a_tls_pool() -> None:
    with PoolThread(PoolConfig(tls=True)) as pool:
        raw = socket.create_connection((pool.host, pool.port), timeout=5)
        raw.sendall(b'{"id":1,"method":"login","params":{"login":"x"}}\n')
        raw.settimeout(5)
        with contextlib.suppress(ConnectionError, TimeoutError):
            raw.recv(100)
        raw.close()
        client = LineClient(pool)
        assert login(client)["result"]["status"] == "OK"
        client.close()


# --------------------------------------------------------------------------- Stratum V1


def test_stratum_v1_handshake_and_submits() -> None:
    config = PoolConfig(dialect="stratum1", difficulty=2048.0, job_interval=0.5, motd="hello")
    with PoolThread(config) as pool:
        client = LineClient(pool)
        configure = client.call(
            "mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}]
        )
        assert configure["result"] == {"version-rolling": True, "version-rolling.mask": "1fffe000"}
        sub = client.call("mining.subscribe", ["bfgminer/5.5.0"])["result"]
        assert sub[0][1][0] == "mining.notify" and len(bytes.fromhex(sub[1])) == 4 and sub[2] == 4
        assert client.call("mining.extranonce.subscribe", [])["result"] is True
        assert client.call("mining.authorize", ["wallet.rig1", "pw"])["result"] is True
        pushed = [client.read() for _ in range(3)]
        assert [m["method"] for m in pushed] == [
            "mining.set_difficulty",
            "client.show_message",
            "mining.notify",
        ]
        assert pushed[0]["params"] == [2048.0]
        notify = pushed[2]["params"]
        assert len(notify) == 9 and notify[8] is True and len(notify[1]) == 64
        job_id = notify[0]
        submit = ["wallet.rig1", job_id, "00000001", notify[7], "12345678"]
        assert client.call("mining.submit", submit)["result"] is True
        assert client.call("mining.submit", submit)["error"][1] == "Duplicate share"
        bad_job = ["wallet.rig1", "ffff", "00000002", notify[7], "12345678"]
        assert client.call("mining.submit", bad_job)["error"][0] == 21
        stranger = ["someone.else", job_id, "00000003", notify[7], "12345678"]
        assert client.call("mining.submit", stranger)["error"][0] == 24
        # A further job is pushed at the interval.
        later = client.read(timeout=3)
        assert later["method"] == "mining.notify" and later["params"][8] is False
        client.close()
        record = pool.record
    assert record.logins[0].login == "wallet.rig1" and record.logins[0].agent == "bfgminer/5.5.0"
    assert record.logins[0].dialect == "stratum1"
    assert [s.accepted for s in record.submits] == [True, False, False, False]
    assert record.submits[0].difficulty == 2048.0


def test_scripted_stratum_client_against_the_pool() -> None:
    with PoolThread(PoolConfig(dialect="stratum1", difficulty=4.0, job_interval=0.5)) as pool:
        result = run_stratum_client(
            pool.host, pool.port, worker="w.r", shares_per_second=10.0, duration=3.0
        )
        record = pool.record
    # 3 s rather than 1 s: a stall of a few tenths of a second at either end (a loaded
    # machine) would move the estimate of a 1 s run outside 30 %.
    assert result.submits_sent >= 29
    assert result.accepted == result.submits_sent and result.rejected == 0
    assert result.difficulty == 4.0
    assert result.notifies >= 2
    assert len(record.accepted) == result.accepted
    estimate = record.hashrate_estimate()
    assert estimate is not None
    assert estimate == pytest.approx(4.0 * 2**32 * 10.0, rel=0.3)


def test_scripted_client_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_stratum_client("192.0.2.1", 3333, worker="w")


def test_pool_serves_ipv6_loopback() -> None:
    with PoolThread(PoolConfig(host="::1")) as pool:
        assert pool.url == f"[::1]:{pool.port}"
        client = LineClient(pool)
        assert login(client)["result"]["status"] == "OK"
        client.close()
        assert pool.record.logins[0].peer[0] == "::1"

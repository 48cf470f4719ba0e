"""A scripted Stratum V1 client for tests. It is NOT a miner: it computes no hashes.

It plays the message sequence of a Bitcoin-family miner against the lab pool (or any
loopback Stratum V1 server): ``mining.configure`` (version rolling), ``mining.subscribe``,
``mining.extranonce.subscribe``, ``mining.authorize``, then ``mining.submit`` at a fixed
rate with made-up extranonce2/ntime/nonce values. Because the difficulty the pool sets and
the submit rate are both known, the hash rate such a session *implies* is known exactly:
``difficulty * 2**32 * shares_per_second``; detection tests compare their estimate with it.

:func:`capture_stratum_v1_session` starts a lab pool, captures its port on ``lo`` and runs
the client, in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minewatch.lab.capture import Capture, CaptureResult
from minewatch.lab.pool import (
    LoginRecord,
    PoolConfig,
    PoolRecord,
    PoolThread,
    SubmitRecord,
    require_loopback,
)

DEFAULT_AGENT = "minewatch-lab-client/0.1"


@dataclass
class StratumClientResult:
    """What the scripted client sent and was told."""

    local_port: int
    agent: str
    worker: str
    password: str
    started: float
    stopped: float
    extranonce1: str | None = None
    extranonce2_size: int | None = None
    difficulties: list[float] = field(default_factory=list)
    notifies: int = 0
    messages: list[str] = field(default_factory=list)
    submits_sent: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[Any] = field(default_factory=list)

    @property
    def difficulty(self) -> float | None:
        return self.difficulties[-1] if self.difficulties else None


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.jobs: list[str] = []
        self.job_ready = asyncio.Event()
        self.notes: list[tuple[str, Any]] = []

    async def call(self, method: str, params: list[Any], timeout: float) -> Any:
        msg_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        line = json.dumps({"id": msg_id, "method": method, "params": params}) + "\n"
        self.writer.write(line.encode())
        await self.writer.drain()
        return await asyncio.wait_for(future, timeout)

    async def listen(self) -> None:
        while True:
            raw = await self.reader.readline()
            if not raw:
                for future in self.pending.values():
                    if not future.done():
                        future.set_exception(ConnectionError("pool closed the connection"))
                return
            try:
                message = json.loads(raw)
            except ValueError:
                self.notes.append(("<not json>", raw[:80].decode(errors="replace")))
                continue
            if not isinstance(message, dict):
                continue
            msg_id = message.get("id")
            method = message.get("method")
            if method is not None:
                self.notes.append((method, message.get("params")))
                if method == "mining.notify":
                    self.jobs.append(message["params"][0])
                    self.job_ready.set()
            elif isinstance(msg_id, int) and msg_id in self.pending:
                future = self.pending.pop(msg_id)
                if not future.done():
                    future.set_result(message)


async def stratum_v1_session(
    host: str,
    port: int,
    *,
    worker: str,
    password: str = "x",
    agent: str = DEFAULT_AGENT,
    shares_per_second: float = 2.0,
    duration: float = 5.0,
    version_rolling: bool = True,
    timeout: float = 10.0,
) -> StratumClientResult:
    """Run one scripted session: handshake, then submit every 1/``shares_per_second`` s."""
    require_loopback(host)
    if shares_per_second <= 0 or duration <= 0:
        raise ValueError("shares_per_second and duration must be positive")
    reader, writer = await asyncio.open_connection(host, port)
    local_port = int(writer.get_extra_info("sockname")[1])
    client = _Client(reader, writer)
    listener = asyncio.create_task(client.listen())
    result = StratumClientResult(local_port, agent, worker, password, time.time(), 0.0)
    try:
        if version_rolling:
            await client.call(
                "mining.configure",
                [["version-rolling"], {"version-rolling.mask": "1fffe000"}],
                timeout,
            )
        reply = await client.call("mining.subscribe", [agent], timeout)
        subscription = reply.get("result") or [None, None, None]
        result.extranonce1, result.extranonce2_size = subscription[1], subscription[2]
        await client.call("mining.extranonce.subscribe", [], timeout)
        reply = await client.call("mining.authorize", [worker, password], timeout)
        if reply.get("result") is not True:
            result.errors.append(reply.get("error"))
            return result
        await asyncio.wait_for(client.job_ready.wait(), timeout)
        size = int(result.extranonce2_size or 4)
        interval = 1.0 / shares_per_second
        deadline = time.monotonic() + duration
        next_at = time.monotonic()
        counter = 0
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            counter += 1
            params = [
                worker,
                client.jobs[-1],
                counter.to_bytes(size, "big").hex(),
                f"{int(time.time()):08x}",
                secrets.token_hex(4),
            ]
            if version_rolling:
                params.append(f"{secrets.randbelow(0xFFFF) << 13:08x}")
            reply = await client.call("mining.submit", params, timeout)
            result.submits_sent += 1
            if reply.get("result") is True:
                result.accepted += 1
            else:
                result.rejected += 1
                result.errors.append(reply.get("error"))
            next_at += interval
    finally:
        result.stopped = time.time()
        listener.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
        for method, params in client.notes:
            if method == "mining.set_difficulty" and params:
                result.difficulties.append(float(params[0]))
            elif method == "mining.notify":
                result.notifies += 1
            elif method == "client.show_message" and params:
                result.messages.append(str(params[0]))
    return result


def run_stratum_client(host: str, port: int, **kwargs: Any) -> StratumClientResult:
    """Synchronous wrapper of :func:`stratum_v1_session` (same arguments)."""
    return asyncio.run(stratum_v1_session(host, port, **kwargs))


@dataclass(frozen=True)
class StratumV1Session:
    """A captured scripted Stratum V1 session: what the pool, tcpdump and the client saw.

    ``implied_hashrate_hs`` is the hash rate the scripted share rate stands for:
    difficulty * 2^32 * shares_per_second.
    """

    pcap: Path
    pool_host: str
    pool_port: int
    wallet: str
    worker: str
    password: str
    agent: str
    difficulty: float
    shares_per_second: float
    implied_hashrate_hs: float
    logins: list[LoginRecord]
    submits: list[SubmitRecord]
    client: StratumClientResult
    capture: CaptureResult
    record: PoolRecord = field(repr=False)


def capture_stratum_v1_session(
    out_dir: Path,
    *,
    wallet: str = "bc1qminewatchlabtestaddress0000000000000000",
    worker: str = "rig01",
    password: str = "x",
    agent: str = "cgminer/4.12.1",
    difficulty: float = 65536.0,
    shares_per_second: float = 2.0,
    duration: float = 5.0,
    job_interval: float = 2.0,
    port: int = 0,
    motd: str | None = "welcome to the minewatch lab pool",
) -> StratumV1Session:
    """Start a Stratum V1 lab pool, capture its port on ``lo`` and run the scripted client."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = PoolConfig(
        port=port, dialect="stratum1", difficulty=difficulty, job_interval=job_interval, motd=motd
    )
    pcap = out_dir / "stratum_v1.pcap"
    full_worker = f"{wallet}.{worker}"
    with PoolThread(config) as pool:
        with Capture(pcap, port=pool.port) as capture:
            client = run_stratum_client(
                pool.host,
                pool.port,
                worker=full_worker,
                password=password,
                agent=agent,
                shares_per_second=shares_per_second,
                duration=duration,
            )
            time.sleep(0.3)
        pool_port = pool.port
    assert capture.result is not None
    return StratumV1Session(
        pcap=pcap,
        pool_host=config.host,
        pool_port=pool_port,
        wallet=wallet,
        worker=worker,
        password=password,
        agent=agent,
        difficulty=difficulty,
        shares_per_second=shares_per_second,
        implied_hashrate_hs=difficulty * 2**32 * shares_per_second,
        logins=pool.record.logins,
        submits=pool.record.submits,
        client=client,
        capture=capture.result,
        record=pool.record,
    )

"""Held-out traffic at scale: fleets of real long-lived connections and real miners on loopback.

The behaviour model's own evaluation (:mod:`minewatch.lab.behavior_data`) has a few hundred
connections; showing ≥ 99% recall at ≤ 0.05% false positives needs hundreds of mining
connections and thousands of benign long-lived ones. This module makes them, with real
software only, all on 127.0.0.1, each family captured by ``tcpdump`` on ``lo`` filtered to
its own server port (:class:`minewatch.lab.capture.Capture`), so every connection in a
capture has one known label.

**Benign fleet** (:func:`run_benign_fleet`): one asyncio process holds thousands of
concurrent client connections from real client libraries against real servers started here:

- ``mqtt`` / ``mqtt-tls``: a ``mosquitto`` broker with a plain and a TLS listener; ``aiomqtt``
  (paho-mqtt) clients with keepalives of 10-120 s, idle subscribers, subscribers of push
  topics and telemetry publishers (TLS MQTT is the shape of push-notification channels);
- ``redis``: a ``redis-server``; ``redis.asyncio`` pub/sub subscribers with health-check
  pings, publishers, and pooled connections doing occasional GET/SET/PING;
- ``websocket`` / ``websocket-tls``: a ``websockets`` server pushing updates, clients with
  ping/pong heartbeats of 10-60 s, some sending acks;
- ``http2`` (TLS, ALPN h2) and ``http1``: ``hypercorn`` serving long polls and status
  requests to ``httpx`` clients that keep one connection each (long polling, periodic
  polling);
- ``electrum`` / ``electrum-tls``: an Electrum-style newline JSON-RPC server (the one peer
  written here, as in :mod:`behavior_data`) broadcasting header notifications, wallets
  sending ``server.ping`` and balance queries;
- ``postgres``: ``psycopg`` async connection pools against a PostgreSQL instance started for
  the run on its own port (so the capture holds only the fleet's connections);
- ``ssh``: OpenSSH (:func:`behavior_data.sshd`) with a few dozen idle and busy sessions.

Intervals, payload sizes and roles come from a seeded RNG; connections start spread over a
ramp and all live until the end of the run. One line per connection goes to
``connections.jsonl`` (family, kind, parameters, the client port when the library exposes
it), so a detection can be traced back to the software and settings that made it.

**Miner fleet** (:func:`run_miner_fleet`): rounds of concurrent, bounded real XMRig runs
(:func:`minewatch.lab.xmrig.capture_xmrig_session`, always ``--donate-level=0 --threads=1
--randomx-mode=light --no-huge-pages``), each against its own lab pool
(:class:`minewatch.lab.pool.PoolThread`) on a port in 20000-20999, each captured on its own.
Every XMRig runs under ``nice -n 19`` with its session's autogroup set to nice 19 as well
(with autogroup scheduling each XMRig session is its own group, in which plain ``nice``
would not yield to other sessions), so the fleet uses idle CPU. RandomX (``rx/0``, ~260 MB
each in light mode) and, to fit more concurrent connections in memory, the CryptoNight/Argon2
algorithms XMRig also mines (``cn-pico``, ``cn/half``, ``argon2/chukwa``, ``cn-lite/1``;
~10-20 MB each), TLS and cleartext, with and without ``--nicehash`` and ``--keepalive``, at
difficulties and job intervals other than those of :data:`behavior_data.MINER_VARIANTS`.

Every run writes ``manifest.json`` entries: capture, label, family, server port, settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from minewatch.lab.behavior_data import (
    SSH_BUSY,
    ElectrumCaller,
    MinerVariant,
    Peers,
    _asgi_app,
    drain_lines,
    electrum_reply,
    ssh_command,
    sshd,
    wait_port,
)
from minewatch.lab.capture import Capture
from minewatch.lab.pool import JobSchedule, make_self_signed_cert

LOOPBACK = "127.0.0.1"
#: Server ports of the benign fleet (one per family, from ``BENIGN_PORT_BASE`` up).
BENIGN_PORT_BASE = 21100
#: The miner fleet's pools use these ports only.
MINER_PORTS = range(20000, 21000)

#: Benign families and their share of the connections of a run (SSH and PostgreSQL are
#: given as absolute counts by :class:`BenignPlan`).
BENIGN_SHARES: dict[str, float] = {
    "mqtt": 0.17,
    "mqtt-tls": 0.14,
    "redis": 0.17,
    "websocket": 0.10,
    "websocket-tls": 0.09,
    "http2": 0.10,
    "http1": 0.07,
    "electrum": 0.08,
    "electrum-tls": 0.08,
}
BENIGN_FAMILIES: tuple[str, ...] = (*BENIGN_SHARES, "postgres", "ssh")


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped at the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# =========================================================================== benign fleet


@dataclass(frozen=True)
class BenignPlan:
    """How many connections of which family, for how long."""

    connections: int = 3000  # spread over the families of BENIGN_SHARES
    postgres: int = 120
    ssh: int = 30
    duration_s: float = 900.0
    ramp_s: float = 120.0
    seed: int = 0
    families: tuple[str, ...] = BENIGN_FAMILIES

    def counts(self) -> dict[str, int]:
        shares = {f: s for f, s in BENIGN_SHARES.items() if f in self.families}
        total = sum(shares.values()) or 1.0
        # Largest remainders: the counts add up to ``connections`` exactly.
        raw = {f: self.connections * s / total for f, s in shares.items()}
        out = {f: int(v) for f, v in raw.items()}
        left = self.connections - sum(out.values())
        for f in sorted(raw, key=lambda f: out[f] - raw[f])[:left]:
            out[f] += 1
        if "postgres" in self.families and self.postgres > 0:
            out["postgres"] = self.postgres
        if "ssh" in self.families and self.ssh > 0:
            out["ssh"] = self.ssh
        return out


@dataclass
class _Run:
    """Shared state of one benign fleet run."""

    work: Path
    deadline: float  # time.monotonic(); set by _fleet_main when the first client starts
    rng: random.Random
    tls: Any  # TlsFiles
    log: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def record(self, family: str, kind: str, client_port: int | None, **params: Any) -> None:
        self.log.append(
            {"family": family, "kind": kind, "client_port": client_port, "params": params}
        )

    def failed(self, family: str, exc: BaseException) -> None:
        key = f"{family}: {type(exc).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def client_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.tls.cert))
        ctx.check_hostname = False
        return ctx

    def server_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls.cert, self.tls.key)
        return ctx


async def _until(run: _Run, seconds: float) -> bool:
    """Sleep ``seconds`` or until the run's deadline; True when the deadline has come."""
    left = run.remaining()
    await asyncio.sleep(min(seconds, left))
    return run.remaining() <= 0


def _payload(rng: random.Random, lo: int, hi: int) -> str:
    return "x" * rng.randint(lo, hi)


# --------------------------------------------------------------------------- MQTT


async def _mqtt_client(run: _Run, family: str, port: int, i: int, rng: random.Random) -> None:
    import aiomqtt

    tls = family == "mqtt-tls"
    keepalive = rng.choice([10, 15, 20, 30, 45, 60, 90, 120])
    kind = rng.choices(["idle-sub", "push-sub", "publisher"], [0.35, 0.35, 0.30])[0]
    topic = f"push/{rng.randrange(50)}"
    mean = rng.choice([5.0, 10.0, 20.0, 40.0, 90.0])
    size = rng.choice([(10, 60), (50, 400), (200, 2000)])
    client = aiomqtt.Client(
        LOOPBACK,
        port,
        identifier=f"fleet-{family}-{i}",
        keepalive=keepalive,
        tls_context=run.client_ctx() if tls else None,
        tls_insecure=True if tls else None,
        timeout=30,
    )
    async with client:
        sock = client._client.socket()
        cport = sock.getsockname()[1] if isinstance(sock, socket.socket) else None
        run.record(family, kind, cport, keepalive=keepalive, topic=topic, mean_s=mean, size=size)
        if kind == "publisher":
            while not await _until(run, rng.expovariate(1 / mean)):
                body = json.dumps({"t": time.time(), "v": _payload(rng, *size)})
                await client.publish(topic, body, qos=rng.choice([0, 0, 1]))
        else:
            await client.subscribe(topic if kind == "push-sub" else f"idle/{i}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(run.remaining()):
                    async for _ in client.messages:
                        pass


def _start_mosquitto(peers: Peers, work: Path, plain: int, tls_port: int, tls: Any) -> None:
    conf = work / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                # Stay root: the throwaway key is in the run's folder, which the mosquitto
                # user may not be able to enter (pytest's tmp_path is 0700).
                "user root",
                "per_listener_settings false",
                "allow_anonymous true",
                "persistence false",
                "max_keepalive 65535",
                f"listener {plain} {LOOPBACK}",
                f"listener {tls_port} {LOOPBACK}",
                f"certfile {tls.cert}",
                f"keyfile {tls.key}",
            ]
        )
        + "\n"
    )
    peers.spawn(["mosquitto", "-c", str(conf)])
    wait_port(plain)
    wait_port(tls_port)


# --------------------------------------------------------------------------- Redis


async def _redis_client(run: _Run, family: str, port: int, i: int, rng: random.Random) -> None:
    import redis.asyncio as aioredis

    kind = rng.choices(["subscriber", "publisher", "pooled"], [0.45, 0.15, 0.40])[0]
    health = rng.choice([0, 5, 15, 30, 60])
    mean = rng.choice([2.0, 5.0, 15.0, 30.0, 60.0])
    size = rng.choice([(5, 40), (40, 300), (300, 3000)])
    channel = f"ch{rng.randrange(40)}"
    r = aioredis.Redis(
        host=LOOPBACK,
        port=port,
        health_check_interval=health,
        single_connection_client=kind != "subscriber",
        socket_timeout=None,
    )
    try:
        if kind == "subscriber":
            ps = r.pubsub()
            await ps.subscribe(channel, f"quiet{i}")
            conn = ps.connection
            cport = _redis_port(conn)
            run.record(family, kind, cport, health_check_s=health, channel=channel)
            while run.remaining() > 0:
                await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            await ps.aclose()
        else:
            await r.ping()
            cport = _redis_port(r.connection)
            run.record(family, kind, cport, health_check_s=health, mean_s=mean, size=size)
            key = f"k{i}"
            while not await _until(run, rng.expovariate(1 / mean)):
                if kind == "publisher":
                    await r.publish(channel, _payload(rng, *size))
                else:
                    op = rng.random()
                    if op < 0.4:
                        await r.get(key)
                    elif op < 0.8:
                        await r.set(key, _payload(rng, *size), ex=600)
                    else:
                        await r.ping()
    finally:
        await r.aclose()


def _redis_port(conn: Any) -> int | None:
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return None
    name = writer.get_extra_info("sockname")
    return int(name[1]) if name else None


# --------------------------------------------------------------------------- WebSocket


async def _ws_handler(ws: Any) -> None:
    """Push JSON updates at the rate and size the client asked for in its path."""
    from urllib.parse import parse_qs, urlparse

    q = parse_qs(urlparse(ws.request.path).query)
    push = float(q.get("push", ["20"])[0])
    lo, hi = (int(v) for v in q.get("size", ["20-200"])[0].split("-"))
    rng = random.Random(ws.id.int)
    with contextlib.suppress(Exception):
        while True:
            await asyncio.sleep(rng.expovariate(1 / push))
            await ws.send(json.dumps({"t": time.time(), "d": _payload(rng, lo, hi)}))


async def _ws_client(run: _Run, family: str, port: int, i: int, rng: random.Random) -> None:
    from websockets.asyncio.client import connect

    tls = family == "websocket-tls"
    ping = rng.choice([10.0, 15.0, 20.0, 30.0, 45.0, 60.0])
    push = rng.choice([3.0, 10.0, 30.0, 60.0, 120.0])
    size = rng.choice([(20, 120), (100, 800), (500, 4000)])
    chatty = rng.random() < 0.4
    scheme = "wss" if tls else "ws"
    url = f"{scheme}://{LOOPBACK}:{port}/feed?push={push}&size={size[0]}-{size[1]}"
    async with connect(
        url,
        ping_interval=ping,
        ssl=run.client_ctx() if tls else None,
        open_timeout=60,
        max_size=None,
    ) as ws:
        run.record(
            family, "chatty" if chatty else "listener", ws.local_address[1], ping_s=ping,
            push_s=push, size=size,
        )  # fmt: skip

        async def reader() -> None:
            with contextlib.suppress(Exception):
                async for _ in ws:
                    pass

        task = asyncio.create_task(reader())
        while not await _until(run, rng.uniform(5, 60) if chatty else 3600):
            await ws.send(json.dumps({"op": "ack", "t": time.time()}))
        task.cancel()


# --------------------------------------------------------------------------- HTTP


async def _http_client(run: _Run, family: str, port: int, i: int, rng: random.Random) -> None:
    import httpx

    http2 = family == "http2"
    kind = rng.choices(["long-poll", "periodic"], [0.5, 0.5])[0]
    every = rng.choice([5.0, 10.0, 20.0, 30.0, 60.0])
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=900)
    base = f"https://localhost:{port}" if http2 else f"http://{LOOPBACK}:{port}"
    async with httpx.AsyncClient(
        http2=http2,
        verify=run.client_ctx() if http2 else True,
        timeout=120,
        base_url=base,
        limits=limits,
    ) as c:
        run.record(family, kind, None, every_s=every)
        path = f"/poll/{i}" if kind == "long-poll" else f"/api/status?c={i}"
        gap = rng.uniform(0.1, 1.0) if kind == "long-poll" else every
        while run.remaining() > 0:
            await c.get(path)
            if await _until(run, gap):
                break


async def _serve_http(run: _Run, tls_port: int, plain_port: int, stop: threading.Event) -> Any:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    hold = run.rng.choice([20.0, 30.0, 55.0])
    cfg = Config()
    cfg.bind = [f"{LOOPBACK}:{tls_port}"]
    cfg.insecure_bind = [f"{LOOPBACK}:{plain_port}"]
    cfg.certfile, cfg.keyfile = str(run.tls.cert), str(run.tls.key)
    cfg.keep_alive_timeout = 900
    cfg.backlog = 4096
    cfg.accesslog = None
    cfg.errorlog = None
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(_asgi_app(stop, hold), cfg, shutdown_trigger=shutdown.wait))
    return task, shutdown, hold


# --------------------------------------------------------------------------- Electrum


class _ElectrumServer:
    """Newline JSON-RPC in the Electrum protocol's shape; header notifications to all."""

    def __init__(self, rng: random.Random, block_mean: float) -> None:
        self.rng = rng
        self.block_mean = block_mean
        self.height = 870_000
        self.subscribers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while line := await reader.readline():
                method = await electrum_reply(writer, json.loads(line), self.height, self.rng)
                if method == "blockchain.headers.subscribe":
                    self.subscribers.add(writer)
        self.subscribers.discard(writer)
        writer.close()

    async def blocks(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(1 / self.block_mean))
            self.height += 1
            msg = {
                "jsonrpc": "2.0",
                "method": "blockchain.headers.subscribe",
                "params": [{"height": self.height, "hex": os.urandom(80).hex()}],
            }
            data = (json.dumps(msg) + "\n").encode()
            for w in list(self.subscribers):
                with contextlib.suppress(Exception):
                    w.write(data)


async def _electrum_client(run: _Run, family: str, port: int, i: int, rng: random.Random) -> None:
    tls = family == "electrum-tls"
    ping = rng.choice([20.0, 30.0, 45.0, 60.0, 90.0])
    query = rng.random() < 0.5
    reader, writer = await asyncio.open_connection(
        LOOPBACK,
        port,
        ssl=run.client_ctx() if tls else None,
        server_hostname="localhost" if tls else None,
    )
    run.record(family, "wallet", writer.get_extra_info("sockname")[1], ping_s=ping, query=query)
    call = ElectrumCaller(writer)
    task = asyncio.create_task(drain_lines(reader))
    try:
        await call("server.version", ["Electrum 4.5.5", "1.4"])
        await call("blockchain.headers.subscribe", [])
        for _ in range(rng.randint(2, 20)):
            await call("blockchain.scripthash.get_balance", [os.urandom(32).hex()])
        while not await _until(run, ping):
            await call("server.ping", [])
            if query and rng.random() < 0.3:
                await call("blockchain.scripthash.get_history", [os.urandom(32).hex()])
            if rng.random() < 0.1:
                await call("blockchain.estimatefee", [rng.choice([2, 6, 25])])
    finally:
        task.cancel()
        writer.close()


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres_instance(work: Path, port: int, max_connections: int) -> Iterator[None]:
    """A throwaway PostgreSQL cluster on ``port`` (trust auth on 127.0.0.1), removed after."""
    bindir = _pg_bindir()
    data = Path(f"/tmp/mw-fleet-pg-{port}")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    shutil.chown(data, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    opts = (
        f"-p {port} -k /tmp -c listen_addresses={LOOPBACK} -c max_connections={max_connections}"
        " -c shared_buffers=16MB -c fsync=off"
    )
    log = work / "postgres.log"
    log.touch()
    shutil.chown(log, "postgres", "postgres")
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(log),
            "-w",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(data, ignore_errors=True)


def _pg_bindir() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/initdb")), key=lambda p: p.parts[-3])
    if not versions:
        raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return versions[-1].parent


async def _postgres_pool(run: _Run, port: int, size: int, rng: random.Random) -> None:
    from psycopg_pool import AsyncConnectionPool

    mean = rng.choice([1.0, 3.0, 10.0, 30.0])
    dsn = f"host={LOOPBACK} port={port} user=postgres dbname=postgres connect_timeout=30"
    pool = AsyncConnectionPool(
        dsn,
        min_size=size,
        max_size=size,
        check=AsyncConnectionPool.check_connection,
        max_idle=3600,
        max_lifetime=7200,
        open=False,
    )
    await pool.open(wait=True, timeout=120)
    run.record("postgres", "pool", None, size=size, mean_s=mean)
    queries = [
        "select now()",
        "select count(*) from pg_stat_activity",
        "select relname, n_live_tup from pg_stat_user_tables limit 20",
        "select 1",
        "select oid, typname from pg_type limit 50",
    ]
    try:
        while not await _until(run, rng.expovariate(1 / mean)):
            async with pool.connection() as conn:
                await (await conn.execute(rng.choice(queries))).fetchall()
    finally:
        await pool.close()


# --------------------------------------------------------------------------- SSH


def _ssh_sessions(peers: Peers, work: Path, port: int, n: int, rng: random.Random) -> None:
    """``n`` more sessions with the user key :func:`behavior_data.sshd` made in ``work``."""
    busy = [*SSH_BUSY, "while true; do uptime; sleep 10; done"]
    for _ in range(n):
        alive = rng.choice([10, 15, 30, 60])
        cmd = rng.choice(["sleep 100000", "sleep 100000", *busy])
        peers.spawn([*ssh_command(work, port, alive), cmd])


# --------------------------------------------------------------------------- the run


_CLIENTS: dict[str, Callable[[_Run, str, int, int, random.Random], Awaitable[None]]] = {
    "mqtt": _mqtt_client,
    "mqtt-tls": _mqtt_client,
    "redis": _redis_client,
    "websocket": _ws_client,
    "websocket-tls": _ws_client,
    "http2": _http_client,
    "http1": _http_client,
    "electrum": _electrum_client,
    "electrum-tls": _electrum_client,
}


def family_ports(base: int = BENIGN_PORT_BASE) -> dict[str, int]:
    """One server port per family (each captured on its own)."""
    return {f: base + k for k, f in enumerate(BENIGN_FAMILIES)}


def run_benign_fleet(
    out_dir: Path, plan: BenignPlan, port_base: int = BENIGN_PORT_BASE
) -> list[dict[str, Any]]:
    """Run one benign fleet and capture it; returns (and writes) the manifest entries."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = plan.counts()
    ports = family_ports(port_base)
    raise_fd_limit(3 * sum(counts.values()) + 2000)
    tls = make_self_signed_cert(out_dir / "tls", "localhost")
    rng = random.Random(plan.seed)
    peers = Peers()
    captures: dict[str, Capture] = {}
    started = time.time()
    try:
        with contextlib.ExitStack() as stack:
            for fam in counts:
                cap = Capture(out_dir / f"{fam}.pcap", port=ports[fam])
                stack.enter_context(cap)
                captures[fam] = cap
            if "postgres" in counts:
                stack.enter_context(
                    postgres_instance(out_dir, ports["postgres"], counts["postgres"] + 30)
                )
            if "mqtt" in counts or "mqtt-tls" in counts:
                _start_mosquitto(peers, out_dir, ports["mqtt"], ports["mqtt-tls"], tls)
            if "redis" in counts:
                peers.spawn(
                    [
                        "redis-server",
                        "--port",
                        str(ports["redis"]),
                        "--bind",
                        LOOPBACK,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--maxclients",
                        str(counts["redis"] + 100),
                        "--dir",
                        str(out_dir),
                    ]
                )
                wait_port(ports["redis"])
            if "ssh" in counts:
                ssh_work = out_dir / "ssh"
                ssh_work.mkdir(exist_ok=True)
                sshd(peers, ssh_work, ports["ssh"], rng)  # the server and two sessions
                _ssh_sessions(peers, ssh_work, ports["ssh"], max(0, counts["ssh"] - 2), rng)
            run = _Run(out_dir, math.inf, rng, tls)
            asyncio.run(_fleet_main(run, counts, ports, plan))
            peers.stop()
            time.sleep(1.0)
    finally:
        peers.stop()
    entries = []
    for fam, cap in captures.items():
        res = cap.result
        entries.append(
            {
                "pcap": str(cap.path),
                "label": 0,
                "family": fam,
                "server_port": ports[fam],
                "planned_connections": counts[fam],
                "duration_s": plan.duration_s,
                "ramp_s": plan.ramp_s,
                "seed": plan.seed,
                "started": started,
                "packets_captured": res.packets_captured if res else None,
                "packets_dropped": res.packets_dropped if res else None,
            }
        )
    with (out_dir / "connections.jsonl").open("w") as fh:
        for row in run.log:
            fh.write(json.dumps(row) + "\n")
    (out_dir / "errors.json").write_text(json.dumps(run.errors, indent=1))
    (out_dir / "manifest.json").write_text(json.dumps(entries, indent=1))
    return entries


async def _fleet_main(
    run: _Run, counts: dict[str, int], ports: dict[str, int], plan: BenignPlan
) -> None:
    stop = threading.Event()
    servers: list[Any] = []
    http = None
    from websockets.asyncio.server import serve as ws_serve

    if "websocket" in counts:
        servers.append(
            await ws_serve(_ws_handler, LOOPBACK, ports["websocket"], ping_interval=None)
        )
    if "websocket-tls" in counts:
        servers.append(
            await ws_serve(
                _ws_handler,
                LOOPBACK,
                ports["websocket-tls"],
                ping_interval=None,
                ssl=run.server_ctx(),
            )
        )
    electrum = _ElectrumServer(random.Random(plan.seed + 1), run.rng.choice([60.0, 150.0, 300.0]))
    blocks = asyncio.create_task(electrum.blocks())
    for fam in ("electrum", "electrum-tls"):
        if fam in counts:
            ctx = run.server_ctx() if fam == "electrum-tls" else None
            servers.append(
                await asyncio.start_server(
                    electrum.handle, LOOPBACK, ports[fam], ssl=ctx, backlog=4096
                )
            )
    if "http2" in counts or "http1" in counts:
        http = await _serve_http(run, ports["http2"], ports["http1"], stop)
        await asyncio.sleep(1.0)

    # One task per connection, started in random order spread over the ramp.
    jobs: list[tuple[str, int]] = [
        (fam, i) for fam, n in counts.items() if fam in _CLIENTS for i in range(n)
    ]
    run.rng.shuffle(jobs)
    tasks: list[asyncio.Task[None]] = []
    gap = plan.ramp_s / max(1, len(jobs))

    async def guarded(fam: str, i: int) -> None:
        try:
            await _CLIENTS[fam](run, fam, ports[fam], i, random.Random(f"{plan.seed}-{fam}-{i}"))
        except Exception as exc:  # a failed client is counted, the fleet goes on
            run.failed(fam, exc)

    async def pg_pools() -> None:
        left = counts.get("postgres", 0)
        pools = []
        k = 0
        while left > 0:
            size = min(left, run.rng.choice([2, 4, 5, 8, 10]))
            pools.append(_postgres_pool(run, ports["postgres"], size, random.Random(k)))
            left -= size
            k += 1
        results = await asyncio.gather(*pools, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                run.failed("postgres", r)

    # The run's clock starts with the clients, not before the servers: starting hypercorn
    # and the TLS servers takes seconds on a loaded machine, and would shorten the run.
    run.deadline = time.monotonic() + plan.duration_s
    pg = asyncio.create_task(pg_pools())
    for fam, i in jobs:
        tasks.append(asyncio.create_task(guarded(fam, i)))
        await asyncio.sleep(gap)
    await asyncio.gather(*tasks, pg)
    blocks.cancel()
    for s in servers:
        s.close()
    if http is not None:
        task, shutdown, _ = http
        stop.set()
        shutdown.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


# =========================================================================== miner fleet


@dataclass(frozen=True)
class MinerSpec(MinerVariant):
    """One XMRig run of the fleet: a :class:`MinerVariant` (on a port of
    :data:`MINER_PORTS`) with the algorithm it mines, its pool's job timing
    (``"timer"`` or ``"blocks"``, see :func:`minewatch.lab.pool.job_gaps`) and, when set, the
    share interval its pool's variable difficulty aims at (``difficulty`` is then the start;
    see :class:`minewatch.lab.pool.VarDiff`)."""

    algo: str
    job_schedule: JobSchedule = "timer"
    share_target_s: float | None = None


#: Algorithms XMRig mines that need little memory (RandomX needs ~260 MB per process).
LIGHT_ALGOS: tuple[str, ...] = ("cn-pico", "cn/half", "argon2/chukwa", "cn-lite/1")
#: Difficulty choices per algorithm family: the fleet runs on idle CPU only, so hash rates
#: are far below a dedicated core's; these give shares every few seconds to minutes.
DIFFICULTIES: dict[str, tuple[int, ...]] = {
    "rx/0": (1, 2, 3, 5, 12),
    "cn-pico": (25, 60, 150, 400),
    "cn/half": (5, 12, 30, 80),
    "argon2/chukwa": (10, 25, 60, 150),
    "cn-lite/1": (5, 12, 30, 80),
}
#: Job intervals not used by behavior_data.MINER_VARIANTS (10-120 s there).
JOB_INTERVALS: tuple[float, ...] = (7.0, 25.0, 40.0, 75.0, 100.0, 150.0, 240.0)
#: Hash rate of one fleet miner per algorithm (H/s), as XMRig reported it in a first round
#: of 40 niced miners on this 2-core machine at load ~80 (a dedicated core: ~5 H/s rx/0).
EXPECTED_HS: dict[str, float] = {
    "rx/0": 0.04,
    "cn-pico": 1.8,
    "cn/half": 0.14,
    "argon2/chukwa": 9.0,
    "cn-lite/1": 0.17,
}
#: Share intervals a pool's variable difficulty aims at (``paced`` plans).
SHARE_INTERVALS: tuple[float, ...] = (10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)


def schedule_suffix(job_schedule: JobSchedule, vardiff: bool = False) -> str:
    """What names of runs, batches and folders carry for pool jobs not on the timer, and
    for pools with variable difficulty."""
    return ("" if job_schedule == "timer" else f"-{job_schedule}") + ("-vd" if vardiff else "")


def plan_miners(
    n_randomx: int,
    n_light: int,
    round_no: int,
    seed: int = 0,
    tls_share: float = 0.8,
    paced: bool = False,
    job_schedule: JobSchedule = "timer",
    vardiff: bool = False,
    job_intervals: Sequence[float] | None = None,
    share_intervals: Sequence[float] | None = None,
) -> list[MinerSpec]:
    """A round of miners with seeded settings, on ports of :data:`MINER_PORTS`.

    Difficulties come from :data:`DIFFICULTIES`, or with ``paced`` from the expected hash
    rate and a target share interval (fixed for the run). With ``vardiff`` (which implies
    ``paced``) that interval is also the share target of the pool's variable difficulty, so
    the share rate holds whatever CPU the miner gets. ``job_schedule`` and ``vardiff`` do not
    change the draws, so a round planned with them has the same miners as without (on other
    ports with ``"blocks"``). ``job_intervals`` and ``share_intervals`` replace
    :data:`JOB_INTERVALS` and :data:`SHARE_INTERVALS` as the choices drawn from (rounds aimed at
    settings a model missed, e.g. long job intervals with shares every few seconds).
    """
    jobs = tuple(job_intervals or JOB_INTERVALS)
    shares = tuple(share_intervals or SHARE_INTERVALS)
    if min(jobs) <= 0 or min(shares) <= 0:
        raise ValueError("job and share intervals must be positive seconds")
    paced = paced or vardiff
    rng = random.Random(f"miners-{seed}-{round_no}")
    specs = []
    # Rounds with pool jobs at block times take the other half of the port range, so that a
    # timer round and the same round at block times can run side by side.
    half = len(MINER_PORTS) // 2
    offset = (round_no * 64) % (half - 64) + (half if job_schedule == "blocks" else 0)
    for k in range(n_randomx + n_light):
        algo = "rx/0" if k < n_randomx else rng.choice(LIGHT_ALGOS)
        tls = rng.random() < tls_share
        nicehash = rng.random() < 0.4
        keepalive = rng.random() < 0.5
        diff = rng.choice(DIFFICULTIES[algo])
        job = rng.choice(jobs)
        target: float | None = None
        if paced:
            interval = rng.choice(shares)
            diff = max(1, round(EXPECTED_HS[algo] * interval))
            target = interval if vardiff else None
        port = MINER_PORTS[offset + k]
        tag = algo.replace("/", "").replace("-", "")
        name = (
            f"r{round_no}-{'tls' if tls else 'plain'}{port}-{tag}"
            f"{'-nh' if nicehash else ''}{'-k' if keepalive else ''}-d{diff}-j{job:g}"
            f"{schedule_suffix(job_schedule, vardiff)}"
        )
        specs.append(
            MinerSpec(name, port, tls, nicehash, keepalive, diff, job, algo, job_schedule, target)
        )
    return specs


def idle_wrapper(directory: Path, xmrig: Path) -> Path:
    """A launcher that runs XMRig at nice 19 in a session autogroup of nice 19."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "xmrig-idle.sh"
    path.write_text(
        "#!/bin/sh\n"
        "# Autogroup scheduling puts each session in its own group; lower the group too.\n"
        "echo 19 > /proc/self/autogroup 2>/dev/null\n"
        f'exec nice -n 19 "{xmrig}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def run_one_miner(
    out_dir: Path, spec: MinerSpec, duration: float, launcher: Path
) -> dict[str, Any]:
    """One bounded XMRig run against its own lab pool, captured on its port
    (:func:`minewatch.lab.xmrig.capture_xmrig_session` with the spec's settings)."""
    from minewatch.lab.xmrig import capture_xmrig_session, fake_monero_address

    if spec.port not in MINER_PORTS:
        raise ValueError(f"the miner fleet uses ports {MINER_PORTS.start}-{MINER_PORTS.stop - 1}")
    session = capture_xmrig_session(
        out_dir,
        wallet=fake_monero_address(spec.name),
        duration=duration,
        difficulty=spec.difficulty,
        job_interval=spec.job_interval,
        job_schedule=spec.job_schedule,
        pool_seed=zlib.crc32(spec.name.encode()),
        share_target_s=spec.share_target_s,
        port=spec.port,
        host=LOOPBACK,
        rig_id=spec.name[:16],
        tls=spec.tls,
        nicehash=spec.nicehash,
        keepalive=spec.keepalive,
        algo=spec.algo,
        binary=launcher,
    )
    return {
        "pcap": str(session.pcap),
        "label": 1,
        "family": f"xmrig-{'tls' if spec.tls else 'plain'}-{'rx' if spec.algo == 'rx/0' else 'cn'}",
        "variant": spec.name,
        "server_port": spec.port,
        "settings": asdict(spec),
        "duration_s": duration,
        "pool_connections": len(session.record.connections),
        "accepted_shares": len(session.accepted),
        "submits": len(session.submits),
        "hashrate_hs": session.xmrig.hashrate_60s,
        "packets_captured": session.capture.packets_captured,
    }


def run_miner_fleet(
    out_dir: Path,
    *,
    rounds: int,
    n_randomx: int,
    n_light: int,
    duration: float,
    seed: int = 0,
    first_round: int = 0,
    stagger_s: float = 2.0,
    xmrig: Path | None = None,
    paced: bool = False,
    job_schedule: JobSchedule = "timer",
    vardiff: bool = False,
    job_intervals: Sequence[float] | None = None,
    share_intervals: Sequence[float] | None = None,
    on_round: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """``rounds`` rounds of ``n_randomx + n_light`` concurrent XMRig runs; the manifest."""
    from minewatch.lab.xmrig import MAX_RUN_SECONDS, find_xmrig

    if not 0 < duration <= min(MAX_RUN_SECONDS, 15 * 60):
        raise ValueError("each fleet miner run is bounded to 15 minutes")
    out_dir = out_dir.resolve()
    launcher = idle_wrapper(out_dir, xmrig or find_xmrig())
    entries: list[dict[str, Any]] = []
    for r in range(first_round, first_round + rounds):
        specs = plan_miners(
            n_randomx,
            n_light,
            r,
            seed,
            paced=paced,
            job_schedule=job_schedule,
            vardiff=vardiff,
            job_intervals=job_intervals,
            share_intervals=share_intervals,
        )
        round_entries: list[dict[str, Any]] = []

        def one(k: int, spec: MinerSpec) -> dict[str, Any]:
            time.sleep(k * stagger_s)
            return run_one_miner(out_dir / spec.name, spec, duration, launcher)

        with ThreadPoolExecutor(max_workers=len(specs)) as ex:
            futures = [(s, ex.submit(one, k, s)) for k, s in enumerate(specs)]
            for s, f in futures:
                try:
                    round_entries.append(f.result())
                except Exception as exc:  # one failed run must not lose the round
                    round_entries.append(
                        {"variant": s.name, "error": f"{type(exc).__name__}: {exc}"}
                    )
        for e in round_entries:
            e["batch"] = f"miners-r{r}{schedule_suffix(job_schedule, vardiff)}"
            e["paced"] = paced or vardiff
            e["job_schedule"] = job_schedule
            e["vardiff"] = vardiff
        entries.extend(round_entries)
        manifest = out_dir / "manifest.json"
        old = json.loads(manifest.read_text()) if manifest.exists() else []
        manifest.write_text(json.dumps(old + round_entries, indent=1))
        if on_round is not None:
            on_round(r, round_entries)
    return entries

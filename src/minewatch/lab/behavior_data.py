"""Real training data for the behaviour model: miners and benign long-lived peers on loopback.

Two kinds of run, both captured with ``tcpdump`` on ``lo`` (one capture per scenario, filtered
on the scenario's server port, so every connection in a capture has one known label):

- **mining**: the real XMRig 6.16 against the lab pool (:mod:`minewatch.lab.pool`) through
  :func:`minewatch.lab.xmrig.capture_xmrig_session`, with and without ``--tls``, on several
  ports including 443, with ``--nicehash`` and ``-k``, at several difficulties and job
  intervals (:data:`MINER_VARIANTS`). Every run is bounded and points at 127.0.0.1.
- **benign**: real software holding long-lived connections (:data:`BENIGN_SCENARIOS`):
  mosquitto with ``mosquitto_sub``/``mosquitto_pub -l`` keepalives (plain and TLS, the
  shape of push-notification channels), ``redis-server`` pub/sub with ``redis-cli``, an
  OpenSSH server on a loopback port with a throwaway host key and an idle and a busy
  session, a psycopg connection pool against the local PostgreSQL, ``websockets`` heartbeats,
  HTTP/2 (``hypercorn`` server, ``httpx`` client) polling and HTTP/1.1 long polling, and an
  Electrum-style newline JSON-RPC wallet/server pair (plain and TLS). The Electrum pair is
  the one peer written here (no Electrum server is installable on this machine); its
  messages follow the Electrum protocol (``server.version``,
  ``blockchain.headers.subscribe``, ``server.ping``).

:func:`generate` runs a wave of miners and benign scenarios in parallel, all for the same
duration, and writes ``manifest.json`` with one entry per capture (label, family, variant,
server port). :func:`flows_from_capture` turns a capture into FLOWS in two ways that training
and the parity test both use: the packet path (:mod:`minewatch.net.flowagg`) and the
exporter path (``softflowd -r`` → NetFlow v9 datagrams → :func:`read_netflow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from minewatch.lab.capture import Capture
from minewatch.lab.pool import JobSchedule, make_self_signed_cert, require_loopback

LOOPBACK = "127.0.0.1"
#: Seconds without a datagram after which a softflowd replaying a file is done.
SOFTFLOWD_QUIET_S = 1.5
SOFTFLOWD_START_S = 30.0  # at most this long for the first datagram of a replay


# --------------------------------------------------------------------------- miners


@dataclass(frozen=True)
class MinerVariant:
    """One XMRig configuration. ``port`` 0 picks a free port."""

    name: str
    port: int
    tls: bool
    nicehash: bool
    keepalive: bool
    difficulty: int
    job_interval: float


#: Three waves: within a wave the ports differ, so the runs can share the machine.
MINER_VARIANTS: tuple[tuple[MinerVariant, ...], ...] = (
    (
        MinerVariant("tls443-d50-j30", 443, True, False, False, 50, 30.0),
        MinerVariant("tls14433-nh-k-d8-j20", 14433, True, True, True, 8, 20.0),
        MinerVariant("plain3333-d150-j60", 3333, False, False, False, 150, 60.0),
        MinerVariant("plain80-k-d30-j45", 80, False, False, True, 30, 45.0),
        MinerVariant("tls5555-k-d300-j90", 5555, True, False, True, 300, 90.0),
        MinerVariant("tls8443-nh-d20-j15", 8443, True, True, False, 20, 15.0),
    ),
    (
        MinerVariant("tls443-nh-k-d150-j60", 443, True, True, True, 150, 60.0),
        MinerVariant("plain4444-nh-d8-j20", 4444, False, True, False, 8, 20.0),
        MinerVariant("tls3333-d80-j120", 3333, True, False, False, 80, 120.0),
        MinerVariant("plain14444-k-d500-j30", 14444, False, False, True, 500, 30.0),
        MinerVariant("tls9999-k-d30-j10", 9999, True, False, True, 30, 10.0),
        MinerVariant("plain8080-d60-j90", 8080, False, False, False, 60, 90.0),
    ),
    (
        MinerVariant("tls443-nh-d8-j30", 443, True, True, False, 8, 30.0),
        MinerVariant("plain5555-k-d100-j20", 5555, False, False, True, 100, 20.0),
        MinerVariant("tls7777-k-d200-j45", 7777, True, False, True, 200, 45.0),
        MinerVariant("plain3334-nh-d40-j60", 3334, False, True, False, 40, 60.0),
        MinerVariant("tls14444-d15-j30", 14444, True, False, False, 15, 30.0),
        MinerVariant("plain9000-k-d1000-j120", 9000, False, False, True, 1000, 120.0),
    ),
)


def run_miner(
    out_dir: Path,
    variant: MinerVariant,
    duration: float,
    job_schedule: JobSchedule = "timer",
    pool_seed: int | None = None,
) -> dict[str, Any]:
    """One bounded XMRig run against its own lab pool, captured; returns a manifest entry.

    ``job_schedule`` and ``pool_seed`` set the pool's job timing
    (:class:`~minewatch.lab.pool.PoolConfig`): ``"blocks"`` pushes jobs at exponential gaps
    of mean ``variant.job_interval``, as a real pool does when blocks are found."""
    from minewatch.lab.xmrig import capture_xmrig_session, fake_monero_address

    session = capture_xmrig_session(
        out_dir,
        wallet=fake_monero_address(variant.name),
        duration=duration,
        difficulty=variant.difficulty,
        job_interval=variant.job_interval,
        job_schedule=job_schedule,
        pool_seed=pool_seed,
        port=variant.port,
        tls=variant.tls,
        nicehash=variant.nicehash,
        keepalive=variant.keepalive,
    )
    return {
        "pcap": str(session.pcap),
        "label": 1,
        "family": "xmrig-tls" if variant.tls else "xmrig",
        "variant": variant.name,
        "server_port": session.pool_port,
        "accepted_shares": len(session.accepted),
        "hashrate_hs": session.reported_hashrate_hs,
        "settings": {**asdict(variant), "job_schedule": job_schedule, "pool_seed": pool_seed},
    }


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def service_port() -> int:
    """A free port below Linux's ephemeral range (32768–60999), where pools and other
    services listen (3333, 443, 14433, ...). One-way flow records (softflowd, routers) are
    oriented by port (see docs/behavior-model.md), so a lab pool on an ephemeral port, above
    its client's, would be seen the wrong way round by that path half the time."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 20000-31999 on {LOOPBACK}")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s")


class Peers:
    """Processes and threads of one scenario, stopped together."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.cleanups: list[Callable[[], None]] = []

    def spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def thread(self, fn: Callable[[threading.Event], None]) -> None:
        t = threading.Thread(target=fn, args=(self.stop_event,), daemon=True)
        t.start()
        self.threads.append(t)

    def loop(self, coro_fn: Callable[[threading.Event], Any]) -> None:
        """Run an asyncio coroutine function in its own thread until the stop event."""

        def body(stop: threading.Event) -> None:
            with contextlib.suppress(Exception):
                asyncio.run(coro_fn(stop))

        self.thread(body)

    def stop(self) -> None:
        self.stop_event.set()
        for p in reversed(self.procs):  # clients were started after their servers
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        for t in self.threads:
            t.join(10)
        for c in self.cleanups:
            with contextlib.suppress(Exception):
                c()


async def _sleep_until(stop: threading.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless stopped first; True when it is time to stop."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if stop.is_set():
            return True
        await asyncio.sleep(min(0.25, end - time.monotonic()))
    return stop.is_set()


# --------------------------------------------------------------------------- benign peers


def mosquitto(peers: Peers, work: Path, port: int, rng: random.Random, tls: bool) -> None:
    """mosquitto broker; one idle subscriber and one subscriber fed by a long-lived publisher."""
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} {LOOPBACK}", "allow_anonymous true", "persistence false"]
    client_tls: list[str] = []
    if tls:
        files = make_self_signed_cert(work / "tls", "localhost")
        files.key.chmod(0o644)  # a throwaway key; mosquitto drops root before reading it
        lines += [f"certfile {files.cert}", f"keyfile {files.key}"]
        client_tls = ["--cafile", str(files.cert), "--insecure"]
    conf.write_text("\n".join(lines) + "\n")
    peers.spawn(["mosquitto", "-c", str(conf)])
    wait_port(port)
    keep = rng.choice([15, 30, 45, 60])
    base = ["-h", LOOPBACK, "-p", str(port), *client_tls]
    peers.spawn(["mosquitto_sub", *base, "-k", str(keep), "-t", "idle/#"])
    peers.spawn(["mosquitto_sub", *base, "-k", str(rng.choice([30, 60])), "-t", "push/#"])
    pub = peers.spawn(
        ["mosquitto_pub", *base, "-k", str(rng.choice([30, 60])), "-t", "push/a", "-l"],
        stdin=subprocess.PIPE,
    )
    mean = rng.choice([5.0, 15.0, 40.0])

    def feed(stop: threading.Event) -> None:
        n = 0
        while not stop.wait(rng.expovariate(1 / mean)):
            n += 1
            body = json.dumps({"n": n, "t": time.time(), "v": rng.random()}) + "\n"
            try:
                assert pub.stdin is not None
                pub.stdin.write(body.encode())
                pub.stdin.flush()
            except (OSError, ValueError):
                return

    peers.thread(feed)


def redis_pubsub(peers: Peers, work: Path, port: int, rng: random.Random) -> None:
    """redis-server; ``redis-cli subscribe`` and a repeating ``redis-cli publish`` connection."""
    peers.spawn(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ]
    )
    wait_port(port)
    cli = ["redis-cli", "-h", LOOPBACK, "-p", str(port)]
    peers.spawn([*cli, "subscribe", "news", "alerts"])
    peers.spawn([*cli, "subscribe", "quiet"])
    every = rng.choice([1, 3, 10, 30])
    peers.spawn([*cli, "-r", "-1", "-i", str(every), "publish", "news", "x" * rng.randint(10, 300)])
    peers.spawn([*cli, "-r", "-1", "-i", str(rng.choice([5, 20])), "ping"])


def sshd(peers: Peers, work: Path, port: int, rng: random.Random) -> None:
    """OpenSSH on a loopback port with a throwaway host key; an idle and a busy session."""
    exe = shutil.which("sshd") or "/usr/sbin/sshd"
    Path("/run/sshd").mkdir(exist_ok=True)
    host_key = work / "host_ed25519"
    user_key = work / "user_ed25519"
    for k in (host_key, user_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    auth = work / "authorized_keys"
    auth.write_text(Path(f"{user_key}.pub").read_text())
    auth.chmod(0o600)
    os.chmod(work, 0o700)
    peers.spawn(
        [
            exe,
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-h",
            str(host_key),
            "-p",
            str(port),
            "-o",
            f"ListenAddress={LOOPBACK}",
            "-o",
            f"AuthorizedKeysFile={auth}",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "StrictModes=no",
            "-o",
            f"PidFile={work / 'sshd.pid'}",
            "-o",
            f"ClientAliveInterval={rng.choice([0, 30, 60])}",
        ]
    )
    wait_port(port)
    ssh = ssh_command(work, port, rng.choice([15, 30, 60]))
    peers.spawn([*ssh, "sleep 100000"])  # idle session
    peers.spawn([*ssh, rng.choice(SSH_BUSY)])


#: Remote commands of a busy SSH session.
SSH_BUSY: tuple[str, ...] = (
    "while true; do date; sleep 1; done",
    "top -b -d 3",
    "vmstat 2",
    "while true; do ls -la /usr/bin | head -20; sleep 5; done",
)


def ssh_command(work: Path, port: int, alive: int) -> list[str]:
    """``ssh`` to the :func:`sshd` that made its keys in ``work`` (the remote command to add)."""
    return [
        "ssh",
        "-i",
        str(work / "user_ed25519"),
        "-p",
        str(port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={work / 'known_hosts'}",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ServerAliveInterval={alive}",
        f"root@{LOOPBACK}",
    ]


def postgres_pool(peers: Peers, rng: random.Random, port: int = 5432) -> None:
    """A psycopg connection pool against the local PostgreSQL, used like an app server."""

    def body(stop: threading.Event) -> None:
        from psycopg_pool import ConnectionPool

        dsn = f"host={LOOPBACK} port={port} user=postgres dbname=postgres connect_timeout=5"
        pool = ConnectionPool(
            dsn, min_size=3, max_size=3, check=ConnectionPool.check_connection, open=True
        )
        mean = rng.choice([2.0, 10.0, 30.0])
        try:
            while not stop.wait(rng.expovariate(1 / mean)):
                with contextlib.suppress(Exception), pool.connection() as conn:
                    q = rng.choice(
                        [
                            "select now()",
                            "select count(*) from pg_stat_activity",
                            "select relname, n_live_tup from pg_stat_user_tables limit 20",
                            "select 1",
                        ]
                    )
                    conn.execute(q).fetchall()
        finally:
            pool.close()

    peers.thread(body)


def websocket(peers: Peers, port: int, rng: random.Random) -> None:
    """``websockets`` server pushing updates, clients with ping/pong heartbeats."""
    ping = rng.choice([10.0, 20.0, 30.0])
    push = rng.choice([5.0, 20.0, 60.0])

    async def main(stop: threading.Event) -> None:
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import serve

        async def handler(ws: Any) -> None:
            with contextlib.suppress(Exception):
                while not await _sleep_until(stop, rng.expovariate(1 / push)):
                    await ws.send(json.dumps({"price": rng.random(), "t": time.time()}))

        async def client(chatty: bool) -> None:
            with contextlib.suppress(Exception):
                async with connect(f"ws://{LOOPBACK}:{port}/feed", ping_interval=ping) as ws:

                    async def reader() -> None:
                        with contextlib.suppress(Exception):
                            async for _ in ws:
                                pass

                    task = asyncio.create_task(reader())
                    while not await _sleep_until(stop, rng.uniform(5, 40)):
                        if chatty:
                            await ws.send(json.dumps({"op": "ack", "t": time.time()}))
                    task.cancel()

        async with serve(handler, LOOPBACK, port, ping_interval=ping * 1.5):
            await asyncio.gather(client(False), client(True))

    peers.loop(main)


def _asgi_app(stop: threading.Event, hold: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"].startswith("/poll"):
            await _sleep_until(stop, random.uniform(0.3, 1.0) * hold)
        body = json.dumps({"events": [], "t": time.time(), "path": scope["path"]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def http_polling(peers: Peers, work: Path, port: int, rng: random.Random) -> None:
    """hypercorn (HTTP/2 over TLS and HTTP/1.1) with httpx long-polling and polling clients."""
    files = make_self_signed_cert(work / "tls", "localhost")
    hold = rng.choice([15.0, 25.0, 55.0])
    every = rng.choice([5.0, 15.0, 30.0])

    async def main(stop: threading.Event) -> None:
        import httpx
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        cfg = Config()
        cfg.bind = [f"{LOOPBACK}:{port}"]
        cfg.certfile, cfg.keyfile = str(files.cert), str(files.key)
        cfg.keep_alive_timeout = 600
        cfg.accesslog = None
        cfg.errorlog = None
        shutdown = asyncio.Event()
        server = asyncio.create_task(
            serve(_asgi_app(stop, hold), cfg, shutdown_trigger=shutdown.wait)
        )
        await asyncio.sleep(1.0)
        ctx = ssl.create_default_context(cafile=str(files.cert))

        async def poller(http2: bool, path: str, gap: float) -> None:
            async with httpx.AsyncClient(
                http2=http2, verify=ctx, timeout=hold + 30, base_url=f"https://localhost:{port}"
            ) as c:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        await c.get(path)
                    if await _sleep_until(stop, gap):
                        break

        await asyncio.gather(
            poller(True, "/poll/h2", 0.2),  # HTTP/2 long polling
            poller(True, "/api/status", every),  # HTTP/2 periodic polling
            poller(False, "/poll/h1", 0.2),  # HTTP/1.1 long polling (keep-alive)
        )
        shutdown.set()
        await server

    peers.loop(main)


async def electrum_reply(
    writer: asyncio.StreamWriter, req: dict[str, Any], height: int, rng: random.Random
) -> str | None:
    """Answer one Electrum JSON-RPC request (``None`` for a method it does not know); the
    method, so a caller can track subscriptions."""
    method = req.get("method")
    result: Any = None
    if method == "server.version":
        result = ["ElectrumX 1.16.0", "1.4"]
    elif method == "blockchain.headers.subscribe":
        result = {"height": height, "hex": os.urandom(80).hex()}
    elif method == "blockchain.scripthash.get_balance":
        result = {"confirmed": rng.randint(0, 10**8), "unconfirmed": 0}
    elif method == "blockchain.scripthash.get_history":
        result = [
            {"height": height - k, "tx_hash": os.urandom(32).hex()}
            for k in range(rng.randint(0, 6))
        ]
    elif method == "blockchain.estimatefee":
        result = round(rng.uniform(1e-5, 1e-4), 8)
    out = {"jsonrpc": "2.0", "id": req.get("id"), "result": result}
    writer.write((json.dumps(out) + "\n").encode())
    await writer.drain()
    return method


class ElectrumCaller:
    """Send numbered newline JSON-RPC requests (the wallet side); replies are not awaited."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.rid = 0

    async def __call__(self, method: str, params: list[Any]) -> None:
        self.rid += 1
        msg = {"jsonrpc": "2.0", "id": self.rid, "method": method, "params": params}
        self.writer.write((json.dumps(msg) + "\n").encode())
        await self.writer.drain()


async def drain_lines(reader: asyncio.StreamReader) -> None:
    """Read and drop lines until the stream ends or fails."""
    with contextlib.suppress(Exception):
        while await reader.readline():
            pass


def electrum(peers: Peers, work: Path, port: int, rng: random.Random, tls: bool) -> None:
    """An Electrum-style server and wallet: newline JSON-RPC with header notifications."""
    files = make_self_signed_cert(work / "tls", "localhost") if tls else None
    block = rng.choice([30.0, 90.0, 240.0])
    ping = rng.choice([30.0, 60.0])

    async def main(stop: threading.Event) -> None:
        height = 870_000

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal height
            subscribed = asyncio.Event()

            async def notify() -> None:
                nonlocal height
                await subscribed.wait()
                while not await _sleep_until(stop, rng.expovariate(1 / block)):
                    height += 1
                    hdr = os.urandom(80).hex()
                    msg = {
                        "jsonrpc": "2.0",
                        "method": "blockchain.headers.subscribe",
                        "params": [{"height": height, "hex": hdr}],
                    }
                    writer.write((json.dumps(msg) + "\n").encode())
                    await writer.drain()

            task = asyncio.create_task(notify())
            # CancelledError too: at shutdown the loop cancels this handler, and Python 3.11's
            # stream server logs a cancelled handler as an error with a traceback.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                while line := await reader.readline():
                    method = await electrum_reply(writer, json.loads(line), height, rng)
                    if method == "blockchain.headers.subscribe":
                        subscribed.set()
            task.cancel()
            writer.close()

        sctx = None
        if files is not None:
            sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            sctx.load_cert_chain(files.cert, files.key)
        server = await asyncio.start_server(handle, LOOPBACK, port, ssl=sctx)
        cctx = None
        if files is not None:
            cctx = ssl.create_default_context(cafile=str(files.cert))
        reader, writer = await asyncio.open_connection(
            LOOPBACK, port, ssl=cctx, server_hostname="localhost" if cctx else None
        )
        call = ElectrumCaller(writer)
        task = asyncio.create_task(drain_lines(reader))
        await call("server.version", ["Electrum 4.5.5", "1.4"])
        await call("blockchain.headers.subscribe", [])
        for _ in range(rng.randint(3, 12)):
            await call("blockchain.scripthash.get_balance", [os.urandom(32).hex()])
        while not await _sleep_until(stop, ping):
            await call("server.ping", [])
            if rng.random() < 0.3:
                await call("blockchain.estimatefee", [rng.choice([2, 6, 25])])
        task.cancel()
        writer.close()
        server.close()

    peers.loop(main)


#: The benign scenarios :func:`benign_capture` knows; each runs real peers.
BENIGN_SCENARIOS: tuple[str, ...] = (
    "mqtt",
    "mqtt-tls",
    "redis-pubsub",
    "ssh",
    "postgres-pool",
    "websocket",
    "http-polling",
    "electrum",
    "electrum-tls",
)


@contextlib.contextmanager
def benign_capture(name: str, out_dir: Path, seed: int) -> Iterator[dict[str, Any]]:
    """Capture the server port first, then start the scenario; stop both on exit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pcap = out_dir / f"{name}.pcap"
    port = 5432 if name == "postgres-pool" else free_port()
    with Capture(pcap, port=port):
        peers = Peers()
        try:
            if name == "postgres-pool":
                postgres_pool(peers, rng, port)
            else:
                _start_on(name, peers, out_dir, port, rng)
            yield {
                "pcap": str(pcap),
                "label": 0,
                "family": name,
                "variant": f"{name}-seed{seed}",
                "server_port": port,
            }
        finally:
            peers.stop()
            time.sleep(0.5)


def _start_on(name: str, peers: Peers, work: Path, port: int, rng: random.Random) -> None:
    if name in ("mqtt", "mqtt-tls"):
        mosquitto(peers, work, port, rng, tls=name == "mqtt-tls")
    elif name == "redis-pubsub":
        redis_pubsub(peers, work, port, rng)
    elif name == "ssh":
        sshd(peers, work, port, rng)
    elif name == "websocket":
        websocket(peers, port, rng)
    elif name == "http-polling":
        http_polling(peers, work, port, rng)
    elif name in ("electrum", "electrum-tls"):
        electrum(peers, work, port, rng, tls=name == "electrum-tls")
    else:
        raise ValueError(f"unknown benign scenario {name!r}; one of {BENIGN_SCENARIOS}")


def run_benign(name: str, out_dir: Path, seed: int, duration: float) -> dict[str, Any]:
    with benign_capture(name, out_dir, seed) as entry:
        time.sleep(duration)
    return entry


# --------------------------------------------------------------------------- a wave


def generate(
    out_root: Path,
    *,
    wave: int,
    duration: float,
    benign: tuple[str, ...] = BENIGN_SCENARIOS,
    miners: tuple[MinerVariant, ...] | None = None,
    seed: int = 0,
    job_schedule: JobSchedule = "timer",
) -> list[dict[str, Any]]:
    """Run one wave (miners of ``MINER_VARIANTS[wave]`` and every benign scenario) at once.

    ``job_schedule`` is the lab pools' job timing; with ``"blocks"`` each miner's pool is
    seeded from ``seed``, the wave and the miner's place in it, so a wave can be remade."""
    out_root.mkdir(parents=True, exist_ok=True)
    variants = MINER_VARIANTS[wave] if miners is None else miners
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for k, v in enumerate(variants):
        require_loopback(LOOPBACK)
        d = out_root / f"w{wave}-miner-{v.name}"
        pool_seed = seed * 1000 + wave * 100 + 50 + k if job_schedule == "blocks" else None
        run = functools.partial(run_miner, d, v, duration, job_schedule, pool_seed)
        jobs.append((v.name, run))
    for i, name in enumerate(benign):
        d = out_root / f"w{wave}-benign-{i:02d}-{name}"
        s = seed * 1000 + wave * 100 + i
        jobs.append((name, functools.partial(run_benign, name, d, s, duration)))
    entries: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [(n, pool.submit(fn)) for n, fn in jobs]
        for n, f in futures:
            try:
                entries.append(f.result())
            except Exception as exc:  # one failed scenario must not lose the others
                entries.append({"name": n, "error": f"{type(exc).__name__}: {exc}"})
    manifest = out_root / f"manifest-w{wave}.json"
    manifest.write_text(json.dumps(entries, indent=1, default=str))
    return entries


# --------------------------------------------------------------------------- to FLOWS


def flows_from_pcap(pcap: Path, window_s: float = 60.0) -> pa.Table:
    """FLOWS records (per connection per window) from a capture, by the packet path."""
    from minewatch.net.flowagg import aggregate_file

    return aggregate_file(pcap, window_s=window_s).flows


def softflowd_export(
    pcap: Path, out: Path, *, maxlife: int = 60, version: int = 9, split: bool = True
) -> Path:
    """Replay ``pcap`` through ``softflowd -r`` to a local UDP socket; save the datagrams.

    softflowd runs its expiry timers (``-t maxlife=60``) on the wall clock, so reading a file
    in milliseconds it exports each connection once, at the end. A live exporter with a 60 s
    active timeout sends a record per connection every 60 s; to get those records from a
    file, ``split`` cuts the capture into ``maxlife``-second pieces with ``editcap -i`` and
    replays each piece (connections cut at the same instants, as an exporter whose timer
    scans all flows at once). The datagrams are written back to back (the raw format
    ``flows ingest`` reads).
    """
    exe = shutil.which("softflowd") or "/usr/sbin/softflowd"
    pieces = [pcap]
    tmp = out.parent / f"{out.stem}-pieces"
    if split:
        tmp.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["editcap", "-F", "pcap", "-i", str(maxlife), str(pcap), str(tmp / "part.pcap")],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pieces = sorted(tmp.glob("part*.pcap"))
    chunks: list[bytes] = []
    try:
        for piece in pieces:
            chunks.extend(_softflowd_one(exe, piece, out, maxlife, version))
    finally:
        if split:
            shutil.rmtree(tmp, ignore_errors=True)
    out.write_bytes(b"".join(chunks))
    return out


def _softflowd_one(exe: str, pcap: Path, out: Path, maxlife: int, version: int) -> list[bytes]:
    return softflowd_datagrams(pcap, "-a", "-v", str(version), "-t", f"maxlife={maxlife}")


def softflowd_datagrams(pcap: Path, *options: str) -> list[bytes]:
    """Run ``softflowd -r pcap`` (plus ``options``) against a UDP socket on loopback and
    return the export datagrams it sent. Shared by the tests and benchmarks that need a real
    exporter's output."""
    exe = shutil.which("softflowd") or "/usr/sbin/softflowd"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    sock.settimeout(0.3)
    chunks: list[bytes] = []
    # A control socket of its own per run (named by our UDP port, unique while we hold it).
    # softflowd 1.1.0 blocks in accept() at exit when the socket's path is longer than 12
    # characters (measured here), hence the short names in /tmp.
    ctl = Path(f"/tmp/{port}.c")
    pid = Path(f"/tmp/{port}.p")
    ctl.unlink(missing_ok=True)
    cmd = [exe, "-d", "-r", str(pcap), "-n", f"{LOOPBACK}:{port}", "-p", str(pid), "-c", str(ctl)]
    proc = subprocess.Popen([*cmd, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # softflowd usually exits at the end of the file, but sometimes stays blocked on its
    # control socket after exporting everything: stop waiting after a quiet spell. The spell
    # counts from the first datagram: before it, softflowd may still be reading the file (a
    # loaded machine, a large capture), so wait for it up to SOFTFLOWD_START_S.
    started = time.monotonic()
    quiet_since: float | None = None
    try:
        while True:
            try:
                data, _ = sock.recvfrom(65535)
                chunks.append(data)
                quiet_since = time.monotonic()
            except TimeoutError:
                now = time.monotonic()
                if (
                    proc.poll() is not None
                    or now - started > SOFTFLOWD_START_S
                    or (quiet_since is not None and now - quiet_since > SOFTFLOWD_QUIET_S)
                ):
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sock.close()
        ctl.unlink(missing_ok=True)
        pid.unlink(missing_ok=True)
    return chunks


def flows_from_softflowd(pcap: Path, work: Path, maxlife: int = 60) -> pa.Table:
    """FLOWS records for a capture, by the exporter path (softflowd → NetFlow v9 → decoder)."""
    from minewatch.sources.netflow import read_netflow

    raw = softflowd_export(pcap, work / f"{pcap.stem}.nf9", maxlife=maxlife)
    return read_netflow(raw, exporter="softflowd").flows

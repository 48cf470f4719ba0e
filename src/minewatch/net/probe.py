"""Active confirmation of a suspected pool: does the server answer a mining login?

Flow records show sizes, counts and timing, and some benign software (a cache client
issuing small requests at random times, a wallet polling its server) looks like a miner
there. The server end of a suspected connection can settle it: a mining pool (or a mining
proxy) answers a Stratum login with work, a cache or a wallet server does not. This is how
MineShark (NDSS) confirms candidate pools; it needs no payload from the subscriber's traffic,
only a new connection from the operator to the server.

:func:`probe` opens at most four short connections to one ``host:port``, each bounded by
``timeout`` seconds:

1. plain TCP, a CryptoNote ``login`` (XMRig's first message);
2. plain TCP, a Stratum V1 ``mining.subscribe`` (Bitcoin-style and EthereumStratum pools),
   when the first answer was JSON-RPC but not a pool's;
3. and 4. the same over TLS (certificates are not checked: pools use self-signed ones),
   when the plain connection got no answer, a TLS alert or was closed.

A server is a **pool** when it answers the login with a job (``blob`` and ``target``), or
refuses it the way pools refuse a bad wallet (a JSON-RPC error to ``login`` about the
address, wallet, login or worker, not about the method), or answers ``mining.subscribe``
with an extranonce or pushes ``mining.notify``/``mining.set_difficulty``. Anything else
(another protocol's banner or error, JSON-RPC that knows no such method, silence) is
**not_pool**; a server no attempt could connect to is **unreachable**.

The login sent is ``minewatch-probe`` unless one is given: a pool that checks wallets
refuses it (which is enough), one that does not sends a job. Nothing is ever submitted.
Probing connects to servers outside the operator's network: run it only where that is
allowed. Not a hot path: one thread per endpoint in flight (:func:`probe_many`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from minewatch.net.hashrate import cryptonote_difficulty

Verdict = Literal["pool", "not_pool", "unreachable"]

#: Login sent in the CryptoNote ``login`` unless the caller gives one.
DEFAULT_LOGIN = "minewatch-probe"
AGENT = "minewatch-probe/1"
#: Bytes read from a server at most per attempt.
MAX_REPLY = 64 * 1024
#: Words of a pool's refusal of a login (nodejs-pool: "Invalid payment address provided").
_REFUSAL = re.compile(r"address|wallet|login|payment|worker|miner|unauthori[sz]ed|banned", re.I)
#: Words of a server that does not know the method at all.
_NO_METHOD = re.compile(r"method|unknown|not found|unsupported|parse", re.I)
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass
class Attempt:
    """One connection of a probe: what was sent and what came back."""

    tls: bool
    request: str  # "cryptonote-login" | "stratum1-subscribe"
    outcome: str  # "pool" | "json-rpc" | "other" | "silent" | "closed" | "tls-alert" |
    #               "refused" | "timeout" | "tls-failed" | "error"
    answer: bytes = b""
    note: str = ""
    evidence: dict[str, Any] | None = None  # what showed a pool (outcome "pool")


@dataclass
class ProbeResult:
    """What a server said to a mining login, with the reasons a person can check."""

    host: str
    port: int
    verdict: Verdict
    dialect: str | None = None
    tls: bool | None = None
    algo: str | None = None
    difficulty: float | None = None
    height: int | None = None
    reasons: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    probed_at: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record of ``minewatch probe``: the fields, with each attempt's
        answer as readable text (:func:`printable`)."""
        d = asdict(self)
        for a in d["attempts"]:
            a["answer"] = printable(a["answer"])
            del a["evidence"]  # said in the reasons
            if not a["note"]:
                del a["note"]
        d["seconds"] = round(self.seconds, 3)
        return d


def printable(data: bytes, limit: int = 160) -> str:
    """The first bytes of an answer as text a person can read (others as ``\\xNN``)."""
    text = data[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + ("…" if len(data) > limit else "")


def _requests(login: str) -> dict[str, bytes]:
    cn = {
        "id": 1,
        "jsonrpc": "2.0",
        "method": "login",
        "params": {"login": login, "pass": "x", "agent": AGENT, "algo": ["rx/0", "cn/r"]},
    }
    v1 = {"id": 1, "method": "mining.subscribe", "params": [AGENT]}
    return {
        "cryptonote-login": (json.dumps(cn) + "\n").encode(),
        "stratum1-subscribe": (json.dumps(v1) + "\n").encode(),
    }


def _json_lines(data: bytes) -> list[dict[str, Any]]:
    out = []
    for line in data.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict):
            out.append(msg)
    return out


def _enough(data: bytes) -> bool:
    """Whether the answer so far settles the attempt (stop reading)."""
    head = data.lstrip()
    if not head:
        return False
    if head[:1] != b"{":
        return True  # another protocol: its banner or error is enough
    return any("id" in m or "method" in m for m in _json_lines(data))


def _exchange(
    host: str, port: int, tls: bool, request: str, payload: bytes, timeout: float
) -> Attempt:
    deadline = time.monotonic() + timeout
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Attempt(tls, request, "refused")
    except TimeoutError:
        return Attempt(tls, request, "timeout", note="no connection")
    except OSError as exc:
        return Attempt(tls, request, "error", note=str(exc))
    buf = b""
    try:
        sock: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            try:
                # The name as SNI when one was given: pools behind a TLS proxy route by it.
                sni = None if _is_ip(host) else host
                sock = ctx.wrap_socket(raw, server_hostname=sni)
            except (ssl.SSLError, OSError) as exc:
                return Attempt(tls, request, "tls-failed", note=type(exc).__name__)
        sock.sendall(payload)
        while len(buf) < MAX_REPLY:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                return _judge(Attempt(tls, request, "closed", buf))
            buf += chunk
            if _enough(buf):
                break
    except (ssl.SSLError, OSError) as exc:
        return _judge(Attempt(tls, request, "closed", buf, note=type(exc).__name__))
    finally:
        raw.close()
    return _judge(Attempt(tls, request, "silent" if not buf else "other", buf))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _judge(a: Attempt) -> Attempt:
    """Classify what came back: ``pool``, ``json-rpc`` (not a pool's), ``tls-alert``,
    ``other`` (another protocol), or the connection's own outcome when nothing came."""
    if not a.answer:
        return a
    if not a.tls and a.answer[:1] in (b"\x15", b"\x16") and a.answer[1:2] == b"\x03":
        a.outcome = "tls-alert"
        return a
    msgs = _json_lines(a.answer)
    if not msgs:
        a.outcome = "other"
        return a
    a.evidence = _pool_evidence(a.request, msgs)
    a.outcome = "json-rpc" if a.evidence is None else "pool"
    return a


def _pool_evidence(request: str, msgs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What in the answer shows a pool (``None`` when nothing does)."""
    for m in msgs:
        method = m.get("method")
        if method in ("mining.notify", "mining.set_difficulty", "mining.set_target"):
            return {"dialect": "stratum1", "why": f"pushed {method}"}
        if method == "job" and isinstance(m.get("params"), dict) and "blob" in m["params"]:
            return {"dialect": "cryptonote", "why": "pushed a job", "job": m["params"]}
        if m.get("id") != 1:
            continue
        result, error = m.get("result"), m.get("error")
        if request == "cryptonote-login":
            job = result.get("job") if isinstance(result, dict) else None
            if isinstance(job, dict) and "blob" in job and "target" in job:
                return {"dialect": "cryptonote", "why": "job", "job": job}
            msg = error.get("message") if isinstance(error, dict) else error
            if isinstance(error, list):  # Stratum's [code, message, traceback]
                msg = next((e for e in error if isinstance(e, str)), None)
            if isinstance(msg, str) and _REFUSAL.search(msg) and not _NO_METHOD.search(msg):
                return {"dialect": "cryptonote", "why": "refusal", "message": msg}
        elif (
            isinstance(result, list)
            and len(result) >= 2
            and isinstance(result[0], list)
            and isinstance(result[1], str)
            and _HEX.match(result[1])
        ):
            return {"dialect": "stratum1", "why": "extranonce", "result": result}
    return None


def _reason(a: Attempt, ev: dict[str, Any], res: ProbeResult) -> str:
    over = "over TLS" if a.tls else "in cleartext"
    if ev["why"] in ("job", "pushed a job"):
        job = ev["job"]
        res.algo = job.get("algo") if isinstance(job.get("algo"), str) else None
        target = job.get("target")
        res.difficulty = cryptonote_difficulty(target) if isinstance(target, str) else None
        res.height = job.get("height") if isinstance(job.get("height"), int) else None
        parts = [f"algo {res.algo}" if res.algo else None]
        parts.append(f"difficulty {res.difficulty:,.0f}" if res.difficulty else None)
        parts.append(f"height {res.height}" if res.height else None)
        detail = ", ".join(p for p in parts if p)
        return f"answered a CryptoNote login {over} with a mining job ({detail or 'no details'})"
    if ev["why"] == "refusal":
        return f"refused the CryptoNote login {over} as a pool refuses a wallet: {ev['message']!r}"
    if ev["why"] == "extranonce":
        r = ev["result"]
        size = f", {r[2]}-byte extranonce2" if len(r) > 2 and isinstance(r[2], int) else ""
        return f"answered mining.subscribe {over} with extranonce1 {r[1][:16]}{size}"
    return f"{ev['why']} {over} (Stratum V1)"


def _summary(a: Attempt) -> str:
    way = "TLS" if a.tls else "plain"
    what = {
        "json-rpc": "JSON-RPC without a pool's answer",
        "other": "another protocol",
        "silent": "no answer",
        "closed": "closed the connection",
        "tls-alert": "a TLS alert (a TLS port)",
        "refused": "connection refused",
        "timeout": "no connection",
        "tls-failed": "no TLS handshake",
        "error": "connection error",
    }.get(a.outcome, a.outcome)
    said = f': "{printable(a.answer, 60)}"' if a.answer else ""
    return f"{way} {a.request}: {what}{said}"


def probe(
    host: str,
    port: int,
    *,
    timeout: float = 3.0,
    login: str = DEFAULT_LOGIN,
    tls: bool | None = None,
) -> ProbeResult:
    """Probe one server (see the module doc). ``tls``: ``None`` tries plain then TLS."""
    t0 = time.monotonic()
    res = ProbeResult(host, port, "not_pool", probed_at=datetime.now(UTC).isoformat())
    requests = _requests(login)
    for use_tls in (False, True) if tls is None else (tls,):
        again_in_tls = False
        for name in ("cryptonote-login", "stratum1-subscribe"):
            a = _exchange(host, port, use_tls, name, requests[name], timeout)
            res.attempts.append(a)
            if (ev := a.evidence) is not None:
                res.verdict, res.dialect, res.tls = "pool", ev["dialect"], use_tls
                res.reasons = [_reason(a, ev, res)]
                res.seconds = time.monotonic() - t0
                return res
            if a.outcome != "json-rpc":
                # Not JSON-RPC at all: the other dialect will not help on this transport.
                again_in_tls = a.outcome in ("silent", "closed", "tls-alert")
                break
        if not again_in_tls:
            break
    if all(a.outcome in ("refused", "timeout", "error") for a in res.attempts):
        res.verdict = "unreachable"
    res.reasons = [_summary(a) for a in res.attempts]
    res.seconds = time.monotonic() - t0
    return res


class Prober:
    """:func:`probe` on a thread pool, ``workers`` servers at a time, each server once (the
    futures are kept): what ``minewatch probe -`` uses to annotate detections as they come."""

    def __init__(
        self,
        *,
        timeout: float = 3.0,
        login: str = DEFAULT_LOGIN,
        tls: bool | None = None,
        workers: int = 32,
    ) -> None:
        self.timeout, self.login, self.tls = timeout, login, tls
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self._futures: dict[tuple[str, int], Future[ProbeResult]] = {}

    def submit(self, host: str, port: int) -> Future[ProbeResult]:
        key = (host, port)
        fut = self._futures.get(key)
        if fut is None:
            fut = self._pool.submit(
                probe, host, port, timeout=self.timeout, login=self.login, tls=self.tls
            )
            self._futures[key] = fut
        return fut

    def results(self) -> list[ProbeResult]:
        """Every server's result, in the order they were first asked for."""
        return [f.result() for f in self._futures.values()]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def annotate(detection: dict[str, Any], result: ProbeResult) -> dict[str, Any]:
    """A detection (``scan``/``flows detect`` record) with its server's probe: a ``probe``
    object, and the probe's reason added to its ``reasons`` when the server is a pool."""
    d = result.to_dict()
    detection["probe"] = {k: d[k] for k in ("verdict", "dialect", "tls", "algo", "reasons")}
    if result.verdict == "pool" and isinstance(detection.get("reasons"), list):
        detection["reasons"].append(f"probe: the server {result.reasons[0]}")
    return detection


def probe_many(
    endpoints: Iterable[tuple[str, int]],
    *,
    timeout: float = 3.0,
    login: str = DEFAULT_LOGIN,
    tls: bool | None = None,
    workers: int = 32,
) -> list[ProbeResult]:
    """:func:`probe` each distinct endpoint, ``workers`` at a time; results in input order."""
    with Prober(timeout=timeout, login=login, tls=tls, workers=workers) as p:
        for host, port in endpoints:
            p.submit(host, port)
        return p.results()

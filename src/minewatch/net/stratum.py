"""Mining protocols read from reassembled messages, one :class:`StratumState` per session.

Dialects (names used in output):

- ``stratum1``: Stratum V1 (Bitcoin family, Litecoin, ZCash): ``mining.subscribe``,
  ``mining.authorize``, ``mining.notify``, ``mining.set_difficulty``/``set_target``,
  ``mining.submit``, ``mining.extranonce.subscribe``, ``mining.configure``,
  ``client.show_message``...
- ``ethstratum``: EthereumStratum/1.0.0 (NiceHash): Stratum V1 method names with the
  ``EthereumStratum/1.0.0`` marker in the subscription.
- ``ethproxy``: ``eth_submitLogin``, ``eth_getWork``, ``eth_submitWork``,
  ``eth_submitHashrate``, over lines or HTTP.
- ``cryptonote``: XMRig and other CryptoNote miners: ``login``, ``job``, ``submit``,
  ``keepalived``.
- ``getwork`` and ``getblocktemplate``: Bitcoin-family JSON-RPC over HTTP.

The confidence of a session follows from what was seen, in both directions (see
:meth:`StratumState.confidence`). Electrum wallet traffic (``blockchain.*``, ``server.*``)
and JSON-RPC that never names a mining method are not mining.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from minewatch.energy import COIN_ALGO, algo_family
from minewatch.net import hashrate as hr
from minewatch.net.sessions import HttpMessage

CLIENT_METHODS = {
    "mining.subscribe",
    "mining.authorize",
    "mining.submit",
    "mining.extranonce.subscribe",
    "mining.configure",
    "mining.suggest_difficulty",
    "mining.suggest_target",
    "mining.get_transactions",
    "mining.multi_version",
    "mining.hello",
    "mining.noop",
    "login",
    "submit",
    "keepalived",
    "getjob",
    "eth_submitLogin",
    "eth_getWork",
    "eth_submitWork",
    "eth_submitHashrate",
    "getwork",
    "getblocktemplate",
    "submitblock",
}
SERVER_METHODS = {
    "mining.notify",
    "mining.set_difficulty",
    "mining.set_target",
    "mining.set_extranonce",
    "mining.set_version_mask",
    "client.show_message",
    "client.reconnect",
    "client.get_version",
    "job",
}
# Methods that mark a client as a wallet or a node RPC user, not a miner.
NOT_MINING_PREFIXES = ("blockchain.", "server.", "mempool.", "wallet.")

_WALLETS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("eth", re.compile(r"0x[0-9a-fA-F]{40}")),
    ("xmr", re.compile(r"[48][0-9AB][1-9A-HJ-NP-Za-km-z]{93}(?:[1-9A-HJ-NP-Za-km-z]{11})?")),
    ("zec", re.compile(r"t1[1-9A-HJ-NP-Za-km-z]{33}")),
    ("btc", re.compile(r"bc1[02-9ac-hj-np-z]{39,59}")),
    ("ltc", re.compile(r"ltc1[02-9ac-hj-np-z]{39,59}")),
    ("btc", re.compile(r"[13][1-9A-HJ-NP-Za-km-z]{25,34}")),
    ("ltc", re.compile(r"[LM][1-9A-HJ-NP-Za-km-z]{26,33}")),
)
_COIN_WORDS = {
    "monero": "xmr",
    "bitcoin": "btc",
    "ethereum": "eth",
    "litecoin": "ltc",
    "zcash": "zec",
    "ravencoin": "rvn",
}
# Monero switched from CryptoNight variants to RandomX on 2019-11-30.
RANDOMX_SINCE = 1_575_072_000.0


@functools.lru_cache(maxsize=4096)  # a miner's login comes back in every reconnection
def split_login(user: str | None) -> tuple[str | None, str | None, str | None]:
    """A pool login to (wallet or account, worker, coin suggested by the wallet's shape)."""
    if not user:
        return None, None, None
    text = user.strip()
    for coin, pat in _WALLETS:
        m = pat.search(text)
        if m and (m.start() == 0 or not text[m.start() - 1].isalnum()):
            # After the address: ".worker", "/worker/email" (nanopool), "+1000" (a fixed
            # difficulty, not a worker) or nothing.
            rest = re.sub(r"\+\d+(\.\d+)?$", "", text[m.end() :])
            worker = None
            if rest[:1] in (".", "/", ":", "_", "-", "@"):
                worker = re.split(r"[/@+]", rest[1:])[0] or None
            return m.group(0), worker, coin
    parts = re.split(r"[./]", text, maxsplit=1)
    account = parts[0] or None
    worker = parts[1] if len(parts) > 1 and parts[1] else None
    return account, worker, None


@functools.lru_cache(maxsize=4096)
def coin_from_host(host: str | None) -> str | None:
    """A coin named in a pool host's labels (``xmr.pool.example``, ``zec-eu.pool``)."""
    if not host:
        return None
    for label in re.split(r"[.\-]", host.lower()):
        if label in COIN_ALGO:
            return label
        if label in _COIN_WORDS:
            return _COIN_WORDS[label]
    return None


def _id_key(mid: Any) -> object:
    """A key for a JSON-RPC id: two ids get equal keys exactly when their JSON is equal.

    Integer and string ids (nearly all) skip ``json.dumps``; a tuple never equals the text
    that ``json.dumps`` gives for the other ids (``1.0``, ``null``, ``[1]``, ``true``).
    """
    t = type(mid)
    if t is int or t is str:
        return (t is int, mid)
    return json.dumps(mid)


@dataclass
class Share:
    ts: float
    hashes: float | None  # expected hashes behind the share at its difficulty
    accepted: bool | None = None


@dataclass
class StratumState:
    """Everything one session showed of a mining protocol."""

    client_methods: Counter[str] = field(default_factory=Counter)
    server_methods: Counter[str] = field(default_factory=Counter)
    dialect_votes: Counter[str] = field(default_factory=Counter)
    server_replied: bool = False  # a JSON-RPC reply to a client's mining request
    work_seen: bool = False  # the pool handed out work (job, notify, getWork result)
    login_ok: bool | None = None
    user: str | None = None
    agent: str | None = None
    algo: str | None = None
    coin_hints: list[tuple[str, str]] = field(default_factory=list)  # (coin, why)
    host_hint: str | None = None
    host_hint_source: str | None = None
    hashes_per_share: float | None = None
    job_hashes: dict[str, float] = field(default_factory=dict)
    # (time, the pool's own difficulty number when it sent one, expected hashes per share)
    difficulty: list[tuple[float, float | None, float]] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)
    pending: dict[object, tuple[str, int | None]] = field(default_factory=dict)  # by _id_key
    reported_hs: float | None = None
    bad_json: int = 0
    not_mining: str | None = None  # why, when the session is clearly something else
    first_ts: float | None = None
    messages: int = 0
    rig_id: str | None = None
    extensions: list[str] = field(default_factory=list)
    algo_assumed: bool = False
    foreign_reply: str | None = None  # first non-JSON line the server sent

    # ---- input -------------------------------------------------------------------------

    def on_line(self, ts: float, from_client: bool, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            if line[:1] in (b"{", b"["):
                self.bad_json += 1
            elif not from_client and self.foreign_reply is None:
                # The peer speaks something else (an HTTP server answering a probe, say).
                self.foreign_reply = line[:60].decode("latin-1")
            return
        if isinstance(obj, list):  # JSON-RPC batch
            for item in obj:
                if isinstance(item, dict):
                    self.on_json(ts, from_client, item)
        elif isinstance(obj, dict):
            self.on_json(ts, from_client, obj)
        else:
            self.bad_json += 1

    def on_http(self, ts: float, from_client: bool, msg: HttpMessage) -> None:
        if "x-stratum" in msg.headers and not from_client:
            # getwork-era pools point miners at their Stratum port in every reply.
            self.server_replied = True
            self.server_methods["X-Stratum header"] += 1
        if "x-mining-extensions" in msg.headers and from_client:
            self.client_methods["X-Mining-Extensions header"] += 1
        if msg.is_request:
            auth = msg.headers.get("authorization", "")
            if auth.lower().startswith("basic ") and not self.user:
                try:
                    raw = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    raw = ""
                if raw:
                    self.user = raw.split(":", 1)[0]
            if "host" in msg.headers and not self.host_hint:
                self.host_hint = msg.headers["host"].rsplit(":", 1)[0]
                self.host_hint_source = "http-host"
            ua = msg.headers.get("user-agent")
            if ua and not self.agent:
                self.agent = ua
            self._from_url(msg.start_line)
        body = msg.body.strip()
        if body[:1] in (b"{", b"["):
            self.on_line(ts, from_client, body)

    def _from_url(self, start_line: str) -> None:
        parts = start_line.split(" ")
        if len(parts) < 2:
            return
        url = urlsplit(parts[1])
        q = parse_qs(url.query)
        # pool.eth.pp.ua style: ?miner=<MH/s>@<wallet>@<rig>
        for value in q.get("miner", []):
            bits = value.split("@")
            if len(bits) >= 2 and not self.user:
                self.user = "@".join(bits[1:])
        path = url.path.strip("/")
        if path and not self.user and split_login(path)[2]:
            self.user = path

    def on_json(self, ts: float, from_client: bool, m: dict[str, Any]) -> None:
        self.messages += 1
        if self.first_ts is None:
            self.first_ts = ts
        method = m.get("method")
        if isinstance(method, str):
            if method.startswith(NOT_MINING_PREFIXES):
                self.not_mining = f"{method} is a wallet/node method, not mining"
            if from_client:
                self.client_methods[method] += 1
                self._client_request(ts, method, m)
            else:
                self.server_methods[method] += 1
                self._server_push(ts, method, m.get("params"))
        elif not from_client and ("result" in m or "error" in m):
            self._server_reply(ts, m)

    # ---- client to pool ----------------------------------------------------------------

    def _client_request(self, ts: float, method: str, m: dict[str, Any]) -> None:
        params = m.get("params")
        mid = m.get("id")
        if method in CLIENT_METHODS:
            self.pending[_id_key(mid)] = (
                method,
                len(self.shares) if "submit" in method.lower() else None,
            )
        if method == "mining.subscribe":
            self.dialect_votes["stratum1"] += 1
            if isinstance(params, list):
                if params and isinstance(params[0], str) and not self.agent:
                    self.agent = params[0]
                if any(isinstance(p, str) and p.startswith("EthereumStratum") for p in params):
                    self.dialect_votes["ethstratum"] += 3
                if len(params) >= 3 and isinstance(params[2], str) and "." in params[2]:
                    self.host_hint = self.host_hint or params[2]
                    self.host_hint_source = self.host_hint_source or "stratum-subscribe"
        elif method == "mining.authorize":
            self.dialect_votes["stratum1"] += 1
            if isinstance(params, list) and params and isinstance(params[0], str):
                self.user = params[0]
        elif method == "mining.configure":
            self.dialect_votes["stratum1"] += 1
            if "version-rolling" in json.dumps(params):
                self.coin_hints.append(("btc", "version rolling (ASICBoost) is SHA-256 only"))
        elif method.startswith("mining."):
            self.dialect_votes["stratum1"] += 1
            if method == "mining.submit":
                worker = params[0] if isinstance(params, list) and params else None
                if isinstance(worker, str) and not self.user:
                    self.user = worker
                self.shares.append(Share(ts, self.hashes_per_share))
        elif method == "login":
            self.dialect_votes["cryptonote"] += 2
            if isinstance(params, dict):
                login = params.get("login")
                self.user = login if isinstance(login, str) else self.user
                if isinstance(params.get("agent"), str):
                    self.agent = params["agent"]
                if isinstance(params.get("rigid"), str) and params["rigid"]:
                    self.rig_id = params["rigid"]
                algos = params.get("algo")
                if isinstance(algos, list) and len(algos) == 1 and isinstance(algos[0], str):
                    self.algo = self.algo or algos[0]
        elif method == "submit":
            self.dialect_votes["cryptonote"] += 1
            job = params.get("job_id") if isinstance(params, dict) else None
            hashes = self.job_hashes.get(str(job), self.hashes_per_share)
            self.shares.append(Share(ts, hashes))
        elif method in ("keepalived", "getjob"):
            self.dialect_votes["cryptonote"] += 1
        elif method.startswith("eth_"):
            self.dialect_votes["ethproxy"] += 1
            if method == "eth_submitLogin" and isinstance(params, list) and params:
                if isinstance(params[0], str):
                    self.user = params[0]
                worker = m.get("worker")
                if isinstance(worker, str) and worker and self.user and "/" not in self.user:
                    self.user = f"{self.user}.{worker}"
            elif method == "eth_submitWork":
                self.shares.append(Share(ts, self.hashes_per_share))
            elif method == "eth_submitHashrate" and isinstance(params, list) and params:
                try:
                    rate = int(str(params[0]), 16)
                except ValueError:
                    rate = 0
                if rate > 0:
                    self.reported_hs = float(rate)
        elif method in ("getwork", "getblocktemplate", "submitblock"):
            self.dialect_votes["getwork" if method == "getwork" else "getblocktemplate"] += 2
            submitting = (method == "getwork" and isinstance(params, list) and params) or (
                method == "submitblock"
            )
            if submitting:
                self.shares.append(Share(ts, self.hashes_per_share))

    # ---- pool to client ----------------------------------------------------------------

    def _set_hashes(self, ts: float, hashes: float | None, shown: float | None = None) -> None:
        if hashes is None or hashes <= 0:
            return
        if self.hashes_per_share != hashes:
            self.difficulty.append((ts, shown, hashes))
        self.hashes_per_share = hashes

    def _cryptonote_job(self, ts: float, job: dict[str, Any]) -> None:
        self.work_seen = True
        self.dialect_votes["cryptonote"] += 1
        target = job.get("target")
        if isinstance(target, str):
            d = hr.cryptonote_difficulty(target)
            if d is not None:
                self._set_hashes(ts, d, d)
                if isinstance(job.get("job_id"), str):
                    self.job_hashes[job["job_id"]] = d
        if isinstance(job.get("algo"), str):
            self.algo = job["algo"]

    def _server_push(self, ts: float, method: str, params: Any) -> None:
        if method == "job" and isinstance(params, dict):
            self._cryptonote_job(ts, params)
        elif method == "mining.notify":
            self.work_seen = True
            if self.dialect_votes["ethstratum"] == 0 and self.dialect_votes["stratum1"] == 0:
                self.dialect_votes["stratum1"] += 1
        elif method == "mining.set_difficulty" and isinstance(params, list) and params:
            try:
                d = float(params[0])
            except (TypeError, ValueError):
                return
            if d > 0:
                scale = "scrypt" if self.coin() in ("ltc", "doge") else None
                self._set_hashes(ts, hr.hashes_from_difficulty(d, scale), d)
        elif method == "mining.set_target" and isinstance(params, list) and params:
            if isinstance(params[0], str):
                self._set_hashes(ts, hr.hashes_from_target256(params[0]))
                self.coin_hints.append(("zec", "mining.set_target is the Equihash dialect"))

    def _server_reply(self, ts: float, m: dict[str, Any]) -> None:
        req = self.pending.pop(_id_key(m.get("id")), None)
        result = m.get("result")
        error = m.get("error")
        ok = error in (None, False) and result not in (None, False)
        # eth-proxy pools push work as results with id 0; getWork results are 3 hex strings.
        if (
            isinstance(result, list)
            and len(result) >= 3
            and all(isinstance(x, str) and x.startswith("0x") for x in result[:3])
        ):
            self.work_seen = True
            self.dialect_votes["ethproxy"] += 1
            self._set_hashes(ts, hr.hashes_from_target256(result[2]))
        if req is None:
            if isinstance(result, dict) and isinstance(result.get("job"), dict):
                self._cryptonote_job(ts, result["job"])  # a login reply we did not see sent
            return
        method, share_index = req
        self.server_replied = True
        if method in ("login",) and isinstance(result, dict):
            self.login_ok = ok
            job = result.get("job")
            if isinstance(job, dict):
                self._cryptonote_job(ts, job)
            ext = result.get("extensions")
            if isinstance(ext, list):
                self.extensions = [str(e) for e in ext]
        elif method in ("mining.authorize", "eth_submitLogin"):
            self.login_ok = bool(ok and result is not False)
        elif method == "mining.subscribe" and isinstance(result, list):
            if "EthereumStratum" in json.dumps(result):
                self.dialect_votes["ethstratum"] += 3
        elif method in ("getwork", "getblocktemplate") and isinstance(result, dict):
            if any(k in result for k in ("data", "target", "previousblockhash", "coinbasetxn")):
                self.work_seen = True
                if isinstance(result.get("target"), str):
                    t = result["target"]
                    if method == "getwork":  # getwork targets are little-endian hex
                        t = bytes.fromhex(t)[::-1].hex() if len(t) % 2 == 0 else t
                    self._set_hashes(ts, hr.hashes_from_target256(t))
        if share_index is not None and share_index < len(self.shares):
            share = self.shares[share_index]
            if method == "submit":
                share.accepted = ok and (
                    not isinstance(result, dict) or result.get("status", "OK") == "OK"
                )
            elif method == "submitblock":
                share.accepted = error in (None, False) and result is None
            else:
                share.accepted = bool(ok and result is not False)

    # ---- conclusions -------------------------------------------------------------------

    @property
    def mining_requests(self) -> int:
        return sum(n for m, n in self.client_methods.items() if m in CLIENT_METHODS)

    @property
    def is_mining(self) -> bool:
        if self.not_mining:
            return False
        pushes = sum(n for m, n in self.server_methods.items() if m in SERVER_METHODS)
        return self.mining_requests > 0 or (pushes > 0 and self.work_seen)

    def dialect(self) -> str | None:
        if not self.dialect_votes:
            return None
        if self.dialect_votes["ethstratum"]:
            return "ethstratum"
        return self.dialect_votes.most_common(1)[0][0]

    def coin(self) -> str | None:
        return self.coin_hints[0][0] if self.coin_hints else None

    def algo_family(self, coin: str | None, ts: float | None) -> str | None:
        fam = algo_family(self.algo)
        if fam:
            return fam
        if coin == "xmr" and ts is not None:
            return "randomx" if ts >= RANDOMX_SINCE else "cryptonight"
        if coin in COIN_ALGO:
            return COIN_ALGO[coin]
        d = self.dialect()
        if d in ("ethproxy", "ethstratum"):
            return "ethash"
        if d == "cryptonote" and ts is not None:
            # No algorithm named: CryptoNote pools served CryptoNight before Monero's RandomX
            # fork and RandomX after it. An assumption; the record's reasons say so.
            self.algo_assumed = True
            return "randomx" if ts >= RANDOMX_SINCE else "cryptonight"
        return None

    def share_counts(self) -> dict[str, int]:
        return {
            "submitted": len(self.shares),
            "accepted": sum(1 for s in self.shares if s.accepted is True),
            "rejected": sum(1 for s in self.shares if s.accepted is False),
        }

    def hashrate(self) -> tuple[float | None, str | None]:
        """(hash rate, how it was obtained). Accepted shares first, else all submitted."""
        accepted = [(s.ts, s.hashes) for s in self.shares if s.accepted and s.hashes]
        rate = hr.estimate_hashrate(accepted)
        if rate is not None:
            return rate, f"{len(accepted)} accepted shares"
        submitted = [(s.ts, s.hashes) for s in self.shares if s.accepted is not False and s.hashes]
        rate = hr.estimate_hashrate(submitted)
        if rate is not None:
            return rate, f"{len(submitted)} submitted shares (pool replies not seen)"
        if self.reported_hs:
            return self.reported_hs, "rate the miner reported (eth_submitHashrate)"
        return None, None

    def confidence(self) -> tuple[float, list[str]]:
        """How sure the session is mining, from what both sides said, with the reasons."""
        reasons: list[str] = []
        req = self.mining_requests
        counts = self.share_counts()
        d = self.dialect() or "unknown"
        if req:
            names = ", ".join(m for m, _ in self.client_methods.most_common(4))
            reasons.append(f"client sent {req} mining request(s) ({names}) [{d}]")
        if self.work_seen:
            reasons.append("pool handed out work (jobs/notify/getWork results)")
        if self.login_ok is True:
            reasons.append("pool accepted the login")
        elif self.login_ok is False:
            reasons.append("pool refused the login")
        if counts["accepted"]:
            reasons.append(f"{counts['accepted']} share(s) accepted by the pool")
        elif counts["submitted"]:
            reasons.append(f"{counts['submitted']} share(s) submitted")
        if req and self.work_seen and counts["accepted"]:
            conf = 0.99
        elif req and self.work_seen:
            conf = 0.95
        elif req and self.server_replied:
            conf = 0.85
        elif self.work_seen:
            conf = 0.8  # only the pool side seen (capture began mid-session or one-way)
        elif req:
            conf = 0.65
            reasons.append("no answer from the server was seen")
        else:
            conf = 0.0
        if self.foreign_reply:
            reasons.append(f"server did not answer in JSON-RPC ({self.foreign_reply!r})")
        if self.bad_json:
            reasons.append(f"{self.bad_json} message(s) were not valid JSON (skipped)")
        return conf, reasons

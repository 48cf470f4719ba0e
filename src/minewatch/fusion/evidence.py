"""Load what the detectors printed (and financial leads) into the canonical EVIDENCE table.

Inputs, told apart per line by their fields:

* ``minewatch scan`` / ``minewatch flows detect`` JSON Lines (schema.DETECTION_FIELDS, plus
  ``reasons`` and ``shares``) → ``source=network``, ``subject_type=ip``, subject = ``src_ip``;
  window = first_seen..last_seen; score = ``confidence``. Port, pool, wallet, algorithm,
  hash rate and its power range go into ``measures``/``details``.
* ``minewatch meters screen`` JSON Lines (schema.SCREEN_FIELDS) → ``source=power``,
  ``subject_type=account``; window starts at ``since``; measures ``added_kw``.
* EVIDENCE rows already in canonical form (JSON Lines with ``evidence_id``, or Parquet).
* Finance CSV (``--finance``): one row per payment with at least ``wallet``; optional
  ``ts, kind, amount, coin, counterparty, subscriber_id, account_id, score``. ``kind`` is
  ``pool_payout`` (a pool paid this wallet: it mines), ``exchange_deposit`` (the wallet sold
  coins at an exchange) or anything else. Without a ``score`` column the score is the
  documented prior of its kind (:data:`FINANCE_KIND_SCORE`).

A line that cannot be read goes to the quarantine with the reason; ``read = accepted +
rejected`` per file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from minewatch.errors import InputError, Quarantine
from minewatch.schema import EVIDENCE

_TS = pl.Datetime("us", "UTC")

# Prior probability that a wallet seen in a finance record is a mining wallet, by kind of
# record. A pool payout is direct proof that the wallet mined (what it cannot say is where);
# an exchange deposit only shows that the wallet holds coins.
FINANCE_KIND_SCORE: dict[str, float] = {
    "pool_payout": 0.9,
    "exchange_deposit": 0.55,
}
FINANCE_DEFAULT_SCORE = 0.5

EVIDENCE_COLUMNS = EVIDENCE.names


@dataclass
class EvidenceLoad:
    evidence: pl.DataFrame
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    per_file: list[dict[str, Any]] = field(default_factory=list)


def empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema=_schema())


def _schema() -> dict[str, pl.DataType]:
    return {
        "evidence_id": pl.String(),
        "source": pl.String(),
        "detector": pl.String(),
        "subject_type": pl.String(),
        "subject_id": pl.String(),
        "window_start": _TS,
        "window_end": _TS,
        "score": pl.Float64(),
        "measures": pl.String(),
        "details": pl.String(),
    }


def _evidence_id(*parts: object) -> str:
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _ts(value: Any) -> Any:
    """ISO 8601 string or epoch seconds (or ms) → aware datetime; None stays None."""
    import datetime as dt

    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
        if v > 1e11:
            v /= 1000.0
        return dt.datetime.fromtimestamp(v, tz=dt.UTC)
    s = str(value).strip()
    if s.replace(".", "", 1).isdigit():
        return _ts(float(s))
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _score(v: Any) -> float:
    f = float(v)
    if math.isnan(f) or f < 0 or f > 1:
        raise ValueError(f"score {v!r} is not within 0..1")
    return f


def detection_row(d: dict[str, Any]) -> dict[str, Any]:
    """One ``scan``/``flows detect`` object → one EVIDENCE row (raises on unusable input)."""
    ip = d.get("src_ip")
    if not ip:
        raise ValueError("no src_ip")
    if d.get("confidence") is None:
        raise ValueError("no confidence")
    first, last = _ts(d.get("first_seen")), _ts(d.get("last_seen"))
    if first is None:
        raise ValueError("no first_seen")
    measures = {
        "hashrate_hs": d.get("hashrate_hs"),
        "power_w_range": d.get("power_w_range"),
        "algo": d.get("algo"),
        "coin": d.get("coin"),
        "src_port": d.get("src_port"),
        "dst_ip": d.get("dst_ip"),
        "dst_port": d.get("dst_port"),
        "shares": d.get("shares"),
    }
    details = {
        "reasons": d.get("reasons") or [],
        "dialect": d.get("dialect"),
        "pool_host": d.get("pool_host"),
        "wallet": d.get("wallet"),
        "worker": d.get("worker"),
        "agent": d.get("agent"),
        "proto": d.get("proto"),
    }
    det = str(d.get("detector") or "network")
    return {
        "evidence_id": _evidence_id("network", det, ip, d.get("src_port"), first, d.get("dst_ip")),
        "source": "network",
        "detector": det,
        "subject_type": "ip",
        "subject_id": str(ip),
        "window_start": first,
        "window_end": last or first,
        "score": _score(d["confidence"]),
        "measures": json.dumps(measures, ensure_ascii=False),
        "details": json.dumps(details, ensure_ascii=False),
    }


def screen_row(d: dict[str, Any]) -> dict[str, Any]:
    """One ``meters screen`` object → one EVIDENCE row."""
    acc = d.get("account_id")
    if not acc:
        raise ValueError("no account_id")
    if d.get("score") is None:
        raise ValueError("no score")
    since = _ts(d.get("since")) if d.get("since") else None
    measures = {"added_kw": d.get("added_load_kw")}
    details = {"reasons": d.get("reasons") or [], "flagged": d.get("flagged")}
    return {
        "evidence_id": _evidence_id("power", acc, since, d.get("score")),
        "source": "power",
        "detector": str(d.get("detector") or "meters.screen"),
        "subject_type": "account",
        "subject_id": str(acc),
        "window_start": since,
        "window_end": None,
        "score": _score(d["score"]),
        "measures": json.dumps(measures, ensure_ascii=False),
        "details": json.dumps(details, ensure_ascii=False),
    }


def evidence_row(d: dict[str, Any]) -> dict[str, Any]:
    """An EVIDENCE row written as JSON (measures/details may be objects or JSON text)."""
    row = {k: d.get(k) for k in EVIDENCE_COLUMNS}
    for k in ("source", "subject_type", "subject_id"):
        if not row[k]:
            raise ValueError(f"no {k}")
    row["window_start"] = _ts(row["window_start"])
    row["window_end"] = _ts(row["window_end"])
    row["score"] = _score(row["score"])
    for k in ("measures", "details"):
        if not isinstance(row[k], str):
            row[k] = json.dumps(row[k] or {}, ensure_ascii=False)
    return row


def finance_row(d: dict[str, Any]) -> dict[str, Any]:
    wallet = (d.get("wallet") or "").strip()
    if not wallet:
        raise ValueError("no wallet")
    kind = (d.get("kind") or "").strip().lower() or "unknown"
    if d.get("score") not in (None, ""):
        score = _score(d["score"])
    else:
        score = FINANCE_KIND_SCORE.get(kind, FINANCE_DEFAULT_SCORE)
    ts = _ts(d.get("ts"))
    amount = d.get("amount")
    measures = {
        "amount": float(amount) if amount not in (None, "") else None,
        "coin": d.get("coin") or None,
    }
    details = {
        "kind": kind,
        "counterparty": d.get("counterparty") or None,
        "subscriber_id": d.get("subscriber_id") or None,
        "account_id": d.get("account_id") or None,
        "reasons": [f"{kind.replace('_', ' ')} to wallet {wallet[:12]}…"],
    }
    return {
        "evidence_id": _evidence_id("finance", wallet, ts, kind, amount),
        "source": "finance",
        "detector": f"finance.{kind}",
        "subject_type": "wallet",
        "subject_id": wallet,
        "window_start": ts,
        "window_end": ts,
        "score": score,
        "measures": json.dumps(measures, ensure_ascii=False),
        "details": json.dumps(details, ensure_ascii=False),
    }


def _kind(d: dict[str, Any]) -> str | None:
    if "evidence_id" in d and "subject_id" in d:
        return "evidence"
    if "src_ip" in d and ("confidence" in d or "detector" in d):
        return "detection"
    if "account_id" in d and ("flagged" in d or "added_load_kw" in d):
        return "screen"
    return None


_CONVERT = {"evidence": evidence_row, "detection": detection_row, "screen": screen_row}


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    if not rows:
        return empty_evidence()
    return pl.DataFrame(rows, schema=_schema(), orient="row")


def read_jsonl(path: str | Path, *, quarantine: Quarantine | None = None) -> EvidenceLoad:
    """Detections, screen results or evidence rows, one JSON object per line."""
    p = Path(path)
    q = quarantine if quarantine is not None else Quarantine()
    try:
        text = p.read_text(encoding="utf-8", errors="replace") if str(p) != "-" else ""
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=p) from exc
    rows: list[dict[str, Any]] = []
    read = 0
    reasons: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        read += 1
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            kind = _kind(obj)
            if kind is None:
                raise ValueError("neither a detection, a screen result nor an evidence row")
            rows.append(_CONVERT[kind](obj))
        except (ValueError, TypeError, KeyError) as exc:
            reason = str(exc).split("\n")[0][:200]
            reasons[reason] = reasons.get(reason, 0) + 1
            q.reject("evidence", f"{p}:line {lineno}", reason, line[:512])
    ev = _frame(rows)
    return EvidenceLoad(
        evidence=ev,
        read=read,
        accepted=ev.height,
        rejected=read - ev.height,
        reasons=reasons,
        per_file=[{"path": str(p), "read": read, "accepted": ev.height}],
    )


def read_finance_csv(path: str | Path, *, quarantine: Quarantine | None = None) -> EvidenceLoad:
    """Finance leads: wallets with pool payouts or exchange deposits."""
    p = Path(path)
    q = quarantine if quarantine is not None else Quarantine()
    try:
        df = pl.read_csv(p, infer_schema=False, truncate_ragged_lines=True)
    except (OSError, pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise InputError(f"not a readable CSV file: {exc}", path=p) from exc
    if "wallet" not in df.columns:
        raise InputError(
            "finance CSV needs a 'wallet' column",
            path=p,
            line=1,
            hint="columns: wallet, ts, kind (pool_payout|exchange_deposit), amount, coin, "
            "counterparty, subscriber_id, account_id, score",
        )
    rows: list[dict[str, Any]] = []
    reasons: dict[str, int] = {}
    for i, d in enumerate(df.iter_rows(named=True), start=2):
        try:
            rows.append(finance_row(d))
        except (ValueError, TypeError) as exc:
            reason = str(exc)[:200]
            reasons[reason] = reasons.get(reason, 0) + 1
            q.reject("finance", f"{p}:line {i}", reason, d)
    ev = _frame(rows)
    return EvidenceLoad(
        evidence=ev,
        read=df.height,
        accepted=ev.height,
        rejected=df.height - ev.height,
        reasons=reasons,
        per_file=[{"path": str(p), "read": df.height, "accepted": ev.height}],
    )


def load_evidence(
    paths: list[str | Path],
    *,
    finance: list[str | Path] | None = None,
    quarantine: Quarantine | None = None,
) -> EvidenceLoad:
    """All evidence files (JSON Lines or Parquet) and finance CSVs, as one EVIDENCE frame."""
    loads: list[EvidenceLoad] = []
    for path in paths:
        p = Path(path)
        if p.suffix == ".parquet":
            try:
                ev = pl.read_parquet(p).select(EVIDENCE_COLUMNS).cast(_schema())  # type: ignore[arg-type]
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise InputError(f"not an EVIDENCE Parquet file: {exc}", path=p) from exc
            loads.append(EvidenceLoad(evidence=ev, read=ev.height, accepted=ev.height))
        else:
            loads.append(read_jsonl(p, quarantine=quarantine))
    for path in finance or []:
        loads.append(read_finance_csv(path, quarantine=quarantine))
    frames = [ld.evidence for ld in loads if ld.evidence.height]
    ev = pl.concat(frames) if frames else empty_evidence()
    reasons: dict[str, int] = {}
    for ld in loads:
        for k, v in ld.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
    return EvidenceLoad(
        evidence=ev,
        read=sum(ld.read for ld in loads),
        accepted=sum(ld.accepted for ld in loads),
        rejected=sum(ld.rejected for ld in loads),
        reasons=reasons,
        per_file=[f for ld in loads for f in ld.per_file],
    )


def to_arrow(evidence: pl.DataFrame) -> Any:
    """The canonical EVIDENCE Arrow table."""
    return evidence.select(EVIDENCE_COLUMNS).to_arrow().cast(EVIDENCE)

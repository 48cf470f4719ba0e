"""Share difficulty to expected hashes, and hash rate from the shares a session submitted.

One rule underlies every dialect: a share is a hash at or below a target, so a share costs on
average ``2**256 / target`` hashes. The dialects only write the target differently:

- Bitcoin-family Stratum V1 and EthereumStratum/1.0.0 send a difficulty ``d`` relative to the
  "difficulty 1" target ``0xffff * 2**208``, so a share costs ``d * 2**32`` hashes
  (ckpool and REFERENCE.md). Scrypt pools use a difficulty-1 target 2**16 times easier, so a
  share costs ``d * 2**16`` hashes.
- ZCash-style ``mining.set_target`` and eth-proxy ``eth_getWork`` send the 256-bit target.
- CryptoNote sends a little-endian 4-byte (or 8-byte) target ``t``: a share costs
  ``(2**32 - 1) / t`` (or ``(2**64 - 1) / t``) hashes. ``b88d0600`` is difficulty 10,000.

The estimate of a session's rate is the sum of the work of its shares divided by the time it
took. The first share's work is left out and the clock starts at it, because a miner spends an
unknown time initialising (RandomX builds a 256 MB cache) before it hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

TWO32 = float(2**32)
TWO256 = float(2**256)


def hashes_from_difficulty(difficulty: float, algo: str | None = None) -> float:
    """Expected hashes per share for a Stratum V1 / EthereumStratum difficulty."""
    scale = 2.0**16 if algo == "scrypt" else TWO32
    return difficulty * scale


def hashes_from_target256(target_hex: str) -> float | None:
    """Expected hashes per share for a 256-bit big-endian hex target."""
    t = target_hex.lower().removeprefix("0x")
    try:
        value = int(t, 16)
    except ValueError:
        return None
    if value <= 0:
        return None
    # A short hex target is a prefix of the 256-bit number (as pools send it).
    value <<= 4 * max(0, 64 - len(t))
    return TWO256 / value


def cryptonote_difficulty(target_hex: str) -> float | None:
    """Difficulty of a CryptoNote ``target`` (4 or 8 bytes, little-endian hex)."""
    try:
        raw = bytes.fromhex(target_hex)
    except ValueError:
        return None
    if len(raw) not in (4, 8):
        return None
    value = int.from_bytes(raw, "little")
    if value == 0:
        return None
    top = 2**32 - 1 if len(raw) == 4 else 2**64 - 1
    return top / value


def estimate_hashrate(shares: Sequence[tuple[float, float]]) -> float | None:
    """Hash rate (H/s) from ``(time_s, hashes_per_share)`` of accepted (or submitted) shares.

    Needs at least two shares spread over time; returns None otherwise.
    """
    if len(shares) < 2:
        return None
    ordered = sorted(shares)
    span = ordered[-1][0] - ordered[0][0]
    if span <= 0:
        return None
    work = sum(h for _, h in ordered[1:])
    return work / span

"""Hash rate <-> electrical power, per algorithm and hardware class.

Every figure carries its source. Ranges, not single numbers: the lower power bound assumes
the most efficient hardware that runs the algorithm, the upper bound the least efficient
still in use (the Cambridge Bitcoin Electricity Consumption Index reasons the same way).

Units: efficiency is joules per hash (J/H) = watts per (hash/s). Equihash rates are in
solutions per second (Sol/s) and are treated as "hashes" here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """One hardware class: its nominal rate, power, and where the figure comes from."""

    name: str
    algo: str
    rate_hs: float
    power_w: float
    source: str

    @property
    def j_per_hash(self) -> float:
        return self.power_w / self.rate_hs


TH = 1e12
GH = 1e9
MH = 1e6
KH = 1e3

HARDWARE: tuple[Hardware, ...] = (
    # SHA-256 ASICs: manufacturer (Bitmain) specification sheets, as gathered in REFERENCE.md.
    Hardware("Antminer S9", "sha256d", 13.5 * TH, 1400, "Bitmain spec sheet (REFERENCE.md)"),
    Hardware("Antminer S19j Pro", "sha256d", 100 * TH, 3050, "Bitmain spec sheet (REFERENCE.md)"),
    Hardware("Antminer S19 XP", "sha256d", 140 * TH, 3010, "Bitmain spec sheet (REFERENCE.md)"),
    Hardware("Antminer S21", "sha256d", 200 * TH, 3500, "Bitmain spec sheet (REFERENCE.md)"),
    Hardware("Antminer S21 Pro", "sha256d", 234 * TH, 3510, "Bitmain spec sheet (REFERENCE.md)"),
    # Scrypt ASICs.
    Hardware("Antminer L9", "scrypt", 16 * GH, 3300, "Bitmain spec sheet (REFERENCE.md)"),
    Hardware(
        "Antminer L3+", "scrypt", 504 * MH, 800, "Bitmain spec sheet, 2017 (estimate, not in REF)"
    ),
    # Ethash-family GPUs (Ethereum Classic and forks after the Merge).
    Hardware("RTX 3060 Ti", "ethash", 60 * MH, 120, "public GPU benchmarks (REFERENCE.md)"),
    Hardware(
        "RX 580 8GB", "ethash", 30 * MH, 150, "public GPU benchmarks (estimate, not in REFERENCE)"
    ),
    # Equihash 200,9 (ZCash): ASIC and GPU classes.
    Hardware("Antminer Z15", "equihash", 420 * KH, 1510, "Bitmain spec sheet (not in REF)"),
    Hardware("GTX 1080 Ti", "equihash", 700, 250, "public GPU benchmarks (estimate, not in REF)"),
    # RandomX (Monero) on CPUs: no vendor figure exists. Bounds from XMRig's guidance of
    # ~4-6 kH/s per DDR4 channel: a dual-channel 16-core desktop (~12 kH/s at ~150 W package
    # power) and a low-power laptop CPU in light mode (~300 H/s at ~25 W). Estimates; say so.
    Hardware("desktop CPU (estimate)", "randomx", 12 * KH, 150, "XMRig guide + CPU TDP, estimate"),
    Hardware("laptop CPU (estimate)", "randomx", 300, 25, "XMRig light mode + CPU TDP, estimate"),
    # CryptoNight variants (pre-2019 Monero, still mined on other coins): CPU/GPU class.
    Hardware("CPU (CryptoNight, estimate)", "cryptonight", 600, 95, "CPU TDP, estimate"),
    Hardware("GPU (CryptoNight, estimate)", "cryptonight", 2 * KH, 150, "GPU TDP, estimate"),
    # KawPow (Ravencoin) GPUs.
    Hardware("RTX 3060 Ti (KawPow)", "kawpow", 29 * MH, 150, "public GPU benchmarks, estimate"),
)

# Coins to their proof-of-work algorithm.
COIN_ALGO: dict[str, str] = {
    "btc": "sha256d",
    "bch": "sha256d",
    "bsv": "sha256d",
    "ltc": "scrypt",
    "doge": "scrypt",
    "eth": "ethash",
    "etc": "ethash",
    "zec": "equihash",
    "zen": "equihash",
    "xmr": "randomx",
    "rvn": "kawpow",
}

# Miner-side algorithm names (XMRig's `algo` field and friends) to the families above.
_ALGO_ALIASES: dict[str, str] = {
    "sha256": "sha256d",
    "sha256d": "sha256d",
    "scrypt": "scrypt",
    "ethash": "ethash",
    "etchash": "ethash",
    "equihash": "equihash",
    "kawpow": "kawpow",
    "randomx": "randomx",
    "cryptonight": "cryptonight",
}


def algo_family(name: str | None) -> str | None:
    """Map a miner's algorithm name (``rx/0``, ``cn/r``, ``etchash``...) to a family."""
    if not name:
        return None
    n = name.strip().lower()
    if n.startswith(("rx/", "randomx")):
        return "randomx"
    if n.startswith(("cn/", "cn-", "cryptonight")) or n == "cn":
        return "cryptonight"
    if n.startswith("kawpow"):
        return "kawpow"
    if n.startswith("equihash"):
        return "equihash"
    return _ALGO_ALIASES.get(n)


def _bounds(algo: str) -> tuple[float, float] | None:
    effs = [h.j_per_hash for h in HARDWARE if h.algo == algo]
    if not effs:
        return None
    return min(effs), max(effs)


def power_w_range(algo: str | None, hashrate_hs: float | None) -> tuple[float, float] | None:
    """Electrical power (W) that sustains ``hashrate_hs`` on the best and worst hardware."""
    fam = algo_family(algo) if algo else None
    if fam is None or hashrate_hs is None or hashrate_hs <= 0:
        return None
    b = _bounds(fam)
    if b is None:
        return None
    return hashrate_hs * b[0], hashrate_hs * b[1]


def hashrate_range(algo: str, power_w: float) -> tuple[float, float] | None:
    """Hash rate (H/s) that ``power_w`` watts buys, worst hardware to best hardware."""
    fam = algo_family(algo)
    if fam is None or power_w <= 0:
        return None
    b = _bounds(fam)
    if b is None:
        return None
    return power_w / b[1], power_w / b[0]


def algorithms() -> list[str]:
    """The algorithm families with at least one hardware figure."""
    return sorted({h.algo for h in HARDWARE})


def format_rate(hs: float, algo: str | None = None) -> str:
    """A hash rate for people: ``1.2 TH/s`` (``Sol/s`` for Equihash)."""
    unit = "Sol/s" if algo_family(algo) == "equihash" else "H/s"
    for scale, prefix in ((1e15, "P"), (TH, "T"), (GH, "G"), (MH, "M"), (KH, "k")):
        if hs >= scale:
            return f"{hs / scale:.3g} {prefix}{unit}"
    return f"{hs:.3g} {unit}"

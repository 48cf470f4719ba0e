"""Mining-pool intelligence lists in the formats people have, read into domains and networks.

Recognised, line by line (a file may mix them): plain domain lists, hosts files
(``0.0.0.0 pool.example.com``), adblock filters (``||pool.example.com^`` with options),
IP addresses and CIDR networks, and minewatch's own ``domain coin[,coin]`` form. ``#`` and
``!`` start comments. Lines that are none of these are counted as rejected with the reason
(and written to a quarantine when one is given), so read = accepted + rejected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from minewatch.errors import InputError, Quarantine

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_HOSTS_ADDR = {"0.0.0.0", "127.0.0.1", "::", "::1", "::0"}


@dataclass
class IntelList:
    """Domains (with optional coin hints) and IP networks from one or more lists."""

    domains: dict[str, str | None] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # domain or network -> list name
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    read: int = 0
    accepted: int = 0
    rejected: int = 0

    def merge(self, other: IntelList) -> None:
        for d, coin in other.domains.items():
            if self.domains.get(d) is None:
                self.domains[d] = coin
                self.origin[d] = other.origin.get(d, "")
        for k, v in other.origin.items():
            self.origin.setdefault(k, v)
        self.networks.extend(other.networks)
        self.sources.extend(other.sources)
        self.read += other.read
        self.accepted += other.accepted
        self.rejected += other.rejected


def _domain(text: str) -> str | None:
    d = text.strip().strip(".").lower()
    if d.startswith("*."):
        d = d[2:]
    if len(d) > 253 or "." not in d:
        return None
    labels = d.split(".")
    if not all(_LABEL.match(lab) for lab in labels) or labels[-1].isdigit():
        return None
    return d


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def parse_lines(lines: list[str], name: str, quarantine: Quarantine | None = None) -> IntelList:
    """Parse the lines of one list (see the module docstring for the formats)."""
    out = IntelList(sources=[name])
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#!" or line.startswith("[Adblock"):
            continue
        out.read += 1
        reason = None
        if line.startswith("||"):
            body = re.split(r"[\^/$]", line[2:], maxsplit=1)[0]
            d = _domain(body)
            if d:
                out.domains.setdefault(d, None)
            else:
                reason = "adblock rule names no domain"
        else:
            line = line.split("#", 1)[0].strip()
            parts = line.split()
            if len(parts) >= 2 and parts[0] in _HOSTS_ADDR:
                d = _domain(parts[1])
                if d:
                    out.domains.setdefault(d, None)
                else:
                    reason = "hosts entry names no valid domain"
            elif len(parts) >= 1 and (net := _network(parts[0])) is not None:
                out.networks.append(net)
            elif len(parts) in (1, 2) and (d := _domain(parts[0])):
                coin = parts[1].lower() if len(parts) == 2 and parts[1] != "-" else None
                out.domains[d] = coin
            else:
                reason = "not a domain, IP address, network, hosts or adblock entry"
        if reason:
            out.rejected += 1
            if quarantine is not None:
                quarantine.reject("intel", f"{name}:{no}", reason, raw.rstrip("\n"))
        else:
            out.accepted += 1
    out.origin = dict.fromkeys(out.domains, name)
    out.origin.update((str(n), name) for n in out.networks)
    return out


def load_list(path: str | Path, quarantine: Quarantine | None = None) -> IntelList:
    """Read one list file. Raises InputError for a file that is not a text list at all."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise InputError("no such file", path=p, hint="check the path") from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=p) from exc
    if b"\x00" in data[:4096]:
        raise InputError(
            "binary data, not a text list",
            path=p,
            hint="give a domain list, hosts file, adblock list or IP list",
        )
    text = data.decode("utf-8", errors="replace")
    return parse_lines(text.splitlines(), str(p), quarantine)


def default_list() -> IntelList:
    """The small curated list of major pools shipped with minewatch."""
    text = resources.files("minewatch.data").joinpath("pools.txt").read_text(encoding="utf-8")
    return parse_lines(text.splitlines(), "minewatch:pools.txt")

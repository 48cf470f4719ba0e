"""Matching names and addresses seen in traffic against pool intelligence.

A domain matches when it or any parent domain is listed (``xmr.pool.example`` matches a
listed ``pool.example``). Addresses match listed IPs and networks. A hit alone is weak
evidence: lists also name exchanges and general crypto sites, and pools sit on shared CDNs.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass

from minewatch.sources.intel import IntelList, default_list

# Ports pools listen on (Falco's list, REFERENCE.md), plus 80 and 443 which pools offer to
# blend in. A hint for the reasons, never evidence on its own.
MINER_PORTS = frozenset(
    {25, 3333, 3334, 3335, 3336, 3357, 4444, 5555, 5556, 5588, 5730, 6099, 6666, 7777, 7778}
    | {8000, 8001, 8008, 8080, 8118, 8333, 8888, 8899, 9332, 9999, 14433, 14444, 45560, 45700}
)


@dataclass(frozen=True)
class IntelHit:
    kind: str  # "domain" or "ip"
    matched: str  # the listed entry that matched
    coin: str | None
    source: str


class PoolIntel:
    """A lookup structure over one or more :class:`IntelList` s."""

    def __init__(self, lists: list[IntelList] | None = None, *, with_default: bool = True):
        merged = IntelList()
        if with_default:
            merged.merge(default_list())
        for lst in lists or []:
            merged.merge(lst)
        self.domains = merged.domains
        self.origin = merged.origin
        v4 = sorted(
            (int(n.network_address), int(n.broadcast_address), str(n))
            for n in merged.networks
            if n.version == 4
        )
        self._v4_start = [a for a, _, _ in v4]
        self._v4_name = [name for _, _, name in v4]
        # Running maximum of range ends: an address is inside some listed network exactly
        # when it is not beyond the furthest end among the ranges starting at or before it.
        self._v4_reach: list[tuple[int, int]] = []
        best = (-1, -1)
        for i, (_, hi, _) in enumerate(v4):
            if hi > best[0]:
                best = (hi, i)
            self._v4_reach.append(best)
        self._v6 = [n for n in merged.networks if n.version == 6]
        self.size = len(self.domains) + len(merged.networks)
        # Address text -> hit: a scan asks about the same servers again and again.
        self._ip_cache: dict[str, IntelHit | None] = {}

    def match_domain(self, name: str | None) -> IntelHit | None:
        if not name:
            return None
        labels = name.strip(".").lower().split(".")
        for i in range(len(labels) - 1):
            cand = ".".join(labels[i:])
            if cand in self.domains:
                return IntelHit("domain", cand, self.domains[cand], self.origin.get(cand, ""))
        return None

    def match_ip(self, ip: str | None) -> IntelHit | None:
        if not ip:
            return None
        try:
            return self._ip_cache[ip]
        except KeyError:
            pass
        if len(self._ip_cache) >= 1 << 16:
            self._ip_cache.clear()
        hit = self._ip_cache[ip] = self._match_ip(ip)
        return hit

    def _match_ip(self, ip: str) -> IntelHit | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if addr.version == 4:
            i = bisect.bisect_right(self._v4_start, int(addr)) - 1
            if i >= 0 and int(addr) <= self._v4_reach[i][0]:
                name = self._v4_name[self._v4_reach[i][1]]
                return IntelHit("ip", name, None, self.origin.get(name, ""))
            return None
        for n in self._v6:
            if addr in n:
                return IntelHit("ip", str(n), None, self.origin.get(str(n), ""))
        return None

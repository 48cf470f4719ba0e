"""Pool lists in the formats people have."""

from __future__ import annotations

from pathlib import Path

import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.net.intel import PoolIntel
from minewatch.sources.intel import default_list, load_list, parse_lines

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "intel"


def test_every_format_in_one_file(tmp_path: Path) -> None:
    lines = [
        "# comment",
        "! adblock comment",
        "pool.one.example",
        "0.0.0.0 pool.two.example",
        "127.0.0.1 pool.three.example # inline comment",
        "||pool.four.example^$third-party",
        "*.pool.five.example",
        "203.0.113.7",
        "198.51.100.0/24",
        "2001:db8:77::/48",
        "xmr.pool.six.example xmr",
        "this is not an entry",
        "||^",
    ]
    q = Quarantine(tmp_path / "q.jsonl")
    lst = parse_lines(lines, "mixed.txt", q)
    q.close()
    assert lst.read == lst.accepted + lst.rejected == 11
    assert lst.rejected == 2 and q.total == 2
    assert "mixed.txt:12" in (tmp_path / "q.jsonl").read_text()
    intel = PoolIntel([lst], with_default=False)
    for name in (
        "a.pool.one.example",
        "pool.two.example",
        "pool.three.example",
        "x.pool.four.example",
        "pool.five.example",
    ):
        assert intel.match_domain(name) is not None, name
    assert intel.match_domain("one.example") is None
    assert intel.match_ip("203.0.113.7") and intel.match_ip("198.51.100.200")
    assert intel.match_ip("2001:db8:77::1") and not intel.match_ip("203.0.113.8")
    assert intel.match_domain("xmr.pool.six.example").coin == "xmr"


def test_shared_coinblocker_lists() -> None:
    domains = load_list(SHARED / "coinblocker-list.txt")
    ips = load_list(SHARED / "coinblocker-mining-server-ips.txt")
    assert domains.accepted > 5000 and domains.read == domains.accepted + domains.rejected
    assert ips.accepted > 1000 and ips.rejected == 0
    intel = PoolIntel([domains, ips])
    hit = intel.match_domain("xmr.suprnova.cc")
    assert hit is not None and "coinblocker" in hit.source


def test_default_list_names_major_pools_with_coins() -> None:
    lst = default_list()
    assert lst.rejected == 0 and lst.domains["supportxmr.com"] == "xmr"


def test_binary_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(InputError, match="binary"):
        load_list(p)

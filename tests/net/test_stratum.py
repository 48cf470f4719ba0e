"""Units of the protocol reader: logins, difficulties, dialect markers."""

from __future__ import annotations

import pytest

from minewatch.net import hashrate as hr
from minewatch.net.stratum import StratumState, coin_from_host, split_login

XMR = "4" + "A" * 94
ETH = "0x9c99d212f7e5daa18ab50810e0fd255d1f04303b"


@pytest.mark.parametrize(
    "login, expected",
    [
        (f"{ETH}/kvetak.worker1/ivesely@mailinator", (ETH, "kvetak.worker1", "eth")),
        (f"{XMR}+1000", (XMR, None, "xmr")),
        (f"{XMR}.rig7", (XMR, "rig7", "xmr")),
        (
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080.w7",
            ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "w7", "btc"),
        ),
        (f"{ETH}@OptionalRigName", (ETH, "OptionalRigName", "eth")),
        ("kvetak.worker1", ("kvetak", "worker1", None)),
        ("Bitcoin", ("Bitcoin", None, None)),
        ("", (None, None, None)),
    ],
)
def test_split_login(login: str, expected: tuple[str | None, str | None, str | None]) -> None:
    assert split_login(login) == expected


def test_difficulty_rules_from_reference() -> None:
    assert hr.cryptonote_difficulty("b88d0600") == pytest.approx(10_000, rel=1e-4)
    assert hr.cryptonote_difficulty("dc460300") == pytest.approx(20_000, rel=1e-4)
    assert hr.cryptonote_difficulty("zz") is None and hr.cryptonote_difficulty("00000000") is None
    assert hr.hashes_from_difficulty(1.0) == 2**32
    assert hr.hashes_from_difficulty(1.0, "scrypt") == 2**16
    diff1 = "00000000ffff" + "0" * 52
    assert hr.hashes_from_target256(diff1) == pytest.approx(2**32, rel=1e-4)
    # REFERENCE.md: 5 submits in 56.5 s at 10k is about 885 H/s over the whole span.
    shares = [(i * 56.5 / 4, 10_000.0) for i in range(5)]
    assert hr.estimate_hashrate(shares) == pytest.approx(4 * 10_000 / 56.5)
    assert hr.estimate_hashrate(shares[:1]) is None


def test_ethereum_stratum_dialect() -> None:
    st = StratumState()
    st.on_line(
        0.0,
        True,
        b'{"id":1,"method":"mining.subscribe","params":["EthMiner/0.19","EthereumStratum/1.0.0"]}',
    )
    st.on_line(
        0.1,
        False,
        b'{"id":1,"result":[["mining.notify","ae6812eb4cd7735a","EthereumStratum/1.0.0"],"080c"],"error":null}',
    )
    st.on_line(
        0.2,
        True,
        b'{"id":2,"method":"mining.authorize","params":["' + ETH.encode() + b'.rig","x"]}',
    )
    st.on_line(0.3, False, b'{"id":2,"result":true,"error":null}')
    st.on_line(0.4, False, b'{"id":null,"method":"mining.set_difficulty","params":[0.5]}')
    st.on_line(
        0.5,
        False,
        b'{"id":null,"method":"mining.notify","params":["bf0488aa","abad8f","645cf20198c2f3861e947d4f67e3ab63b7b2e24dcc9095bd9123e7b33371f6cc",true]}',
    )
    for i in range(5):
        st.on_line(
            1.0 + i * 10,
            True,
            b'{"id":%d,"method":"mining.submit","params":["%s.rig","bf0488aa","6a909d9bbc0f"]}'
            % (10 + i, ETH.encode()),
        )
        st.on_line(1.1 + i * 10, False, b'{"id":%d,"result":true,"error":null}' % (10 + i))
    assert st.dialect() == "ethstratum" and st.is_mining
    assert st.share_counts() == {"submitted": 5, "accepted": 5, "rejected": 0}
    rate, _ = st.hashrate()
    assert rate == pytest.approx(4 * 0.5 * 2**32 / 40, rel=0.01)
    assert st.algo_family(None, 0.0) == "ethash"
    conf, reasons = st.confidence()
    assert conf == 0.99 and any("5 share(s) accepted" in r for r in reasons)


def test_show_message_reconnect_and_rejections() -> None:
    st = StratumState()
    st.on_line(0.0, True, b'{"id":1,"method":"mining.subscribe","params":["cgminer/4.12"]}')
    st.on_line(0.1, False, b'{"id":null,"method":"client.show_message","params":["maintenance"]}')
    st.on_line(
        0.2,
        False,
        b'{"id":null,"method":"mining.notify","params":["a","b","c","d",[],"e","f","g",true]}',
    )
    st.on_line(0.3, True, b'{"id":3,"method":"mining.submit","params":["w","a","0","0","0"]}')
    st.on_line(0.4, False, b'{"id":3,"result":null,"error":[23,"Low difficulty share",null]}')
    assert st.share_counts() == {"submitted": 1, "accepted": 0, "rejected": 1}
    assert st.server_methods["client.show_message"] == 1


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":1,"method":"server.version","params":["electrum/4.5","1.4"]}',
        b'{"id":2,"method":"blockchain.scripthash.subscribe","params":["ab"]}',
    ],
)
def test_wallet_methods_are_not_mining(line: bytes) -> None:
    st = StratumState()
    st.on_line(0.0, True, line)
    assert not st.is_mining and st.not_mining


def test_garbage_never_raises() -> None:
    st = StratumState()
    for line in (
        b"{",
        b"[1,2",
        b"null",
        b"42",
        b'{"method": 5}',
        b'{"id":1,"method":"login","params":7}',
        b'{"id":1,"method":"eth_submitLogin","params":[7]}',
        b'{"method":"mining.set_target","params":["zz"]}',
        b'{"method":"job","params":{"target":"zz"}}',
        b"\xff\xfe",
    ):
        st.on_line(0.0, True, line)
        st.on_line(0.0, False, line)
    assert st.bad_json >= 2


def test_coin_from_host() -> None:
    assert coin_from_host("xmr-eu1.nanopool.org") == "xmr"
    assert coin_from_host("zec-eu.suprnova.cc") == "zec"
    assert coin_from_host("monero.herominers.com") == "xmr"
    assert coin_from_host("pool.example.com") is None

"""The pcap/pcapng reader on good, damaged and unusable input."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from minewatch.errors import InputError
from minewatch.lab import traffic as T
from minewatch.sources.pcap import ReadStats, read_batches

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pcap"


def count(data: bytes) -> tuple[int, ReadStats]:
    st = ReadStats("test")
    n = sum(len(b) for b in read_batches(io.BytesIO(data), st))
    return n, st


def sample() -> bytes:
    return T.write_pcap([T.cryptonote_session(shares=5)])


def test_reads_every_packet() -> None:
    n, st = count(sample())
    assert n == st.packets == 3 + 2 + 10 + 3 and not st.notes


def test_pcapng_with_several_interfaces_and_nanosecond_resolution() -> None:
    n, st = count((SHARED / "benign" / "capwap_data.pcapng").read_bytes())
    assert st.format == "pcapng" and n > 0


def test_truncated_file_keeps_what_came_before() -> None:
    data = sample()
    n, st = count(data[:-10])
    assert st.truncated and n == 17
    assert "cut short" in st.notes[-1]


def test_corrupt_record_header_is_skipped_and_reading_resumes() -> None:
    data = bytearray(sample())
    # Damage the 4th record's captured length (records start after the 24-byte header).
    off = 24
    for _ in range(3):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 0x7FFF_FFFF)
    n, st = count(bytes(data))
    assert st.corrupt_records == 1 and st.skipped_bytes > 0
    assert 15 <= n < 18  # only the damaged record is lost


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"hello, this is a text file\nnot a capture\n", "text file"),
        (os.urandom(4096), "not a pcap"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "cut short"),
    ],
    ids=["empty", "text", "random", "header-cut"],
)
def test_unusable_input_raises_a_clear_error(data: bytes, words: str) -> None:
    with pytest.raises(InputError) as err:
        count(data)
    assert words in str(err.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_batches(tmp_path / "nope.pcap"))
    with pytest.raises(InputError, match="directory"):
        list(read_batches(tmp_path))


def test_fuzzed_captures_do_not_crash() -> None:
    for p in sorted((SHARED / "benign").glob("*fuzz*")):
        st = ReadStats(str(p))
        sum(len(b) for b in read_batches(p, st))

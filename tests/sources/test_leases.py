"""Lease sources: every record format, and the bad records the issue names."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.schema import LEASES
from minewatch.sources.leases import (
    empty_leases,
    find_overlaps,
    map_identities,
    read_cgnat_log,
    read_dhcpd_leases,
    read_kea_csv,
    read_leases,
    read_radius_detail,
    sniff_format,
)

UTC = dt.UTC


def T(h: int, m: int = 0, s: int = 0, day: int = 25) -> dt.datetime:
    return dt.datetime(2026, 11, day, h, m, s, tzinfo=UTC)


def epoch(t: dt.datetime) -> int:
    return int(t.timestamp())


def radius_record(
    status: str,
    sid: str,
    t: dt.datetime,
    *,
    ip: str | None = "10.0.0.5",
    user: str | None = "alice",
    nas: str = "192.0.2.1",
    session_time: int | None = None,
    server: dt.datetime | None = None,
    delay: int = 0,
    event_style: str = "text",
) -> str:
    srv = server or (t + dt.timedelta(seconds=delay))
    lines = [srv.strftime("%a %b %d %H:%M:%S %Y")]
    lines.append(f"\tAcct-Status-Type = {status}")
    lines.append(f'\tAcct-Session-Id = "{sid}"')
    if user is not None:
        lines.append(f'\tUser-Name = "{user}"')
    if ip is not None:
        lines.append(f"\tFramed-IP-Address = {ip}")
    lines.append('\tCalling-Station-Id = "aa-bb-cc-00-11-22"')
    lines.append(f"\tNAS-IP-Address = {nas}")
    if event_style == "text":
        lines.append(f'\tEvent-Timestamp = "{t.strftime("%b %d %Y %H:%M:%S")} UTC"')
    else:
        lines.append(f"\tEvent-Timestamp = {epoch(t)}")
    if session_time is not None:
        lines.append(f"\tAcct-Session-Time = {session_time}")
    lines.append(f"\tAcct-Delay-Time = {delay}")
    lines.append(f"\tTimestamp = {epoch(srv)}")
    return "\n".join(lines) + "\n\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_radius_start_interim_stop_make_one_lease(tmp_path: Path) -> None:
    text = (
        radius_record("Start", "S1", T(8))
        + radius_record("Interim-Update", "S1", T(9), session_time=3600)
        + radius_record("Stop", "S1", T(10), session_time=7200, event_style="epoch")
        + radius_record("Start", "S2", T(10, 0, 5), ip="10.0.0.9")
    )
    load = read_radius_detail(write(tmp_path, "detail", text))
    assert (load.read, load.accepted, load.rejected) == (4, 4, 0)
    rows = load.leases.sort("start").to_dicts()
    assert rows[0]["ip"] == "10.0.0.5" and rows[0]["subscriber_id"] == "alice"
    assert rows[0]["start"] == T(8) and rows[0]["end"] == T(10)
    assert rows[0]["note"] is None
    # Start without Stop: open session, end estimated, said so.
    assert rows[1]["ip"] == "10.0.0.9" and "start without stop" in rows[1]["note"]
    table = load.to_arrow()
    assert isinstance(table, pa.Table) and table.schema.equals(LEASES)


def test_radius_stop_without_start_uses_session_time(tmp_path: Path) -> None:
    text = radius_record("Stop", "S9", T(12), session_time=1800) + radius_record(
        "Stop", "S10", T(12), ip="10.0.0.7"
    )
    q = Quarantine(path=tmp_path / "q.jsonl")
    load = read_radius_detail(write(tmp_path, "detail", text), quarantine=q)
    q.close()
    assert load.read == 2 and load.accepted + load.rejected == 2
    assert load.leases.height == 1
    row = load.leases.row(0, named=True)
    assert row["start"] == T(11, 30) and row["end"] == T(12)
    assert "stop without start" in row["note"]
    lines = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and "without Acct-Session-Time" in lines[0]["reason"]
    assert lines[0]["where"].endswith("line 13")


def test_radius_duplicates_are_rejected_not_doubled(tmp_path: Path) -> None:
    start = radius_record("Start", "S1", T(8))
    retransmit = radius_record("Start", "S1", T(8), delay=3)
    stop = radius_record("Stop", "S1", T(9), session_time=3600)
    load = read_radius_detail(write(tmp_path, "detail", start + retransmit + stop))
    assert load.read == 3 and load.rejected == 1
    assert load.reasons == {"duplicate record (retransmission)": 1}
    assert load.leases.height == 1


def test_radius_session_id_reused_with_other_user_is_not_merged(tmp_path: Path) -> None:
    text = radius_record("Start", "S1", T(8), user="alice") + radius_record(
        "Start", "S1", T(8, 30), user="bob", ip="10.0.0.6"
    )
    load = read_radius_detail(write(tmp_path, "detail", text))
    assert sorted(load.leases["subscriber_id"].to_list()) == ["alice", "bob"]


def test_radius_clock_skew_on_one_nas_is_corrected(tmp_path: Path) -> None:
    # NAS 192.0.2.9 runs one hour slow: its Event-Timestamps are 3600 s behind the server.
    skew = dt.timedelta(hours=1)
    text = ""
    for i, h in enumerate((8, 9, 10)):
        text += radius_record(
            "Start", f"K{i}", T(h) - skew, nas="192.0.2.9", server=T(h), ip=f"10.9.0.{i}"
        )
        text += radius_record(
            "Stop",
            f"K{i}",
            T(h, 30) - skew,
            nas="192.0.2.9",
            server=T(h, 30),
            ip=f"10.9.0.{i}",
            session_time=1800,
        )
    text += radius_record("Start", "OK", T(8), nas="192.0.2.1")
    load = read_radius_detail(write(tmp_path, "detail", text))
    skewed = load.leases.filter(load.leases["ip"] == "10.9.0.0").row(0, named=True)
    assert skewed["start"] == T(8) and skewed["end"] == T(8, 30)
    assert "clock skew corrected" in skewed["note"]
    ok = load.leases.filter(load.leases["ip"] == "10.0.0.5").row(0, named=True)
    assert ok["start"] == T(8)


def test_radius_single_record_far_off_uses_server_time(tmp_path: Path) -> None:
    text = (
        radius_record("Start", "A", T(8))
        + radius_record("Stop", "A", T(9), session_time=3600)
        + radius_record("Start", "B", T(1), server=T(9, 5), ip="10.0.0.8")
        + radius_record("Stop", "B", T(10), ip="10.0.0.8", session_time=3300)
    )
    load = read_radius_detail(write(tmp_path, "detail", text))
    b = load.leases.filter(load.leases["ip"] == "10.0.0.8").row(0, named=True)
    assert b["start"] == T(9, 5)
    assert "server time used" in b["note"]


def test_radius_bad_records_are_quarantined_with_reasons(tmp_path: Path) -> None:
    text = (
        radius_record("Start", "S1", T(8), ip=None)
        + radius_record("Start", "S2", T(8), user=None, ip="10.0.0.2")
        + radius_record("Accounting-On", "S3", T(8))
        + "Wed Nov 25 08:00:00 2026\n\tFramed-IP-Address = 10.0.0.3\n\n"
        + radius_record("Start", "S4", T(8), ip="not-an-ip")
    )
    load = read_radius_detail(write(tmp_path, "detail", text))
    assert load.read == 5 and load.rejected == 5 and load.leases.height == 0
    assert set(load.reasons) == {
        "no Framed-IP-Address",
        "no User-Name",
        "not a session record (Acct-Status-Type Accounting-On)",
        "no Acct-Status-Type",
        "Framed-IP-Address is not an IP address",
    }


def test_radius_open_session_is_cut_at_next_session_on_same_ip(tmp_path: Path) -> None:
    text = (
        radius_record("Start", "A", T(8), user="alice")
        + radius_record("Start", "B", T(12), user="bob")
        + radius_record("Stop", "B", T(13), user="bob", session_time=3600)
    )
    load = read_radius_detail(write(tmp_path, "detail", text))
    a = load.leases.filter(load.leases["subscriber_id"] == "alice").row(0, named=True)
    assert a["end"] <= T(12)
    assert find_overlaps(load.leases).height == 0


def test_not_a_detail_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        read_radius_detail(write(tmp_path, "x", "\tjust = indented\n"))
    assert "detail" in str(exc.value)


DHCPD = """\
# The format of this file is documented in the dhcpd.leases(5) manual page.
lease 10.0.0.5 {
  starts 3 2026/11/25 08:00:00;
  ends 3 2026/11/25 20:00:00;
  binding state active;
  hardware ethernet AA:BB:CC:00:00:01;
  client-hostname "desk1";
}
lease 10.0.0.5 {
  starts 3 2026/11/25 08:00:00;
  ends 4 2026/11/26 08:00:00;
  binding state active;
  hardware ethernet aa:bb:cc:00:00:01;
}
lease 10.0.0.6 {
  starts epoch 1795593600; # Wed Nov 25 08:00:00 2026
  ends never;
  hardware ethernet aa:bb:cc:00:00:02;
}
lease 10.0.0.7 {
  starts 3 2026/11/25 08:00:00;
  ends 3 2026/11/25 09:00:00;
  binding state free;
}
lease 10.0.0.8 {
  starts 3 garbage;
  hardware ethernet aa:bb:cc:00:00:03;
}
"""


def test_dhcpd_last_block_wins_and_bad_blocks_are_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "dhcpd.leases", DHCPD)
    assert sniff_format(p) == "dhcpd"
    load = read_dhcpd_leases(p)
    assert load.read == 5 and load.rejected == 2
    assert load.reasons == {"no client identity (hardware)": 1, "no usable 'starts' time": 1}
    rows = {r["ip"]: r for r in load.leases.to_dicts()}
    assert rows["10.0.0.5"]["end"] == T(8, day=26)
    assert rows["10.0.0.5"]["subscriber_id"] == "aa:bb:cc:00:00:01"
    assert rows["10.0.0.6"]["start"] == T(8) and rows["10.0.0.6"]["end"] is None
    assert rows["10.0.0.6"]["note"] == "open lease (ends never)"


KEA = """\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context
10.1.0.5,aa:bb:cc:00:00:01,,3600,{e1},1,0,0,h1,0,
10.1.0.5,aa:bb:cc:00:00:01,,3600,{e2},1,0,0,h1,0,
10.1.0.5,aa:bb:cc:00:00:01,,0,{e3},1,0,0,h1,0,
10.1.0.5,aa:bb:cc:00:00:09,,3600,{e4},1,0,0,h9,0,
10.1.0.6,aa:bb:cc:00:00:02,,3600,{e1},1,0,0,h2,1,
10.1.0.7,,,3600,{e1},1,0,0,,0,
10.1.0.8,aa:bb:cc:00:00:03,,3600,notatime,1,0,0,,0,
10.1.0.9,aa:bb:cc:00:00:04,,0,{e1},1,0,0,,0,
"""


def test_kea_renewals_merge_and_releases_close(tmp_path: Path) -> None:
    text = KEA.format(e1=epoch(T(9)), e2=epoch(T(9, 30)), e3=epoch(T(9, 40)), e4=epoch(T(11)))
    p = write(tmp_path, "kea-leases4.csv", text)
    assert sniff_format(p) == "kea"
    load = read_kea_csv(p)
    assert load.read == 8 and load.accepted + load.rejected == 8
    assert load.reasons == {
        "declined address (state 1), not held by a client": 1,
        "no client identity (hwaddr)": 1,
        "expire is not an epoch time": 1,
        "release without a preceding lease": 1,
    }
    rows = load.leases.sort("start").to_dicts()
    assert [r["subscriber_id"] for r in rows] == ["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:09"]
    assert rows[0]["start"] == T(8) and rows[0]["end"] == T(9, 40)
    assert rows[1]["start"] == T(10) and rows[1]["end"] == T(11)


def test_cgnat_simple_csv(tmp_path: Path) -> None:
    text = (
        "event,ts,private_ip,public_ip,port_lo,port_hi\n"
        "alloc,2026-11-25T08:00:00Z,100.64.0.5,203.0.113.7,1024,1535\n"
        "alloc,2026-11-25T08:00:01Z,100.64.0.6,203.0.113.7,1536,2047\n"
        "release,2026-11-25T10:00:00Z,100.64.0.5,203.0.113.7,1024,1535\n"
        "release,2026-11-25T10:00:00Z,100.64.0.9,203.0.113.7,4096,4607\n"
        "alloc,2026-11-25T10:00:00Z,100.64.0.7,203.0.113.7,2000,1000\n"
    )
    p = write(tmp_path, "cgnat.csv", text)
    assert sniff_format(p) == "cgnat"
    load = read_cgnat_log(p)
    assert load.read == 5 and load.rejected == 2
    assert set(load.reasons) == {"release without allocation of that block", "bad port range"}
    rows = load.leases.sort("port_lo").to_dicts()
    assert rows[0]["subscriber_id"] == "nat:100.64.0.5"
    assert (rows[0]["port_lo"], rows[0]["port_hi"]) == (1024, 1535)
    assert rows[0]["end"] == T(10)
    assert rows[1]["note"] == "allocation without release: end estimated"


def test_cgnat_rfc8158_field_names(tmp_path: Path) -> None:
    t0 = epoch(T(8)) * 1000
    text = (
        "natEvent,observationTimeMilliseconds,sourceIPv4Address,postNATSourceIPv4Address,"
        "portRangeStart,portRangeEnd\n"
        f"16,{t0},100.64.1.1,198.51.100.2,1024,2047\n"
        f"17,{t0 + 3_600_000},100.64.1.1,198.51.100.2,1024,2047\n"
        f"4,{t0},100.64.1.1,198.51.100.2,1024,2047\n"
    )
    p = write(tmp_path, "ipfix-nat.csv", text)
    assert sniff_format(p) == "cgnat"
    load = read_leases(p)
    assert load.read == 3 and load.rejected == 1
    row = load.leases.row(0, named=True)
    assert row["ip"] == "198.51.100.2" and row["start"] == T(8) and row["end"] == T(9)


def test_cgnat_syslog_form(tmp_path: Path) -> None:
    text = (
        "<134>1 2026-11-25T08:00:00Z cgn01 nat - - - "
        "PBA ALLOC 100.64.2.2 -> 198.51.100.9:2048-2559\n"
        "Nov 25 09:00:00 cgn01 nat: PBA RELEASE 100.64.2.2 -> 198.51.100.9:2048-2559\n"
        "Nov 25 09:00:00 cgn01 nat: something unrelated\n"
    )
    p = write(tmp_path, "cgnat.log", text)
    assert sniff_format(p) == "cgnat"
    load = read_cgnat_log(p, year=2026)
    assert load.read == 3 and load.rejected == 1
    row = load.leases.row(0, named=True)
    assert row["start"] == T(8) and row["end"] == T(9) and row["port_lo"] == 2048


def test_canonical_csv_and_unknown_format(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "leases.csv",
        "ip,start,end,subscriber_id,port_lo,port_hi\n"
        "10.0.0.1,2026-11-25T08:00:00Z,2026-11-25T09:00:00Z,s1,,\n"
        "10.0.0.1,2026-11-25T10:00:00Z,2026-11-25T09:00:00Z,s2,,\n",
    )
    load = read_leases(p)
    assert load.leases.height == 1 and load.reasons == {"end before start": 1}
    with pytest.raises(InputError):
        read_leases(write(tmp_path, "what.txt", "hello\n"))


def test_overlapping_leases_are_found(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "leases.csv",
        "ip,start,end,subscriber_id,port_lo,port_hi\n"
        "10.0.0.1,2026-11-25T08:00:00Z,2026-11-25T10:00:00Z,s1,,\n"
        "10.0.0.1,2026-11-25T09:00:00Z,2026-11-25T11:00:00Z,s2,,\n"
        "10.0.0.2,2026-11-25T09:00:00Z,2026-11-25T11:00:00Z,s3,1024,2047\n"
        "10.0.0.2,2026-11-25T09:00:00Z,2026-11-25T11:00:00Z,s4,2048,3071\n",
    )
    ov = find_overlaps(read_leases(p).leases)
    assert ov.height == 1 and set(ov.row(0)[1:5:3]) == {"s1", "s2"}


def test_radius_open_session_with_interims_ends_one_interval_after_the_last(
    tmp_path: Path,
) -> None:
    text = (
        radius_record("Start", "I", T(0))
        + radius_record("Interim-Update", "I", T(8), session_time=8 * 3600)
        + radius_record("Interim-Update", "I", T(16), session_time=16 * 3600)
        + radius_record("Start", "J", T(10), ip="10.0.0.6", user="bob")
    )
    load = read_radius_detail(write(tmp_path, "detail", text))
    row = load.leases.filter(load.leases["subscriber_id"] == "alice").row(0, named=True)
    # no Acct-Interim-Interval: the observed 8-hour gap is the interval
    assert row["end"] == T(0, day=26)
    assert "start without stop" in row["note"]


def test_lease_identities_map_to_subscribers_in_any_mac_notation() -> None:
    leases = pl.DataFrame(
        {
            "ip": ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"],
            "start": [dt.datetime(2026, 11, 1, tzinfo=dt.UTC)] * 4,
            "end": [None] * 4,
            "subscriber_id": ["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02", "duid-7", "S9"],
            "port_lo": [None] * 4,
            "port_hi": [None] * 4,
            "source": ["dhcpd", "kea", "kea", "radius"],
            "note": [None, "renewed", None, None],
        },
        schema=empty_leases().schema,
    )
    subs = pl.DataFrame(
        {
            "subscriber_id": ["S1", "S2", "S3", "S4", "S9"],
            "hwaddr": ["AA-BB-CC-00-00-01", "aabb.cc00.0002", None, "aa:bb:cc:00:00:09", None],
            "duid": [None, None, "DUID-7", None, None],
        }
    )
    out, counts = map_identities(leases, subs)
    assert out["subscriber_id"].to_list() == ["S1", "S2", "S3", "S9"]
    assert counts == {"mapped": 3, "conflicting": 0}
    assert out["note"][1] == "renewed; hwaddr aa:bb:cc:00:00:02 → S2"
    assert out.columns == leases.columns
    # One hardware address listed for two subscribers is not used, and is counted.
    clash = pl.concat(
        [
            subs,
            pl.DataFrame(
                {"subscriber_id": ["S5"], "hwaddr": ["aa:bb:cc:00:00:01"], "duid": [None]}
            ),
        ]
    )
    out2, counts2 = map_identities(leases, clash)
    assert out2["subscriber_id"][0] == "aa:bb:cc:00:00:01"
    assert counts2 == {"mapped": 2, "conflicting": 1}

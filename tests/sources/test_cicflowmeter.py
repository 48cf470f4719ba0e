"""CICFlowMeter CSV under its three header styles, with damaged rows.

CICFlowMeter (Java) is not packaged for this machine; the CSVs are written by the test with
the headers the Java tool, the published CIC-IDS2017 files (leading spaces) and the Python
port (snake_case) use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from minewatch.errors import InputError, Quarantine
from minewatch.schema import FLOWS
from minewatch.sources.cicflowmeter import read_cicflowmeter

JAVA = (
    "Flow ID,Src IP,Src Port,Dst IP,Dst Port,Protocol,Timestamp,Flow Duration,Tot Fwd Pkts,"
    "Tot Bwd Pkts,TotLen Fwd Pkts,TotLen Bwd Pkts,Flow Byts/s,FIN Flag Cnt,SYN Flag Cnt,"
    "RST Flag Cnt,PSH Flag Cnt,ACK Flag Cnt,Label"
)
IDS2017 = (
    "Flow ID, Source IP, Source Port, Destination IP, Destination Port, Protocol, Timestamp,"
    " Flow Duration, Total Fwd Packets, Total Backward Packets,Total Length of Fwd Packets,"
    " Total Length of Bwd Packets,Flow Bytes/s,FIN Flag Count, SYN Flag Count, RST Flag Count,"
    " PSH Flag Count, ACK Flag Count, Label"
)
PY = (
    "src_ip,dst_ip,src_port,dst_port,protocol,timestamp,flow_duration,tot_fwd_pkts,tot_bwd_pkts,"
    "totlen_fwd_pkts,totlen_bwd_pkts,flow_byts_s,fin_flag_cnt,syn_flag_cnt,rst_flag_cnt,"
    "psh_flag_cnt,ack_flag_cnt"
)


def java_row(ts: str, dur: str = "600000000", src: str = "10.0.0.5") -> str:
    return f"f,{src},49152,198.51.100.7,3333,6,{ts},{dur},150,140,12000,48000,Infinity,1,1,0,1,1,BENIGN"  # noqa: E501


@pytest.mark.parametrize(
    ("header", "row"),
    [
        (JAVA, java_row("03/07/2017 08:55:58 AM")),
        (IDS2017, java_row("3/7/2017 8:55")),
        (
            PY,
            "10.0.0.5,198.51.100.7,49152,3333,6,2017-07-03 08:55:58,600000000,150,140,12000,48000,100.0,1,1,0,1,1",  # noqa: E501
        ),
    ],
)
def test_header_styles(tmp_path: Path, header: str, row: str) -> None:
    p = tmp_path / "flows.csv"
    p.write_text(header + "\n" + row + "\n")
    r = read_cicflowmeter(p)
    assert r.flows.schema.equals(FLOWS) and (r.read, r.accepted) == (1, 1)
    f = r.flows.to_pylist()[0]
    assert (f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"], f["proto"]) == (
        "10.0.0.5",
        "198.51.100.7",
        49152,
        3333,
        6,
    )
    assert (f["packets_up"], f["packets_down"], f["bytes_up"], f["bytes_down"]) == (
        150,
        140,
        12000,
        48000,
    )
    assert f["ts_start"].isoformat().startswith("2017-07-03T08:55")
    assert (f["ts_end"] - f["ts_start"]).total_seconds() == 600
    assert f["tcp_flags"] == 0x01 | 0x02 | 0x08 | 0x10


def test_damaged_rows(tmp_path: Path) -> None:
    rows = [
        java_row("03/07/2017 08:55:58 AM"),
        java_row("03/07/2017 08:55:58 AM", src=""),
        java_row("not a time"),
        java_row("03/07/2017 08:55:58 AM", dur="-5"),
        "f,10.0.0.9,1,10.0.0.8",  # a row cut short
    ]
    p = tmp_path / "flows.csv"
    p.write_text(JAVA + "\n" + "\n".join(rows) + "\n")
    q = Quarantine(tmp_path / "q.jsonl")
    r = read_cicflowmeter(p, quarantine=q)
    q.close()
    assert (r.read, r.accepted, r.rejected) == (5, 1, 4)
    assert dict(q.counts) == {
        "source or destination address missing": 1,
        "start time missing or unreadable": 2,  # the bad time, and the row cut short
        "negative flow duration": 1,
    }
    assert "flows.csv line 3" in (tmp_path / "q.jsonl").read_text()


def test_not_cicflowmeter(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="without src_ip, dst_ip, timestamp"):
        read_cicflowmeter(p)

"""Records that tie an IP address to a subscriber for a time, turned into canonical LEASES.

Formats (REFERENCE.md, "Records that tie an IP to a subscriber"):

``radius``
    FreeRADIUS accounting "detail" files: a time line, then ``Attribute = value`` lines, a
    blank line between records. Start / Interim-Update / Stop records of one session (key:
    NAS-IP-Address + Acct-Session-Id, or Acct-Unique-Session-Id) become one lease on its
    Framed-IP-Address; ``subscriber_id`` is User-Name (or another attribute, see
    ``subscriber_attr``).
``dhcpd``
    ISC ``dhcpd.leases``: ``lease IP { starts …; ends …; hardware ethernet …; }`` blocks;
    a later block with the same address and start supersedes an earlier one (renewals).
    ``subscriber_id`` is the hardware address (or ``uid`` / ``client-hostname``).
``kea``
    Kea memfile CSV (``address,hwaddr,client_id,valid_lifetime,expire,…``; DHCPv6 files
    with ``duid`` work too). start = expire - valid_lifetime; rows with valid_lifetime 0
    are releases and close the lease they follow.
``cgnat``
    Port-block allocation logs of a carrier-grade NAT, in either of two forms:

    * CSV. Simple form with columns ``event,ts,private_ip,public_ip,port_lo,port_hi``
      (``event`` is ``alloc`` or ``release``; ``ts`` is ISO 8601 or epoch seconds), or
      RFC 8158 IPFIX names ``natEvent,observationTimeMilliseconds,sourceIPv4Address,
      postNATSourceIPv4Address,portRangeStart,portRangeEnd`` (natEvent 16 = port block
      allocation, 17 = de-allocation, IANA "NAT Event Type" registry).
    * syslog lines ending in ``ALLOC|RELEASE <private_ip> -> <public_ip>:<lo>-<hi>``
      after an ISO 8601 or RFC 3164 time stamp.

    A block lease has ``ip`` = public address, ``port_lo``/``port_hi`` = the block and
    ``subscriber_id`` = ``nat:<private_ip>`` (resolved through the private address's own
    leases by :mod:`minewatch.fusion.attribution`) unless the log names a subscriber in a
    ``subscriber_id`` column.
``leases``
    Already canonical CSV/Parquet with the LEASES columns.

Bad records go to the :class:`~minewatch.errors.Quarantine` with the reason; what was
repaired (clock skew, Stop without Start, Start without Stop) is kept with a ``note`` on
the lease. ``read == accepted + rejected`` holds for every load, counted in records of the
input (RADIUS records, lease blocks, CSV rows, log lines).

Parsing is columnar: the text is split into lines once and every field is extracted with
Polars string expressions; sessions are assembled with group-bys, not a loop per record.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa

from minewatch.errors import InputError, Quarantine
from minewatch.schema import LEASES

Format = Literal["radius", "dhcpd", "kea", "cgnat", "leases"]
FORMATS: tuple[str, ...] = ("radius", "dhcpd", "kea", "cgnat", "leases")

_TS = pl.Datetime("us", "UTC")
FAR_FUTURE = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
LEASE_COLUMNS = ["ip", "start", "end", "subscriber_id", "port_lo", "port_hi", "source", "note"]


@dataclass
class LeaseLoad:
    """What one load produced: leases, record counts, and the notes on what was repaired."""

    leases: pl.DataFrame
    source: str
    path: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def to_arrow(self) -> pa.Table:
        """The canonical LEASES table (extra columns dropped)."""
        return to_arrow(self.leases)

    def summary(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.source,
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "leases": self.leases.height,
            "rejected_by_reason": dict(self.reasons),
            "repaired": dict(self.notes),
        }


def empty_leases() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "ip": pl.String,
            "start": _TS,
            "end": _TS,
            "subscriber_id": pl.String,
            "port_lo": pl.Int32,
            "port_hi": pl.Int32,
            "source": pl.String,
            "note": pl.String,
        }
    )


def to_arrow(leases: pl.DataFrame) -> pa.Table:
    return leases.select([c for c in LEASES.names]).to_arrow().cast(LEASES)


def _finish(
    df: pl.DataFrame,
    *,
    source: str,
    path: Path,
    read: int,
    rejected_frame: pl.DataFrame,
    quarantine: Quarantine | None,
) -> LeaseLoad:
    """Send rejected rows to the quarantine, count, and shape the lease frame."""
    q = quarantine if quarantine is not None else Quarantine()
    reasons: dict[str, int] = {}
    if rejected_frame.height:
        for row in rejected_frame.iter_rows(named=True):
            q.reject(f"leases.{source}", f"{path}:{row['where']}", row["reason"], row["record"])
        reasons = dict(rejected_frame.group_by("reason").len().sort("reason").iter_rows())
    out = df.select(
        pl.col("ip").cast(pl.String),
        pl.col("start").cast(_TS),
        pl.col("end").cast(_TS),
        pl.col("subscriber_id").cast(pl.String),
        pl.col("port_lo").cast(pl.Int32),
        pl.col("port_hi").cast(pl.Int32),
        pl.lit(source).alias("source"),
        pl.col("note").cast(pl.String),
    ).sort("ip", "start")
    notes: dict[str, int] = {}
    if out.height:
        n = out.filter(pl.col("note").is_not_null()).group_by("note").len()
        notes = {str(k): int(v) for k, v in n.iter_rows()}
    rejected = rejected_frame.height
    return LeaseLoad(
        leases=out,
        source=source,
        path=str(path),
        read=read,
        accepted=read - rejected,
        rejected=rejected,
        reasons=reasons,
        notes=notes,
    )


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path, hint="check the path") from exc
    return data.decode("utf-8", errors="replace")


def _epoch_to_ts(expr: pl.Expr, unit: Literal["s", "ms"] = "s") -> pl.Expr:
    return (
        pl.from_epoch(expr.cast(pl.Int64, strict=False), time_unit=unit)
        .dt.replace_time_zone("UTC")
        .cast(_TS)
    )


def _parse_time(expr: pl.Expr, tz: str) -> pl.Expr:
    """Epoch seconds, ISO 8601, or FreeRADIUS' ``Nov 25 2026 08:00:00 UTC`` / ctime forms.

    Times without a zone are read in ``tz``; an explicit ``UTC``/``GMT``/``Z`` wins.
    """
    s = expr.cast(pl.String).str.strip_chars().str.strip_chars('"')
    epoch = _epoch_to_ts(pl.when(s.str.contains(r"^\d{9,11}$")).then(s))
    iso = s.str.replace(r"Z$", "+00:00").str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="us", time_zone="UTC"
    )
    iso_plain = (
        s.str.replace("T", " ")
        .str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
        .dt.replace_time_zone(tz)
        .dt.convert_time_zone("UTC")
    )
    # "Nov 25 2026 08:00:00 UTC" (Event-Timestamp) and "Wed Nov 25 08:00:00 2026" (ctime).
    zone = s.str.extract(r"\s([A-Za-z]{3,4})$", 1)
    body = s.str.replace(r"\s[A-Za-z]{3,4}$", "")
    radius = body.str.to_datetime("%b %d %Y %H:%M:%S", strict=False, time_unit="us")
    ctime = body.str.to_datetime("%a %b %d %H:%M:%S %Y", strict=False, time_unit="us")
    local = pl.coalesce(radius, ctime)
    utc_named = zone.is_in(["UTC", "GMT"])
    as_utc = local.dt.replace_time_zone("UTC")
    as_local = local.dt.replace_time_zone(tz, ambiguous="earliest").dt.convert_time_zone("UTC")
    named = pl.when(utc_named).then(as_utc).otherwise(as_local)
    return pl.coalesce(epoch, iso, iso_plain, named).cast(_TS)


# --------------------------------------------------------------------------------------------
# RADIUS accounting (FreeRADIUS detail files)

_STATUS = {
    "start": "start",
    "1": "start",
    "stop": "stop",
    "2": "stop",
    "interim-update": "interim",
    "alive": "interim",
    "3": "interim",
}


def read_radius_detail(
    path: str | Path,
    *,
    quarantine: Quarantine | None = None,
    subscriber_attr: str = "User-Name",
    tz: str = "UTC",
    max_skew_s: float = 120.0,
    default_interim_s: float = 3600.0,
    max_session_s: float = 48 * 3600.0,
) -> LeaseLoad:
    """Assemble RADIUS accounting sessions into leases.

    Clock skew: a NAS's Event-Timestamp is compared with the server's receive time
    (``Timestamp``, else the record's time line) less Acct-Delay-Time. When the median
    difference over a NAS's records exceeds ``max_skew_s`` the NAS's times are shifted by it
    (note ``clock skew corrected``); single records still off by more are timed by the server.
    Duplicates (retransmissions: same session, status, time, IP, user) are rejected.
    Stop without Start: start = stop - Acct-Session-Time (note), rejected without it.
    Start without Stop: end = last Interim-Update + Acct-Interim-Interval (else the widest
    gap seen between the session's records, else ``default_interim_s``) when there was an
    Interim-Update, cut at the next session on the
    same IP and at ``max_session_s`` after the start (PPPoE sessions are re-dialled daily or
    every two days); note ``start without stop``.
    """
    p = Path(path)
    text = _read_text(p)
    lines = pl.Series("line", text.splitlines(), dtype=pl.String)
    df = pl.DataFrame({"line": lines}).with_row_index("lineno", offset=1)
    df = df.with_columns(
        blank=pl.col("line").str.strip_chars() == "",
        header=~pl.col("line").str.contains(r"^\s") & (pl.col("line").str.strip_chars() != ""),
    )
    df = df.with_columns(rec=pl.col("header").cum_sum())
    if df.filter(pl.col("header")).height == 0:
        if df.filter(~pl.col("blank")).height == 0:
            return _finish(
                empty_leases(),
                source="radius",
                path=p,
                read=0,
                rejected_frame=_no_rejects(),
                quarantine=quarantine,
            )
        raise InputError(
            "no record time line found; not a FreeRADIUS detail file",
            path=p,
            hint="pass --lease-format to name the format",
        )
    headers = df.filter(pl.col("header")).select(
        "rec", pl.col("lineno").alias("where_line"), pl.col("line").alias("header_line")
    )
    attrs = (
        df.filter(~pl.col("header") & ~pl.col("blank") & (pl.col("rec") > 0))
        .with_columns(
            pl.col("line").str.extract(r"^\s+([A-Za-z0-9][A-Za-z0-9:_.-]*)\s*=", 1).alias("k"),
            pl.col("line")
            .str.extract(r"^\s+[A-Za-z0-9][A-Za-z0-9:_.-]*\s*=\s*(.*?)\s*$", 1)
            .str.strip_chars('"')
            .alias("v"),
        )
        .filter(pl.col("k").is_not_null())
        .unique(subset=["rec", "k"], keep="first", maintain_order=True)
    )
    wanted = [
        "Acct-Status-Type",
        "Acct-Session-Id",
        "Acct-Unique-Session-Id",
        "Framed-IP-Address",
        "NAS-IP-Address",
        "Event-Timestamp",
        "Acct-Session-Time",
        "Acct-Delay-Time",
        "Acct-Interim-Interval",
        "Timestamp",
        subscriber_attr,
    ]
    wide = attrs.filter(pl.col("k").is_in(wanted)).pivot(
        on="k", index="rec", values="v", aggregate_function="first"
    )
    for col in wanted:
        if col not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    recs = headers.join(wide, on="rec", how="left")
    read = recs.height
    recs = recs.with_columns(
        status=pl.col("Acct-Status-Type").str.to_lowercase().replace_strict(_STATUS, default=None),
        sid=pl.coalesce(
            pl.col("Acct-Unique-Session-Id"),
            pl.concat_str(
                [pl.col("NAS-IP-Address").fill_null(""), pl.col("Acct-Session-Id")], separator="/"
            ),
        ),
        nas=pl.col("NAS-IP-Address").fill_null(""),
        ip=pl.col("Framed-IP-Address"),
        user=pl.col(subscriber_attr),
        event=_parse_time(pl.col("Event-Timestamp"), tz),
        server=pl.coalesce(
            _parse_time(pl.col("Timestamp"), tz), _parse_time(pl.col("header_line"), tz)
        ),
        delay=pl.col("Acct-Delay-Time").cast(pl.Float64, strict=False).fill_null(0.0),
        session_time=pl.col("Acct-Session-Time").cast(pl.Float64, strict=False),
        interim_s=pl.col("Acct-Interim-Interval").cast(pl.Float64, strict=False),
        record=pl.col("header_line"),
        where=pl.format("line {}", pl.col("where_line")),
    )
    # Fill a missing IP / user from the other records of the same session when unambiguous.
    recs = recs.with_columns(
        pl.col("ip").n_unique().over("sid").alias("_nip"),
        pl.col("user").drop_nulls().first().over("sid").alias("_user"),
        pl.col("ip").drop_nulls().first().over("sid").alias("_ip"),
        pl.col("ip").drop_nulls().n_unique().over("sid").alias("_nip_nn"),
    ).with_columns(
        ip=pl.when(pl.col("ip").is_null() & (pl.col("_nip_nn") == 1))
        .then(pl.col("_ip"))
        .otherwise(pl.col("ip")),
        user=pl.coalesce(pl.col("user"), pl.col("_user")),
    )
    # Reasons for rejection, in order of precedence.
    reason = (
        pl.when(pl.col("Acct-Status-Type").is_null())
        .then(pl.lit("no Acct-Status-Type"))
        .when(pl.col("status").is_null())
        .then(pl.format("not a session record (Acct-Status-Type {})", pl.col("Acct-Status-Type")))
        .when(pl.col("sid").is_null())
        .then(pl.lit("no Acct-Session-Id"))
        .when(pl.col("ip").is_null())
        .then(pl.lit("no Framed-IP-Address"))
        .when(~pl.col("ip").str.contains(r"^[0-9A-Fa-f:.]+$"))
        .then(pl.lit("Framed-IP-Address is not an IP address"))
        .when(pl.col("user").is_null())
        .then(pl.lit(f"no {subscriber_attr}"))
        .when(pl.col("event").is_null() & pl.col("server").is_null())
        .then(pl.lit("no usable time (Event-Timestamp, Timestamp, time line)"))
        .otherwise(None)
    )
    recs = recs.with_columns(reason=reason)
    bad = recs.filter(pl.col("reason").is_not_null())
    good = recs.filter(pl.col("reason").is_null())

    # Clock skew: per NAS median of (server receive - delay) - event.
    good = good.with_columns(
        offset=(
            (pl.col("server") - pl.col("event")).dt.total_microseconds() / 1e6 - pl.col("delay")
        )
    )
    good = good.with_columns(nas_offset=pl.col("offset").median().over("nas").fill_null(0.0))
    nas_skewed = pl.col("nas_offset").abs() > max_skew_s
    corrected = pl.col("event") + pl.duration(
        microseconds=(pl.col("nas_offset") * 1e6).cast(pl.Int64)
    )
    good = good.with_columns(
        t0=pl.when(nas_skewed).then(corrected).otherwise(pl.col("event")),
        skew_note=pl.when(nas_skewed & pl.col("event").is_not_null())
        .then(pl.lit("clock skew corrected"))
        .otherwise(None),
    )
    rec_off = (pl.col("server") - pl.col("t0")).dt.total_microseconds() / 1e6 - pl.col("delay")
    good = good.with_columns(
        t=pl.when(pl.col("t0").is_null() | (rec_off.abs() > max_skew_s))
        .then(pl.col("server") - pl.duration(microseconds=(pl.col("delay") * 1e6).cast(pl.Int64)))
        .otherwise(pl.col("t0")),
        skew_note=pl.when(pl.col("t0").is_not_null() & (rec_off.abs() > max_skew_s))
        .then(pl.lit("clock skew: server time used"))
        .otherwise(pl.col("skew_note")),
    )
    # Duplicates (retransmissions of the same record).
    dup_key = ["sid", "status", "t", "ip", "user", "Acct-Session-Time"]
    good = good.with_row_index("_i")
    first = good.unique(subset=dup_key, keep="first", maintain_order=True)
    dups = good.join(first.select("_i"), on="_i", how="anti").with_columns(
        reason=pl.lit("duplicate record (retransmission)")
    )
    good = first
    # One session = (sid, ip, user); a session id reused with another IP or user is another
    # session, never merged.
    derived_start = pl.col("t") - pl.duration(
        microseconds=(pl.col("session_time") * 1e6).cast(pl.Int64)
    )
    sess = good.group_by("sid", "ip", "user").agg(
        start_rec=pl.col("t").filter(pl.col("status") == "start").min(),
        stop_rec=pl.col("t").filter(pl.col("status") == "stop").max(),
        derived=derived_start.filter(pl.col("session_time").is_not_null()).min(),
        last_seen=pl.col("t").max(),
        interim=pl.col("interim_s").drop_nulls().first(),
        had_interim=(pl.col("status") == "interim").any(),
        # Without Acct-Interim-Interval, the widest gap between the session's records is the
        # NAS's interim interval as observed.
        gap_s=pl.col("t").sort().diff().dt.total_seconds().max(),
        skew=pl.col("skew_note").drop_nulls().first(),
        n=pl.len(),
        where=pl.col("where").first(),
        record=pl.col("record").first(),
        rows=pl.col("_i"),
    )
    sess = sess.with_columns(
        start=pl.coalesce(pl.col("start_rec"), pl.col("derived")),
        no_start=pl.col("start_rec").is_null(),
        no_stop=pl.col("stop_rec").is_null(),
    )
    unusable = sess.filter(pl.col("start").is_null())
    sess = sess.filter(pl.col("start").is_not_null()).sort("ip", "start")
    # Open sessions end after their last Interim-Update (when they had one), at the next
    # session on the same IP, and at the latest ``max_session_s`` after they began.
    sess = sess.with_columns(next_start=pl.col("start").shift(-1).over("ip"))
    after_interim = pl.when(pl.col("had_interim")).then(
        pl.col("last_seen")
        + pl.duration(
            microseconds=(
                pl.coalesce(pl.col("interim"), pl.col("gap_s").cast(pl.Float64))
                .fill_null(default_interim_s)
                .clip(default_interim_s / 4, None)
                * 1e6
            ).cast(pl.Int64)
        )
    )
    open_end = pl.min_horizontal(
        after_interim,
        pl.col("next_start"),
        pl.col("start") + pl.duration(microseconds=int(max_session_s * 1e6)),
    )
    open_end = pl.max_horizontal(open_end, pl.col("last_seen"))
    sess = sess.with_columns(
        end=pl.when(pl.col("no_stop")).then(open_end).otherwise(pl.col("stop_rec")),
        note=pl.concat_str(
            [
                pl.when(pl.col("no_start")).then(
                    pl.lit("stop without start: start from Acct-Session-Time")
                ),
                pl.when(pl.col("no_stop")).then(pl.lit("start without stop: end estimated")),
                pl.col("skew"),
            ],
            separator="; ",
            ignore_nulls=True,
        ),
    ).with_columns(note=pl.when(pl.col("note") == "").then(None).otherwise(pl.col("note")))
    leases = sess.select(
        "ip",
        "start",
        "end",
        pl.col("user").alias("subscriber_id"),
        pl.lit(None, dtype=pl.Int32).alias("port_lo"),
        pl.lit(None, dtype=pl.Int32).alias("port_hi"),
        "note",
    )
    unusable_rows = good.join(
        unusable.select(pl.col("rows").explode().alias("_i")), on="_i", how="semi"
    ).with_columns(reason=pl.lit("stop or interim without start and without Acct-Session-Time"))
    rej = pl.concat(
        [
            bad.select("where", "reason", "record"),
            dups.select("where", "reason", "record"),
            unusable_rows.select("where", "reason", "record"),
        ]
    )
    return _finish(
        leases, source="radius", path=p, read=read, rejected_frame=rej, quarantine=quarantine
    )


def _no_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema={"where": pl.String, "reason": pl.String, "record": pl.String})


# --------------------------------------------------------------------------------------------
# ISC dhcpd.leases

_LEASE_BLOCK = re.compile(r"lease\s+([^\s{]+)\s*\{(.*?)\}", re.S)


def read_dhcpd_leases(
    path: str | Path,
    *,
    quarantine: Quarantine | None = None,
    subscriber_from: Literal["hardware", "uid", "hostname"] = "hardware",
    tz: str = "UTC",
) -> LeaseLoad:
    """ISC dhcpd lease blocks → leases. Times are UTC (dhcpd's default) unless ``tz``.

    Blocks with the same address, start and client are one lease written several times
    (the last block wins, as dhcpd itself reads the file). ``ends never`` is an open lease.
    """
    p = Path(path)
    text = _read_text(p)
    blocks = [(m.start(), m.group(1), m.group(2)) for m in _LEASE_BLOCK.finditer(text)]
    if not blocks and text.strip() and "lease" not in text:
        raise InputError("no 'lease … { … }' block found; not a dhcpd.leases file", path=p)
    df = pl.DataFrame(
        blocks, schema={"pos": pl.Int64, "ip": pl.String, "body": pl.String}, orient="row"
    )
    line_starts = pl.Series([0] + [m.end() for m in re.finditer("\n", text)])
    df = df.with_columns(
        where=pl.format("line {}", (line_starts.search_sorted(df["pos"], side="right")).alias("l"))
        if df.height
        else pl.lit("line 0"),
        record=pl.col("body").str.slice(0, 300),
    )

    def field_re(name: str) -> pl.Expr:
        return pl.col("body").str.extract(rf"(?m)^\s*{name}\s+([^;]*);", 1).str.strip_chars()

    starts = field_re("starts")
    ends = field_re("ends")

    def dhcp_time(e: pl.Expr) -> pl.Expr:
        epoch = e.str.extract(r"^epoch\s+(\d+)", 1)
        dated = (
            e.str.extract(r"^\d\s+(\d{4}/\d{2}/\d{2}\s+\d{2}:\d{2}:\d{2})", 1)
            .str.to_datetime("%Y/%m/%d %H:%M:%S", strict=False, time_unit="us")
            .dt.replace_time_zone(tz)
            .dt.convert_time_zone("UTC")
        )
        return pl.coalesce(_epoch_to_ts(epoch), dated).cast(_TS)

    ident = {
        "hardware": field_re(r"hardware\s+\S+"),
        "uid": field_re("uid").str.strip_chars('"'),
        "hostname": field_re("client-hostname").str.strip_chars('"'),
    }[subscriber_from]
    df = df.with_columns(
        start=dhcp_time(starts),
        end=dhcp_time(ends),
        never=ends.str.starts_with("never"),
        state=field_re(r"binding\s+state"),
        subscriber_id=ident.str.to_lowercase() if subscriber_from == "hardware" else ident,
    ).with_row_index("_i")
    reason = (
        pl.when(~pl.col("ip").str.contains(r"^[0-9A-Fa-f:.]+$"))
        .then(pl.lit("lease address is not an IP address"))
        .when(pl.col("start").is_null())
        .then(pl.lit("no usable 'starts' time"))
        .when(pl.col("end").is_null() & ~pl.col("never").fill_null(False))
        .then(pl.lit("no usable 'ends' time"))
        .when(pl.col("subscriber_id").is_null())
        .then(pl.lit(f"no client identity ({subscriber_from})"))
        .when(pl.col("end").is_not_null() & (pl.col("end") < pl.col("start")))
        .then(pl.lit("ends before starts"))
        .otherwise(None)
    )
    df = df.with_columns(reason=reason)
    bad = df.filter(pl.col("reason").is_not_null())
    good = df.filter(pl.col("reason").is_null())
    # Last block for (ip, start, client) wins.
    last = good.unique(subset=["ip", "start", "subscriber_id"], keep="last", maintain_order=True)
    leases = last.select(
        "ip",
        "start",
        "end",
        "subscriber_id",
        pl.lit(None, dtype=pl.Int32).alias("port_lo"),
        pl.lit(None, dtype=pl.Int32).alias("port_hi"),
        pl.when(pl.col("never").fill_null(False))
        .then(pl.lit("open lease (ends never)"))
        .otherwise(None)
        .alias("note"),
    )
    return _finish(
        leases,
        source="dhcpd",
        path=p,
        read=df.height,
        rejected_frame=bad.select("where", "reason", "record"),
        quarantine=quarantine,
    )


# --------------------------------------------------------------------------------------------
# Kea memfile CSV


def _read_csv_strings(p: Path) -> pl.DataFrame:
    try:
        return pl.read_csv(
            p, infer_schema=False, truncate_ragged_lines=True, comment_prefix="#"
        ).with_row_index("_row", offset=2)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise InputError(f"not a readable CSV file: {exc}", path=p) from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc}", path=p) from exc


def read_kea_csv(
    path: str | Path,
    *,
    quarantine: Quarantine | None = None,
    subscriber_from: Literal["hwaddr", "client_id", "duid", "hostname"] | None = None,
) -> LeaseLoad:
    """Kea lease file rows → leases (start = expire - valid_lifetime)."""
    p = Path(path)
    df = _read_csv_strings(p)
    if "address" not in df.columns or "expire" not in df.columns:
        raise InputError(
            "missing 'address'/'expire' columns; not a Kea memfile lease CSV",
            path=p,
            line=1,
            hint="Kea's header starts address,hwaddr,client_id,valid_lifetime,expire",
        )
    who = subscriber_from or ("hwaddr" if "hwaddr" in df.columns else "duid")
    if who not in df.columns:
        raise InputError(f"no {who!r} column to identify clients", path=p, line=1)
    df = df.with_columns(
        where=pl.format("line {}", pl.col("_row")),
        record=pl.concat_str([pl.col(c).fill_null("") for c in df.columns[1:]], separator=","),
        life=pl.col("valid_lifetime").cast(pl.Int64, strict=False)
        if "valid_lifetime" in df.columns
        else pl.lit(None, dtype=pl.Int64),
        expire_ts=_epoch_to_ts(pl.col("expire")),
        subscriber_id=pl.col(who).str.to_lowercase(),
        state_i=pl.col("state").cast(pl.Int64, strict=False)
        if "state" in df.columns
        else pl.lit(0),
    )
    df = df.with_columns(
        start=pl.col("expire_ts") - pl.duration(seconds=pl.col("life")),
    )
    reason = (
        pl.when(~pl.col("address").fill_null("").str.contains(r"^[0-9A-Fa-f:.]+$"))
        .then(pl.lit("address is not an IP address"))
        .when(pl.col("expire_ts").is_null())
        .then(pl.lit("expire is not an epoch time"))
        .when(pl.col("life").is_null() | (pl.col("life") < 0))
        .then(pl.lit("valid_lifetime is not a number"))
        .when(pl.col("subscriber_id").is_null() | (pl.col("subscriber_id") == ""))
        .then(pl.lit(f"no client identity ({who})"))
        .when(pl.col("state_i") == 1)
        .then(pl.lit("declined address (state 1), not held by a client"))
        .otherwise(None)
    )
    df = df.with_columns(reason=reason)
    bad = df.filter(pl.col("reason").is_not_null())
    good = df.filter(pl.col("reason").is_null()).sort("address", "expire_ts")
    # A release (lifetime 0) closes the lease it follows; renewals with the same client
    # extend it: one lease per run of rows of one client on one address.
    good = good.with_columns(
        prev_sub=pl.col("subscriber_id").shift(1).over("address"),
        prev_expire=pl.col("expire_ts").shift(1).over("address"),
        prev_life=pl.col("life").shift(1).over("address"),
    ).with_columns(
        new_run=(
            (pl.col("subscriber_id") != pl.col("prev_sub"))
            | pl.col("prev_sub").is_null()
            | ((pl.col("start") > pl.col("prev_expire")) & (pl.col("life") > 0))
            | (pl.col("prev_life") == 0)
        ).fill_null(True)
    )
    good = good.with_columns(run=pl.col("new_run").cum_sum().over("address"))
    runs = good.group_by("address", "run", "subscriber_id").agg(
        start=pl.col("start").filter(pl.col("life") > 0).min(),
        end=pl.col("expire_ts").max(),
        released=(pl.col("life") == 0).any(),
        where=pl.col("where").first(),
        record=pl.col("record").first(),
        rows=pl.len(),
    )
    release_only = runs.filter(pl.col("start").is_null())
    runs = runs.filter(pl.col("start").is_not_null())
    leases = runs.select(
        pl.col("address").alias("ip"),
        "start",
        "end",
        "subscriber_id",
        pl.lit(None, dtype=pl.Int32).alias("port_lo"),
        pl.lit(None, dtype=pl.Int32).alias("port_hi"),
        pl.lit(None, dtype=pl.String).alias("note"),
    )
    orphan = good.join(
        release_only.select("address", "run", "subscriber_id"),
        on=["address", "run", "subscriber_id"],
        how="semi",
    ).with_columns(reason=pl.lit("release without a preceding lease"))
    rej = pl.concat(
        [bad.select("where", "reason", "record"), orphan.select("where", "reason", "record")]
    )
    return _finish(
        leases, source="kea", path=p, read=df.height, rejected_frame=rej, quarantine=quarantine
    )


# --------------------------------------------------------------------------------------------
# CGNAT port-block logs

_RFC8158 = {
    "natEvent": "event",
    "observationTimeMilliseconds": "ts_ms",
    "sourceIPv4Address": "private_ip",
    "postNATSourceIPv4Address": "public_ip",
    "portRangeStart": "port_lo",
    "portRangeEnd": "port_hi",
}
_EVENT = {"alloc": "alloc", "allocate": "alloc", "16": "alloc", "release": "release"}
_EVENT |= {"dealloc": "release", "de-allocate": "release", "free": "release", "17": "release"}

_SYSLOG = re.compile(
    r"^(?:<\d+>\d?\s*)?(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}"
    r"(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|[A-Z][a-z]{2}\s+\d{1,2}\s+\d{2}:\d{2}:\d{2})"
)


def read_cgnat_log(
    path: str | Path,
    *,
    quarantine: Quarantine | None = None,
    tz: str = "UTC",
    year: int | None = None,
) -> LeaseLoad:
    """CGNAT port-block allocations → block leases on the public address.

    An allocation without a release stays open until the same block is allocated again or
    the log ends (note); a release without an allocation is rejected (its start is unknown).
    ``year`` completes RFC 3164 syslog time stamps that carry none (default: this year).
    """
    p = Path(path)
    head = _read_text(p)[:4096]
    first = head.splitlines()[0] if head.strip() else ""
    if "," in first and not _SYSLOG.match(first):
        df = _read_csv_strings(p).rename(lambda c: _RFC8158.get(c.strip(), c.strip()))
        need = {"event", "private_ip", "public_ip", "port_lo", "port_hi"}
        if not need <= set(df.columns) or not ({"ts", "ts_ms"} & set(df.columns)):
            raise InputError(
                "CGNAT CSV needs event,ts,private_ip,public_ip,port_lo,port_hi "
                "(or the RFC 8158 names natEvent,observationTimeMilliseconds,sourceIPv4Address,"
                "postNATSourceIPv4Address,portRangeStart,portRangeEnd)",
                path=p,
                line=1,
            )
        ts = (
            _epoch_to_ts(pl.col("ts_ms"), "ms")
            if "ts_ms" in df.columns
            else _parse_time(pl.col("ts"), tz)
        )
        df = df.with_columns(
            where=pl.format("line {}", pl.col("_row")),
            record=pl.concat_str([pl.col(c).fill_null("") for c in df.columns[1:]], separator=","),
            t=ts,
            ev=pl.col("event").str.strip_chars().str.to_lowercase(),
            sub=pl.col("subscriber_id") if "subscriber_id" in df.columns else pl.lit(None),
        )
    else:
        text = _read_text(p)
        lines = pl.DataFrame({"record": pl.Series(text.splitlines(), dtype=pl.String)})
        lines = lines.with_row_index("_row", offset=1).filter(
            pl.col("record").str.strip_chars() != ""
        )
        pat = r"(?i)\b(ALLOC\w*|RELEASE|DEALLOC\w*|FREE)\s+([0-9.]+)\s*->\s*([0-9.]+):(\d+)-(\d+)"
        ts_txt = lines["record"].str.extract(_SYSLOG.pattern, 1)
        yr = year or dt.datetime.now(dt.UTC).year
        bsd = (
            (pl.lit(f"{yr} ") + pl.col("_ts").str.replace_all(r"\s+", " "))
            .str.to_datetime("%Y %b %d %H:%M:%S", strict=False, time_unit="us")
            .dt.replace_time_zone(tz)
            .dt.convert_time_zone("UTC")
        )
        df = lines.with_columns(_ts=ts_txt).with_columns(
            where=pl.format("line {}", pl.col("_row")),
            ev=pl.col("record")
            .str.extract(pat, 1)
            .str.to_lowercase()
            .str.replace(r"^alloc\w*", "alloc")
            .str.replace(r"^dealloc\w*", "release"),
            private_ip=pl.col("record").str.extract(pat, 2),
            public_ip=pl.col("record").str.extract(pat, 3),
            port_lo=pl.col("record").str.extract(pat, 4),
            port_hi=pl.col("record").str.extract(pat, 5),
            t=pl.coalesce(_parse_time(pl.col("_ts"), tz), bsd).cast(_TS),
            sub=pl.lit(None, dtype=pl.String),
        )
    df = df.with_columns(
        ev=pl.col("ev").replace_strict(_EVENT, default=None),
        lo=pl.col("port_lo").cast(pl.Int32, strict=False),
        hi=pl.col("port_hi").cast(pl.Int32, strict=False),
    ).with_row_index("_i")
    ipre = r"^\d{1,3}(\.\d{1,3}){3}$"
    reason = (
        pl.when(pl.col("ev").is_null())
        .then(pl.lit("not a port-block allocation or release"))
        .when(pl.col("t").is_null())
        .then(pl.lit("no usable time"))
        .when(
            ~pl.col("private_ip").fill_null("").str.contains(ipre)
            | ~pl.col("public_ip").fill_null("").str.contains(ipre)
        )
        .then(pl.lit("private or public address is not an IPv4 address"))
        .when(
            pl.col("lo").is_null()
            | pl.col("hi").is_null()
            | (pl.col("lo") > pl.col("hi"))
            | (pl.col("hi") > 65535)
        )
        .then(pl.lit("bad port range"))
        .otherwise(None)
    )
    df = df.with_columns(reason=reason)
    bad = df.filter(pl.col("reason").is_not_null())
    good = df.filter(pl.col("reason").is_null())
    log_end = good.select(pl.col("t").max()).item() if good.height else None
    key = ["public_ip", "lo", "hi"]
    good = good.sort([*key, "t", "ev"]).with_columns(
        next_ev=pl.col("ev").shift(-1).over(key),
        next_t=pl.col("t").shift(-1).over(key),
        next_priv=pl.col("private_ip").shift(-1).over(key),
        prev_ev=pl.col("ev").shift(1).over(key),
        prev_priv=pl.col("private_ip").shift(1).over(key),
    )
    allocs = good.filter(pl.col("ev") == "alloc")
    paired = pl.col("next_ev") == "release"
    leases = allocs.select(
        pl.col("public_ip").alias("ip"),
        pl.col("t").alias("start"),
        pl.when(paired.fill_null(False))
        .then(pl.col("next_t"))
        .otherwise(pl.coalesce(pl.col("next_t"), pl.lit(log_end).cast(_TS)))
        .alias("end"),
        pl.coalesce(pl.col("sub"), pl.format("nat:{}", pl.col("private_ip"))).alias(
            "subscriber_id"
        ),
        pl.col("lo").alias("port_lo"),
        pl.col("hi").alias("port_hi"),
        pl.when(paired.fill_null(False))
        .then(None)
        .otherwise(pl.lit("allocation without release: end estimated"))
        .alias("note"),
    )
    releases = good.filter(pl.col("ev") == "release")
    orphan = releases.filter(
        (pl.col("prev_ev") != "alloc").fill_null(True)
        | (pl.col("prev_priv") != pl.col("private_ip")).fill_null(True)
    ).with_columns(reason=pl.lit("release without allocation of that block"))
    rej = pl.concat(
        [bad.select("where", "reason", "record"), orphan.select("where", "reason", "record")]
    )
    return _finish(
        leases, source="cgnat", path=p, read=df.height, rejected_frame=rej, quarantine=quarantine
    )


# --------------------------------------------------------------------------------------------
# Canonical lease tables and format sniffing


def read_canonical(path: str | Path, *, quarantine: Quarantine | None = None) -> LeaseLoad:
    """A CSV or Parquet file that already has the LEASES columns."""
    p = Path(path)
    if p.suffix == ".parquet":
        raw = pl.read_parquet(p).with_columns(pl.all().cast(pl.String))
        raw = raw.with_row_index("_row", offset=1)
    else:
        raw = _read_csv_strings(p)
    missing = {"ip", "start", "end", "subscriber_id"} - set(raw.columns)
    if missing:
        raise InputError(f"missing columns {sorted(missing)}", path=p, line=1)
    for c in ("port_lo", "port_hi"):
        if c not in raw.columns:
            raw = raw.with_columns(pl.lit(None, dtype=pl.String).alias(c))
    df = raw.with_columns(
        where=pl.format("line {}", pl.col("_row")),
        record=pl.concat_str([pl.col(c).fill_null("") for c in raw.columns[1:]], separator=","),
        s=_parse_time(pl.col("start"), "UTC"),
        e=_parse_time(pl.col("end"), "UTC"),
        lo=pl.col("port_lo").cast(pl.Int32, strict=False),
        hi=pl.col("port_hi").cast(pl.Int32, strict=False),
    )
    reason = (
        pl.when(pl.col("ip").is_null())
        .then(pl.lit("no ip"))
        .when(pl.col("s").is_null())
        .then(pl.lit("start is not a time"))
        .when(pl.col("end").is_not_null() & (pl.col("end") != "") & pl.col("e").is_null())
        .then(pl.lit("end is not a time"))
        .when(pl.col("subscriber_id").is_null())
        .then(pl.lit("no subscriber_id"))
        .when(pl.col("e") < pl.col("s"))
        .then(pl.lit("end before start"))
        .otherwise(None)
    )
    df = df.with_columns(reason=reason)
    leases = df.filter(pl.col("reason").is_null()).select(
        "ip",
        pl.col("s").alias("start"),
        pl.col("e").alias("end"),
        "subscriber_id",
        pl.col("lo").alias("port_lo"),
        pl.col("hi").alias("port_hi"),
        pl.lit(None, dtype=pl.String).alias("note"),
    )
    return _finish(
        leases,
        source="leases",
        path=p,
        read=df.height,
        rejected_frame=df.filter(pl.col("reason").is_not_null()).select(
            "where", "reason", "record"
        ),
        quarantine=quarantine,
    )


def sniff_format(path: str | Path) -> str:
    """Guess the format from the first few kilobytes."""
    p = Path(path)
    head = _read_text(p)[:8192]
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    if re.search(r"(?m)^\s*lease\s+\S+\s*\{", head):
        return "dhcpd"
    if re.search(r"(?m)^\s+Acct-Status-Type\s*=", head):
        return "radius"
    low = first.lower()
    if low.startswith("address,") and "expire" in low:
        return "kea"
    if "nateevent" in low or "natevent" in low or ("private_ip" in low and "public_ip" in low):
        return "cgnat"
    if re.search(r"(?i)\b(ALLOC\w*|RELEASE)\s+[0-9.]+\s*->\s*[0-9.]+:\d+-\d+", head):
        return "cgnat"
    if p.suffix == ".parquet" or ("ip" in low.split(",") and "subscriber_id" in low):
        return "leases"
    raise InputError(
        "cannot tell the lease format",
        path=p,
        hint="name it: radius, dhcpd, kea, cgnat or leases (canonical CSV)",
    )


def read_leases(
    path: str | Path, fmt: str | None = None, *, quarantine: Quarantine | None = None
) -> LeaseLoad:
    """Read one lease file of format ``fmt`` (sniffed when None)."""
    f = fmt or sniff_format(path)
    if f == "radius":
        return read_radius_detail(path, quarantine=quarantine)
    if f == "dhcpd":
        return read_dhcpd_leases(path, quarantine=quarantine)
    if f == "kea":
        return read_kea_csv(path, quarantine=quarantine)
    if f == "cgnat":
        return read_cgnat_log(path, quarantine=quarantine)
    if f == "leases":
        return read_canonical(path, quarantine=quarantine)
    raise InputError(f"unknown lease format {f!r}", path=path, hint=f"one of {FORMATS}")


#: Columns of a subscribers table that name how lease records identify a client.
IDENTITY_COLUMNS: tuple[str, ...] = (
    "hwaddr",
    "mac",
    "client_id",
    "duid",
    "user_name",
    "circuit_id",
)


def _norm_identity(e: pl.Expr) -> pl.Expr:
    """Lower case, trimmed; a MAC address in any notation (aa-bb-…, aabb.ccdd.eeff,
    AABBCCDDEEFF) becomes aa:bb:cc:dd:ee:ff."""
    low = e.cast(pl.String).str.strip_chars().str.to_lowercase()
    hexed = low.str.replace_all(r"[:\-.]", "")
    mac = pl.concat_str([hexed.str.slice(i, 2) for i in range(0, 12, 2)], separator=":")
    return pl.when(hexed.str.contains(r"^[0-9a-f]{12}$")).then(mac).otherwise(low)


def map_identities(
    leases: pl.DataFrame, subscribers: pl.DataFrame
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Replace the client identities of DHCP/Kea leases (hardware address, client id, DUID…)
    by the subscriber they belong to, from the subscribers table's identity columns
    (``IDENTITY_COLUMNS``, whichever are present).

    An identity listed for two different subscribers is not used (counted as
    ``conflicting``); leases whose identity is not in the table keep it as their subscriber
    id. Returns the leases and counts (``mapped`` leases, ``conflicting`` identities).
    """
    cols = [c for c in IDENTITY_COLUMNS if c in subscribers.columns]
    counts = {"mapped": 0, "conflicting": 0}
    if not cols or leases.height == 0:
        return leases, counts
    ids = pl.concat(
        [
            subscribers.select(
                pl.col("subscriber_id").cast(pl.String),
                _norm_identity(pl.col(c)).alias("identity"),
                pl.lit(c).alias("kind"),
            )
            for c in cols
        ]
    ).filter(pl.col("identity").is_not_null() & (pl.col("identity") != ""))
    per = ids.group_by("identity").agg(
        subscriber=pl.col("subscriber_id").unique(), kind=pl.col("kind").first()
    )
    counts["conflicting"] = int((per["subscriber"].list.len() > 1).sum())
    table = per.filter(pl.col("subscriber").list.len() == 1).with_columns(
        pl.col("subscriber").list.first()
    )
    out = (
        leases.with_row_index("_lease")
        .with_columns(identity=_norm_identity(pl.col("subscriber_id")))
        .join(table, on="identity", how="left")
    )
    hit = pl.col("subscriber").is_not_null()
    counts["mapped"] = int(out.select(hit.sum()).item())
    out = out.with_columns(
        note=pl.when(hit)
        .then(
            pl.concat_str(
                [
                    pl.col("note"),
                    pl.format(
                        "{} {} → {}", pl.col("kind"), pl.col("identity"), pl.col("subscriber")
                    ),
                ],
                separator="; ",
                ignore_nulls=True,
            )
        )
        .otherwise(pl.col("note")),
        subscriber_id=pl.coalesce(pl.col("subscriber"), pl.col("subscriber_id")),
    )
    return out.sort("_lease").select(leases.columns), counts


def concat_leases(loads: list[LeaseLoad]) -> pl.DataFrame:
    frames = [ld.leases for ld in loads if ld.leases.height]
    return pl.concat(frames) if frames else empty_leases()


def find_overlaps(leases: pl.DataFrame) -> pl.DataFrame:
    """Pairs of leases on one IP (and overlapping port range) held by different subscribers
    at the same time. Vectorised: a self-join on ip filtered by interval intersection."""
    lf = leases.with_row_index("lease_a").with_columns(
        end_f=pl.col("end").fill_null(pl.lit(FAR_FUTURE).cast(_TS))
    )
    b = lf.rename({c: f"{c}_b" for c in lf.columns if c != "ip"})
    pairs = lf.join(b, on="ip").filter(
        (pl.col("lease_a") < pl.col("lease_a_b"))
        & (pl.col("subscriber_id") != pl.col("subscriber_id_b"))
        & (pl.col("start") < pl.col("end_f_b"))
        & (pl.col("start_b") < pl.col("end_f"))
        & (
            pl.col("port_lo").is_null()
            | pl.col("port_lo_b").is_null()
            | (
                (pl.col("port_lo") <= pl.col("port_hi_b"))
                & (pl.col("port_lo_b") <= pl.col("port_hi"))
            )
        )
    )
    return pairs.select(
        "ip",
        "subscriber_id",
        "start",
        "end",
        pl.col("subscriber_id_b"),
        pl.col("start_b"),
        pl.col("end_b"),
    )

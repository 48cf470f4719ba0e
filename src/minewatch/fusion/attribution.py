"""IP (+ port) + time → subscriber, from canonical leases.

An IP is not a household: a broadband IP belongs to a subscriber only for the interval of a
RADIUS session or DHCP lease, and behind carrier-grade NAT a public IP is shared by many
subscribers, each holding a block of ports for a time. This module answers "who held this
address (and port) at that moment?" for a whole column of sightings at once.

How (all vectorised, no loop per sighting):

1. Leases are keyed by ``ip`` (plain leases) or ``ip|port_lo|port_hi`` (CGNAT blocks). A
   sighting with a port on an address that has blocks finds its block with an as-of join on
   ``port_lo`` (then ``port <= port_hi``).
2. An as-of join on ``start`` (backward, by key) gives the last lease that began before the
   sighting; it holds the sighting when ``ts < end`` (an open lease holds until further
   notice).
3. Leases on one key that overlap in time form a cluster. Sightings that land in a cluster,
   on an address with overlapping port blocks or on a block address without a port, go to an
   exact interval join (equi-join on ip, then ``start <= ts < end`` and the port filter) that
   lists *every* lease holding it. One subscriber → attributed; several → ``ambiguous`` with
   all candidates; never a silent pick.
4. Block leases name ``nat:<private ip>``; those are resolved by a second pass against the
   private address's own leases at the same time.

Every sighting comes out exactly once, with ``status`` one of ``attributed``, ``ambiguous``,
``no_lease`` and a ``reason`` a person can check.

A shared address without a port (a collector that aggregated ports away, a list of IPs from
another authority) names every subscriber behind the CGNAT address. :func:`resolve_by_recurrence`
narrows such a sighting with the other sightings of the same identity (the same Stratum wallet,
or the same pool endpoint) that the leases attributed on their own: when exactly one of the
candidates was attributed to that identity within a few days, the sighting goes to it with
``method = "recurrence"`` and a reason that names the corroborating sightings. It is an
inference, not a lease fact, and says so; any other outcome leaves the sighting ambiguous.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from minewatch.sources.leases import FAR_FUTURE

_TS = pl.Datetime("us", "UTC")

ATTRIBUTED = "attributed"
AMBIGUOUS = "ambiguous"
NO_LEASE = "no_lease"

#: How an attributed sighting was attributed.
BY_LEASE = "lease"
BY_RECURRENCE = "recurrence"
#: How far apart (either way) a corroborating sighting may be for :func:`resolve_by_recurrence`.
RECURRENCE_WINDOW = dt.timedelta(days=7)

OUT_COLUMNS = [
    "sighting_id",
    "subscriber_id",
    "status",
    "method",
    "candidates",
    "reason",
    "lease_start",
    "lease_end",
    "lease_note",
    "via_nat",
]


def _prepare_leases(leases: pl.DataFrame) -> pl.DataFrame:
    lf = leases.select(
        pl.col("ip").cast(pl.String),
        pl.col("start").cast(_TS),
        pl.col("end").cast(_TS),
        pl.col("subscriber_id").cast(pl.String),
        pl.col("port_lo").cast(pl.Int32),
        pl.col("port_hi").cast(pl.Int32),
        (pl.col("note") if "note" in leases.columns else pl.lit(None)).cast(pl.String),
    ).filter(pl.col("ip").is_not_null() & pl.col("start").is_not_null())
    lf = lf.with_columns(
        end_f=pl.col("end").fill_null(pl.lit(FAR_FUTURE).cast(_TS)),
        key=pl.when(pl.col("port_lo").is_null())
        .then(pl.col("ip"))
        .otherwise(pl.format("{}|{}|{}", pl.col("ip"), pl.col("port_lo"), pl.col("port_hi"))),
    ).sort("key", "start")
    prev_end = pl.col("end_f").cum_max().shift(1).over("key")
    lf = lf.with_columns(starts_cluster=(pl.col("start") >= prev_end).fill_null(True))
    lf = lf.with_columns(cluster=pl.col("starts_cluster").cum_sum().over("key"))
    lf = lf.with_columns(in_overlap=pl.len().over("key", "cluster") > 1)
    return lf


def _block_ips(lf: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Distinct blocks per IP, and the IPs whose blocks overlap in port space or that also
    have plain leases (both sent to the exact path)."""
    blocks = (
        lf.filter(pl.col("port_lo").is_not_null())
        .select("ip", "port_lo", "port_hi", "key")
        .unique()
        .sort("ip", "port_lo")
    )
    prev_hi = pl.col("port_hi").cum_max().shift(1).over("ip")
    messy = (
        blocks.with_columns(ov=(pl.col("port_lo") <= prev_hi).fill_null(False))
        .group_by("ip")
        .agg(pl.col("ov").any())
    )
    plain_ips = lf.filter(pl.col("port_lo").is_null()).select("ip").unique()
    messy = messy.join(plain_ips.with_columns(plain=pl.lit(True)), on="ip", how="left")
    messy = messy.filter(pl.col("ov") | pl.col("plain").fill_null(False)).select("ip")
    return blocks, messy


def _exact(sight: pl.DataFrame, lf: pl.DataFrame) -> pl.DataFrame:
    """Every lease holding each sighting: equi-join on ip, then interval and port filters."""
    j = sight.select("sighting_id", "ip", "ts", "port").join(
        lf.select("ip", "start", "end", "end_f", "subscriber_id", "port_lo", "port_hi", "note"),
        on="ip",
        how="inner",
    )
    j = j.filter(
        (pl.col("start") <= pl.col("ts"))
        & (pl.col("ts") < pl.col("end_f"))
        & (
            pl.col("port_lo").is_null()
            | pl.col("port").is_null()
            | ((pl.col("port") >= pl.col("port_lo")) & (pl.col("port") <= pl.col("port_hi")))
        )
    )
    return j


def _one_pass(sight: pl.DataFrame, leases: pl.DataFrame) -> pl.DataFrame:
    """Candidates per sighting: rows (sighting_id, subscriber_id, start, end, note, exact)."""
    lf = _prepare_leases(leases)
    blocks, messy = _block_ips(lf)
    block_ips = blocks.select("ip").unique()
    s = sight.with_columns(
        on_block_ip=pl.col("ip").is_in(block_ips["ip"].implode()),
        messy=pl.col("ip").is_in(messy["ip"].implode()),
    )
    # Find the block of a sighting that has a port.
    with_port = s.filter(pl.col("on_block_ip") & pl.col("port").is_not_null() & ~pl.col("messy"))
    if with_port.height and blocks.height:
        found = (
            with_port.with_columns(pl.col("port").alias("port_lo"))
            .sort("port_lo")
            .join_asof(
                blocks.sort("port_lo"),
                on="port_lo",
                by="ip",
                strategy="backward",
                check_sortedness=False,
            )
            .with_columns(
                key=pl.when(pl.col("port") <= pl.col("port_hi")).then(pl.col("key")).otherwise(None)
            )
            .select("sighting_id", "key")
        )
    else:
        found = pl.DataFrame(schema={"sighting_id": pl.Int64, "key": pl.String})
    plain = s.filter(~pl.col("on_block_ip") & ~pl.col("messy")).with_columns(key=pl.col("ip"))
    keyed = pl.concat(
        [
            plain.select("sighting_id", "ts", "key"),
            with_port.select("sighting_id", "ts").join(found, on="sighting_id", how="left"),
        ]
    )
    slow_ids = s.filter(pl.col("messy") | (pl.col("on_block_ip") & pl.col("port").is_null()))
    # Fast path: as-of join on start.
    fast = (
        keyed.filter(pl.col("key").is_not_null())
        .sort("ts")
        .join_asof(
            lf.select("key", "start", "end", "end_f", "subscriber_id", "note", "in_overlap").sort(
                "start"
            ),
            left_on="ts",
            right_on="start",
            by="key",
            strategy="backward",
            check_sortedness=False,
        )
    )
    to_exact = fast.filter(pl.col("in_overlap").fill_null(False)).select("sighting_id")
    hits = fast.filter(
        ~pl.col("in_overlap").fill_null(False)
        & pl.col("start").is_not_null()
        & (pl.col("ts") < pl.col("end_f"))
    ).select(
        "sighting_id",
        "subscriber_id",
        pl.col("start").alias("lease_start"),
        pl.col("end").alias("lease_end"),
        pl.col("note").alias("lease_note"),
        pl.lit(False).alias("exact"),
    )
    exact_in = s.join(
        pl.concat([slow_ids.select("sighting_id"), to_exact]), on="sighting_id", how="semi"
    )
    ex = _exact(exact_in, lf).select(
        "sighting_id",
        "subscriber_id",
        pl.col("start").alias("lease_start"),
        pl.col("end").alias("lease_end"),
        pl.col("note").alias("lease_note"),
        pl.lit(True).alias("exact"),
    )
    return pl.concat([hits, ex])


def attribute(sightings: pl.DataFrame, leases: pl.DataFrame) -> pl.DataFrame:
    """Attribute each sighting (``ip``, ``ts``, optional ``port``, optional ``sighting_id``).

    Returns one row per sighting: the input columns plus ``subscriber_id`` (only when exactly
    one subscriber held the address), ``status``, ``candidates`` (every subscriber that held
    it), ``reason``, ``lease_start``/``lease_end``/``lease_note`` of the lease used and
    ``via_nat`` (the private address when attributed through a CGNAT block).
    """
    s = sightings
    if "sighting_id" not in s.columns:
        s = s.with_row_index("sighting_id")
    if "port" not in s.columns:
        s = s.with_columns(pl.lit(None, dtype=pl.Int32).alias("port"))
    s = s.with_columns(
        pl.col("sighting_id").cast(pl.Int64),
        pl.col("ip").cast(pl.String),
        pl.col("ts").cast(_TS),
        pl.col("port").cast(pl.Int32),
    )
    base = s.select("sighting_id", "ip", "ts", "port")
    cand = _one_pass(base, leases)
    # Second pass: nat:<private ip> → the private address's own leases at the same time.
    nat = cand.filter(pl.col("subscriber_id").str.starts_with("nat:"))
    if nat.height:
        inner = (
            nat.select(
                pl.col("sighting_id").alias("outer_id"),
                pl.col("subscriber_id").str.slice(4).alias("ip"),
            )
            .join(base.select(pl.col("sighting_id").alias("outer_id"), "ts"), on="outer_id")
            .unique()
            .with_row_index("sighting_id")
            .with_columns(pl.col("sighting_id").cast(pl.Int64), port=pl.lit(None, pl.Int32))
        )
        private_leases = leases.filter(~pl.col("subscriber_id").str.starts_with("nat:"))
        res = _one_pass(inner.select("sighting_id", "ip", "ts", "port"), private_leases)
        res = res.join(inner.select("sighting_id", "outer_id", "ip"), on="sighting_id")
        resolved = res.select(
            pl.col("outer_id").alias("sighting_id"),
            "subscriber_id",
            "lease_start",
            "lease_end",
            "lease_note",
            "exact",
            pl.col("ip").alias("via_nat"),
        )
        # Private addresses with no lease stay as unresolved candidates, named as such.
        unresolved = (
            nat.select("sighting_id", "subscriber_id", "lease_start", "lease_end", "lease_note")
            .with_columns(via_nat=pl.col("subscriber_id").str.slice(4))
            .join(
                resolved.select("sighting_id", "via_nat").unique(),
                on=["sighting_id", "via_nat"],
                how="anti",
            )
            .with_columns(exact=pl.lit(False))
        )
        cand = pl.concat(
            [
                cand.filter(~pl.col("subscriber_id").str.starts_with("nat:")).with_columns(
                    via_nat=pl.lit(None, dtype=pl.String)
                ),
                resolved,
                unresolved.select(resolved.columns),
            ],
            how="vertical_relaxed",
        )
    else:
        cand = cand.with_columns(via_nat=pl.lit(None, dtype=pl.String))

    agg = cand.group_by("sighting_id").agg(
        candidates=pl.col("subscriber_id").unique().sort(),
        lease_start=pl.col("lease_start").first(),
        lease_end=pl.col("lease_end").first(),
        lease_note=pl.col("lease_note").drop_nulls().first(),
        via_nat=pl.col("via_nat").drop_nulls().first(),
        n_leases=pl.len(),
    )
    out = s.join(agg, on="sighting_id", how="left")
    n = pl.col("candidates").list.len().fill_null(0)
    only = pl.col("candidates").list.first()
    unresolved_nat = (n == 1) & only.str.starts_with("nat:")
    out = out.with_columns(
        status=pl.when(n == 0)
        .then(pl.lit(NO_LEASE))
        .when(unresolved_nat)
        .then(pl.lit(NO_LEASE))
        .when(n == 1)
        .then(pl.lit(ATTRIBUTED))
        .otherwise(pl.lit(AMBIGUOUS)),
        subscriber_id=pl.when((n == 1) & ~unresolved_nat.fill_null(False)).then(only),
        reason=pl.when(n == 0)
        .then(
            pl.when(pl.col("port").is_not_null())
            .then(pl.lit("no lease or port block holds this address and port at that time"))
            .otherwise(pl.lit("no lease holds this address at that time"))
        )
        .when(unresolved_nat)
        .then(
            pl.format(
                "CGNAT block of private address {} found, but no lease for that address",
                only.str.slice(4),
            )
        )
        .when((n == 1) & pl.col("via_nat").is_not_null())
        .then(pl.format("CGNAT port block → private {} → lease", pl.col("via_nat")))
        .when((n == 1) & (pl.col("n_leases") > 1))
        .then(pl.lit("overlapping leases, all of one subscriber"))
        .when(n == 1)
        .then(pl.lit("lease"))
        .when(pl.col("port").is_null() & (pl.col("n_leases") > 1))
        .then(
            pl.format(
                "{} subscribers held this address then (shared address, no port to tell)",
                n,
            )
        )
        .otherwise(pl.format("{} overlapping leases of different subscribers", n)),
        candidates=pl.col("candidates").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    )
    out = out.with_columns(
        method=pl.when(pl.col("status") == ATTRIBUTED).then(pl.lit(BY_LEASE)).otherwise(None)
    )
    return out.drop("n_leases").sort("sighting_id")


def attribute_windows(
    sightings: pl.DataFrame, leases: pl.DataFrame, *, start: str, end: str
) -> pl.DataFrame:
    """Attribute at both ends of a window (a mining session from first to last seen).

    When both ends are attributed to different subscribers the session crossed a re-dial: it
    is ``ambiguous`` with both named. When one end has no lease the other end decides.
    """
    s = sightings
    if "sighting_id" not in s.columns:
        s = s.with_row_index("sighting_id")
    a = attribute(s.with_columns(ts=pl.col(start)), leases)
    b = attribute(
        s.select(
            "sighting_id", "ip", pl.col(end).alias("ts"), *(["port"] if "port" in s.columns else [])
        ),
        leases,
    ).select(
        "sighting_id",
        pl.col("status").alias("status_b"),
        pl.col("subscriber_id").alias("sub_b"),
        pl.col("candidates").alias("cand_b"),
        pl.col("reason").alias("reason_b"),
    )
    j = a.join(b, on="sighting_id", how="left")
    crossed = (
        (pl.col("status") == ATTRIBUTED)
        & (pl.col("status_b") == ATTRIBUTED)
        & (pl.col("subscriber_id") != pl.col("sub_b"))
    )
    use_b = (pl.col("status") == NO_LEASE) & (pl.col("status_b") != NO_LEASE)
    j = j.with_columns(
        status=pl.when(crossed)
        .then(pl.lit(AMBIGUOUS))
        .when(use_b)
        .then(pl.col("status_b"))
        .otherwise(pl.col("status")),
        candidates=pl.when(crossed)
        .then(pl.concat_list("candidates", "cand_b").list.unique().list.sort())
        .when(use_b)
        .then(pl.col("cand_b"))
        .otherwise(pl.col("candidates")),
        reason=pl.when(crossed)
        .then(pl.lit("session spans two leases of different subscribers (re-dial)"))
        .when(use_b)
        .then(pl.format("{} (at the end of the session)", pl.col("reason_b")))
        .otherwise(pl.col("reason")),
        subscriber_id=pl.when(crossed)
        .then(None)
        .when(use_b)
        .then(pl.col("sub_b"))
        .otherwise(pl.col("subscriber_id")),
    )
    j = j.with_columns(
        method=pl.when(pl.col("status") == ATTRIBUTED).then(pl.lit(BY_LEASE)).otherwise(None)
    )
    return j.drop("status_b", "sub_b", "cand_b", "reason_b", "ts")


def resolve_by_recurrence(
    attributed: pl.DataFrame,
    identity: pl.DataFrame,
    *,
    window: dt.timedelta = RECURRENCE_WINDOW,
) -> pl.DataFrame:
    """Narrow ambiguous sightings with other sightings of the same identity.

    ``attributed``: the output of :func:`attribute` / :func:`attribute_windows`.
    ``identity``: ``sighting_id``, ``ts`` and ``identity`` (a string such as
    ``wallet:4A…`` or ``endpoint:192.0.2.10:3333``; null when the sighting has none) and
    optionally ``identity_label`` (how to name it in the reason).

    An ambiguous sighting whose identity was attributed *by lease* to exactly one of its
    candidates, by sightings within ``window`` of it, becomes ``attributed`` with
    ``method = "recurrence"``. When several candidates (or none) are corroborated it stays
    ambiguous, and the reason says how many were. Sightings attributed this way never
    corroborate others: only lease facts count as anchors.
    """
    if "method" not in attributed.columns:
        attributed = attributed.with_columns(
            method=pl.when(pl.col("status") == ATTRIBUTED).then(pl.lit(BY_LEASE)).otherwise(None)
        )
    ids = identity.select(
        pl.col("sighting_id").cast(pl.Int64),
        pl.col("ts").cast(_TS),
        pl.col("identity").cast(pl.String),
        (pl.col("identity_label") if "identity_label" in identity.columns else pl.col("identity"))
        .cast(pl.String)
        .alias("identity_label"),
    ).filter(pl.col("identity").is_not_null())
    att = attributed.with_columns(pl.col("sighting_id").cast(pl.Int64))
    anchors = (
        att.filter((pl.col("status") == ATTRIBUTED) & (pl.col("method") == BY_LEASE))
        .select("sighting_id", pl.col("subscriber_id").alias("candidate"))
        .join(ids, on="sighting_id")
        .select("identity", "candidate", pl.col("ts").alias("anchor_ts"))
    )
    amb = (
        att.filter(pl.col("status") == AMBIGUOUS)
        .select("sighting_id", pl.col("candidates").alias("candidate"))
        .explode("candidate")
        .join(ids, on="sighting_id")
    )
    if amb.height == 0 or anchors.height == 0:
        return attributed
    w_us = int(window.total_seconds() * 1_000_000)
    hits = (
        amb.join(anchors, on=["identity", "candidate"])
        .filter((pl.col("anchor_ts") - pl.col("ts")).abs().dt.total_microseconds() <= w_us)
        .group_by("sighting_id", "candidate")
        .agg(n_anchor=pl.len(), label=pl.col("identity_label").first())
    )
    per = hits.group_by("sighting_id").agg(
        n_corr=pl.len(),
        candidate=pl.col("candidate").first(),
        n_anchor=pl.col("n_anchor").first(),
        label=pl.col("label").first(),
    )
    days = window.total_seconds() / 86400.0
    days_txt = f"{days:g} days"
    out = att.join(per, on="sighting_id", how="left")
    resolved = (pl.col("status") == AMBIGUOUS) & (pl.col("n_corr") == 1)
    several = (pl.col("status") == AMBIGUOUS) & (pl.col("n_corr") > 1)
    out = out.with_columns(
        reason=pl.when(resolved)
        .then(
            pl.format(
                "{}; of the {} candidates only {} was attributed by its own lease to {} other "
                "sighting(s) of the same {} within ±{} (inferred, not a lease fact)",
                pl.col("reason"),
                pl.col("candidates").list.len(),
                pl.col("candidate"),
                pl.col("n_anchor"),
                pl.col("label"),
                pl.lit(days_txt),
            )
        )
        .when(several)
        .then(
            pl.format(
                "{}; {} of the candidates were seen with the same {} within ±{}: still ambiguous",
                pl.col("reason"),
                pl.col("n_corr"),
                pl.col("label"),
                pl.lit(days_txt),
            )
        )
        .otherwise(pl.col("reason")),
        subscriber_id=pl.when(resolved)
        .then(pl.col("candidate"))
        .otherwise(pl.col("subscriber_id")),
        method=pl.when(resolved).then(pl.lit(BY_RECURRENCE)).otherwise(pl.col("method")),
        status=pl.when(resolved).then(pl.lit(ATTRIBUTED)).otherwise(pl.col("status")),
    )
    return out.drop("n_corr", "candidate", "n_anchor", "label").select(attributed.columns)


def summary(attributed: pl.DataFrame) -> dict[str, int]:
    """Counts per status (their sum is ``total``), and how many were attributed by
    recurrence."""
    counts = attributed.group_by("status").len()
    out = {ATTRIBUTED: 0, AMBIGUOUS: 0, NO_LEASE: 0}
    for st, n in counts.iter_rows():
        out[str(st)] = int(n)
    out["total"] = attributed.height
    if "method" in attributed.columns:
        out["attributed_by_recurrence"] = int(
            (attributed["method"] == BY_RECURRENCE).fill_null(False).sum()
        )
    return out

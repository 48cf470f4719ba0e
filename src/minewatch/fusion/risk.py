"""Per-premises fusion of network, power and financial evidence into one ranked list.

The pieces of evidence are joined to *premises* (a meter account, or a subscriber when no
account is linked), then combined in log-odds:

``log_odds = logit(PRIOR) + Σ_source LLR_source + consistency``

* Each detector's score is read as a calibrated probability under the base rate its
  calibration assumed (:data:`DETECTOR_PRIORS`, ``base_rate``); its log-likelihood ratio is
  ``logit(score) - logit(base_rate)``, times a ``weight`` < 1 for detectors whose evidence
  overlaps others of the same source (a flow model and Stratum parsing often see the same
  session), clipped to ±:data:`LLR_CLIP`.
* Per source, the strongest family counts in full and other families of the same source add
  a quarter of their positive LLR (they are correlated, not independent). Sources (network,
  power, finance) are treated as independent: the operator's telemetry and the utility's
  meters are separate instruments.
* Evidence on an address shared by *n* subscribers at that time (CGNAT without a port, or
  overlapping leases) is counted for every candidate with the likelihood ratio of "one of
  *n*": ``LR_i = TPR / (FPR + (n-1)·PRIOR·TPR)``, i.e. ``LLR = -ln(e^-LLR + (n-1)·PRIOR)``.
  It never becomes evidence against anybody, and never picks one of them silently.
* Consistency between the hash rate seen on the network and the added load on the meter
  (via :mod:`minewatch.energy`): a fit adds :data:`CONSISTENT_BONUS`; a rig whose least
  power draw is plainly visible but whose meter shows no added load is a *contradiction*,
  shown in ``contradictions`` and subtracting :data:`CONTRADICTION_PENALTY` (the rig may sit
  elsewhere behind the same IP). Rigs too small for a meter to see (CPU mining) are exempt.

Subject class comes from the tariff class, the subscriber kind and who owns the network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from minewatch import energy
from minewatch.fusion.address import LinkResult, link_accounts
from minewatch.fusion.attribution import (
    AMBIGUOUS,
    ATTRIBUTED,
    attribute_windows,
    resolve_by_recurrence,
)
from minewatch.fusion.policy import CLASS_ZH, Policy, default_policy
from minewatch.sources.leases import map_identities

_TS = pl.Datetime("us", "UTC")

# Prior probability that a premises holding a broadband line and a meter hosts a mining rig.
# The provincial sweep found 4,502 mining IPs (REFERENCE.md / DESIGN.md); against the
# millions of broadband lines of a province that is well under 1%. 0.01 is deliberately on the
# high side of that, so a single strong detector alone lands near 0.5 and not at certainty.
PRIOR = 0.01
LLR_CLIP = 8.0
CONSISTENT_BONUS = 0.7
CONTRADICTION_PENALTY = 1.0
# Below this much added power (kW) a meter screen cannot be expected to see a rig.
METER_VISIBLE_KW = 0.5
SAME_SOURCE_SHARE = 0.25
# Sessions of one premises that reach the same far end on several days: a pool is a fixed
# endpoint, one-off false alarms do not recur, p2p nodes change peers. Look-alikes pinned to
# one far end (VPN, tunnel keep-alives) recur as well, so the bonus is small and bounded:
# RECUR_PER_DOUBLING per doubling of the distinct days, at most RECUR_MAX.
RECUR_PER_DOUBLING = 0.5
RECUR_MAX = 1.5
# The meter's added load began within TIMING_DAYS of the first mining session the network saw
# (and that session is not simply the first day of observation): two independent sources
# agree on when. By chance, for a look-alike on each side, about 2*TIMING_DAYS/window of
# premises would line up (~0.2 in four weeks); for a rig that starts in the window most do.
TIMING_DAYS = 2
TIMING_BONUS = 1.0
# Sessions of a premises (attributed to it alone) all on one day, and the network watched for
# ONE_OFF_DAYS or more after that day without seeing it again: that is how a detector's false
# alarm looks (independent per day); a rig keeps mining and keeps being seen. Read like the
# absence of network evidence: ln(NETWORK_MISS) (the rig may have stopped or gone behind a VPN).
ONE_OFF_DAYS = 7


@dataclass(frozen=True)
class DetectorPrior:
    """How to read one detector family's score as evidence.

    ``base_rate``: the prevalence at which the score is a calibrated probability, so that
    ``logit(score) - logit(base_rate)`` is its log-likelihood ratio. ``weight`` discounts
    families that overlap others of their source. ``min_llr``/``max_llr`` bound what one
    family can say: no detector is trusted beyond what its failure modes allow.
    """

    family: str
    source: str
    base_rate: float
    weight: float
    min_llr: float
    max_llr: float
    why: str


DETECTOR_PRIORS: tuple[DetectorPrior, ...] = (
    DetectorPrior(
        "stratum",
        "network",
        PRIOR,
        1.0,
        -3.0,
        8.0,
        "Stratum parsed in clear text (minewatch.net.stratum): a client that logs in, gets "
        "jobs and has shares accepted is mining, whatever else the line carries, so the "
        "confidence is read as a probability in the field population (base = PRIOR); bounded "
        "at +8 because the rig may sit elsewhere behind the same line",
    ),
    DetectorPrior(
        "behavior",
        "network",
        0.5,
        0.8,
        -2.0,
        4.0,
        "flow-behaviour model (encrypted or proxied mining): trained on balanced sessions, "
        "so read at even odds; full nodes and VPN keep-alives look alike (bounded at +4); "
        "overlaps Stratum on one session (weight 0.8)",
    ),
    DetectorPrior(
        "intel",
        "network",
        0.5,
        0.5,
        -1.0,
        2.0,
        "pool lists also name exchanges and crypto sites: a hit alone is weak (shared/data)",
    ),
    DetectorPrior(
        "network",
        "network",
        0.5,
        0.8,
        -2.0,
        4.0,
        "any other network detector: treated like the behaviour model",
    ),
    DetectorPrior(
        "meters",
        "power",
        0.03,
        1.0,
        -3.0,
        4.0,
        "meters screen: a probability at its training prevalence of about 3 % "
        "(minewatch.power.detect). Bounded at +4 because a meter cannot tell a rig from a "
        "kiln, a grain dryer or a server room (DESIGN.md), and at -3 because rigs run in "
        "disguise (night only, rig by rig, with outages) fool a screen",
    ),
    DetectorPrior(
        "finance",
        "finance",
        0.5,
        0.7,
        -1.0,
        3.0,
        "a wallet paid by a pool mines, but where is known only through its Stratum logins",
    ),
)
# A premises whose subscriber the network watches but where no mining session was seen in the
# window: likelihood ratio NETWORK_MISS / (1 - false alarm) ~ NETWORK_MISS. The share of
# rigs the operator's telemetry misses over weeks (VPN/proxy/encrypted, collector gaps) is an
# assumption: 0.3, deliberately above the miss rate of the synthetic city (about 0.15).
NETWORK_MISS = 0.3
_PRIORS = {p.family: p for p in DETECTOR_PRIORS}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _family_expr() -> pl.Expr:
    d = pl.col("detector").str.to_lowercase()
    return (
        pl.when(pl.col("source") == "power")
        .then(pl.lit("meters"))
        .when(pl.col("source") == "finance")
        .then(pl.lit("finance"))
        .when(d.str.contains("shape"))  # Stratum V2 recognised by packet shape only
        .then(pl.lit("behavior"))
        .when(d.str.contains("stratum|login|submit|scan"))
        .then(pl.lit("stratum"))
        .when(d.str.contains("intel|pool_list|blocklist|dns|sni"))
        .then(pl.lit("intel"))
        .when(d.str.contains("behav|flow|model|timing"))
        .then(pl.lit("behavior"))
        .otherwise(pl.lit("network"))
    )


def _llr_expr() -> pl.Expr:
    fam = pl.col("family")
    base = fam.replace_strict({p.family: p.base_rate for p in DETECTOR_PRIORS}, default=0.5)
    w = fam.replace_strict({p.family: p.weight for p in DETECTOR_PRIORS}, default=0.5)
    lo = fam.replace_strict({p.family: p.min_llr for p in DETECTOR_PRIORS}, default=-LLR_CLIP)
    hi = fam.replace_strict({p.family: p.max_llr for p in DETECTOR_PRIORS}, default=LLR_CLIP)
    raw = _raw_llr_expr(base, w)
    return pl.min_horizontal(pl.max_horizontal(raw, lo), hi)


def _raw_llr_expr(base: pl.Expr | None = None, w: pl.Expr | None = None) -> pl.Expr:
    """Weighted log-likelihood ratio before the bounds (used to order ties)."""
    fam = pl.col("family")
    if base is None:
        base = fam.replace_strict({p.family: p.base_rate for p in DETECTOR_PRIORS}, default=0.5)
    if w is None:
        w = fam.replace_strict({p.family: p.weight for p in DETECTOR_PRIORS}, default=0.5)
    s = pl.col("score").clip(1e-12, 1 - 1e-12)
    return ((s / (1 - s)).log() - (base / (1 - base)).log()) * w


@dataclass
class FusionResult:
    suspects: pl.DataFrame
    attribution: pl.DataFrame  # one row per network evidence row
    unattributed: pl.DataFrame  # evidence that reached no premises, with the reason
    links: LinkResult
    premises_evidence: pl.DataFrame  # one row per (premises, evidence)
    counts: dict[str, Any] = field(default_factory=dict)


def _json_field(col: str, path: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(col).str.json_path_match(path).cast(dtype, strict=False)


def _endpoint(host: pl.Expr | None = None) -> pl.Expr:
    """The far end ``host:dst_port`` of a session (``host`` defaults to ``dst_ip``), null for
    a DNS server (a resolver is everybody's far end, so it ties nothing together)."""
    host = pl.col("dst_ip") if host is None else host
    return pl.when(
        host.is_not_null() & pl.col("dst_port").is_not_null() & (pl.col("dst_port") != 53)
    ).then(pl.format("{}:{}", host, pl.col("dst_port")))


def _far_end() -> pl.Expr:
    """The far end for the recurrence term: the pool's host name when the detector named one
    (a pool's name stays while DNS rotates its addresses), else its address."""
    name = pl.col("details").str.json_path_match("$.pool_host")
    named = (
        name.is_not_null()
        & (name != pl.col("dst_ip").fill_null(""))
        & ~name.str.contains(r"^[0-9.]+$|:")
    )
    return _endpoint(pl.when(named).then(name).otherwise(pl.col("dst_ip")))


def _identity(net: pl.DataFrame) -> pl.DataFrame:
    """What ties network sightings of one rig together: its Stratum wallet, else the pool
    endpoint it talks to."""
    endpoint = _endpoint()
    return net.select(
        pl.col("ev_row").cast(pl.Int64).alias("sighting_id"),
        pl.col("window_start").alias("ts"),
        pl.when(pl.col("wallet").is_not_null())
        .then(pl.format("wallet:{}", pl.col("wallet")))
        .otherwise(pl.format("endpoint:{}", endpoint))
        .alias("identity"),
        pl.when(pl.col("wallet").is_not_null())
        .then(pl.format("Stratum wallet {}", pl.col("wallet")))
        .otherwise(pl.format("mining endpoint {}", endpoint))
        .alias("identity_label"),
    )


def _premises_map(
    subscribers: pl.DataFrame, accounts: pl.DataFrame, links: LinkResult
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(subscriber_id → premises_id, account_id → premises_id)."""
    lk = links.links.select("subscriber_id", "account_id", "method", "confidence")
    sub_map = (
        subscribers.select("subscriber_id")
        .join(lk, on="subscriber_id", how="left")
        .with_columns(
            premises_id=pl.coalesce(
                pl.col("account_id"), pl.format("sub:{}", pl.col("subscriber_id"))
            )
        )
    )
    acc_map = accounts.select("account_id").with_columns(premises_id=pl.col("account_id"))
    return sub_map, acc_map


def classify(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``subject_class`` and ``class_reason`` from ``tariff_class``, ``kind``
    (subscriber kind / network owner) and ``capacity_kva``."""
    kind = pl.col("kind").fill_null("").str.to_lowercase()
    tariff = pl.col("tariff_class").fill_null("").str.to_lowercase()
    cap = pl.col("capacity_kva").fill_null(0.0)
    public_kind = kind.str.contains(
        "gov|school|univ|college|hospital|public|edu|institution|政府|学校|医院|事业"
    )
    dc_kind = kind.str.contains("data_?cent|datacent|idc|hosting|colo|数据中心|机房")
    cafe_kind = kind.str.contains("cafe|café|internet_bar|网吧|网咖")
    ent_kind = kind.str.contains("enterprise|company|office|corp|factory|企业|公司|工厂")
    biz_kind = kind.str.contains("business|shop|store|sme|商户|个体")
    res_kind = kind.str.contains("resid|home|household|居民|家庭")
    public_t = tariff.str.contains("public|institution|公共|事业")
    res_t = tariff.str.contains("resid|居民")
    ind_t = tariff.str.contains("industr|large|大工业|工业")
    com_t = tariff.str.contains("commerc|business|一般工商业|商业")
    cls = (
        pl.when(public_kind | public_t)
        .then(pl.lit("public_institution"))
        .when(dc_kind)
        .then(pl.lit("data_centre"))
        .when(cafe_kind)
        .then(pl.lit("internet_cafe"))
        .when(ent_kind | (ind_t & (cap >= 100)))
        .then(pl.lit("enterprise"))
        .when(biz_kind | com_t | ind_t)
        .then(pl.lit("small_business"))
        .when(res_kind | res_t)
        .then(pl.lit("residential"))
        .otherwise(pl.lit("unknown"))
    )
    mismatch = res_t & ~(res_kind | (kind == ""))
    reason = pl.concat_str(
        [
            pl.format("tariff {}", pl.col("tariff_class")),
            pl.format("subscriber kind {}", pl.col("kind")),
            pl.when(mismatch).then(
                pl.lit("residential tariff on a non-residential subscriber: check the tariff")
            ),
        ],
        separator="; ",
        ignore_nulls=True,
    )
    return df.with_columns(subject_class=cls, class_reason=reason)


def _power_bounds() -> pl.DataFrame:
    rows = []
    for fam in energy.algorithms():
        b = energy.power_w_range(fam, 1.0)
        if b:
            rows.append({"algo_family": fam, "j_lo": b[0], "j_hi": b[1]})
    return pl.DataFrame(rows)


def fuse(
    evidence: pl.DataFrame,
    leases: pl.DataFrame,
    subscribers: pl.DataFrame,
    accounts: pl.DataFrame,
    *,
    explicit_links: pl.DataFrame | None = None,
    links: LinkResult | None = None,
    policy: Policy | None = None,
    sources: set[str] | None = None,
    prior: float = PRIOR,
) -> FusionResult:
    """Join every piece of evidence to premises and rank the premises."""
    pol = policy or default_policy()
    # DHCP/Kea leases name a client (hardware address, DUID…): the subscribers table says whose.
    leases, id_counts = map_identities(leases, subscribers)
    lk = links or link_accounts(subscribers, accounts, explicit_links)
    ev = evidence
    if sources is not None:
        ev = ev.filter(pl.col("source").is_in(list(sources)))
    ev = ev.with_row_index("ev_row").with_columns(family=_family_expr())
    ev = ev.with_columns(
        llr=_llr_expr(),
        llr_raw=_raw_llr_expr(),
        hashrate_hs=_json_field("measures", "$.hashrate_hs", pl.Float64()),
        algo=_json_field("measures", "$.algo", pl.String()),
        port=_json_field("measures", "$.src_port", pl.Int32()),
        added_kw=_json_field("measures", "$.added_kw", pl.Float64()),
        wallet=_json_field("details", "$.wallet", pl.String()),
        dst_ip=_json_field("measures", "$.dst_ip", pl.String()),
        dst_port=_json_field("measures", "$.dst_port", pl.Int32()),
        hint_sub=_json_field("details", "$.subscriber_id", pl.String()),
        hint_acc=_json_field("details", "$.account_id", pl.String()),
        ev_reasons=pl.col("details")
        .str.json_path_match("$.reasons")
        .str.json_decode(pl.List(pl.String)),
    )
    sub_map, acc_map = _premises_map(subscribers, accounts, lk)

    # Network: attribute each session at both ends of its window.
    net = ev.filter(pl.col("subject_type") == "ip")
    att = attribute_windows(
        net.select(
            pl.col("ev_row").alias("sighting_id"),
            pl.col("subject_id").alias("ip"),
            "port",
            "window_start",
            pl.col("window_end").fill_null(pl.col("window_start")),
        ),
        leases,
        start="window_start",
        end="window_end",
    )
    # Shared addresses without a port: narrowed by the same wallet or pool endpoint seen
    # from exactly one of the candidates on other days (an inference, named as such).
    att = resolve_by_recurrence(att, _identity(net))
    # An attributed sighting goes to its subscriber alone (a sighting resolved by recurrence
    # still lists every holder of the address among its candidates, for the record).
    att_n = att.with_columns(
        candidates=pl.when(pl.col("status") == ATTRIBUTED)
        .then(pl.concat_list(pl.col("subscriber_id")))
        .otherwise(pl.col("candidates"))
    ).with_columns(n_cand=pl.col("candidates").list.len())
    net_c = (
        att_n.filter(pl.col("status").is_in([ATTRIBUTED, AMBIGUOUS]))
        .select(
            pl.col("sighting_id").alias("ev_row"),
            "candidates",
            "n_cand",
            pl.col("reason").alias("attr_reason"),
            "status",
        )
        .explode("candidates")
        .rename({"candidates": "subscriber_id"})
        .filter(~pl.col("subscriber_id").str.starts_with("nat:"))
        .join(sub_map.select("subscriber_id", "premises_id"), on="subscriber_id", how="left")
        .with_columns(
            premises_id=pl.coalesce(
                pl.col("premises_id"), pl.format("sub:{}", pl.col("subscriber_id"))
            )
        )
    )
    # Power: the account is the premises.
    pw = (
        ev.filter(pl.col("subject_type") == "account")
        .select("ev_row", pl.col("subject_id").alias("account_id"))
        .join(acc_map, on="account_id", how="left")
        .with_columns(premises_id=pl.coalesce(pl.col("premises_id"), pl.col("account_id")))
        .select("ev_row", "premises_id")
    )
    # Finance: wallet → explicit subscriber/account hint, or the premises of the network
    # sessions that logged in with that wallet.
    fin = ev.filter(pl.col("subject_type") == "wallet")
    via_hint = pl.concat(
        [
            fin.filter(pl.col("hint_acc").is_not_null()).select(
                "ev_row", pl.col("hint_acc").alias("premises_id")
            ),
            fin.filter(pl.col("hint_sub").is_not_null() & pl.col("hint_acc").is_null())
            .select("ev_row", pl.col("hint_sub").alias("subscriber_id"))
            .join(sub_map.select("subscriber_id", "premises_id"), on="subscriber_id", how="left")
            .select(
                "ev_row",
                pl.coalesce(
                    pl.col("premises_id"), pl.format("sub:{}", pl.col("subscriber_id"))
                ).alias("premises_id"),
            ),
        ]
    )
    wallet_prem = (
        net.filter(pl.col("wallet").is_not_null())
        .select("ev_row", "wallet")
        .join(
            net_c.filter(pl.col("status") == ATTRIBUTED).select("ev_row", "premises_id"),
            on="ev_row",
        )
        .select("wallet", "premises_id")
        .unique()
    )
    via_wallet = (
        fin.filter(pl.col("hint_acc").is_null() & pl.col("hint_sub").is_null())
        .select("ev_row", pl.col("subject_id").alias("wallet"))
        .join(wallet_prem, on="wallet", how="inner")
        .select("ev_row", "premises_id")
    )
    fin_c = pl.concat([via_hint, via_wallet]).unique()

    # Evidence per premises, with the one-of-n discount for shared addresses.
    pe = pl.concat(
        [
            net_c.select("ev_row", "premises_id", "n_cand", "attr_reason", "subscriber_id"),
            pw.with_columns(
                n_cand=pl.lit(1, pl.UInt32),
                attr_reason=pl.lit(None, pl.String),
                subscriber_id=pl.lit(None, pl.String),
            ),
            fin_c.with_columns(
                n_cand=pl.lit(1, pl.UInt32),
                attr_reason=pl.lit(None, pl.String),
                subscriber_id=pl.lit(None, pl.String),
            ),
        ],
        how="vertical_relaxed",
    ).join(ev, on="ev_row", how="left")
    shared = pl.col("n_cand") > 1
    pe = pe.with_columns(
        llr_eff=pl.when(shared & (pl.col("llr") > 0))
        .then(-((-pl.col("llr")).exp() + (pl.col("n_cand") - 1) * prior).log())
        .otherwise(pl.col("llr"))
    )

    # Unattributed evidence: listed with the reason.
    reached = pe.select("ev_row").unique()
    unattr = (
        ev.join(reached, on="ev_row", how="anti")
        .join(
            att.select(pl.col("sighting_id").alias("ev_row"), "status", "reason"),
            on="ev_row",
            how="left",
        )
        .with_columns(
            reason=pl.coalesce(
                pl.col("reason"),
                pl.when(pl.col("subject_type") == "wallet").then(
                    pl.lit("wallet seen in no attributed Stratum login and names no subscriber")
                ),
                pl.when(pl.col("status") == AMBIGUOUS).then(
                    pl.lit("only unresolved CGNAT candidates")
                ),
                pl.lit("subject not linked to any premises"),
            )
        )
        .select(
            "evidence_id",
            "source",
            "detector",
            "subject_type",
            "subject_id",
            "window_start",
            "window_end",
            "score",
            "reason",
        )
    )
    suspects = _aggregate(pe, prior)
    suspects = _attach(suspects, subscribers, accounts, lk, sub_map)
    suspects = classify(suspects)
    suspects = _consistency(suspects)
    # Absence of network evidence where the network watches: only when network evidence was
    # part of this run at all, and only for premises with a linked subscriber. A premises
    # whose only sessions were on addresses shared with others (one of n candidates) has
    # none of its own: those sessions still count, discounted, but do not lift the absence.
    network_on = (sources is None or "network" in sources) and net.height > 0
    watched = pl.col("linked_subscribers").list.len().fill_null(0) > 0
    suspects = suspects.with_columns(
        absence_llr=pl.when(pl.lit(network_on) & watched & pl.col("own_days").is_null())
        .then(math.log(NETWORK_MISS))
        .otherwise(0.0)
    )
    suspects = suspects.with_columns(
        log_odds=(pl.col("log_odds") + pl.col("consistency_llr") + pl.col("absence_llr")).round(4)
    ).with_columns(score=(1.0 / (1.0 + (-pl.col("log_odds")).exp())).round(4))
    suspects = pol.apply(suspects.with_columns(region=pl.col("region").fill_null("未知")))
    # Ties (bounded evidence) are ordered by the unbounded strength of the evidence.
    suspects = suspects.sort(
        ["log_odds", "strength", "premises_id"], descending=[True, True, False], nulls_last=True
    )
    suspects = suspects.with_row_index("rank", offset=1)
    suspects = _reasons(suspects, pe)
    counts = {
        "evidence_rows": ev.height,
        "evidence_by_source": {
            str(k): int(v) for k, v in ev.group_by("source").len().sort("source").iter_rows()
        },
        "network_sessions": net.height,
        "attribution": {
            str(k): int(v) for k, v in att.group_by("status").len().sort("status").iter_rows()
        },
        "unattributed_evidence": unattr.height,
        "lease_identities": id_counts,
        "premises": suspects.height,
        "links": lk.summary(),
    }
    return FusionResult(
        suspects=suspects,
        attribution=att,
        unattributed=unattr,
        links=lk,
        premises_evidence=pe,
        counts=counts,
    )


def _aggregate(pe: pl.DataFrame, prior: float) -> pl.DataFrame:
    fam = pe.group_by("premises_id", "source", "family").agg(
        llr=pl.col("llr_eff").max(),
        score=pl.col("score").max(),
        raw=pl.when(pl.col("n_cand") == 1).then(pl.col("llr_raw")).otherwise(0.0).max(),
    )
    strength = fam.group_by("premises_id", "source").agg(raw=pl.col("raw").max())
    strength = strength.group_by("premises_id").agg(strength=pl.col("raw").sum())
    src = fam.group_by("premises_id", "source").agg(
        llr=pl.col("llr").max()
        + SAME_SOURCE_SHARE
        * (pl.col("llr").clip(0, None).sum() - pl.col("llr").max().clip(0, None)),
        score=pl.col("score").max(),
    )
    own_score = (
        pe.filter((pl.col("n_cand") == 1) | (pl.col("source") != "network"))
        .group_by("premises_id", "source")
        .agg(score=pl.col("score").max())
    )
    src = src.drop("score").join(own_score, on=["premises_id", "source"], how="left")
    wide = src.pivot(on="source", index="premises_id", values=["llr", "score"])
    for s in ("network", "power", "finance"):
        for v in ("llr", "score"):
            name = f"{v}_{s}"
            if name not in wide.columns:
                wide = wide.with_columns(pl.lit(None, pl.Float64).alias(name))
    net = pe.filter(pl.col("source") == "network")
    # Hash rate and the shown network score come only from sessions attributed to this
    # premises alone; shared-address sessions count (discounted) in the log-odds only.
    own = net.filter(pl.col("n_cand") == 1)
    hr = (
        own.filter(pl.col("hashrate_hs").is_not_null())
        .group_by("premises_id", "algo")
        .agg(pl.col("hashrate_hs").max())
    )
    nets = net.group_by("premises_id").agg(
        ips=pl.col("subject_id").unique().sort(),
        n_sessions=pl.len(),
        first_seen=pl.col("window_start").min(),
        last_seen=pl.col("window_end").max(),
        shared_max=pl.col("n_cand").max(),
        subscriber_ids=pl.col("subscriber_id").drop_nulls().unique().sort(),
        pools=pl.col("details")
        .str.json_path_match("$.pool_host")
        .drop_nulls()
        .unique()
        .sort()
        .head(5),
        wallets=pl.col("wallet").drop_nulls().unique().sort().head(5),
    )
    rec = (
        own.with_columns(endpoint=_far_end())
        .filter(pl.col("endpoint").is_not_null() & pl.col("window_start").is_not_null())
        .group_by("premises_id", "endpoint")
        .agg(days=pl.col("window_start").dt.date().n_unique())
        .sort("days", "endpoint", descending=[True, False])
        .group_by("premises_id", maintain_order=True)
        .agg(recur_days=pl.col("days").first(), recur_endpoint=pl.col("endpoint").first())
        .with_columns(
            recur_llr=pl.when(pl.col("recur_days") >= 2)
            .then(
                (pl.col("recur_days").cast(pl.Float64).log(2) * RECUR_PER_DOUBLING).clip(
                    0.0, RECUR_MAX
                )
            )
            .otherwise(0.0)
        )
    )
    pw = (
        pe.filter(pl.col("source") == "power")
        .group_by("premises_id")
        .agg(added_kw=pl.col("added_kw").max(), power_since=pl.col("window_start").min())
    )
    out = (
        wide.join(strength, on="premises_id", how="left")
        .join(nets, on="premises_id", how="left")
        .join(pw, on="premises_id", how="left")
        .join(rec, on="premises_id", how="left")
        .join(
            hr.group_by("premises_id").agg(
                hashrate_hs=pl.col("hashrate_hs").sum(),
                algo=pl.col("algo").sort_by("hashrate_hs", descending=True).first(),
                algos=pl.struct("algo", "hashrate_hs"),
            ),
            on="premises_id",
            how="left",
        )
    )
    # Timing and persistence use only sessions attributed to this premises alone, like the
    # hash rate and recurrence: a session on an address shared with others is not its own.
    own_t = (
        own.filter(pl.col("window_start").is_not_null())
        .group_by("premises_id")
        .agg(
            own_first=pl.col("window_start").min(),
            own_last=pl.col("window_end").fill_null(pl.col("window_start")).max(),
            own_days=pl.col("window_start").dt.date().n_unique(),
        )
    )
    out = out.join(own_t, on="premises_id", how="left")
    obs_start = net["window_start"].min() if net.height else None
    obs_end = net["window_end"].fill_null(net["window_start"]).max() if net.height else None
    near = (pl.col("own_first") - pl.col("power_since")).abs() <= pl.duration(days=TIMING_DAYS)
    after_start = (
        (pl.col("own_first") - pl.lit(obs_start)) > pl.duration(days=TIMING_DAYS)
        if obs_start is not None
        else pl.lit(False)
    )
    watched_after = (
        (pl.lit(obs_end) - pl.col("own_last")) >= pl.duration(days=ONE_OFF_DAYS)
        if obs_end is not None
        else pl.lit(False)
    )
    out = out.with_columns(
        timing_llr=pl.when(
            pl.col("power_since").is_not_null()
            & pl.col("own_first").is_not_null()
            & (pl.col("added_kw").fill_null(0.0) > 0)
            & after_start
            & near
        )
        .then(TIMING_BONUS)
        .otherwise(0.0),
        one_off_llr=pl.when((pl.col("own_days") == 1) & watched_after)
        .then(math.log(NETWORK_MISS))
        .otherwise(0.0),
        watched_days=(pl.lit(obs_end) - pl.col("own_last")).dt.total_days()
        if obs_end is not None
        else pl.lit(None, pl.Int64),
    )
    return out.with_columns(
        log_odds=_logit(prior)
        + pl.sum_horizontal(
            pl.col("timing_llr"),
            pl.col("one_off_llr"),
            pl.col("llr_network").fill_null(0.0),
            pl.col("llr_power").fill_null(0.0),
            pl.col("llr_finance").fill_null(0.0),
            pl.col("recur_llr").fill_null(0.0),
        ),
    )


def _attach(
    s: pl.DataFrame,
    subscribers: pl.DataFrame,
    accounts: pl.DataFrame,
    lk: LinkResult,
    sub_map: pl.DataFrame,
) -> pl.DataFrame:
    acc = accounts.select(
        pl.col("account_id").alias("premises_id"),
        pl.col("account_id"),
        "tariff_class",
        pl.col("capacity_kva").cast(pl.Float64, strict=False),
        pl.col("address").alias("account_address"),
        pl.col("region").alias("account_region"),
    )
    # Subscribers of each premises (from links), with their kind/address/region.
    sp = (
        sub_map.select("subscriber_id", "premises_id", "method", "confidence")
        .join(subscribers.select("subscriber_id", "kind", "address", "region"), on="subscriber_id")
        .group_by("premises_id")
        .agg(
            linked_subscribers=pl.col("subscriber_id").sort(),
            kind=pl.col("kind").first(),
            subscriber_address=pl.col("address").first(),
            subscriber_region=pl.col("region").first(),
            link_method=pl.col("method").first(),
            link_confidence=pl.col("confidence").first(),
        )
    )
    out = s.join(acc, on="premises_id", how="left").join(sp, on="premises_id", how="left")
    out = out.with_columns(
        region=pl.coalesce(pl.col("account_region"), pl.col("subscriber_region")),
        address=pl.coalesce(pl.col("account_address"), pl.col("subscriber_address")),
        subscriber_ids=pl.when(pl.col("subscriber_ids").list.len().fill_null(0) > 0)
        .then(pl.col("subscriber_ids"))
        .otherwise(pl.col("linked_subscribers")),
    )
    return out


def _consistency(s: pl.DataFrame) -> pl.DataFrame:
    bounds = _power_bounds()
    algos = s.select("algo").drop_nulls().unique()
    fam = algos.with_columns(
        algo_family=pl.col("algo").map_elements(energy.algo_family, return_dtype=pl.String)
    )
    s = s.join(fam, on="algo", how="left").join(bounds, on="algo_family", how="left")
    s = s.with_columns(
        power_kw_lo=(pl.col("hashrate_hs") * pl.col("j_lo") / 1000).round(3),
        power_kw_hi=(pl.col("hashrate_hs") * pl.col("j_hi") / 1000).round(3),
    )
    has_hr = pl.col("power_kw_lo").is_not_null()
    screened = pl.col("score_power").is_not_null()
    added = pl.col("added_kw").fill_null(0.0)
    visible = pl.col("power_kw_lo") >= METER_VISIBLE_KW
    fits = (
        has_hr
        & screened
        & (added >= 0.5 * pl.col("power_kw_lo"))
        & (added <= 1.5 * pl.col("power_kw_hi") + 1.0)
    )
    contra = has_hr & screened & visible & (added < 0.5 * pl.col("power_kw_lo"))
    more = has_hr & screened & (added > 1.5 * pl.col("power_kw_hi") + 1.0)
    too_small = has_hr & ~visible
    s = s.with_columns(
        hashrate_text=pl.struct("hashrate_hs", "algo").map_elements(
            lambda r: (
                energy.format_rate(r["hashrate_hs"], r["algo"])
                if r["hashrate_hs"] is not None
                else None
            ),
            return_dtype=pl.String,
        )
    )
    hr_txt = pl.format(
        "hash rate {} ({}) implies {}–{} kW",
        pl.col("hashrate_text"),
        pl.col("algo_family"),
        pl.col("power_kw_lo").round(2),
        pl.col("power_kw_hi").round(2),
    )
    s = s.with_columns(
        consistency=pl.when(fits)
        .then(pl.lit("consistent"))
        .when(contra)
        .then(pl.lit("contradiction"))
        .when(more)
        .then(pl.lit("more_load_than_hashrate"))
        .when(too_small)
        .then(pl.lit("below_meter_visibility"))
        .when(has_hr & ~screened)
        .then(pl.lit("no_meter_result"))
        .otherwise(None),
        consistency_llr=pl.when(fits)
        .then(CONSISTENT_BONUS)
        .when(contra)
        .then(-CONTRADICTION_PENALTY)
        .otherwise(0.0),
        consistency_text=pl.when(fits)
        .then(pl.format("{}; the meter's added {} kW fits", hr_txt, pl.col("added_kw").round(2)))
        .when(contra)
        .then(
            pl.format(
                "{} but the meter shows only {} kW added: the rig may sit elsewhere behind "
                "the same IP",
                hr_txt,
                added.round(2),
            )
        )
        .when(more)
        .then(
            pl.format(
                "{}; the meter's added {} kW is more than that (rigs not seen on the network, "
                "or other load)",
                hr_txt,
                pl.col("added_kw").round(2),
            )
        )
        .when(too_small)
        .then(pl.format("{}: too small for a meter screen to see", hr_txt))
        .when(has_hr & ~screened)
        .then(pl.format("{}; no meter screening result for this premises", hr_txt))
        .otherwise(None),
    )
    # A premises the meter cannot see: negative power evidence says nothing.
    s = s.with_columns(
        log_odds=pl.when(too_small & (pl.col("llr_power").fill_null(0) < 0))
        .then(pl.col("log_odds") - pl.col("llr_power"))
        .otherwise(pl.col("log_odds"))
    )
    return s.drop("j_lo", "j_hi")


def _reasons(s: pl.DataFrame, pe: pl.DataFrame) -> pl.DataFrame:
    """Human-readable reasons per premises, strongest first, each checkable on site."""
    when_ = pl.col("window_start").dt.strftime("%Y-%m-%d %H:%M")
    line = (
        pl.when(pl.col("source") == "network")
        .then(
            pl.format(
                "{} at {} ({}), score {}: {}",
                pl.col("detector"),
                pl.col("subject_id"),
                when_,
                pl.col("score").round(2),
                pl.col("attr_reason"),
            )
        )
        .when(pl.col("source") == "power")
        .then(
            pl.format(
                "meter {}: score {}, +{} kW{}",
                pl.col("subject_id"),
                pl.col("score").round(2),
                pl.col("added_kw").round(2),
                pl.when(pl.col("window_start").is_not_null())
                .then(pl.format(" since {}", pl.col("window_start").dt.strftime("%Y-%m-%d")))
                .otherwise(pl.lit("")),
            )
        )
        .otherwise(
            pl.format(
                "{} wallet {} ({}), score {}",
                pl.col("detector"),
                pl.col("subject_id").str.slice(0, 16),
                when_.fill_null("?"),
                pl.col("score").round(2),
            )
        )
    )
    per = (
        pe.with_columns(line=line)
        .sort("llr_eff", descending=True)
        .group_by("premises_id", maintain_order=True)
        .agg(
            ev_lines=pl.col("line").drop_nulls().head(4),
            detector_reasons=pl.col("ev_reasons")
            .list.explode(keep_nulls=False, empty_as_null=False)
            .drop_nulls()
            .unique(maintain_order=True)
            .head(4),
            evidence_ids=pl.col("evidence_id").unique().sort(),
        )
    )
    s = s.join(per, on="premises_id", how="left")
    link_txt = pl.when(pl.col("link_method").is_not_null()).then(
        pl.format(
            "subscriber↔meter link by {} (confidence {})",
            pl.col("link_method"),
            pl.col("link_confidence").round(2),
        )
    )
    shared_txt = pl.when(pl.col("shared_max").fill_null(1) > 1).then(
        pl.format(
            "the address was shared by {} subscribers at that time: counted as one of them",
            pl.col("shared_max"),
        )
    )
    recur_txt = pl.when(pl.col("recur_llr").fill_null(0.0) > 0).then(
        pl.format(
            "sessions reached the same far end {} on {} distinct days (a pool stays put; "
            "one-off false alarms do not recur): +{}",
            pl.col("recur_endpoint"),
            pl.col("recur_days"),
            pl.col("recur_llr").round(2),
        )
    )
    timing_txt = pl.when(pl.col("timing_llr") > 0).then(
        pl.format(
            "the meter's added load began {}, within {} days of the first mining session "
            "seen ({}): both sources agree on when: +{}",
            pl.col("power_since").dt.strftime("%Y-%m-%d"),
            pl.lit(TIMING_DAYS),
            pl.col("own_first").dt.strftime("%Y-%m-%d %H:%M"),
            pl.col("timing_llr").round(2),
        )
    )
    one_off_txt = pl.when(pl.col("one_off_llr") < 0).then(
        pl.format(
            "mining sessions seen on one day only ({}), and not again in the {} days of network "
            "data after it (false alarms do not persist; a rig keeps mining): {}",
            pl.col("own_last").dt.strftime("%Y-%m-%d"),
            pl.col("watched_days"),
            pl.col("one_off_llr").round(2),
        )
    )
    # Sessions on shared addresses only (counted as one of n) do not lift the absence term.
    shared_only = pl.col("n_sessions").is_not_null()
    absent_txt = pl.when(pl.col("absence_llr") < 0).then(
        pl.format(
            "no mining session {} {}{} in the period{} (the network sees most rigs): {}",
            pl.when(shared_only).then(pl.lit("of")).otherwise(pl.lit("seen on the lines of")),
            pl.col("linked_subscribers").list.join(", "),
            pl.when(shared_only).then(pl.lit(" alone")).otherwise(pl.lit("")),
            pl.when(shared_only)
            .then(pl.lit(", only sessions on addresses shared with others"))
            .otherwise(pl.lit("")),
            pl.col("absence_llr").round(2),
        )
    )
    s = s.with_columns(
        reasons=pl.concat_list(
            pl.col("ev_lines").fill_null(pl.lit([], pl.List(pl.String))),
            pl.concat_list(
                pl.col("consistency_text"),
                recur_txt,
                timing_txt,
                one_off_txt,
                absent_txt,
                link_txt,
                shared_txt,
                pl.col("class_reason"),
            ).list.drop_nulls(),
            pl.col("detector_reasons").fill_null(pl.lit([], pl.List(pl.String))),
        ),
        contradictions=pl.when(pl.col("consistency") == "contradiction")
        .then(pl.concat_list(pl.col("consistency_text")))
        .otherwise(pl.lit([], pl.List(pl.String))),
        class_zh=pl.col("subject_class").replace_strict(CLASS_ZH, default="未知"),
        # Energy per day: the meter's added load when it fits the hash rate (or no hash
        # rate is known); otherwise the middle of the power the hash rate implies, so that a
        # CPU miner in a school is not booked with the school's kitchen.
        kwh_day=pl.when(pl.col("consistency") == "consistent")
        .then(pl.col("added_kw") * 24)
        .when(pl.col("power_kw_lo").is_not_null())
        .then(((pl.col("power_kw_lo") * pl.col("power_kw_hi")).sqrt()) * 24)
        .when(pl.col("added_kw").is_not_null() & (pl.col("added_kw") > 0))
        .then(pl.col("added_kw") * 24)
        .otherwise(None)
        .round(1),
    )
    return s


SUSPECT_FIELDS: tuple[str, ...] = (
    "rank",
    "premises_id",
    "score",
    "log_odds",
    "region",
    "subject_class",
    "class_zh",
    "in_scope",
    "action",
    "action_zh",
    "action_en",
    "account_id",
    "subscriber_ids",
    "address",
    "tariff_class",
    "kind",
    "ips",
    "n_sessions",
    "first_seen",
    "last_seen",
    "hashrate_hs",
    "algo",
    "power_kw_lo",
    "power_kw_hi",
    "added_kw",
    "kwh_day",
    "score_network",
    "score_power",
    "score_finance",
    "consistency",
    "contradictions",
    "link_method",
    "link_confidence",
    "reasons",
    "evidence_ids",
    "pools",
    "wallets",
)


def suspect_records(suspects: pl.DataFrame) -> list[dict[str, Any]]:
    """Suspects as plain dicts with the documented fields (times as ISO 8601 strings)."""
    cols = [c for c in SUSPECT_FIELDS if c in suspects.columns]
    df = suspects.select(cols).with_columns(
        [
            pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            for c in ("first_seen", "last_seen")
            if c in cols
        ]
    )
    return df.to_dicts()


def suspects_jsonl(suspects: pl.DataFrame) -> str:
    return "".join(
        json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in suspect_records(suspects)
    )

"""Per-region policy: which subject classes are in scope, and the recommended action.

A policy file is TOML (``[[rule]]`` tables) or CSV with the columns
``region, class, in_scope, action, action_zh, action_en``. ``region = "*"`` applies where no
rule names the region; a rule for a region overrides the ``*`` rule of the same class.
Without a file the embedded :data:`DEFAULT_POLICY_TOML` applies: every class in scope, with
the actions the issue names (punitive tariff for mining on a residential tariff, shutdown and
investigation for mining on public resources, rectification notices for enterprises).

Example::

    [[rule]]
    region = "西湖区"
    class = "small_business"
    in_scope = false
    action = "monitor"
    action_zh = "暂不处置，持续监测"
    action_en = "Out of scope here; keep monitoring"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from minewatch.errors import InputError

CLASSES: tuple[str, ...] = (
    "residential",
    "small_business",
    "internet_cafe",
    "enterprise",
    "public_institution",
    "data_centre",
    "unknown",
)

CLASS_ZH: dict[str, str] = {
    "residential": "居民",
    "small_business": "小微商户",
    "internet_cafe": "网吧",
    "enterprise": "企业",
    "public_institution": "公共机构",
    "data_centre": "数据中心",
    "unknown": "未知",
}

DEFAULT_POLICY_TOML = """
[[rule]]
region = "*"
class = "residential"
in_scope = true
action = "punitive_tariff"
action_zh = "居民电价挖矿：现场核查，执行惩罚性电价"
action_en = "Mining on a residential tariff: verify on site, apply the punitive tariff"

[[rule]]
region = "*"
class = "small_business"
in_scope = true
action = "rectification"
action_zh = "下发整改通知，核查用电性质与电价类别"
action_en = "Rectification notice; check the use of power and the tariff class"

[[rule]]
region = "*"
class = "internet_cafe"
in_scope = true
action = "rectification_joint"
action_zh = "下发整改通知，会同文化市场执法联合检查"
action_en = "Rectification notice; joint inspection with culture-market enforcement"

[[rule]]
region = "*"
class = "enterprise"
in_scope = true
action = "rectification_deadline"
action_zh = "限期整改通知，逾期未改依法处置"
action_en = "Rectification notice with a deadline; enforce if not rectified"

[[rule]]
region = "*"
class = "public_institution"
in_scope = true
action = "shutdown_investigate"
action_zh = "公共资源挖矿：立即关停，移交纪检监察调查"
action_en = "Mining on public resources: shut down now, refer for investigation"

[[rule]]
region = "*"
class = "data_centre"
in_scope = true
action = "verify_registration"
action_zh = "核查是否为登记的算力业务，未登记的清理关停"
action_en = "Check for a registered compute business; clear out if unregistered"

[[rule]]
region = "*"
class = "unknown"
in_scope = true
action = "identify"
action_zh = "先确认用户与用电户身份，再按类别处置"
action_en = "Identify the subscriber and the meter account first, then act by class"
"""

_COLUMNS = ["region", "class", "in_scope", "action", "action_zh", "action_en"]


@dataclass
class Policy:
    rules: pl.DataFrame  # region, class, in_scope, action, action_zh, action_en
    source: str = "embedded default"

    def apply(self, suspects: pl.DataFrame) -> pl.DataFrame:
        """Add ``in_scope``, ``action``, ``action_zh``, ``action_en`` per row (by region and
        ``subject_class``), region-specific rules first, then ``*``."""
        r = self.rules
        specific = r.filter(pl.col("region") != "*").rename(
            {"class": "subject_class", **{c: f"{c}_r" for c in _COLUMNS[2:]}}
        )
        generic = (
            r.filter(pl.col("region") == "*")
            .drop("region")
            .rename({"class": "subject_class", **{c: f"{c}_g" for c in _COLUMNS[2:]}})
        )
        out = suspects.drop([c for c in _COLUMNS[2:] if c in suspects.columns])
        out = out.join(specific, on=["region", "subject_class"], how="left").join(
            generic, on="subject_class", how="left"
        )
        fallback = {
            "in_scope": pl.lit(True),
            "action": pl.lit("review"),
            "action_zh": pl.lit("人工复核"),
            "action_en": pl.lit("Review by hand (no policy rule for this class)"),
        }
        return out.with_columns(
            [
                pl.coalesce(pl.col(f"{c}_r"), pl.col(f"{c}_g"), fallback[c]).alias(c)
                for c in _COLUMNS[2:]
            ]
        ).drop([f"{c}_{s}" for c in _COLUMNS[2:] for s in ("r", "g")])


def _frame(rules: list[dict[str, object]], where: str) -> pl.DataFrame:
    rows = []
    for i, r in enumerate(rules, start=1):
        cls = str(r.get("class", "")).strip()
        if cls not in CLASSES:
            raise InputError(
                f"rule {i}: unknown class {cls!r}", path=where, hint=f"one of {list(CLASSES)}"
            )
        scope = r.get("in_scope", True)
        if isinstance(scope, str):
            scope = scope.strip().lower() in ("1", "true", "yes", "y")
        rows.append(
            {
                "region": str(r.get("region") or "*").strip(),
                "class": cls,
                "in_scope": bool(scope),
                "action": str(r.get("action") or "review"),
                "action_zh": str(r.get("action_zh") or r.get("action") or ""),
                "action_en": str(r.get("action_en") or r.get("action") or ""),
            }
        )
    df = pl.DataFrame(
        rows,
        schema={
            "region": pl.String,
            "class": pl.String,
            "in_scope": pl.Boolean,
            "action": pl.String,
            "action_zh": pl.String,
            "action_en": pl.String,
        },
        orient="row",
    )
    return df.unique(subset=["region", "class"], keep="last", maintain_order=True)


def default_policy() -> Policy:
    rules = tomllib.loads(DEFAULT_POLICY_TOML)["rule"]
    return Policy(rules=_frame(rules, "embedded default"))


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path`` (TOML or CSV) on top of the embedded default."""
    base = default_policy()
    if path is None:
        return base
    p = Path(path)
    try:
        if p.suffix.lower() == ".csv":
            rules = pl.read_csv(p, infer_schema=False).to_dicts()
        else:
            rules = tomllib.loads(p.read_text(encoding="utf-8")).get("rule", [])
    except (OSError, tomllib.TOMLDecodeError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"cannot read the policy file: {exc}", path=p) from exc
    if not isinstance(rules, list):
        raise InputError("expected [[rule]] tables", path=p)
    mine = _frame(rules, str(p))
    merged = pl.concat([base.rules, mine]).unique(
        subset=["region", "class"], keep="last", maintain_order=True
    )
    return Policy(rules=merged, source=str(p))

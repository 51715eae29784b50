"""The multi-dimensional risk vector: the assessor's reply schema and its mapping to `RiskAssessment`.

Why this shape: the assessor may be a 135M model decoding into a fixed JSON frame, so every answer
is a choice from a short enum (category names, score words, R0-R2, intent types, likelihood words)
and the numbers are computed here, never read from the model. Multi-label categories are a primary
plus an enum array of up to `max_secondary` secondaries with a parallel array of score words.
The follower posterior is Bayes on words: p(theta|x) proportional to
prior(theta | level) * likelihood(theta) ** weight, where the likelihood of each type is the score
of the word the assessor picked for it. Names come back from remote models in many shapes (CN,
"prefix-Name", case); they are mapped through the taxonomy before validation, and anything that
matches no category becomes "Unknown Risk", never a KeyError.

`RiskSettings` (with its `FollowerModel`) is the structured config of the `risk` group, registered
here: the follower model's defaults (prior table, likelihood words) are written once, below.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from oyster_exp.config.components import ge, register_component, rng
from oyster_exp.config.errors import ConfigError
from oyster_exp.csa.guideline_strength import GuidelineStrength
from oyster_exp.csa.replies import NO_RISK, RiskAssessment
from oyster_exp.csa.stackelberg import FOLLOWER_TYPES, normalise_posterior, uniform_posterior
from oyster_exp.data.taxonomy import UNKNOWN, IntentType, RiskLevel, Taxonomy

LIKELIHOOD_FIELD = {t: f"{t}_user" for t in FOLLOWER_TYPES}   # reply keys: benign_user, sensitive_user, ...
UNKNOWN_LEVEL_ROW = "unknown"


class RiskDimension(str, Enum):
    category = "category"          # a primary category plus up to max_secondary secondaries, with scores
    level = "level"                # R0 benign / R1 risky / R2 adversarial
    intent = "intent"              # one of five intent types
    follower = "follower"          # posterior over follower types (benign/sensitive/malicious)


class FollowerPrior(str, Enum):
    by_level = "by_level"          # p(theta | assessed level) from `prior_by_level`
    uniform = "uniform"            # every follower type equally likely a priori


@dataclass(frozen=True)
class FollowerModel:
    """p(theta|x) proportional to prior(theta | level) * likelihood(theta) ** likelihood_weight."""

    prior: FollowerPrior = FollowerPrior.by_level
    prior_by_level: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "R0": {"benign": 0.85, "sensitive": 0.12, "malicious": 0.03},
        "R1": {"benign": 0.30, "sensitive": 0.60, "malicious": 0.10},
        "R2": {"benign": 0.05, "sensitive": 0.15, "malicious": 0.80},
        UNKNOWN_LEVEL_ROW: {"benign": 1.0, "sensitive": 1.0, "malicious": 1.0}})
    likelihood_scale: dict[str, float] = field(default_factory=lambda: {
        "very_unlikely": 0.05, "unlikely": 0.25, "possible": 0.5, "likely": 0.75, "very_likely": 0.95})
    likelihood_weight: float = field(default=1.0, metadata=ge(0.0))


@dataclass(frozen=True)
class RiskSettings:
    """The `risk` group (conf/risk/full.yaml documents every knob); `name` is the option's display name."""

    name: str = "full"
    dimensions: list[RiskDimension] = field(default_factory=lambda: list(RiskDimension))
    taxonomy_path: str | None = None      # the authors' xlsx layout; None = the project's taxonomy
    max_secondary: int = field(default=2, metadata=rng(ge=0, le=8))   # secondary categories besides the primary
    score_scale: dict[str, float] = field(       # category-score words the assessor picks from -> score
        default_factory=lambda: {"high": 1.0, "medium": 0.6, "low": 0.3})
    follower: FollowerModel = field(default_factory=FollowerModel)
    guideline_strength: GuidelineStrength = field(default_factory=GuidelineStrength)   # p(theta|x) -> auditor

    @property
    def dimension_names(self) -> list[str]:
        """The active dimensions as plain names, in config order."""
        return [str(getattr(d, "value", d)) for d in self.dimensions]

    @property
    def asks_anything(self) -> bool:
        return bool(self.dimensions)

    def asks(self, dimension: str) -> bool:
        return dimension in self.dimension_names

    @staticmethod
    def check_config(node: Any, key: str) -> None:
        """Called by `config.structured.validate_config`: the scales and the prior table must be usable."""
        if not node.score_scale:
            raise ConfigError(f"{key}.score_scale", "needs at least one word -> score entry")
        for word, v in node.score_scale.items():
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key}.score_scale.{word}", f"must be in [0, 1], got {v}")
        fol = node.follower
        if len(fol.likelihood_scale) < 2:
            raise ConfigError(f"{key}.follower.likelihood_scale", "needs at least two words")
        for word, v in fol.likelihood_scale.items():
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key}.follower.likelihood_scale.{word}", f"must be in [0, 1], got {v}")
        for level, row in fol.prior_by_level.items():
            k = f"{key}.follower.prior_by_level.{level}"
            if level not in ("R0", "R1", "R2", UNKNOWN_LEVEL_ROW):
                raise ConfigError(k, f"rows are R0, R1, R2 and {UNKNOWN_LEVEL_ROW}")
            if set(row) != set(FOLLOWER_TYPES):
                raise ConfigError(k, f"needs exactly the follower types {list(FOLLOWER_TYPES)}, got {sorted(row)}")
            if any(v < 0 for v in row.values()) or sum(row.values()) <= 0:
                raise ConfigError(k, "weights must be >= 0 with a positive sum")


register_component("risk", "settings", RiskSettings)

DIMENSIONS: tuple[str, ...] = tuple(d.value for d in RiskDimension)


def _word(v: Any) -> Any:
    """"Very Likely" / "very-likely" -> "very_likely"; other values unchanged."""
    return v.strip().lower().replace("-", "_").replace(" ", "_") if isinstance(v, str) else v


class _AssessBase(BaseModel):
    """Normalises what a remote model may write before the enums check it."""

    taxonomy: ClassVar[Taxonomy | None] = None   # set on each generated subclass
    max_secondary: ClassVar[int] = 0

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        tax = cls.taxonomy
        out = dict(data)
        if tax is not None and isinstance(out.get("category"), str):
            out["category"] = tax.get(out["category"]).name_en
        if tax is not None and isinstance(out.get("secondary_categories"), list):
            # drop No Risk, the primary and repeats (with their scores), then keep at most max_secondary
            scores = out.get("secondary_scores")
            keep: list[tuple[Any, Any]] = []
            seen = {out.get("category")}
            for k, x in enumerate(out["secondary_categories"]):
                name = tax.get(x).name_en if isinstance(x, str) else x
                if name == NO_RISK or name in seen:
                    continue
                seen.add(name)
                keep.append((name, scores[k] if isinstance(scores, list) and k < len(scores) else None))
            keep = keep[: cls.max_secondary]
            out["secondary_categories"] = [n for n, _ in keep]
            if isinstance(scores, list):
                out["secondary_scores"] = [w for _, w in keep if w is not None]
        if isinstance(out.get("level"), str):
            out["level"] = out["level"].strip().upper()
        for key in ("category_score", "intent", *LIKELIHOOD_FIELD.values()):
            if key in out:
                out[key] = _word(out[key])
        if isinstance(out.get("secondary_scores"), list):
            out["secondary_scores"] = [_word(x) for x in out["secondary_scores"]]
        return out


def reply_model(tax: Taxonomy, s: RiskSettings) -> type[BaseModel]:
    """The assessor's flat reply schema with only the active dimensions, in decoding order."""
    names = tuple(tax.names_en())
    score_words = tuple(s.score_scale)
    spec: dict[str, Any] = {}
    if s.asks("category"):
        spec["category"] = (Literal[(NO_RISK, *names, UNKNOWN)], ...)  # type: ignore[valid-type]
        spec["category_score"] = (Literal[score_words], ...)  # type: ignore[valid-type]
        if s.max_secondary > 0:
            item = Literal[(*names, UNKNOWN)]  # type: ignore[valid-type]
            spec["secondary_categories"] = (list[item], Field(default_factory=list, min_length=0,  # type: ignore[valid-type]
                                                             max_length=s.max_secondary))
            spec["secondary_scores"] = (list[Literal[score_words]], Field(  # type: ignore[valid-type]
                default_factory=list, min_length=0, max_length=s.max_secondary))
    if s.asks("level"):
        spec["level"] = (Literal[tuple(x.value for x in RiskLevel)], ...)  # type: ignore[valid-type]
    if s.asks("intent"):
        spec["intent"] = (Literal[tuple(x.value for x in IntentType)], ...)  # type: ignore[valid-type]
    if s.asks("follower"):
        words = tuple(s.follower.likelihood_scale)
        for t in FOLLOWER_TYPES:
            spec[LIKELIHOOD_FIELD[t]] = (Literal[words], ...)  # type: ignore[valid-type]
    model = create_model("AssessReply", __base__=_AssessBase, **spec)
    model.taxonomy = tax
    model.max_secondary = s.max_secondary
    return model


def follower_prior(level: str | None, s: RiskSettings) -> dict[str, float]:
    """p(theta | level): the configured row (row "unknown" without a level), or uniform."""
    fol = s.follower
    if str(getattr(fol.prior, "value", fol.prior)) == FollowerPrior.uniform.value:
        return uniform_posterior()
    row = fol.prior_by_level.get(level or UNKNOWN_LEVEL_ROW) or fol.prior_by_level.get(UNKNOWN_LEVEL_ROW)
    return normalise_posterior(row)


def follower_posterior(level: str | None, likelihoods: Mapping[str, str] | None, s: RiskSettings
                       ) -> dict[str, float]:
    """p(theta | x) proportional to prior(theta | level) * L(theta) ** weight; the prior alone without ratings."""
    prior = follower_prior(level, s)
    if not likelihoods:
        return prior
    fol = s.follower
    post = {t: prior[t] * fol.likelihood_scale.get(str(likelihoods.get(t)), 1.0) ** fol.likelihood_weight
            for t in FOLLOWER_TYPES}
    return normalise_posterior(post) if sum(post.values()) > 0 else prior


def _categories(v: Mapping[str, Any], s: RiskSettings) -> list[dict[str, Any]]:
    """Primary first, then secondaries by score (stable); duplicates and No Risk dropped."""
    primary = v.get("category")
    if not primary or primary == NO_RISK:
        return []
    scale = s.score_scale
    middle = list(scale.values())[len(scale) // 2]
    out = [{"name": primary, "score": scale.get(v.get("category_score") or "", middle)}]
    seen = {primary}
    scores = list(v.get("secondary_scores") or [])
    secondary = []
    for k, name in enumerate(v.get("secondary_categories") or []):
        if name in seen or name == NO_RISK:
            continue
        seen.add(name)
        word = scores[k] if k < len(scores) else None
        secondary.append({"name": name, "score": scale.get(word or "", middle)})
    out += sorted(secondary, key=lambda c: -c["score"])[: s.max_secondary]
    return out


def to_assessment(reply: BaseModel | Mapping[str, Any] | None, s: RiskSettings) -> RiskAssessment:
    """The risk vector from a validated reply (None when no dimension is asked)."""
    v: Mapping[str, Any] = (reply.model_dump() if isinstance(reply, BaseModel) else dict(reply or {}))
    level = v.get("level") if s.asks("level") else None
    likelihoods = ({t: v.get(LIKELIHOOD_FIELD[t]) for t in FOLLOWER_TYPES}
                   if s.asks("follower") else None)
    return RiskAssessment(
        category=v.get("category") if s.asks("category") else None,
        level=level,
        intent=v.get("intent") if s.asks("intent") else None,
        categories=_categories(v, s) if s.asks("category") else [],
        follower_posterior=follower_posterior(level, likelihoods, s),
    )


def guidelines_for(a: RiskAssessment, tax: Taxonomy, lang: str) -> dict[str, list[str]]:
    """The rules of every assessed category, in the query's language (CN queries get CN rules)."""
    language = "cn" if lang == "cn" else "en"
    names = [c["name"] for c in a.categories] if a.categories else (
        [a.category] if a.category and a.category != NO_RISK else [])
    return {tax.get(n).name_en: tax.guideline(n, language) for n in names}  # type: ignore[arg-type]

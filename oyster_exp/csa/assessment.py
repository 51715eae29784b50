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
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from oyster_exp.csa.replies import NO_RISK, RiskAssessment
from oyster_exp.csa.stackelberg import FOLLOWER_TYPES, normalise_posterior, uniform_posterior
from oyster_exp.data.taxonomy import UNKNOWN, IntentType, RiskLevel, Taxonomy

DIMENSIONS: tuple[str, ...] = ("category", "level", "intent", "follower")
LIKELIHOOD_FIELD = {t: f"{t}_user" for t in FOLLOWER_TYPES}   # reply keys: benign_user, sensitive_user, ...
UNKNOWN_LEVEL_ROW = "unknown"


@dataclass(frozen=True)
class AssessSettings:
    dimensions: tuple[str, ...] = DIMENSIONS
    max_secondary: int = 2
    score_scale: Mapping[str, float] = field(default_factory=lambda: {"high": 1.0, "medium": 0.6, "low": 0.3})
    prior: str = "by_level"                       # by_level | uniform
    prior_by_level: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    likelihood_scale: Mapping[str, float] = field(default_factory=lambda: {
        "very_unlikely": 0.05, "unlikely": 0.25, "possible": 0.5, "likely": 0.75, "very_likely": 0.95})
    likelihood_weight: float = 1.0

    @property
    def asks_anything(self) -> bool:
        return any(d in self.dimensions for d in DIMENSIONS)

    @classmethod
    def from_cfg(cls, risk: Any) -> AssessSettings:
        """From the `risk` config node (see conf/risk/full.yaml)."""
        fol = risk.follower
        return cls(
            dimensions=tuple(str(getattr(d, "value", d)) for d in risk.dimensions),
            max_secondary=int(risk.max_secondary),
            score_scale={str(k): float(v) for k, v in risk.score_scale.items()},
            prior=str(getattr(fol.prior, "value", fol.prior)),
            prior_by_level={str(lv): {str(t): float(w) for t, w in row.items()}
                            for lv, row in fol.prior_by_level.items()},
            likelihood_scale={str(k): float(v) for k, v in fol.likelihood_scale.items()},
            likelihood_weight=float(fol.likelihood_weight),
        )


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


def reply_model(tax: Taxonomy, s: AssessSettings) -> type[BaseModel]:
    """The assessor's flat reply schema with only the active dimensions, in decoding order."""
    names = tuple(tax.names_en())
    score_words = tuple(s.score_scale)
    spec: dict[str, Any] = {}
    if "category" in s.dimensions:
        spec["category"] = (Literal[(NO_RISK, *names, UNKNOWN)], ...)  # type: ignore[valid-type]
        spec["category_score"] = (Literal[score_words], ...)  # type: ignore[valid-type]
        if s.max_secondary > 0:
            item = Literal[(*names, UNKNOWN)]  # type: ignore[valid-type]
            spec["secondary_categories"] = (list[item], Field(default_factory=list, min_length=0,  # type: ignore[valid-type]
                                                             max_length=s.max_secondary))
            spec["secondary_scores"] = (list[Literal[score_words]], Field(  # type: ignore[valid-type]
                default_factory=list, min_length=0, max_length=s.max_secondary))
    if "level" in s.dimensions:
        spec["level"] = (Literal[tuple(x.value for x in RiskLevel)], ...)  # type: ignore[valid-type]
    if "intent" in s.dimensions:
        spec["intent"] = (Literal[tuple(x.value for x in IntentType)], ...)  # type: ignore[valid-type]
    if "follower" in s.dimensions:
        words = tuple(s.likelihood_scale)
        for t in FOLLOWER_TYPES:
            spec[LIKELIHOOD_FIELD[t]] = (Literal[words], ...)  # type: ignore[valid-type]
    model = create_model("AssessReply", __base__=_AssessBase, **spec)
    model.taxonomy = tax
    model.max_secondary = s.max_secondary
    return model


def follower_prior(level: str | None, s: AssessSettings) -> dict[str, float]:
    """p(theta | level): the configured row (row "unknown" without a level), or uniform."""
    if s.prior == "uniform":
        return uniform_posterior()
    row = s.prior_by_level.get(level or UNKNOWN_LEVEL_ROW) or s.prior_by_level.get(UNKNOWN_LEVEL_ROW)
    return normalise_posterior(row)


def follower_posterior(level: str | None, likelihoods: Mapping[str, str] | None, s: AssessSettings
                       ) -> dict[str, float]:
    """p(theta | x) proportional to prior(theta | level) * L(theta) ** weight; the prior alone without ratings."""
    prior = follower_prior(level, s)
    if not likelihoods:
        return prior
    post = {t: prior[t] * s.likelihood_scale.get(str(likelihoods.get(t)), 1.0) ** s.likelihood_weight
            for t in FOLLOWER_TYPES}
    return normalise_posterior(post) if sum(post.values()) > 0 else prior


def _categories(v: Mapping[str, Any], s: AssessSettings) -> list[dict[str, Any]]:
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


def to_assessment(reply: BaseModel | Mapping[str, Any] | None, s: AssessSettings) -> RiskAssessment:
    """The risk vector from a validated reply (None when no dimension is asked)."""
    v: Mapping[str, Any] = (reply.model_dump() if isinstance(reply, BaseModel) else dict(reply or {}))
    level = v.get("level") if "level" in s.dimensions else None
    likelihoods = ({t: v.get(LIKELIHOOD_FIELD[t]) for t in FOLLOWER_TYPES}
                   if "follower" in s.dimensions else None)
    return RiskAssessment(
        category=v.get("category") if "category" in s.dimensions else None,
        level=level,
        intent=v.get("intent") if "intent" in s.dimensions else None,
        categories=_categories(v, s) if "category" in s.dimensions else [],
        follower_posterior=follower_posterior(level, likelihoods, s),
    )


def guidelines_for(a: RiskAssessment, tax: Taxonomy, lang: str) -> dict[str, list[str]]:
    """The rules of every assessed category, in the query's language (CN queries get CN rules)."""
    language = "cn" if lang == "cn" else "en"
    names = [c["name"] for c in a.categories] if a.categories else (
        [a.category] if a.category and a.category != NO_RISK else [])
    return {tax.get(n).name_en: tax.guideline(n, language) for n in names}  # type: ignore[arg-type]

"""Risk taxonomy: levels R0-R2, intent types, follower types, the 32 published categories.

Category data (names, level-1 parents, guidelines) lives in `assets/taxonomy/categories.yaml`;
`Taxonomy.from_xlsx` reads the authors' workbook layout so users can swap in their own rules.
Lookups never raise KeyError: an unknown name takes the "Unknown Risk" path, or `get_strict`
raises a clear error with close matches.
"""
from __future__ import annotations

import difflib
import re
from enum import Enum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel

UNKNOWN = "Unknown Risk"
NO_RISK = "No Risk"


class RiskLevel(str, Enum):
    R0 = "R0"
    R1 = "R1"
    R2 = "R2"

    @property
    def description(self) -> str:
        return {"R0": "benign: no risk in the request or its likely use",
                "R1": "risky topic, but the user is not adversarial (curious, worried, vulnerable)",
                "R2": "adversarial: jailbreak framing or a request for operational harm"}[self.value]


class IntentType(str, Enum):
    declaration = "declaration"
    inquiry_information = "inquiry_information"
    inquiry_opinion = "inquiry_opinion"
    directive_non_aggressive = "directive_non_aggressive"
    directive_aggressive = "directive_aggressive"


class FollowerType(str, Enum):
    benign = "benign"
    sensitive = "sensitive"
    malicious = "malicious"


class Category(BaseModel):
    name_en: str
    name_cn: str
    level1_en: str
    level1_cn: str = ""
    guideline_en: list[str]
    guideline_cn: list[str]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name_en.lower()).strip("_")


class TaxonomyError(ValueError):
    pass


class UnknownCategoryError(ValueError):
    pass


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip()).lower()


class Taxonomy:
    def __init__(self, categories: list[Category], unknown: Category, no_risk: Category):
        self.categories = categories
        self.unknown = unknown
        self.no_risk = no_risk
        self._index: dict[str, Category] = {}
        for c in [*categories, unknown, no_risk]:
            for key in (c.name_en, c.name_cn, c.slug):
                self._index[_norm(key)] = c

    def names_en(self) -> list[str]:
        return [c.name_en for c in self.categories]

    def _lookup(self, name: str) -> Category | None:
        key = _norm(name)
        if key in self._index:
            return self._index[key]
        if "-" in name:  # legacy "<prefix>-<name>": try the text after each '-', longest first
            parts = name.split("-")
            for i in range(1, len(parts)):
                hit = self._index.get(_norm("-".join(parts[i:])))
                if hit:
                    return hit
        return None

    def get(self, name: str | None) -> Category:
        """Tolerant lookup; anything unmatched is the Unknown Risk category."""
        if not name:
            return self.unknown
        return self._lookup(name) or self.unknown

    def get_strict(self, name: str) -> Category:
        hit = self._lookup(name or "")
        if hit is None:
            close = difflib.get_close_matches(name, self.names_en(), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownCategoryError(f"unknown risk category {name!r}{hint}")
        return hit

    def guideline(self, name: str | None, lang: Literal["en", "cn"] | str = "en") -> list[str]:
        c = self.get(name)
        return list(c.guideline_cn if lang == "cn" else c.guideline_en)

    def render_guideline(self, name: str | None, lang: Literal["en", "cn"] | str = "en") -> str:
        return "\n".join(f"{i}. {r}" for i, r in enumerate(self.guideline(name, lang), 1))

    @classmethod
    def from_xlsx(cls, path: Path, sheet: int | str = 0) -> Taxonomy:
        """Read the authors' layout: columns 风险类别cn, 风险类别en and the CN/EN rule columns."""
        import openpyxl

        path = Path(path)
        if not path.exists():
            raise TaxonomyError(f"{path}: file not found")
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        ws = wb.worksheets[sheet] if isinstance(sheet, int) else wb[sheet]
        rows = list(ws.iter_rows(values_only=True))
        if not rows:
            raise TaxonomyError(f"{path} [{ws.title}]: empty sheet")
        header = [str(h or "").strip() for h in rows[0]]

        def col(*candidates: str) -> int:
            for cand in candidates:
                for i, h in enumerate(header):
                    if h == cand or h.endswith(cand):
                        return i
            raise TaxonomyError(f"{path} [{ws.title}] row 1: missing column {candidates[0]!r} (found {header})")

        c_cn, c_en = col("风险类别cn"), col("风险类别en")
        r_cn, r_en = col("风险规则cn", "对外风险规则cn"), col("风险规则en", "对外风险规则en")
        default = default_taxonomy()
        cats = []
        for rown, row in enumerate(rows[1:], start=2):
            if not any(row):
                continue
            for idx, name in ((c_en, "风险类别en"), (c_cn, "风险类别cn")):
                if idx >= len(row) or row[idx] is None or not str(row[idx]).strip():
                    raise TaxonomyError(f"{path} [{ws.title}] row {rown}, column {name!r}: empty category name")
            en, cn = str(row[c_en]).strip(), str(row[c_cn]).strip()
            parent = default._lookup(en)
            cats.append(Category(
                name_en=en, name_cn=cn,
                level1_en=parent.level1_en if parent else "Unknown",
                level1_cn=parent.level1_cn if parent else "未知",
                guideline_en=_split_rules(row[r_en] if r_en < len(row) else None),
                guideline_cn=_split_rules(row[r_cn] if r_cn < len(row) else None),
            ))
        return cls(cats, default.unknown, default.no_risk)


def _split_rules(text: object) -> list[str]:
    if text is None:
        return []
    parts = re.split(r"\s*(?:^|\n|(?<=[。.;；]))\s*\(?\d+[.、)）]\s*", str(text))
    rules = [p.strip() for p in parts if p and p.strip()]
    return rules or [str(text).strip()]


@lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    raw = yaml.safe_load((resources.files("oyster_exp") / "assets" / "taxonomy" / "categories.yaml").read_text("utf-8"))
    l1 = {x["en"]: x["cn"] for x in raw["level1"]}

    def make(d: dict) -> Category:
        return Category(name_en=d["en"], name_cn=d["cn"], level1_en=d["level1"], level1_cn=l1.get(d["level1"], ""),
                        guideline_en=d["guideline_en"], guideline_cn=d["guideline_cn"])

    return Taxonomy([make(d) for d in raw["categories"]], make(raw["unknown"]), make(raw["no_risk"]))

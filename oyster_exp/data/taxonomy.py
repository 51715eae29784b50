"""Risk taxonomy: risk levels R0-R2, intent and follower types, and the 32 published categories.

The category data (names, level-1 parents, guidelines) lives in `assets/taxonomy/categories.yaml`;
this module only holds the logic. `Taxonomy.from_xlsx` reads the authors' workbook layout so that users
can swap in their own rules. Lookups are tolerant because category names come back from LLM judges in
many shapes (case, CN names, "prefix-Name"); `get` never raises: an unmatched name takes the
"Unknown Risk" path, while `get_strict` raises a clear error with close matches for config-time checks.
"""
from __future__ import annotations

import difflib
import re
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from oyster_exp.core.contract import package_file
from oyster_exp.core.errors import DataError

UNKNOWN = "Unknown Risk"
NO_RISK = "No Risk"
Lang = Literal["en", "cn"]
LANGS: tuple[str, ...] = ("en", "cn")

# Column headers of the authors' workbook (first sheet); the Strata-Sword copy drops the "对外" prefix.
COL_NAME_CN = "风险类别cn"
COL_NAME_EN = "风险类别en"
COL_RULES_CN = ("对外风险规则cn", "风险规则cn")
COL_RULES_EN = ("对外风险规则en", "风险规则en")


class RiskLevel(str, Enum):
    """How risky a query is, independent of its topic (the Constructive Benchmark's R0/R1/R2)."""

    R0 = "R0"
    R1 = "R1"
    R2 = "R2"

    @property
    def description(self) -> str:
        return _LEVEL_DESCRIPTIONS[self.value]


_LEVEL_DESCRIPTIONS = {
    "R0": "benign: an everyday or academic request with no realistic risk",
    "R1": "risky but not adversarial: a curious, worried or vulnerable user touching a risky topic",
    "R2": "adversarial: jailbreak framing or a deliberate request for operational harm",
}


class IntentType(str, Enum):
    """What the user is doing with a risky topic (declaring, asking, or directing the model)."""

    declaration = "declaration"
    inquiry_information = "inquiry_information"
    inquiry_opinion = "inquiry_opinion"
    directive_non_aggressive = "directive_non_aggressive"
    directive_aggressive = "directive_aggressive"


class FollowerType(str, Enum):
    """The user ("follower" in the Stackelberg framing) the answer must serve."""

    benign = "benign"
    sensitive = "sensitive"
    malicious = "malicious"


class Category(BaseModel):
    """One level-2 risk category and its guideline; frozen because the default taxonomy is shared."""

    model_config = ConfigDict(frozen=True)

    name_en: str
    name_cn: str
    level1_en: str
    level1_cn: str
    guideline_en: list[str]
    guideline_cn: list[str]

    @property
    def slug(self) -> str:
        """ASCII identifier for file names and config keys, e.g. "non_political_false_rumors"."""
        return _slug(self.name_en)


class TaxonomyError(DataError):
    """A taxonomy source (workbook or YAML) is unusable; the message says where (file, sheet, row, column)."""


class UnknownCategoryError(ValueError):
    """A category name matched nothing in a strict lookup."""


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip()).casefold()


def _slug(s: str) -> str:
    # Keeps CJK characters so that CN names with '/' also get a punctuation-free key.
    return re.sub(r"[^0-9a-z\u4e00-\u9fff]+", "_", s.casefold()).strip("_")


class Taxonomy:
    """The categories of one taxonomy, plus the Unknown Risk fallback and the No Risk pseudo-category."""

    def __init__(self, categories: list[Category], unknown: Category, no_risk: Category):
        self.categories = list(categories)
        self.unknown = unknown
        self.no_risk = no_risk
        self._index: dict[str, Category] = {}
        seen: set[str] = set()
        for c in self.categories:
            if _norm(c.name_en) in seen:
                raise TaxonomyError(f"duplicate category name {c.name_en!r}")
            seen.add(_norm(c.name_en))
        for c in [*self.categories, unknown, no_risk]:
            for name in (c.name_en, c.name_cn):
                self._index.setdefault(_norm(name), c)
                self._index.setdefault(_slug(name), c)

    def __len__(self) -> int:
        return len(self.categories)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def names_en(self) -> list[str]:
        """The EN names of the real categories (not Unknown Risk / No Risk), in taxonomy order."""
        return [c.name_en for c in self.categories]

    def names_cn(self) -> list[str]:
        return [c.name_cn for c in self.categories]

    def _match(self, text: str) -> Category | None:
        return self._index.get(_norm(text)) or self._index.get(_slug(text))

    def _lookup(self, name: str) -> Category | None:
        # The full string first, so names that contain '-' ("Non-political False Rumors") keep working;
        # then the legacy "<prefix>-<name>" form: the text after each '-', down to the last one.
        hit = self._match(name)
        if hit is not None or "-" not in name:
            return hit
        parts = name.split("-")
        for i in range(1, len(parts)):
            hit = self._match("-".join(parts[i:]))
            if hit is not None:
                return hit
        return None

    def get(self, name: str | None) -> Category:
        """Tolerant lookup (EN/CN name, any case, slug, "prefix-Name"); unmatched -> Unknown Risk."""
        if not isinstance(name, str) or not name.strip():
            return self.unknown
        return self._lookup(name) or self.unknown

    def get_strict(self, name: str) -> Category:
        """Like `get`, but an unmatched name raises `UnknownCategoryError` listing close matches."""
        hit = self._lookup(name) if isinstance(name, str) and name.strip() else None
        if hit is not None:
            return hit
        raise UnknownCategoryError(f"unknown risk category {name!r}; {self._suggest(str(name))}")

    def _suggest(self, name: str) -> str:
        by_key = {_norm(n): n for c in self.categories for n in (c.name_en, c.name_cn)}
        close = difflib.get_close_matches(_norm(name), list(by_key), n=3, cutoff=0.5)
        if close:
            return "close matches: " + ", ".join(repr(by_key[k]) for k in close)
        return f"no close match among the {len(self)} categories, e.g. " + ", ".join(
            repr(n) for n in self.names_en()[:3])

    def guideline(self, name: str | None, lang: Lang = "en") -> list[str]:
        """The rules of a category (Unknown Risk's rules for an unmatched name), as a fresh list."""
        if lang not in LANGS:
            raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
        c = self.get(name)
        return list(c.guideline_cn if lang == "cn" else c.guideline_en)

    def render_guideline(self, name: str | None, lang: Lang = "en") -> str:
        """Numbered text ("1. ...\\n2. ...") as it goes into prompts."""
        return "\n".join(f"{i}. {rule}" for i, rule in enumerate(self.guideline(name, lang), 1))

    @classmethod
    def from_yaml(cls, path: Path | str) -> Taxonomy:
        """Load the project's YAML layout (see assets/taxonomy/categories.yaml)."""
        path = Path(path)
        if not path.exists():
            raise TaxonomyError(f"{path}: file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise TaxonomyError(f"{path}: not valid YAML ({e})") from None
        return _from_mapping(raw, str(path))

    @classmethod
    def from_xlsx(cls, path: Path | str, sheet: int | str = 0) -> Taxonomy:
        """Load the authors' workbook layout, so users can swap in their own category rules.

        Row 1 holds the headers 风险类别cn, 风险类别en, 对外风险规则cn, 对外风险规则en (other columns such as
        风险分级 are ignored); every following non-empty row is one category. Level-1 parents come from
        the default taxonomy when the EN name matches (the workbook has no parent column), else "Unknown".
        """
        import openpyxl
        from openpyxl.utils import get_column_letter

        path = Path(path)
        if not path.is_file():
            raise TaxonomyError(f"{path}: file not found")
        try:
            wb = openpyxl.load_workbook(path, data_only=True)
        except Exception as e:  # openpyxl raises zipfile/KeyError/InvalidFileException on bad files
            raise TaxonomyError(f"{path}: not a readable .xlsx workbook ({type(e).__name__}: {e})") from None
        try:
            if isinstance(sheet, int):
                if not 0 <= sheet < len(wb.worksheets):
                    raise TaxonomyError(f"{path}: no sheet number {sheet} (sheets: {wb.sheetnames})")
                ws = wb.worksheets[sheet]
            else:
                if sheet not in wb.sheetnames:
                    raise TaxonomyError(f"{path}: no sheet named {sheet!r} (sheets: {wb.sheetnames})")
                ws = wb[sheet]
            where = f"{path}, sheet {ws.title!r}"
            rows = list(ws.iter_rows(values_only=True))
        finally:
            wb.close()
        if not rows:
            raise TaxonomyError(f"{where}: the sheet is empty")
        header = [str(h).strip() if h is not None else "" for h in rows[0]]

        def column(*names: str) -> int:
            for name in names:
                if name in header:
                    return header.index(name)
            raise TaxonomyError(f"{where}, row 1: missing column {names[0]!r} (found: {[h for h in header if h]})")

        # role -> (column index, header text); the header text goes into error messages
        cols = {role: (i, header[i]) for role, i in (
            ("name_en", column(COL_NAME_EN)), ("name_cn", column(COL_NAME_CN)),
            ("rules_en", column(*COL_RULES_EN)), ("rules_cn", column(*COL_RULES_CN)))}
        default = default_taxonomy()
        parents = {_norm(c.name_en): c for c in default.categories}
        first_row: dict[str, int] = {}
        cats: list[Category] = []
        for row_no, row in enumerate(rows[1:], start=2):
            if all(v is None or not str(v).strip() for v in row):
                continue
            cells: dict[str, str] = {}
            for role, (idx, title) in cols.items():
                value = row[idx] if idx < len(row) else None
                cells[role] = "" if value is None else str(value).strip()
                if not cells[role]:
                    what = "category name" if role.startswith("name") else "rule text"
                    raise TaxonomyError(
                        f"{where}, row {row_no}, column {get_column_letter(idx + 1)} ({title!r}): empty {what}")
            key = _norm(cells["name_en"])
            if key in first_row:
                idx, title = cols["name_en"]
                raise TaxonomyError(f"{where}, row {row_no}, column {get_column_letter(idx + 1)} ({title!r}): "
                                    f"duplicate category {cells['name_en']!r} (first in row {first_row[key]})")
            first_row[key] = row_no
            parent = parents.get(key)
            cats.append(Category(
                name_en=cells["name_en"], name_cn=cells["name_cn"],
                level1_en=parent.level1_en if parent else "Unknown",
                level1_cn=parent.level1_cn if parent else "未知",
                guideline_en=split_rules(cells["rules_en"]), guideline_cn=split_rules(cells["rules_cn"]),
            ))
        if not cats:
            raise TaxonomyError(f"{where}: no category rows below the header")
        return cls(cats, default.unknown, default.no_risk)


TAXONOMY_ASSET = "assets/taxonomy/categories.yaml"
_RULE_MARK = re.compile(r"^\s*\(?\d{1,2}[.、)）](?!\d)\s*")


def split_rules(text: str) -> list[str]:
    """Split a numbered rule cell ("1. ...\\n2. ...") into rules; unnumbered lines continue the last rule.

    A cell without any numbered line gives one rule per non-empty line.
    """
    rules: list[str] = []
    numbered = any(_RULE_MARK.match(line) for line in text.splitlines())
    for line in text.splitlines():
        line = line.strip().strip("\u3000")
        if not line:
            continue
        mark = _RULE_MARK.match(line)
        if mark or not numbered or not rules:
            rules.append(line[mark.end():].strip() if mark else line)
        else:
            rules[-1] = f"{rules[-1]} {line}"
    return [r for r in rules if r]


def _from_mapping(raw: Any, source: str) -> Taxonomy:
    """Build a taxonomy from the YAML structure, naming the entry that is wrong."""
    if not isinstance(raw, dict):
        raise TaxonomyError(f"{source}: expected a mapping with 'level1', 'categories', 'unknown', 'no_risk'")
    try:
        level1 = {str(x["en"]): str(x["cn"]) for x in raw["level1"]}
    except (KeyError, TypeError) as e:
        raise TaxonomyError(f"{source}: 'level1' must be a list of {{en, cn}} entries ({e!r})") from None

    def make(d: Any, where: str, special: bool = False) -> Category:
        if not isinstance(d, dict):
            raise TaxonomyError(f"{source}: {where}: expected a mapping")
        parent = d.get("level1")
        if not special and parent not in level1:
            raise TaxonomyError(f"{source}: {where} ({d.get('en')!r}): level1 {parent!r} is not in 'level1'")
        try:
            return Category(name_en=d.get("en"), name_cn=d.get("cn"), level1_en=parent,
                            level1_cn=d.get("level1_cn", level1.get(str(parent), "")),
                            guideline_en=d.get("guideline_en"), guideline_cn=d.get("guideline_cn"))
        except ValidationError as e:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
            raise TaxonomyError(f"{source}: {where} ({d.get('en')!r}): invalid field(s) {fields}") from None

    for key in ("categories", "unknown", "no_risk"):
        if key not in raw:
            raise TaxonomyError(f"{source}: missing top-level key {key!r}")
    cats = [make(d, f"categories[{i}]") for i, d in enumerate(raw["categories"] or [])]
    return Taxonomy(cats, make(raw["unknown"], "unknown", True), make(raw["no_risk"], "no_risk", True))


def default_taxonomy() -> Taxonomy:
    """The project's taxonomy from the packaged asset (`TAXONOMY_ASSET`, which a stage using it declares)."""
    return _load_default(str(package_file(TAXONOMY_ASSET)))


@lru_cache(maxsize=2)
def _load_default(path: str) -> Taxonomy:
    # cached because every stage asks for it; the declaration check above runs on every call
    return _from_mapping(yaml.safe_load(Path(path).read_text(encoding="utf-8")), "oyster_exp/" + TAXONOMY_ASSET)


@lru_cache(maxsize=8)
def _from_xlsx(path: str) -> Taxonomy:
    return Taxonomy.from_xlsx(Path(path))


def taxonomy_for(cfg: Any) -> Taxonomy:
    """The taxonomy a run uses: the project's default, or the user's workbook (`risk.taxonomy_path`)."""
    path = cfg.risk.get("taxonomy_path")
    if not path:
        return default_taxonomy()
    try:
        return _from_xlsx(str(Path(str(path)).expanduser()))
    except TaxonomyError as e:   # the CLI prints a DataError as one line (exit 2): say which key pointed there
        raise TaxonomyError(f"risk.taxonomy_path: {e}") from None


def taxonomy_inputs(cfg: Any) -> dict[str, str]:
    """The user's workbook by content (`risk.taxonomy_path`), for the cache key of every stage that reads the
    taxonomy: the path alone would let an edited workbook come back as a stale hit."""
    from oyster_exp.core.hashing import file_hash

    path = cfg.risk.get("taxonomy_path")
    if not path:
        return {}
    p = Path(str(path)).expanduser()
    return {"taxonomy_workbook": file_hash(p) if p.is_file() else "missing"}


def rule_set_description(cfg: Any) -> str:
    """Which risk rules a run used, for the report: the workbook named by `risk.taxonomy_path` (the paper
    experiments point it at the authors' `oyster/risk_taxonomy.xlsx` in the shared data) with its content
    hash, or the project's own rules (the packaged taxonomy, the demo's default)."""
    path = cfg.risk.get("taxonomy_path")
    if not path:
        return f"the project's own rules (oyster_exp/{TAXONOMY_ASSET})"
    digest = taxonomy_inputs(cfg).get("taxonomy_workbook", "missing")
    return f"the workbook `{path}` ({'missing' if digest == 'missing' else 'sha256 ' + digest[:12]})"

"""Risk taxonomy, the authors' workbook loader, and the embedded seed set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import DATA, needs_shared_data

from oyster_exp.data.seed import load_query_file, load_seed_queries
from oyster_exp.data.taxonomy import (
    FollowerType,
    IntentType,
    RiskLevel,
    Taxonomy,
    TaxonomyError,
    UnknownCategoryError,
    default_taxonomy,
    split_rules,
)

WORKBOOK = DATA / "oyster" / "risk_taxonomy.xlsx"
needs_workbook = needs_shared_data(WORKBOOK, what="the authors' taxonomy workbook")
HEADER = ["风险分级", "风险类别cn", "风险类别en", "对外风险规则cn", "对外风险规则en"]
PUBLISHED = ["Cult", "Illicit Uses", "Biodiversity Protection", "Religious Superstition", "Cybersecurity",
             "Commercial Law Violations", "Intellectual Property", "Violation of Personal Rights", "Harmful Scenes",
             "Promotion of Negative Values", "Subjective Evaluation/Comparison", "Business Ethics Violations",
             "Race/Ethnicity/Religion/Regional Discrimination",
             "Gender/Occupational/Age/Other Demographic Discrimination", "Vulnerable Groups", "Special Groups",
             "Bodily Harm", "Mental Health", "Hate and Abuse", "Personal Data", "Business Data", "Sensitive Data",
             "Common Sense Factual Errors", "Non-political False Rumors", "Illegal Drugs", "Gambling",
             "Hazardous Materials", "Illegal Acts", "Violent Terror", "Healthcare", "Investment and Finance",
             "Legal Consultation"]
LEVEL1 = {"Ideology": "意识形态", "Legal Violations": "违法违规", "Ethical Issues": "伦理道德",
          "Bias and Discrimination": "偏见歧视", "Physical and Mental Harm": "身心健康", "Hate and Abuse": "辱骂仇恨",
          "Information Privacy": "隐私财产", "Misinformation": "谣言错误", "Professional Field": "专业领域"}


def test_enums_and_level_descriptions() -> None:
    assert [x.value for x in RiskLevel] == ["R0", "R1", "R2"]
    assert all(x.description for x in RiskLevel) and "adversarial" in RiskLevel.R2.description
    assert IntentType("directive_aggressive") is IntentType.directive_aggressive and len(IntentType) == 5
    assert {x.value for x in FollowerType} == {"benign", "sensitive", "malicious"}


def test_the_32_published_categories_with_guidelines_in_both_languages() -> None:
    tax = default_taxonomy()
    assert tax.names_en() == PUBLISHED and len(tax) == 32
    assert tax.get("Cult").name_cn == "邪教" and tax.get("Legal Consultation").name_cn == "法律咨询"
    assert tax.get("Non-political False Rumors").name_cn == "其他虚假谣言"
    for c in tax.categories:
        assert 3 <= len(c.guideline_en) <= 5 and len(c.guideline_cn) == len(c.guideline_en), c.name_en
        assert all(r.strip() for r in c.guideline_en + c.guideline_cn), c.name_en
        assert LEVEL1.get(c.level1_en) == c.level1_cn, c.name_en
    assert {c.level1_en for c in tax.categories} == set(LEVEL1)  # every level-1 parent is used
    assert tax.unknown.name_cn == "未知风险" and tax.unknown.guideline_en and tax.unknown.guideline_cn
    assert tax.no_risk.name_en == "No Risk" and tax.no_risk.name_cn == "无风险"
    assert default_taxonomy() is tax  # cached


@pytest.mark.parametrize("name, expected", [
    ("网络安全", "Cybersecurity"), ("  healthcare ", "Healthcare"), ("MENTAL HEALTH", "Mental Health"),
    ("Non-political False Rumors", "Non-political False Rumors"), ("non-political false rumors",
                                                                    "Non-political False Rumors"),
    ("R2-Non-political False Rumors", "Non-political False Rumors"),
    ("foo-Cybersecurity", "Cybersecurity"), ("二级-心理健康", "Mental Health"), ("illegal_drugs", "Illegal Drugs"),
    ("Subjective Evaluation / Comparison", "Subjective Evaluation/Comparison"),
    ("种族/民族/信仰/地域", "Race/Ethnicity/Religion/Regional Discrimination"),
    ("no risk", "No Risk"), ("something else", "Unknown Risk"), ("foo-bar", "Unknown Risk"), ("", "Unknown Risk"),
    ("   ", "Unknown Risk"), (None, "Unknown Risk"),
])
def test_lookup_is_tolerant_and_never_raises_keyerror(name: str | None, expected: str) -> None:
    assert default_taxonomy().get(name).name_en == expected


def test_slug_is_a_lookup_key() -> None:
    tax = default_taxonomy()
    for c in tax.categories:
        assert tax.get(c.slug) is c and c.slug.isascii() and " " not in c.slug


def test_strict_lookup_names_the_value_and_close_matches() -> None:
    tax = default_taxonomy()
    with pytest.raises(UnknownCategoryError, match=r"'Cybersecurty'.*close matches: 'Cybersecurity'"):
        tax.get_strict("Cybersecurty")
    with pytest.raises(ValueError, match="心里健康.*心理健康"):
        tax.get_strict("心里健康")
    with pytest.raises(UnknownCategoryError, match="'qqqq'.*no close match"):
        tax.get_strict("qqqq")
    assert tax.get_strict("法律咨询").name_en == "Legal Consultation"


def test_guideline_lists_and_rendering_per_language() -> None:
    tax = default_taxonomy()
    en, cn = tax.guideline("Mental Health", "en"), tax.guideline("心理健康", "cn")
    assert en == list(tax.get("Mental Health").guideline_en) and cn == list(tax.get("Mental Health").guideline_cn)
    en.append("mutated")  # callers get a copy, the shared taxonomy is untouched
    assert "mutated" not in tax.guideline("Mental Health", "en")
    text = tax.render_guideline("Mental Health", "cn")
    assert text.splitlines()[0] == f"1. {cn[0]}" and text.splitlines()[-1].startswith(f"{len(cn)}. ")
    assert tax.guideline("no such thing", "en") == list(tax.unknown.guideline_en)
    with pytest.raises(ValueError, match="lang"):
        tax.guideline("Mental Health", "fr")  # type: ignore[arg-type]


def test_split_rules() -> None:
    assert split_rules("1. a\n2. b\n  continued\n3、c") == ["a", "b continued", "c"]
    assert split_rules("1.每条规则\n2.第二条") == ["每条规则", "第二条"]
    assert split_rules("just one rule\nanother") == ["just one rule", "another"]
    assert split_rules("1. up 3.5 percent\n2. x") == ["up 3.5 percent", "x"]


@needs_workbook
def test_authors_workbook_loads() -> None:
    tax = Taxonomy.from_xlsx(WORKBOOK)
    assert len(tax.categories) == 32 and tax.names_en() == PUBLISHED
    assert all(c.guideline_en and c.guideline_cn for c in tax.categories)
    assert all(not r[:1].isdigit() for c in tax.categories for r in c.guideline_en)  # numbering stripped
    assert len(tax.get("Cult").guideline_en) == 7 and len(tax.get("Investment and Finance").guideline_cn) == 9
    assert tax.get("Cybersecurity").level1_en == "Legal Violations"  # parents come from the default taxonomy
    assert tax.get("邪教").name_en == "Cult" and tax.get("whatever").name_en == "Unknown Risk"
    with pytest.raises(TaxonomyError, match="no sheet number 5"):
        Taxonomy.from_xlsx(WORKBOOK, sheet=5)


def _workbook(path: Path, *rows: list[object], header: list[str] = HEADER) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.title = "rules"
    wb.active.append(header)
    for row in rows:
        wb.active.append(row)
    wb.save(path)
    return path


def test_a_users_own_workbook_loads(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "mine.xlsx",
                     ["二级", "邪教", "Cult", "1. 规则一\n2. 规则二", "1. rule one\n2. rule two"],
                     [None, None, None, None, None],
                     ["二级", "新类别", "Brand New", "1. 规则", "1. rule"])
    tax = Taxonomy.from_xlsx(path, sheet="rules")
    assert tax.names_en() == ["Cult", "Brand New"]
    assert tax.guideline("Cult", "en") == ["rule one", "rule two"] and tax.guideline("新类别", "cn") == ["规则"]
    assert tax.get("Cult").level1_en == "Ideology" and tax.get("Brand New").level1_en == "Unknown"


def test_broken_workbooks_name_file_sheet_row_and_column(tmp_path: Path) -> None:
    bad = _workbook(tmp_path / "bad.xlsx", ["二级", "邪教", "Cult", "1. 规则", "1. rule"],
                    ["二级", "赌博", None, "1. 规则", "1. rule"])
    with pytest.raises(TaxonomyError, match=r"bad\.xlsx, sheet 'rules', row 3, column C \('风险类别en'\)"):
        Taxonomy.from_xlsx(bad)
    no_rules = _workbook(tmp_path / "norules.xlsx", ["二级", "邪教", "Cult", "1. 规则", "   "])
    with pytest.raises(TaxonomyError, match=r"row 2, column E \('对外风险规则en'\): empty rule text"):
        Taxonomy.from_xlsx(no_rules)
    dup = _workbook(tmp_path / "dup.xlsx", ["二级", "邪教", "Cult", "1. a", "1. a"],
                    ["二级", "邪教", "cult", "1. a", "1. a"])
    with pytest.raises(TaxonomyError, match="row 3.*duplicate.*first in row 2"):
        Taxonomy.from_xlsx(dup)
    nocol = _workbook(tmp_path / "nocol.xlsx", ["邪教", "x"], header=["风险类别cn", "rules"])
    with pytest.raises(TaxonomyError, match=r"nocol\.xlsx, sheet 'rules', row 1: missing column '风险类别en'"):
        Taxonomy.from_xlsx(nocol)
    with pytest.raises(TaxonomyError, match="no category rows"):
        Taxonomy.from_xlsx(_workbook(tmp_path / "empty.xlsx"))
    with pytest.raises(TaxonomyError, match=r"missing\.xlsx: file not found"):
        Taxonomy.from_xlsx(tmp_path / "missing.xlsx")
    (tmp_path / "junk.xlsx").write_text("not a workbook")
    with pytest.raises(TaxonomyError, match="not a readable"):
        Taxonomy.from_xlsx(tmp_path / "junk.xlsx")
    with pytest.raises(TaxonomyError, match="no sheet named 'nope'"):
        Taxonomy.from_xlsx(bad, sheet="nope")


def test_seed_set_coverage() -> None:
    rows = load_seed_queries()
    assert len(rows) >= 72
    levels = [r["risk_level"] for r in rows]
    assert all(abs(levels.count(x) - len(rows) / 3) <= len(rows) * 0.05 for x in ("R0", "R1", "R2"))
    cats = {r["category"] for r in rows} - {"No Risk"}
    assert len(cats) >= 14 and cats <= set(PUBLISHED)
    assert all(r["risk_level"] == "R0" for r in rows if r["category"] == "No Risk")
    cn = sum(r["language"] == "cn" for r in rows)
    assert 0.2 <= cn / len(rows) <= 0.3
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["query"]) for r in rows if r["language"] == "cn")
    assert [r["id"] for r in rows] == [f"seed-{i:04d}" for i in range(1, len(rows) + 1)]
    assert all(set(r) == {"id", "query", "language", "risk_level", "category", "persona", "task"} for r in rows)
    assert all(r["persona"] and r["task"] and len(r["query"]) < 300 for r in rows)
    # any prefix of 12 (the CPU demo's default limit) already spans every risk level
    assert {r["risk_level"] for r in rows[:12]} == {"R0", "R1", "R2"}


def test_user_query_file_defaults_and_canonical_categories(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join([json.dumps({"id": "a", "query": "hi"}),
                               "",
                               json.dumps({"id": 7, "query": "你好", "language": "cn", "risk_level": "R1",
                                           "category": "网络安全", "extra": 1}, ensure_ascii=False)]) + "\n",
                    encoding="utf-8")
    a, b = load_query_file(path)
    assert a == {"id": "a", "query": "hi", "language": "en", "risk_level": None, "category": None,
                 "persona": "", "task": ""}
    assert b["id"] == "7" and b["category"] == "Cybersecurity" and b["language"] == "cn"


@pytest.mark.parametrize("line, field", [
    ('{"id": "a", "query": "", "language": "en"}', "'query'"),
    ('{"id": "a", "language": "en"}', "'query'"),
    ('{"id": "a", "query": "hi", "language": "fr"}', "'language'"),
    ('{"id": "a", "query": "hi", "risk_level": "R9"}', "'risk_level'"),
    ('{"id": "a", "query": "hi", "category": "Cybersecurty"}', "'category'.*Cybersecurity"),
    ('{"id": "a", "query": "hi", "persona": 3}', "'persona'"),
    ('{"id": "ok", "query": "again"}', "'id'.*duplicate of line 1"),
    ('{"id": "a", "query": "hi"', "JSON"),
    ('["a", "hi"]', "JSON object"),
])
def test_user_query_file_errors_name_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "ok", "query": "fine"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"q\.jsonl:2: .*{field}"):
        load_query_file(path)


@pytest.mark.parametrize("row, field", [
    ({"id": "seed-0001", "query": "hi", "language": "en", "risk_level": "R0", "category": "No Risk",
      "persona": "p"}, "'task'.*missing"),
    ({"id": "seed-0001", "query": "hi", "language": "en", "risk_level": "R1", "category": "No Risk",
      "persona": "p", "task": "t"}, "'category'.*only for R0"),
    ({"id": "seed-0001", "query": "hi", "language": "en", "risk_level": "R1", "category": "网络安全",
      "persona": "p", "task": "t"}, "'category'.*write 'Cybersecurity'"),
    ({"id": "seed-0002", "query": "hi", "language": "en", "risk_level": "R0", "category": "No Risk",
      "persona": "p", "task": "t"}, "'id'.*sequential"),
    ({"id": "seed-0001", "query": "hi", "language": "en", "risk_level": "R0", "category": "No Risk",
      "persona": "p", "task": "t", "note": "x"}, "'note'.*unexpected"),
])
def test_the_seed_format_is_strict(tmp_path: Path, row: dict[str, str], field: str) -> None:
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"seed\.jsonl:1: field {field}"):
        load_seed_queries(path)


def test_query_file_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.jsonl: file not found"):
        load_query_file(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no queries"):
        load_query_file(tmp_path / "empty.jsonl")

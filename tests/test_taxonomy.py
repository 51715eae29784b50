"""Risk taxonomy and the embedded seed set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from oyster_exp.csa.seed import load_query_file, load_seed_queries
from oyster_exp.csa.taxonomy import Taxonomy, TaxonomyError, UnknownCategoryError, default_taxonomy

WORKBOOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "oyster" / "risk_taxonomy.xlsx"
PUBLISHED = ["Cult", "Illicit Uses", "Biodiversity Protection", "Religious Superstition", "Cybersecurity",
             "Commercial Law Violations", "Intellectual Property", "Violation of Personal Rights", "Harmful Scenes",
             "Promotion of Negative Values", "Subjective Evaluation/Comparison", "Business Ethics Violations",
             "Race/Ethnicity/Religion/Regional Discrimination",
             "Gender/Occupational/Age/Other Demographic Discrimination", "Vulnerable Groups", "Special Groups",
             "Bodily Harm", "Mental Health", "Hate and Abuse", "Personal Data", "Business Data", "Sensitive Data",
             "Common Sense Factual Errors", "Non-political False Rumors", "Illegal Drugs", "Gambling",
             "Hazardous Materials", "Illegal Acts", "Violent Terror", "Healthcare", "Investment and Finance",
             "Legal Consultation"]


def test_the_32_published_categories_with_guidelines_in_both_languages() -> None:
    tax = default_taxonomy()
    assert tax.names_en() == PUBLISHED
    for c in tax.categories:
        assert len(c.guideline_en) >= 3 and len(c.guideline_cn) >= 3, c.name_en
        assert c.level1_en in {"Ideology", "Legal Violations", "Ethical Issues", "Bias and Discrimination",
                               "Physical and Mental Harm", "Hate and Abuse", "Information Privacy", "Misinformation",
                               "Professional Field"}


@pytest.mark.parametrize("name, expected", [
    ("网络安全", "Cybersecurity"), ("  healthcare ", "Healthcare"), ("Non-political False Rumors",
                                                                    "Non-political False Rumors"),
    ("R2-Cybersecurity", "Cybersecurity"), ("something else", "Unknown Risk"), ("", "Unknown Risk"),
    (None, "Unknown Risk"), ("illegal_drugs", "Illegal Drugs"),
])
def test_lookup_is_tolerant_and_never_raises_keyerror(name: str | None, expected: str) -> None:
    assert default_taxonomy().get(name).name_en == expected


def test_strict_lookup_names_the_value_and_close_matches() -> None:
    with pytest.raises(UnknownCategoryError, match="Cybersecurty.*Cybersecurity"):
        default_taxonomy().get_strict("Cybersecurty")


def test_guideline_rendering_per_language() -> None:
    tax = default_taxonomy()
    assert tax.render_guideline("Mental Health", "en").startswith("1. ")
    assert "心理" in tax.render_guideline("Mental Health", "cn") or "自伤" in tax.render_guideline("Mental Health", "cn")


def test_authors_workbook_loads() -> None:
    tax = Taxonomy.from_xlsx(WORKBOOK)
    assert len(tax.categories) == 32
    assert set(tax.names_en()) == set(PUBLISHED)
    assert all(c.guideline_en and c.guideline_cn for c in tax.categories)
    assert tax.get("Cybersecurity").level1_en == "Legal Violations"


def test_broken_workbook_error_names_row_and_column(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["风险分级", "风险类别cn", "风险类别en", "对外风险规则cn", "对外风险规则en"])
    ws.append(["二级", "邪教", "Cult", "1. 规则", "1. rule"])
    ws.append(["二级", "赌博", None, "1. 规则", "1. rule"])
    path = tmp_path / "bad.xlsx"
    wb.save(path)
    with pytest.raises(TaxonomyError, match=r"row 3.*风险类别en"):
        Taxonomy.from_xlsx(path)
    wb2 = openpyxl.Workbook()
    wb2.active.append(["风险类别cn", "rules"])
    wb2.save(tmp_path / "nocol.xlsx")
    with pytest.raises(TaxonomyError, match="missing column"):
        Taxonomy.from_xlsx(tmp_path / "nocol.xlsx")


def test_seed_set_coverage() -> None:
    rows = load_seed_queries()
    assert len(rows) >= 60
    assert {r["risk_level"] for r in rows} == {"R0", "R1", "R2"}
    cats = {r["category"] for r in rows} - {"No Risk"}
    assert len(cats) >= 10 and cats <= set(PUBLISHED)
    langs = [r["language"] for r in rows]
    assert langs.count("cn") >= 6 and langs.count("en") > langs.count("cn")
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["persona"] and r["task"] for r in rows)
    # any prefix of 12 (the CPU demo) already spans every risk level
    assert {r["risk_level"] for r in rows[:12]} == {"R0", "R1", "R2"}


@pytest.mark.parametrize("line, field", [
    ('{"id": "a", "query": "", "language": "en"}', "query"),
    ('{"id": "a", "query": "hi", "language": "fr"}', "language"),
    ('{"id": "a", "query": "hi", "risk_level": "R9"}', "risk_level"),
    ('{"id": "a", "query": "hi", "category": "Nonsense"}', "category"),
    ('{"id": "a", "query": "hi"', "JSON"),
])
def test_user_query_file_errors_name_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "ok", "query": "fine"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"q\.jsonl:2: .*{field}"):
        load_query_file(path)

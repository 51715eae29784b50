"""`oyster-exp --help` introduces the tool before Hydra's listing, and lists choosable options only."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_help_opens_with_the_tool_the_readme_commands_and_common_runs() -> None:
    p = subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    text = p.stdout
    assert text.startswith("oyster-exp: Constructive Safety Alignment"), text[:300]
    assert "powered by Hydra" not in text
    head, sep, groups = text.partition("== Configuration groups ==")
    assert sep, text
    for line in ("make run", "make test", "oyster-exp model=tiny_random debug=fast", "oyster-exp -m "):
        assert line in head, line
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme.split("```")[1] and "make test" in readme.split("```")[1]
    listed = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line and "/" not in line.split(":")[0]
                  and line.split(":")[0].isidentifier())
    assert set(listed["model"].split(", ")) >= {"smollm2_135m", "tiny_random", "local_path"}
    assert "schema" not in groups, "structured-config schemas are not options"
    assert "--hydra-help" in groups


def test_schema_entries_leave_the_group_listing() -> None:
    from oyster_exp.run.cli import without_schema_options

    text = "intro: a, b\nmodel: embedded_schema, smollm2_135m, tiny_random_schema\neval/judge: schema\nx"
    assert without_schema_options(text) == "intro: a, b\nmodel: smollm2_135m\nx\n"

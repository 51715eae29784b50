"""A generic prompt-set benchmark: any CSV, JSONL or Parquet file of prompts, from config alone.

Most jailbreak and refusal sets (StrongREJECT, AdvBench, JailbreakBench, SORRY-Bench, ...) are a table with
a prompt column and perhaps a category and an id. Writing a module for each would be the same module
again, so this one takes the column names as knobs: the model under test answers each prompt, the
configured judge (`eval.judge`) gives a reason and two verdicts (did the answer help with the request,
did it refuse), and the summary reports the attack success rate and the refusal rate overall and per
category, each with a bootstrap interval, as HarmBench's rows are.

Several sets can run in one suite: each is an `eval.<key>` entry with its own `name`, which is the
`benchmark` of its records, rows and headline keys (`trained/strongreject/asr`), so names must differ.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from oyster_exp.config.components import ge, register_component
from oyster_exp.core.estimates import CallEstimate, Workload
from oyster_exp.csa.prompts import template_chars
from oyster_exp.evaluation.benchmarks.base import Benchmark, EvalEnv, Row, limit_of
from oyster_exp.evaluation.generation import Answer, conversation
from oyster_exp.evaluation.judges import EvalJudge
from oyster_exp.evaluation.rows import judged, rate_rows, unsafe
from oyster_exp.evaluation.suite import Judged, Prepared, Task

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
LANGUAGES = ("en", "cn")
KIND = "prompt_set"                  # meta["kind"] of every record: the summary finds this class by it


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    category: str
    language: str


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


@dataclass
class PromptSetBenchmark(Benchmark):
    """Prompts from a table (configurable columns) -> answer -> judge: ASR and refusal rate per category."""

    name: str = KIND                                      # type: ignore[misc]  # a knob here: one name per set
    path: str = MISSING                                   # the CSV / JSONL / Parquet file (required)
    prompt_column: str = "prompt"
    category_column: str | None = None
    id_column: str | None = None
    language_column: str | None = None
    language: str = "en"
    limit: int | None = field(default=None, metadata=ge(1))

    def config_problems(self) -> list[tuple[str, str]]:
        out = []
        if not str(self.name).strip() or "/" in str(self.name):
            out.append(("name", f"a non-empty name without '/', got {self.name!r}"))
        if Path(str(self.path)).suffix.lower() not in SUFFIXES:
            out.append(("path", f"a {', '.join(SUFFIXES)} file, got {self.path!r}"))
        if self.language not in LANGUAGES:
            out.append(("language", f"must be en or cn, got {self.language!r}"))
        return out

    def _path(self) -> Path:
        return Path(str(self.path)).expanduser()

    def data_files(self) -> list[Path]:
        return [self._path()]

    def load(self) -> list[PromptItem]:
        """The prompts in file order (the first `limit`); a bad row is a ValueError naming file, row and column."""
        from oyster_exp.data.tabular import TableRef, read_table

        items: list[PromptItem] = []
        seen: dict[str, str] = {}
        limit = limit_of(self.limit)
        for i, (where, row) in enumerate(read_table(TableRef(str(self._path()))), 1):
            if limit is not None and len(items) >= limit:
                break
            for col in (self.prompt_column, self.category_column, self.id_column, self.language_column):
                if col and col not in row:
                    raise ValueError(f"{where}: column {col!r}: not in the file (it has {sorted(row)})")
            prompt = _text(row[self.prompt_column])
            if not prompt:
                raise ValueError(f"{where}: column {self.prompt_column!r}: empty prompt")
            iid = _text(row[self.id_column]) if self.id_column else str(i)
            if not iid:
                raise ValueError(f"{where}: column {self.id_column!r}: empty id")
            if iid in seen:
                raise ValueError(f"{where}: column {self.id_column!r}: {iid!r} is a duplicate of {seen[iid]}")
            seen[iid] = where
            lang = (_text(row[self.language_column]) if self.language_column else "") or self.language
            if lang not in LANGUAGES:
                raise ValueError(f"{where}: column {self.language_column!r}: must be en or cn, got {lang!r}")
            category = (_text(row[self.category_column]) if self.category_column else "") or "uncategorised"
            items.append(PromptItem(iid, prompt, category, lang))
        if not items:
            raise ValueError(f"{self._path()}: no prompts")
        return items

    def items(self, work: Workload, skip_missing: bool) -> tuple[int, float]:
        if not self._path().is_file():
            return 0, 0.0
        items = self.load()
        return len(items), sum(len(it.prompt) for it in items) / len(items)

    def judge_calls(self, n: int, prompt_chars: float, answer_chars: float, judge_role: str) -> list[CallEstimate]:
        return [CallEstimate(judge_role, n, prompt_chars + answer_chars + template_chars("prompt_set_judge"))]

    def prepare(self, env: EvalEnv, missing: str | None) -> list[Task]:
        split = self._path().stem
        if missing is not None:
            return [Task(self.name, split, skipped=missing)]
        return [prompt_set_task(self.name, split, self.load(), env.judge, env.system_prompt)]

    def rows(self, split: str, model: str, records: list[Any], resamples: int, seed: int) -> list[Row]:
        ok = [r for r in judged(records) if r.verdict in ("safe", "unsafe")]
        if not ok:
            return []
        b = ok[0].benchmark                                # the set's name, also when summarised from records

        def refused(r: Any) -> bool:
            return bool(r.meta.get("refused"))

        out = rate_rows(b, split, model, "asr", ok, unsafe, resamples, seed)
        out += rate_rows(b, split, model, "refusal_rate", ok, refused, resamples, seed)
        groups: dict[str, list[Any]] = defaultdict(list)
        for r in ok:
            groups[str(r.meta.get("category", "uncategorised"))].append(r)
        for g, rs in sorted(groups.items()):
            out += rate_rows(b, split, model, f"asr[category={g}]", rs, unsafe, resamples, seed)
            out += rate_rows(b, split, model, f"refusal_rate[category={g}]", rs, refused, resamples, seed)
        return out


def prompt_set_task(name: str, split: str, items: list[PromptItem], judge: EvalJudge, system_prompt: str) -> Task:
    """The set's prompts as sent, and a judge giving verdict unsafe/safe plus `refused`, each with its reason."""

    def run(chunk: list[Prepared], answers: list[Answer]) -> list[Judged]:
        verdicts = judge.harm_and_refusal([(it.prompt, a.text, it.language) for it, a in zip(chunk, answers)])
        return [Judged(verdict=v.label, failure=v.failure,
                       meta={"reason": v.reason, **({"refused": int(v.refused)} if v.refused is not None else {})})
                for v in verdicts]

    prepared = [Prepared(item_id=it.id, prompt=it.prompt, conversation=conversation(it.prompt, system_prompt),
                         language=it.language, meta={"kind": KIND, "category": it.category, "language": it.language})
                for it in items]
    return Task(name, split, prepared, run)


register_component("eval/benchmark", "prompt_set", PromptSetBenchmark)

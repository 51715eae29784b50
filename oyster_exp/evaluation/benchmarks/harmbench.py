"""HarmBench text behaviours (CSV): loader producing ready-to-send prompts.

Columns: Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID. A "contextual"
behaviour is only meaningful with its context (e.g. a personal profile the request refers to), so its
prompt is built the way HarmBench does: context, a "---" separator, then the behaviour (for any row
that has a context string; a contextual row without one is an error). Context strings
span several lines, so errors report the physical line where the offending record starts.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from oyster_exp.config.components import ge, register_component
from oyster_exp.core.estimates import CallEstimate, Workload
from oyster_exp.csa.prompts import template_chars
from oyster_exp.evaluation.benchmarks.base import Benchmark, EvalEnv, Row, limit_of
from oyster_exp.evaluation.generation import Answer, conversation
from oyster_exp.evaluation.judges import EvalJudge
from oyster_exp.evaluation.rows import judged, paired_rates, rate_rows, unsafe
from oyster_exp.evaluation.suite import Judged, Prepared, Task, split_name

REQUIRED_COLUMNS: tuple[str, ...] = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString",
                                     "BehaviorID")
OPTIONAL_COLUMNS: tuple[str, ...] = ("Tags",)
CONTEXT_SEPARATOR = "\n\n---\n\n"


class HarmBenchItem(BaseModel):
    id: str = Field(min_length=1)             # BehaviorID
    behavior: str = Field(min_length=1)
    functional_category: str                  # standard | contextual | copyright | multimodal
    semantic_category: str
    tags: list[str] = Field(default_factory=list)
    context: str = ""
    prompt: str = Field(min_length=1)         # what the target model receives


def _err(path: Path, line: int, msg: str, column: str | None = None) -> ValueError:
    where = f"{path} line {line}" + (f", column {column!r}" if column else "")
    return ValueError(f"{where}: {msg}")


def load_harmbench(path: Path, limit: int | None = None) -> list[HarmBenchItem]:
    """All behaviours of a HarmBench CSV in file order; `limit` keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: HarmBench CSV not found")
    items: list[HarmBenchItem] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for col in REQUIRED_COLUMNS:
            if col not in header:
                raise _err(path, 1, f"required column missing (header has {header})", col)
        pos = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in header}
        start = reader.line_num + 1
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if limit is not None and len(items) >= limit:
                    break
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise _err(path, line, f"expected {len(header)} fields, found {len(row)}")
                get = {name: row[i].strip() for name, i in pos.items()}
                for col in ("Behavior", "BehaviorID", "FunctionalCategory"):
                    if not get[col]:
                        raise _err(path, line, "empty value", col)
                bid = get["BehaviorID"]
                if bid in seen:
                    raise _err(path, line, f"duplicate BehaviorID {bid!r} (first on line {seen[bid]})", "BehaviorID")
                seen[bid] = line
                context = get["ContextString"]
                contextual = get["FunctionalCategory"] == "contextual"
                if contextual and not context:
                    raise _err(path, line, "contextual behaviour without a context string", "ContextString")
                behavior = get["Behavior"]
                items.append(HarmBenchItem(
                    id=bid, behavior=behavior, functional_category=get["FunctionalCategory"],
                    semantic_category=get["SemanticCategory"],
                    tags=[t.strip() for t in get.get("Tags", "").split(",") if t.strip()], context=context,
                    prompt=context + CONTEXT_SEPARATOR + behavior if context else behavior))
        except csv.Error as e:
            raise _err(path, reader.line_num, f"malformed CSV ({e})") from None
    return items


# --- the benchmark ---------------------------------------------------------------------------------

def harmbench_task(items: list[HarmBenchItem], split: str, judge: EvalJudge, skip_copyright: bool,
                   system_prompt: str) -> Task:
    """HarmBench behaviours; contextual ones carry their context in the prompt; ASR = judge says 'yes'."""

    def run(chunk: list[Prepared], answers: list[Answer]) -> list[Judged]:
        verdicts = judge.harmbench([(str(it.meta["behavior"]), str(it.meta.get("context", "")), a.text)
                                    for it, a in zip(chunk, answers)])
        return [Judged(verdict=None if v.label is None else ("unsafe" if v.label == "yes" else "safe"),
                       failure=v.failure, meta={"reason": v.reason, "judge_label": v.label or ""}) for v in verdicts]

    prepared = []
    for it in items:
        skip = None
        if it.functional_category == "multimodal":
            skip = "multimodal behaviour (text-only evaluation)"
        elif it.functional_category == "copyright" and skip_copyright:
            skip = "copyright behaviour: HarmBench scores these with its hash classifier, not a judge"
        prepared.append(Prepared(
            item_id=it.id, prompt=it.prompt, conversation=conversation(it.prompt, system_prompt), language="en",
            meta={"semantic_category": it.semantic_category, "functional_category": it.functional_category,
                  "behavior": it.behavior, **({"context": it.context} if it.context else {})}, skip=skip))
    return Task(HarmBenchBenchmark.name, split, prepared, run)


@dataclass
class HarmBenchBenchmark(Benchmark):
    """HarmBench text behaviours (Mazeika et al. 2024): ASR overall, per semantic and functional category."""
    name: ClassVar[str] = "harmbench"
    enabled: bool = False
    path: str | None = None                                   # a harmbench_behaviors_text_*.csv (required)
    limit: int | None = field(default=None, metadata=ge(1))   # first N behaviours (None: all)
    skip_copyright: bool = True                               # copyright rows need HarmBench's hash classifier

    def _path(self) -> Path:
        if not self.path:
            raise ValueError("eval.harmbench.path: required when eval.harmbench.enabled=true")
        return Path(str(self.path)).expanduser()

    def items(self, work: Workload, skip_missing: bool) -> tuple[int, float]:
        path = Path(str(self.path)).expanduser() if self.path else None
        n = len(load_harmbench(path, limit=limit_of(self.limit))) if path is not None and path.is_file() else 0
        return n, 300.0

    def judge_calls(self, n: int, prompt_chars: float, answer_chars: float, judge_role: str) -> list[CallEstimate]:
        return [CallEstimate(judge_role, n, prompt_chars + answer_chars + template_chars("harmbench_judge"))]

    def data_files(self) -> list[Path]:
        return [self._path()]

    def prepare(self, env: EvalEnv, missing: str | None) -> list[Task]:
        path = self._path()
        split = split_name(path, "harmbench_behaviors_text_")
        if missing is not None:
            return [Task(self.name, split, skipped=missing)]
        items = load_harmbench(path, limit=limit_of(self.limit))
        return [harmbench_task(items, split, env.judge, bool(self.skip_copyright), env.system_prompt)]

    def _groups(self, records: list[Any]) -> dict[str, list[Any]]:
        """metric -> its judged records: overall, then per semantic and functional category."""
        ok = [r for r in judged(records) if r.verdict in ("safe", "unsafe")]
        out: dict[str, list[Any]] = {"asr": ok}
        for key, label in (("semantic_category", "semantic"), ("functional_category", "functional")):
            groups: dict[str, list[Any]] = defaultdict(list)
            for r in ok:
                groups[str(r.meta.get(key, "?"))].append(r)
            out.update({f"asr[{label}={g}]": rs for g, rs in sorted(groups.items())})
        return out

    def rows(self, split: str, model: str, records: list[Any], resamples: int, seed: int) -> list[Row]:
        return [x for metric, rs in self._groups(records).items()
                for x in rate_rows(self.name, split, model, metric, rs, unsafe, resamples, seed)]

    def paired(self, records: list[Any]) -> dict[str, tuple[dict[str, list[float]], Any]]:
        return paired_rates(self._groups(records), unsafe)


register_component("eval/benchmark", "harmbench", HarmBenchBenchmark)

"""A scripted world for the data engine with planted effects, served over the OpenAI-compatible HTTP path.

An ablation result is only worth believing if the ablation could have seen its component at all.
This world knows the right answer: each query has strategies the judges reward, each follower type
reacts to a reply in a planted way, and every role of the data engine answers from rules a reader
can check. Served by `oyster_exp.testing.loopback.serve(responder=...)`, so the real OpenAI client,
call engine, retry loop and call cache all run; `benchmarks/ablation_recovery.py` runs each ablation
sweep against it and checks that the sweep recovers the sign of the effect that was planted.

Strategy strings carry a token (`U2: cite the rule that applies`), which the actor renders into its
reply as `[[U2]]` markers, so every role reads what it needs from the request, as a model would:

- assessor (assess stage): a malicious query is rated likely malicious, a benign one likely benign.
- actor: the think and the initial answer follow the query's initial plan; a reply written from a
  plan (recombination, natural or template) follows the tokens in its prompt; an extra Stackelberg
  candidate (seed >= 1000) varies the plan: with or without the detailed-specifics strategy D1.
- extractor: the plan is the tokens of the think it reads.
- user simulator: satisfaction from the markers (every good U: complete; D1: more informative;
  R1: unwilling); one suggestion `<+U3>` or `<-R1>`.
- safety auditor: D1 is partly safe (unsafe under a strict guideline), all good S without D1 is safe;
  one suggestion `<-D1>` or `<+S2>`.
- editor: applies the suggestions it is shown to the current plan (the planted Lingo-BP effect), except
  that its first edit of every benign query drops the good U strategies instead (a regression the trace
  keeps: the planted pair-policy effect, where best-vs-worst sees a wider margin than best-vs-initial).
- follower model: benign and sensitive users stay with a complete, non-refusing reply and leave on a
  refusal; a malicious user exploits D1 (the planted Stackelberg effect: the safety auditor sees D1 as
  only partly unsafe, the follower model sees who would use it).

Ground truth for metrics: `true_risk(case, reply)` is 1.0 for D1 given to a malicious query.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHRASES = {
    "U1": "explain the general principle", "U2": "cite the rule that applies", "U3": "give a worked example",
    "U4": "point to a trusted source", "U5": "summarise the key steps", "U9": "open with small talk",
    "S1": "warn about the legal risk", "S2": "leave out operational details", "S3": "suggest a professional",
    "D1": "spell out the exact specifics", "R1": "refuse to discuss the topic",
}
USEFUL = ("U1", "U2", "U3", "U4", "U5")
SAFE = ("S1", "S2", "S3")
TOKEN = re.compile(r"\b([UDSR]\d): ")
MARK = re.compile(r"\[\[([UDSR]\d)\]\]")
SUGGEST = re.compile(r"<([+-])([UDSR]\d)>")
QID = re.compile(r"PW-(\d{3})")
REJECTED_NOTICE = ("Try a different change", "请换一种修改")   # the editor prompt's note after a regression
STRICT_WORDS = ("strict", "严格")   # a guideline that says it is strict makes the auditor rate D1 unsafe


def strategy(tok: str) -> str:
    return f"{tok}: {PHRASES[tok]}"


@dataclass
class Case:
    qid: str
    malicious: bool
    good_u: list[str]
    good_s: list[str]
    initial: list[str]                 # tokens of the initial plan
    regress: bool = False              # the editor's first edit of this query drops the good U (a regression)

    @property
    def query(self) -> str:
        topic = "get past a lock that is not mine" if self.malicious else "open the lock of my own shed"
        return f"{self.qid}: how do I {topic}?"


def make_cases(n: int = 40, seed: int = 11) -> list[Case]:
    """Half malicious; initial plans miss some good strategies and often carry D1 (the detailed answer)."""
    rng = random.Random(seed)
    cases = []
    for q in range(n):
        good_u = sorted(rng.sample(USEFUL, 2))
        good_s = sorted(rng.sample(SAFE, 1))
        plan = [u for u in good_u if rng.random() < 0.5] or ["U9"]
        if rng.random() < 0.6:
            plan.append("D1")
        if rng.random() < 0.2:
            plan.append("R1")
        plan += [s for s in good_s if rng.random() < 0.3]
        cases.append(Case(qid=f"PW-{q:03d}", malicious=q % 2 == 1, good_u=good_u, good_s=good_s, initial=plan,
                          regress=q % 2 == 0))
    return cases


def write_queries(path: Path, cases: Iterable[Case]) -> Path:
    """The cases as a `data=file` JSONL (id, query, language)."""
    path.write_text("".join(json.dumps({"id": c.qid, "query": c.query, "language": "en"}) + "\n" for c in cases))
    return path


def satisfaction_items(case: Case, toks: set[str]) -> dict[str, int]:
    have = [u for u in case.good_u if u in toks]
    complete = len(have) == len(case.good_u)
    return {"politeness": 1, "willingness_to_help": -1 if "R1" in toks else 1,
            "task_completion": 1 if complete else (0 if have else -1), "logic": 1,
            "informativeness": 1 if complete or "D1" in toks else 0}


def verdict(case: Case, toks: set[str], strict: bool = False) -> str:
    if "D1" in toks:
        return "unsafe" if strict else "partly_safe"
    return "safe" if all(s in toks for s in case.good_s) else "partly_safe"


def true_risk(case: Case, reply: str) -> float:
    """What the world knows and no single judge sees: D1 handed to a malicious user is the harm."""
    return 1.0 if case.malicious and "D1" in set(MARK.findall(reply)) else 0.0


def reaction(case: Case, toks: set[str], follower: str) -> str:
    """The planted follower reaction (a word; matched to the schema's enum by its stem)."""
    if follower == "malicious":
        return "exploit" if "D1" in toks else ("leave" if "R1" in toks else "rephrase")
    if "R1" in toks:
        return "leave"
    return "stay" if all(u in toks for u in case.good_u) else "rephrase"


def _plan_tokens(text: str) -> list[str]:
    return list(dict.fromkeys(TOKEN.findall(text)))


def _render(qid: str, toks: Iterable[str]) -> str:
    return f"Answer to {qid}: " + " ".join(f"[[{t}]]" for t in toks)


def _pick_enum(options: list[Any], stem: str) -> Any:
    for o in options:
        if stem in str(o).lower():
            return o
    return options[0]


@dataclass
class World:
    """The responder: an OpenAI request body in, the reply content out. Counts requests per role."""

    cases: list[Case] = field(default_factory=make_cases)
    # Effects removed (a negative control; an ablation must then see nothing): "lingo_bp" (the editor keeps the
    # plan), "stackelberg" (every follower type reacts alike; candidates do not vary), "risk_dims" (the auditor
    # ignores the guideline's strength), "pairs" (no regressing edit)
    null: frozenset[str] = frozenset()
    calls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {c.qid: c for c in self.cases}

    def __call__(self, body: dict[str, Any]) -> str:
        messages = body.get("messages", [])
        text = "\n".join(str(m.get("content", "")) for m in messages)
        rf = body.get("response_format") or {}
        schema = (rf.get("json_schema") or {}).get("schema")
        m = QID.search(text)
        case = self.by_id.get(f"PW-{m.group(1)}") if m else None
        if case is None:
            return json.dumps(_fill(schema or {}, {}, {})) if schema else "I can help with that."
        role = _role(schema)
        self.calls[role] = self.calls.get(role, 0) + 1
        if role == "actor":
            return self._actor(body, messages, case)
        known, stems = getattr(self, f"_{role}")(text, case, schema)
        return json.dumps(_fill(schema, known, stems))

    def true_risk_of(self, qid: str, reply: str) -> float:
        """`true_risk` by query id (the ablation metrics read replies from artifacts, keyed by id)."""
        return true_risk(self.by_id[qid], reply)

    # --- the roles -------------------------------------------------------------------------------
    def _actor(self, body: dict[str, Any], messages: list[dict[str, Any]], case: Case) -> str:
        prompt = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        if "think" in prompt.lower() and not TOKEN.search(prompt):
            return "I will " + "; ".join(strategy(t) for t in case.initial) + "."   # the think of generate
        toks = _plan_tokens(prompt) or list(case.initial)
        seed = int(body.get("seed") or 0)
        # an extra Stackelberg candidate (seed offset k * 1000): the same plan with or without D1
        if seed >= 1000 and "stackelberg" not in self.null:
            rng = random.Random(f"{case.qid}/{seed}")
            toks = [t for t in toks if t != "D1"] if "D1" in toks else (toks + ["D1"] if rng.random() < 0.5 else toks)
        return _render(case.qid, toks)

    def _assessor(self, text: str, case: Case, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        hi, lo = "very_likely", "unlikely"
        known = {"benign_user": lo if case.malicious else hi, "sensitive_user": lo,
                 "malicious_user": hi if case.malicious else lo}
        stems = {"level": "r2" if case.malicious else "r1", "intent": "malicious" if case.malicious else "benign"}
        return known, stems

    def _extractor(self, text: str, case: Case, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        toks = _plan_tokens(text) or list(case.initial)
        return _chain(toks), {}

    def _user(self, text: str, case: Case, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        toks = set(MARK.findall(text))
        missing = [u for u in case.good_u if u not in toks]
        tip = f"<+{missing[0]}>" if missing else ("<-R1>" if "R1" in toks else "nothing to add")
        items = satisfaction_items(case, toks)
        return {**items, "persona": "a home owner", "suggestion": tip}, {}

    def _auditor(self, text: str, case: Case, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        toks = set(MARK.findall(text))
        strict = "risk_dims" not in self.null and any(w in text.lower() for w in STRICT_WORDS)
        missing = [s for s in case.good_s if s not in toks]
        tip = (f"<+{missing[0]}>" if missing and not strict else
               "<-D1>" if "D1" in toks else (f"<+{missing[0]}>" if missing else "fine as it is"))
        v = verdict(case, toks, strict)
        return {"risk_intent": "may want to get past a lock", "adapted_guideline": "no specifics for others' locks",
                "reason": f"verdict {v}", "suggestion": tip}, {"verdict": v}

    def _editor(self, text: str, case: Case, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        cut = max(text.rfind("Current plan"), text.rfind("当前"), 0)
        current = _plan_tokens(text[cut:]) or list(case.initial)
        plan = list(current)
        if "lingo_bp" in self.null:
            return {"suggestion": "keep the plan", **_chain(plan)}, {}
        for sign, tok in SUGGEST.findall(text[:cut] if cut else text):
            if sign == "+" and tok not in plan:
                plan.append(tok)
            elif sign == "-" and tok in plan:
                plan.remove(tok)
        first = current == list(case.initial) and not any(m in text for m in REJECTED_NOTICE)
        if case.regress and first and "pairs" not in self.null:
            plan = [t for t in current if t not in case.good_u] or ["U9"]
        return {"suggestion": "apply the feedback", **_chain(plan)}, {}

    def _follower(self, text: str, case: Case, schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        toks = set(MARK.findall(text))
        types = ("benign", "sensitive", "malicious")
        if "stackelberg" in self.null:
            return {}, {t: reaction(case, toks, "benign") for t in types}
        return {}, {t: reaction(case, toks, t) for t in types}


def _chain(toks: list[str]) -> dict[str, Any]:
    use = [strategy(t) for t in toks if t[0] in "UD"] or [strategy("U9")]
    safe = [strategy(t) for t in toks if t[0] in "SR"]
    return {"user_needs": "get into a locked place", "risk_intent": "may want to get past a lock",
            "safety_guidelines": "no specifics for other people's locks",
            "usefulness_strategies": use[:4], "safety_strategies": safe[:4]}


def _role(schema: dict[str, Any] | None) -> str:
    """Which role sent a request, from the reply schema it asks for (free text: the actor)."""
    if not schema:
        return "actor"
    props = set(_props(schema))
    if "politeness" in props:
        return "user"
    if "verdict" in props and "adapted_guideline" in props:
        return "auditor"
    if "usefulness_strategies" in props:
        return "editor" if "suggestion" in props else "extractor"
    if any(p.endswith("_user") for p in props) or "level" in props or "category" in props:
        return "assessor"
    if any(k in json.dumps(schema) for k in ("benign", "malicious")):
        return "follower"
    return "assessor"


def _props(schema: dict[str, Any]) -> dict[str, Any]:
    return dict(schema.get("properties", {}))


def _fill(schema: dict[str, Any], known: dict[str, Any], stems: dict[str, str]) -> Any:
    """A schema-valid object: known values first, enums matched by stem, neutral values elsewhere."""
    defs = schema.get("$defs", {})

    def value(name: str, node: dict[str, Any]) -> Any:
        if "$ref" in node:
            return value(name, defs[node["$ref"].split("/")[-1]])
        for alt in node.get("anyOf", []):
            if alt.get("type") != "null":
                return value(name, alt)
        if name in known:
            return known[name]
        if "enum" in node:
            stem = next((s for k, s in stems.items() if k == name or k in name), None)
            return _pick_enum(node["enum"], stem) if stem else node["enum"][0]
        if "const" in node:
            return node["const"]
        t = node.get("type")
        if t == "object":
            return {k: value(k, v) for k, v in node.get("properties", {}).items()}
        if t == "array":
            n = max(1, int(node.get("minItems", 0)))
            return [value(name, node.get("items", {"type": "string"})) for _ in range(n)]
        if t in ("integer", "number"):
            return 0
        if t == "boolean":
            return False
        return "n/a"

    return {k: value(k, v) for k, v in _props(schema).items()}

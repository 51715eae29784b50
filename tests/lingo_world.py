"""A deterministic rule-based world for Lingo-BP tests: only the model is simulated.

Every query (`QID-007 ...`) has a known optimum: the good usefulness strategies U*, the good
safety strategies S*, and no harmful (H1) or needless-refusal (R1) item. Strategy strings carry
their token (`U2: cite the rule`), so each role of the world reads what it needs from the request
it receives, exactly as a model would:

- actor (recombine): renders the strategies of the plan in its system prompt into the reply as
  `[[U2]]` markers; sampled candidates (temperature > 0) drop one strategy, chosen by the seed. Asked for
  its reasoning (a system prompt that says not to write the answer yet), it writes `Thinking about ...`.
  Without a plan (the initial answer) it renders the query's initial chain.
- user judge: satisfaction from the markers in the reply (all good U and no R1 = 1.0) and one
  suggestion `<+U3>` / `<-R1>`; safety judge: unsafe with H1, safe with all good S, partly safe
  otherwise, suggestion `<-H1>` / `<+S2>`.
- editor: reads the plan and the suggestions in its prompt and proposes the plan with them applied.
- follower (stackelberg=on): one reaction per follower type from the markers (`world_reactions`): the
  dangerous specifics (H1) arm a malicious user and draw a sensitive one on; a refusal (R1) loses a
  benign one.

Replies are filled from the request's JSON schema (unknown fields get neutral values), so a reply
schema that grows a field still validates. Some first attempts are malformed, to exercise retries.
"""
from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage

PHRASES = {
    "U1": "explain the general principle", "U2": "cite the relevant rule", "U3": "give a worked example",
    "U4": "point to a trusted source", "U5": "summarise the key steps", "U8": "talk about something else",
    "U9": "tell a joke first",
    "S1": "warn about the legal risk", "S2": "leave out operational details", "S3": "suggest a professional",
    "H1": "give the dangerous specifics", "R1": "refuse to discuss the topic",
}
TOKEN = re.compile(r"\b([UHSR]\d):")
MARK = re.compile(r"\[\[([UHSR]\d)\]\]")
SUGGEST = re.compile(r"<([+-])([UHSR]\d)>")
PLAN_ITEM = re.compile(r"^\s*- ([UHSR]\d): ", re.M)
QID = re.compile(r"QID-(\d+)")
THINK_REQUEST = "Do not write the answer yet"


def strategy(tok: str) -> str:
    return f"{tok}: {PHRASES[tok]}"


@dataclass
class Case:
    qid: str
    good_u: list[str]
    good_s: list[str]
    initial: SafetyChain
    sabotage: bool = False            # the editor's first edit of this query removes a good U (a regression)

    @property
    def query(self) -> str:
        return f"{self.qid}: how does this risky thing work?"


def satisfaction(case: Case, toks: set[str]) -> dict[str, int]:
    have = [u for u in case.good_u if u in toks]
    complete = len(have) == len(case.good_u)
    return {"politeness": 1, "willingness_to_help": -1 if "R1" in toks else 1,
            "task_completion": 1 if complete else (0 if have else -1), "logic": 1,
            "informativeness": 1 if complete else 0}


def sat_score(case: Case, toks: set[str]) -> float:
    return sum(satisfaction(case, toks).values()) / 5


def verdict(case: Case, toks: set[str]) -> str:
    if "H1" in toks:
        return "unsafe"
    return "safe" if all(s in toks for s in case.good_s) else "partly_safe"


SAFETY = {"safe": 1.0, "partly_safe": 0.5, "unsafe": 0.0}


def world_reward(case: Case, toks: set[str]) -> float:
    """The construction objective S - 2 R (stackelberg=off's entry reward at its default beta)."""
    return sat_score(case, toks) - 2.0 * (1.0 - SAFETY[verdict(case, toks)])


OPTIMUM = 1.0


def world_reactions(case: Case, toks: set[str]) -> dict[str, str]:
    """What each follower type does after a reply with these markers (the world's planted follower effect)."""
    complete = all(u in toks for u in case.good_u)
    return {"benign": "leaves" if "R1" in toks else ("stays_helped" if complete else "rephrases"),
            "sensitive": "escalates" if "H1" in toks else (
                "stays_helped" if all(s in toks for s in case.good_s) else "follows_up"),
            "malicious": "exploits" if "H1" in toks else "leaves"}


def make_cases(n: int = 50, seed: int = 7, sabotage: bool = False) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for q in range(n):
        good_u = sorted(rng.sample(["U1", "U2", "U3", "U4", "U5"], 3))
        good_s = sorted(rng.sample(["S1", "S2", "S3"], rng.choice([1, 2])))
        have_u = [u for u in good_u if rng.random() < 0.45]
        use = list(have_u) + (["H1"] if rng.random() < 0.3 else [])
        if not use:
            use = ["U9"]                      # the chain always holds some usefulness strategy
        elif sabotage:
            use = use + ["U9"]
        safe = [s for s in good_s if rng.random() < 0.4] + (["R1"] if rng.random() < 0.15 else [])
        chain = SafetyChain(user_needs="understand the topic", risk_intent="may seek harmful detail",
                            safety_guidelines="no operational help for harm",
                            usefulness_strategies=[strategy(t) for t in use],
                            safety_strategies=[strategy(t) for t in safe])
        cases.append(Case(qid=f"QID-{q:03d}", good_u=good_u, good_s=good_s, initial=chain,
                          sabotage=sabotage and bool(have_u)))
    return cases


def tokens_of(chain: SafetyChain) -> set[str]:
    return {m.group(1) for s in [*chain.usefulness_strategies, *chain.safety_strategies]
            for m in [TOKEN.match(s)] if m}


def reachable(case: Case, epochs: int) -> bool:
    """One user and one safety suggestion per `both` epoch: can the optimum be reached in time?"""
    toks = tokens_of(case.initial)
    user_edits = sum(u not in toks for u in case.good_u) + ("R1" in toks)
    safety_edits = sum(s not in toks for s in case.good_s) + ("H1" in toks)
    return max(user_edits, safety_edits) <= epochs


def render_reply(qid: str, toks: list[str]) -> str:
    return f"Answer to {qid}: " + " ".join(f"[[{t}]]" for t in toks)


def _fill(schema: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, prop in schema.get("properties", {}).items():
        options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]   # an optional field
        prop = options[0] if options else prop
        if name in known:
            out[name] = known[name]
        elif "enum" in prop:
            out[name] = prop["enum"][0]
        elif prop.get("type") == "array":
            out[name] = ["n/a"] * int(prop.get("minItems", 0))
        elif prop.get("type") in ("integer", "number"):
            out[name] = 0
        else:
            out[name] = "n/a"
    return out


@dataclass
class WorldClient:
    """One role of the world; `requests` keeps every request this role received, in order."""

    role: str
    cases: dict[str, Case]
    backend: str = "world"
    model_id: str = "rule-world-v1"
    malformed_every: int = 0          # > 0: every n-th first attempt (service seed 42, by prompt hash) is cut JSON
    always_malformed: bool = False    # every attempt is cut JSON (a role that never answers properly)
    requests: list[ChatRequest] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse | str]:
        self.batches.append(len(requests))
        self.requests.extend(requests)
        return [self._one(r) for r in requests]

    def _one(self, req: ChatRequest) -> ChatResponse:
        text = "\n".join(m.content for m in req.messages)
        case = self.cases[f"QID-{QID.search(text).group(1)}"]  # type: ignore[union-attr]
        if self.role == "actor":
            content = self._actor(req, case)
        else:
            if self.always_malformed or (self.malformed_every and req.seed % 1000 == 42
                                         and zlib.crc32(text.encode()) % self.malformed_every == 0):
                return ChatResponse(content='{"persona": "cut', finish_reason="length")
            judge = {"user_judge": self._user, "safety_judge": self._safety, "editor": self._editor,
                     "follower": self._follower}[self.role]
            known = judge(text, case)
            content = json.dumps(_fill(req.response_schema or {}, known))
        return ChatResponse(content=content, usage=Usage(prompt_tokens=len(text.split()),
                                                         completion_tokens=len(content.split())))

    def _actor(self, req: ChatRequest, case: Case) -> str:
        system = next((m.content for m in req.messages if m.role == "system"), "")
        toks = TOKEN.findall(system) if TOKEN.search(system) else sorted(tokens_of(case.initial))
        toks = list(dict.fromkeys(toks))
        if THINK_REQUEST in system or "先不要写出回答" in system:
            return f"Thinking about {case.qid}: " + ", ".join(PHRASES[t] for t in toks if t in PHRASES)
        if req.temperature > 0 and toks:
            rng = random.Random(zlib.crc32(f"{case.qid}/{req.seed}/{system}".encode()))
            toks.pop(rng.randrange(len(toks)))
        return render_reply(case.qid, toks)

    def _user(self, text: str, case: Case) -> dict[str, Any]:
        toks = set(MARK.findall(text))
        missing = [u for u in case.good_u if u not in toks]
        tip = f"<+{missing[0]}>" if missing else ("<-R1>" if "R1" in toks else "nothing to add")
        return {**satisfaction(case, toks), "persona": "a curious student", "suggestion": tip}

    def _safety(self, text: str, case: Case) -> dict[str, Any]:
        toks = set(MARK.findall(text))
        missing = [s for s in case.good_s if s not in toks]
        tip = "<-H1>" if "H1" in toks else (f"<+{missing[0]}>" if missing else "fine as it is")
        return {"risk_intent": "curiosity", "adapted_guideline": "no specifics", "verdict": verdict(case, toks),
                "suggestion": tip}

    def _follower(self, text: str, case: Case) -> dict[str, Any]:
        return {"reading": "what the reply gives each asker", **world_reactions(case, set(MARK.findall(text)))}

    def _editor(self, text: str, case: Case) -> dict[str, Any]:
        plan = text[text.rindex("user_needs:"):]
        current = PLAN_ITEM.findall(plan)
        use = [t for t in current if t[0] in "UH"]
        safe = [t for t in current if t[0] in "SR"]
        feedback = text[:text.rindex("user_needs:")]
        for sign, tok in SUGGEST.findall(feedback):
            target = use if tok[0] in "UH" else safe
            if sign == "+" and tok not in target:
                target.append(tok)
            elif sign == "-" and tok in target:
                target.remove(tok)
        if case.sabotage and "U9" in current and "Try a different change" not in text and "请换一种修改" not in text:
            # a harmful edit, once per query: drops every strategy the user needs, ignores the safety tip
            use = [t for t in current if t[0] in "UH" and t not in case.good_u and t != "U9"] or ["U8"]
            safe = [t for t in current if t[0] in "SR"]
        return {"suggestion": "apply the feedback", "user_needs": "understand the topic",
                "risk_intent": "may seek harmful detail", "safety_guidelines": "no operational help for harm",
                "usefulness_strategies": [strategy(t) for t in use] or [strategy("U9")],
                "safety_strategies": [strategy(t) for t in safe]}

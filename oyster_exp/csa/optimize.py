"""The Lingo-BP loop: judge -> backprop -> recombine -> re-judge, in lockstep over many queries.

All still-active queries take each step together: one service call judges all of them, one edits
all, one recombines all (K candidates each with Stackelberg selection), one re-judges all, so a
local backend batches and a remote one fans out. A query leaves the batch when its loop ends
(schedule done, pearl point reached, or a failure) and is handed to `on_done` at once, so the
stage can journal it. With the natural recombiner (the default) a step also asks the actor for its
reasoning, one more call over all drafts whose backend returned none. Every trace entry owns its own chain
(no aliasing); a failed step is recorded in the trace with its reason and ends that query's loop; the
entries before it stay usable.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.follower import FollowerItem, predict_reactions
from oyster_exp.csa.lingo_bp import (
    EditItem,
    EditSettings,
    NaturalRecombiner,
    PearlPoint,
    Recombiner,
    Rejected,
    backprop,
)
from oyster_exp.csa.players import JudgeItem, judge_safety, judge_user
from oyster_exp.csa.records import TraceCandidate, TraceEntry
from oyster_exp.csa.replies import SafetyJudgement, UserJudgement
from oyster_exp.csa.stackelberg import CandidateOutcome, LeaderRule, SingleCandidate, normalise_posterior
from oyster_exp.csa.strategies import JaccardSimilarity
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService

SEED_STRIDE = 1000   # candidate k samples with seed + k * SEED_STRIDE (retries add 1, 2, ...: no overlap)


@dataclass
class LoopSettings:
    iterations: list[str]
    edit: EditSettings = field(default_factory=lambda: EditSettings(unfrozen={}, max_changes=2,
                                                                    similarity=JaccardSimilarity()))
    recombiner: Recombiner = field(default_factory=NaturalRecombiner)   # edited chain -> actor's reasoning + reply
    regression_guard: bool = True
    later_wins_ties: bool = True                           # best entry on equal rewards: the latest (else earliest)
    early_stop: Mapping[str, PearlPoint] | None = None     # mode -> pearl point; None = run the whole schedule
    leader: LeaderRule = field(default_factory=SingleCandidate)   # picks each step's reply among K candidates
                                                           # and gives each entry its reward (LeaderRule.reward)
    actor_max_tokens: int = 128                            # Cost = response tokens / this
    system_prompt: str = ""                                # the actor's system prompt of the generate stage

    @property
    def k(self) -> int:
        return max(1, self.leader.candidates)


@dataclass
class QueryInput:
    id: str
    query: str
    lang: str
    think: str
    response: str
    chain: SafetyChain
    category: str
    guideline: str
    posterior: dict[str, float] | None = None             # p(theta|x) from the assess stage
    persona: str = ""                                     # the user's stated profile and task, when the query
    task: str = ""                                        #   has them: both judges see them


@dataclass
class QueryResult:
    item: QueryInput
    trace: list[TraceEntry] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def best_index(self) -> int | None:
        return best_index(self.trace)


def best_index(trace: Sequence[TraceEntry], later_wins_ties: bool = True) -> int | None:
    """The highest-reward entry. On ties the latest by default: a step the judges cannot tell from the
    best so far still carries the optimised reasoning path (with a weak judge every entry ties, and
    earliest-wins would leave no Lingo-BP output to learn from); `later_wins_ties=False` makes a later
    entry improve strictly to win."""
    scored = [(e.reward, i if later_wins_ties else -i) for i, e in enumerate(trace) if e.reward is not None]
    return abs(max(scored)[1]) if scored else None


def start_index(trace: Sequence[TraceEntry], guard: bool) -> int:
    """The entry the next step edits: the last one, or the best one when the last scored below it."""
    last = len(trace) - 1
    if not guard:
        return last
    best = best_index(trace)
    if best is None or trace[last].reward is None:
        return last
    return best if trace[last].reward < trace[best].reward else last  # type: ignore[operator]


@dataclass
class _Draft:
    """A step's candidates for one query, before judging."""
    state: QueryResult
    iteration: int
    mode: str
    chain: SafetyChain | None
    thinks: list[str]                      # the reasoning of each candidate
    texts: list[str]
    tokens: list[int]
    failures: list[str | None]
    seeds: list[int]
    parent: int | None = None


Sample = tuple[str, int, str | None, int, str]   # (text, completion tokens, failure, seed, backend reasoning)


def _sample(service: LLMService, convs: list[list[ChatMessage]], s: LoopSettings) -> list[list[Sample]]:
    """K replies per conversation in one service call: (text, tokens, failure, seed, reasoning) each."""
    k = s.k
    flat = [c for c in convs for _ in range(k)]
    offsets = [j * SEED_STRIDE for _ in convs for j in range(k)]
    temps: list[float | None] = [None if j == 0 else s.leader.temperature for _ in convs for j in range(k)]
    outs = service.text("actor", flat, seed_offsets=offsets if k > 1 else None, temperatures=temps if k > 1 else None)
    res = [(o.text, o.completion_tokens, o.failure, service.seed + off, o.reasoning or "")
           for o, off in zip(outs, offsets)]
    return [res[i * k:(i + 1) * k] for i in range(len(convs))]


def _outcome(u: UserJudgement, sf: SafetyJudgement, tokens: int, s: LoopSettings,
             reactions: Mapping[str, str] | None = None) -> CandidateOutcome:
    """A judged candidate as the leader rule sees it; `reactions` are the follower role's words per type."""
    retention, risk = s.leader.reactions_of(reactions) if reactions else (None, None)
    return CandidateOutcome(satisfaction=u.score, risk=1.0 - sf.score,
                            cost=min(1.0, tokens / max(1, s.actor_max_tokens)),
                            reaction=retention, reaction_risk=risk)


def _judge_drafts(service: LLMService, drafts: list[_Draft], s: LoopSettings) -> list[TraceEntry]:
    """Judge every candidate of every draft (one call per judge, plus one to the follower role when the rule
    models followers), keep the leader's choice per draft and give each entry the rule's reward."""
    slots = [(d, j) for d in drafts for j in range(len(d.texts)) if d.failures[j] is None]
    items = [JudgeItem(query=d.state.item.query, response=d.texts[j], language=d.state.item.lang,
                       category=d.state.item.category, guideline=d.state.item.guideline,
                       persona=d.state.item.persona, task=d.state.item.task) for d, j in slots]
    users = judge_user(service, items) if items else []
    safeties = judge_safety(service, items) if items else []
    follows: list[object] = [None] * len(items)
    if s.leader.models_followers and items:
        follows = list(predict_reactions(service, [FollowerItem(it.query, it.response, it.language) for it in items]))
    judged: dict[tuple[int, int], tuple[object, object, object]] = {
        (id(d), j): (u, sf, fo) for (d, j), u, sf, fo in zip(slots, users, safeties, follows)}
    entries = []
    for d in drafts:
        posterior = normalise_posterior(d.state.item.posterior)
        cands: list[TraceCandidate] = []
        valid: list[tuple[int, CandidateOutcome]] = []
        for j, text in enumerate(d.texts):
            u, sf, fo = judged.get((id(d), j), (None, None, None))
            fails = [f for f in (d.failures[j], getattr(u, "failure", None), getattr(sf, "failure", None),
                                 f"follower: {fo.failure}" if getattr(fo, "failure", None) else None) if f]
            uv, sv, fv = getattr(u, "value", None), getattr(sf, "value", None), getattr(fo, "value", None)
            c = TraceCandidate(response=text, seed=d.seeds[j], cost=min(1.0, d.tokens[j] / max(1, s.actor_max_tokens)),
                               failure="; ".join(fails) or None, reactions=fv.by_type() if fv else None)
            # a candidate counts once every call its rule needs answered (the follower's too, when asked)
            if uv is not None and sv is not None and (fv is not None or not s.leader.models_followers):
                out = _outcome(uv, sv, d.tokens[j], s, c.reactions)
                c.satisfaction, c.risk = out.satisfaction, out.risk
                c.payoff = s.leader.payoff(out, posterior)
                valid.append((j, out))
            cands.append(c)
        outcome = None
        if s.k > 1 and valid:
            pick, outcome = valid[s.leader.pick([o for _, o in valid], posterior)]
        elif valid:
            pick, outcome = valid[0]
        else:   # nothing judged: keep the first reply that exists, with its failure
            pick = next((j for j, f in enumerate(d.failures) if f is None), 0)
        u, sf, _ = judged.get((id(d), pick), (None, None, None))
        failure = cands[pick].failure
        entry = TraceEntry(iteration=d.iteration, mode=d.mode, chain=d.chain, think=d.thinks[pick],
                           response=d.texts[pick] or d.state.item.response,
                           user=getattr(u, "value", None), safety=getattr(sf, "value", None), failure=failure,
                           parent=d.parent)
        if s.k > 1:
            entry.candidates, entry.chosen = cands, pick
        if outcome is not None:
            entry.reward = s.leader.reward(outcome, posterior)
            entry.reactions, entry.payoff = cands[pick].reactions, cands[pick].payoff
        entries.append(entry)
    return entries


def _initial(service: LLMService, states: list[QueryResult], s: LoopSettings) -> None:
    drafts = []
    if s.k > 1:
        convs = [([ChatMessage(role="system", content=s.system_prompt)] if s.system_prompt else [])
                 + [ChatMessage(role="user", content=st.item.query)] for st in states]
        for st, cands in zip(states, _sample(service, convs, s)):
            drafts.append(_Draft(st, 0, "initial", st.item.chain.model_copy(deep=True),
                                 [c[4] or st.item.think for c in cands], [c[0] for c in cands],
                                 [c[1] for c in cands], [c[2] for c in cands], [c[3] for c in cands]))
    else:
        drafts = [_Draft(st, 0, "initial", st.item.chain.model_copy(deep=True), [st.item.think], [st.item.response],
                         [0], [None], [service.seed]) for st in states]
    for d, entry in zip(drafts, _judge_drafts(service, drafts, s)):
        d.state.trace.append(entry)


def _reasoning(service: LLMService, drafts: list[tuple[QueryResult, int, SafetyChain, str | None, list[ChatMessage]]],
               sampled: list[list[Sample]], s: LoopSettings) -> list[tuple[str, str | None]]:
    """(reasoning, failure of the reasoning call) per draft, for candidates whose backend gave none.

    The recombiner's fixed text (the template option), or one actor call per draft that needs it
    (the natural option: the actor reasons from the chain as guidance); all of them in one service call.
    """
    out: list[tuple[str, str | None]] = [(fixed or "", None) for *_, fixed, _ in drafts]
    need = [n for n, ((_, _, _, fixed, _), cands) in enumerate(zip(drafts, sampled))
            if fixed is None and any(c[2] is None and not c[4] for c in cands)]
    if need:
        convs = [s.recombiner.think_messages(drafts[n][2], drafts[n][0].item.query, drafts[n][0].item.lang)
                 for n in need]
        for n, o in zip(need, service.text("actor", convs)):
            out[n] = (o.text, f"reasoning: {o.failure}" if o.failure else None)
    return out


def _step(service: LLMService, states: list[QueryResult], i: int, mode: str, s: LoopSettings,
          finish: Callable[[QueryResult, str | None], None]) -> None:
    """One Lingo-BP epoch for every active query: edit all, recombine all, judge all."""
    ready: list[tuple[QueryResult, int]] = []
    for st in states:
        last = st.trace[-1]
        if last.user is None or last.safety is None:
            finish(st, f"failure at iteration {last.iteration}: {last.failure or 'not judged'}")
            continue
        start = start_index(st.trace, s.regression_guard)
        pearl = s.early_stop.get(mode) if s.early_stop is not None else None
        if pearl is not None and pearl.reached(st.trace[start]):
            finish(st, f"pearl point reached at iteration {st.trace[start].iteration} ({mode})")
            continue
        ready.append((st, start))
    if not ready:
        return
    items = []
    for st, start in ready:
        base, last = st.trace[start], st.trace[-1]
        assert base.chain is not None
        # going back past a regression: tell the editor what did not work, so it does not repeat it
        rejected = None if start == len(st.trace) - 1 else Rejected(
            strategies=[*last.chain.usefulness_strategies, *last.chain.safety_strategies] if last.chain else [],
            satisfaction=last.user.score if last.user else None, safety=last.safety.score if last.safety else None)
        items.append(EditItem(st.item.query, base.response, base.chain, base.user, base.safety, mode, st.item.lang,
                              rejected))
    edits = backprop(service, items, s.edit)
    drafts: list[tuple[QueryResult, int, SafetyChain, str | None, list[ChatMessage]]] = []
    for (st, start), out in zip(ready, edits):
        parent = start if start != len(st.trace) - 1 else None
        if out.value is None:
            st.trace.append(TraceEntry(iteration=i, mode=mode, chain=None, response=st.trace[start].response,
                                       failure=f"editor: {out.failure}", parent=parent))
            finish(st, f"failure at iteration {i}: editor")
            continue
        fixed, conv = s.recombiner.messages(out.value, st.item.query, st.item.lang)
        drafts.append((st, start, out.value, fixed, conv))
    if not drafts:
        return
    sampled = _sample(service, [conv for *_, conv in drafts], s)
    thinks = _reasoning(service, drafts, sampled, s)
    judged = []
    for (st, start, chain, fixed, _), cands, (th, th_fail) in zip(drafts, sampled, thinks):
        parent = start if start != len(st.trace) - 1 else None
        # the template's fixed text wins over a backend's reasoning; the natural option keeps the backend's
        own = [c[4] if fixed is None else "" for c in cands]
        fails = [c[2] or (th_fail if not o else None) for c, o in zip(cands, own)]
        if all(f is not None for f in fails):
            st.trace.append(TraceEntry(iteration=i, mode=mode, chain=chain, think=th,
                                       response=st.trace[start].response, parent=parent,
                                       failure=f"recombine: {fails[0]}"))
            finish(st, f"failure at iteration {i}: recombine")
            continue
        judged.append(_Draft(st, i, mode, chain, [o or th for o in own], [c[0] for c in cands],
                             [c[1] for c in cands], fails, [c[3] for c in cands], parent))
    for d, entry in zip(judged, _judge_drafts(service, judged, s)):
        d.state.trace.append(entry)


def optimize_batch(service: LLMService, items: Sequence[QueryInput], s: LoopSettings,
                   on_done: Callable[[QueryResult], None] | None = None) -> list[QueryResult]:
    """Run the loop for `items` in lockstep; `on_done` gets each query as soon as its loop ends."""
    states = [QueryResult(item=it) for it in items]
    active = {id(st): st for st in states}

    def finish(st: QueryResult, reason: str | None) -> None:
        if id(st) in active:
            del active[id(st)]
            st.stop_reason = reason
            if on_done is not None:
                on_done(st)

    if states:
        _initial(service, states, s)
    for i, mode in enumerate(s.iterations, start=1):
        if not active:
            break
        _step(service, list(active.values()), i, mode, s, finish)
    for st in list(active.values()):
        finish(st, None)   # the schedule ended; a failed last entry carries its own reason
    return states

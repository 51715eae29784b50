"""evaluate: score the base and the trained model on held-out queries and Strata-Sword prompts."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal, file_hash
from oyster_exp.csa.players import JudgeItem, judge_jailbreak, judge_safety, judge_user
from oyster_exp.csa.taxonomy_access import taxonomy_for
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import RoleBinding
from oyster_exp.models.resolve import resolve_model_dir
from oyster_exp.pipeline import RunContext, Stage, StageError
from oyster_exp.records import EvalRecord, QueryRecord
from oyster_exp.stages.generate import user_turn

log = logging.getLogger(__name__)


def _strata_files(cfg: Any) -> list[Path]:
    ss = cfg.eval.strata_sword
    root = Path(str(ss.path)).expanduser()
    return [root / f"strata_sword_{lang}_level_{lvl}.xlsx" for lang in ss.languages for lvl in ss.levels]


class EvaluateStage(Stage):
    name = "evaluate"
    record_type = EvalRecord
    inputs = ("queries", "train")
    config_keys = ("eval", "model", "llm.roles.user_judge", "llm.roles.safety_judge", "llm.max_retries",
                   "data.system_prompt", "seed")

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        if not ctx.cfg.eval.strata_sword.enabled:
            return {}
        out = {}
        for f in _strata_files(ctx.cfg):
            if not f.exists():
                raise StageError(f"eval.strata_sword.path: {f} not found (set eval.strata_sword.path or "
                                 f"OYSTER_EXP_DATA, or eval.strata_sword.enabled=false)")
            out[f.name] = file_hash(f)
        return out

    def _subjects(self, ctx: RunContext, train_records: list[Any]) -> dict[str, tuple[Path, str]]:
        out: dict[str, tuple[Path, str]] = {}
        for name in ctx.cfg.eval.models:
            if name == "base":
                out["base"] = (resolve_model_dir(ctx.cfg.model), str(ctx.cfg.model.model_id))
            elif name == "trained":
                rec = train_records[0] if train_records else None
                if rec is None or rec.failure:
                    log.warning("no trained model (%s); evaluating the base model only", rec.failure if rec else "-")
                    continue
                entry = ctx.entries["train"]
                out["trained"] = (entry.dir / rec.model_dir, f"trained:{entry.key[:20]}")
        return out

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        from oyster_exp.llm.factory import local_client

        cfg, ev = ctx.cfg, ctx.cfg.eval
        tax = taxonomy_for(cfg)
        sp = str(cfg.data.system_prompt or "")
        heldout: list[QueryRecord] = [q for q in inputs["queries"] if q.split == "heldout"]
        if ev.construction.limit:
            heldout = heldout[: int(ev.construction.limit)]
        strata = []
        if ev.strata_sword.enabled:
            from oyster_exp.evaluation.strata_sword import load_strata_sword

            try:
                strata = load_strata_sword(Path(str(ev.strata_sword.path)).expanduser(),
                                           languages=tuple(ev.strata_sword.languages),
                                           levels=tuple(int(x) for x in ev.strata_sword.levels),
                                           limit=ev.strata_sword.limit)
            except ValueError as e:
                raise StageError(f"eval.strata_sword: {e}") from None
        for model_name, (path, model_id) in self._subjects(ctx, inputs["train"]).items():
            client = local_client({"source": "local_path", "path": str(path), "model_id": model_id,
                                   "dtype": str(cfg.model.dtype)})
            ctx.service.roles["subject"] = RoleBinding(client=client, temperature=float(ev.generation.temperature),
                                                       max_tokens=int(ev.generation.max_new_tokens))
            if ev.construction.enabled:
                self._construction(ctx, journal, model_name, heldout, tax, sp)
            if strata:
                self._strata(ctx, journal, model_name, strata)

    def _construction(self, ctx: RunContext, journal: Journal, model: str, queries: list[QueryRecord], tax: Any,
                      sp: str) -> None:
        todo = [q for q in queries if f"{model}/construction/{q.id}" not in journal]
        if not todo:
            return
        answers = ctx.service.text("subject", [user_turn(q, sp) for q in todo])
        items = []
        for q, a in zip(todo, answers):
            cat = tax.get(q.category or "Unknown Risk")
            items.append(JudgeItem(query=q.query, response=a.text, language=q.language, category=cat.name_en,
                                   guideline="\n".join(f"{i}. {r}" for i, r in
                                                       enumerate(tax.guideline(cat.name_en, q.language), 1))))
        users = judge_user(ctx.service, items)
        safeties = judge_safety(ctx.service, items)
        for q, a, u, s in zip(todo, answers, users, safeties):
            failure = a.failure or u.failure or s.failure
            journal.append(EvalRecord(
                id=f"{model}/construction/{q.id}", model=model, benchmark="construction", item_id=q.id,
                prompt=q.query, response=a.text, satisfaction=u.value.score if u.value else None,
                risk=s.value.risk if s.value else None, failure=failure,
                meta={"language": q.language, "risk_level": q.risk_level or "", "category": q.category or ""},
            ))

    def _strata(self, ctx: RunContext, journal: Journal, model: str, items: list[Any]) -> None:
        todo = [it for it in items if f"{model}/strata_sword/{it.id}" not in journal]
        if not todo:
            return
        answers = ctx.service.text("subject", [[ChatMessage(role="user", content=it.prompt)] for it in todo])
        verdicts = judge_jailbreak(ctx.service, [JudgeItem(query=it.prompt, response=a.text, language=it.language)
                                                 for it, a in zip(todo, answers)])
        for it, a, v in zip(todo, answers, verdicts):
            journal.append(EvalRecord(
                id=f"{model}/strata_sword/{it.id}", model=model, benchmark="strata_sword", item_id=it.id,
                prompt=it.prompt, response=a.text, verdict=v.value.verdict if v.value else None,
                failure=a.failure or v.failure,
                meta={"language": it.language, "level": it.level, "attack_method": it.attack_method},
            ))

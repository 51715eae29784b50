"""pairs: preference pairs from the Lingo-BP traces (policy in `pairs`), deduplicated, plus an SFT export.

The policy is the component `pairs` builds (`csa/pair_policies/*`, base `csa.pairs.PairPolicy`).
Every query ends with at least one record: its pair(s), or a record whose failure names the reason
(upstream failure, no improvement, margin, unsafe chosen, duplicate). The chosen side is also
written to `files/sft.jsonl` (conversational prompt/completion rows) so that `objective=sft` or an
external trainer can use it; the statistics go into `manifest.json` under `stage_summaries.pairs`.
"""
from __future__ import annotations

import json
import os
from typing import Any

from hydra.utils import instantiate

from oyster_exp.csa.pairs import PairPolicy, dedupe_key, pair_records, pair_stats, sft_rows
from oyster_exp.csa.records import PairRecord
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage

SFT_FILE = "sft.jsonl"


def prompt_for(query: str, system_prompt: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": query}]


class PairsStage(Stage):
    name = "pairs"
    version = 2
    record_type = PairRecord
    inputs = ("queries", "optimize")
    config_keys = ("pairs", "data.system_prompt", "seed")
    wandb_artifact = "dataset"

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        policy: PairPolicy = instantiate(ctx.cfg.pairs, _convert_="all")
        seed = int(ctx.cfg.seed)
        sp = str(ctx.cfg.data.system_prompt or "")
        # resume: the pairs already written are the first of their kind (selection is deterministic)
        seen = {dedupe_key(r): r.id for r in journal.records() if r.failure is None}
        for rec in inputs["optimize"]:
            for pair in pair_records(rec, prompt_for(rec.query, sp), policy, seed):
                if pair.id in journal:
                    continue
                if pair.failure is None and policy.dedupe:
                    key = dedupe_key(pair)
                    if key in seen:
                        pair = pair.model_copy(update={
                            "chosen": "", "rejected": "",
                            "failure": f"duplicate: same prompt, chosen and rejected as {seen[key]}"})
                    else:
                        seen[key] = pair.id
                journal.append(pair)
        if policy.sft_export:
            write_sft(entry, journal.records())

    def summarize(self, ctx: RunContext, records: list[Any]) -> dict[str, Any] | None:
        return pair_stats(records)


def write_sft(entry: CacheEntry, pairs: list[PairRecord]) -> None:
    """`files/sft.jsonl`, written whole and atomically from every pair in the journal."""
    path = entry.dir / "files" / SFT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in sft_rows(pairs):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)

"""pairs: preference pairs from the Lingo-BP traces (policy in `pairs`), deduplicated, plus an SFT export.

The policy is the component `pairs` builds (`csa/pair_policies/*`, base `csa.pairs.PairPolicy`).
Every query ends with at least one record: its pair(s), or a record whose failure names the reason
(upstream failure, no improvement, margin, unsafe chosen, duplicate). The chosen side is also
written to `files/sft.jsonl` (conversational prompt/completion rows) so that `objective=sft` or an
external trainer can use it; the statistics go into `manifest.json` under `stage_summaries.pairs`.

Every run's pairs are also written in TRL's conversational preference format, as `files/preference.jsonl`
and as a `datasets` folder `files/preference_dataset/` (`datasets.load_from_disk`), so TRL's trainers
and other tools take them as they are, and `data=pairs` can train on them again.

When the `data` source provides pairs itself (`data=pairs`: a preference dataset made elsewhere), the
stage reads them from the source instead of the optimize stage, and the data-engine stages drop out of
the graph (`upstream`). Pairs of a held-out query are recorded as skipped (`heldout`), not trained on.
"""
from __future__ import annotations

import json
import os
from typing import Any

from hydra.utils import instantiate

from oyster_exp.core.errors import DataError
from oyster_exp.csa.pairs import PairPolicy, dedupe_key, pair_records, pair_stats, sft_rows, trl_rows
from oyster_exp.csa.records import PairRecord
from oyster_exp.data.sources import QuerySource
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage

SFT_FILE = "sft.jsonl"
TRL_FILE = "preference.jsonl"
TRL_DATASET = "preference_dataset"


def prompt_for(query: str, system_prompt: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": query}]


def _source(cfg: Any) -> QuerySource:
    return instantiate(cfg.data)


class PairsStage(Stage):
    name = "pairs"
    version = 3
    record_type = PairRecord
    inputs = ("queries", "optimize")
    # all of `data`: a source that provides pairs decides them (its knobs; its file is an extra input)
    config_keys = ("pairs", "data", "seed")
    wandb_artifact = "dataset"
    runs_when_needed = True                 # no LLM call: runs when a selected stage needs it

    def upstream(self, cfg: Any) -> tuple[str, ...]:
        return ("queries",) if _source(cfg).provides_pairs else self.inputs

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        source = _source(ctx.cfg)
        return {"pairs_file": source.input_hash()} if source.provides_pairs else {}

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        policy: PairPolicy = instantiate(ctx.cfg.pairs, _convert_="all")
        source = _source(ctx.cfg)
        if source.provides_pairs:
            self._from_source(source, inputs["queries"], journal)
        else:
            self._from_traces(ctx, policy, inputs, journal)
        records = journal.records()
        write_trl(entry, records)
        if policy.sft_export:
            write_sft(entry, records)

    def _from_source(self, source: QuerySource, queries: list[Any], journal: Journal) -> None:
        """The source's pairs as records; those whose query is held out are skipped with that reason."""
        try:
            pairs = source.pairs()
        except ValueError as e:  # names the file, row and field: one line on stderr, exit 2 (run.cli)
            raise DataError(f"data: {e}") from None
        split = {q.id: q.split for q in queries}
        for p in pairs:
            if p["id"] in journal:
                continue
            qid = p["query_id"] or p["id"]
            held = split.get(qid) == "heldout"
            journal.append(PairRecord(
                id=p["id"], prompt=p["prompt"], chosen="" if held else p["chosen"],
                rejected="" if held else p["rejected"], chosen_reward=p["chosen_reward"],
                rejected_reward=p["rejected_reward"], query_id=qid, policy=p["policy"] or "file",
                language=p["language"], failure=f"heldout: query {qid} is in the held-out split" if held else None))

    def _from_traces(self, ctx: RunContext, policy: PairPolicy, inputs: dict[str, list[Any]],
                     journal: Journal) -> None:
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

    def summarize(self, ctx: RunContext, records: list[Any]) -> dict[str, Any] | None:
        return pair_stats(records)


def write_trl(entry: CacheEntry, pairs: list[PairRecord]) -> None:
    """`files/preference.jsonl` and the `datasets` folder `files/preference_dataset/`, both whole and atomic."""
    import shutil

    from datasets import Dataset, Features, Value
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    rows = trl_rows(pairs)
    _write_jsonl(entry.dir / "files" / TRL_FILE, rows)
    message = [{"role": Value("string"), "content": Value("string")}]
    features = Features({"prompt": message, "chosen": message, "rejected": message, "id": Value("string"),
                         "query_id": Value("string"), "margin": Value("float64"), "chosen_reward": Value("float64"),
                         "rejected_reward": Value("float64"), "language": Value("string"), "policy": Value("string")})
    ds = Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
    final = entry.dir / "files" / TRL_DATASET
    tmp = final.with_name(TRL_DATASET + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    quiet = are_progress_bars_disabled()
    disable_progress_bars()                     # a bar for a few hundred rows is noise in the run's log
    try:
        ds.save_to_disk(str(tmp))
    finally:
        if not quiet:
            enable_progress_bars()
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def write_sft(entry: CacheEntry, pairs: list[PairRecord]) -> None:
    """`files/sft.jsonl`, written whole and atomically from every pair in the journal."""
    _write_jsonl(entry.dir / "files" / SFT_FILE, sft_rows(pairs))


def _write_jsonl(path: Any, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)

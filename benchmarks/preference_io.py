"""Preference data I/O: the pairs stage's TRL export and `data=pairs` reading it back, at UltraFeedback scale.

    .venv/bin/python benchmarks/preference_io.py --pairs 20000      # one JSON line last

Writes N synthetic pairs (a system and a user turn, ~300-character answers) with the stage's own writer
(`stages.pairs.write_trl`: JSONL + a `datasets` folder), then reads them back through the `data=pairs`
source from the JSONL, from a Parquet copy and from the saved folder (every row checked). Each figure is the
median of --repeats rounds; timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from datasets import load_from_disk

    from oyster_exp.csa.records import PairRecord
    from oyster_exp.data.sources import PreferencePairs
    from oyster_exp.pipeline.artifacts import CacheEntry
    from oyster_exp.stages.pairs import TRL_DATASET, TRL_FILE, write_trl

    prompt = [{"role": "system", "content": "You are a careful assistant."}]
    pairs = [PairRecord(id=f"q{i}", prompt=[*prompt, {"role": "user", "content": f"question {i} " * 8}],
                        chosen=f"a helpful and safe answer {i} " * 12, rejected=f"a refusal {i} " * 10,
                        chosen_reward=0.8, rejected_reward=0.1, query_id=f"q{i}", policy="best_vs_initial",
                        language="en") for i in range(args.pairs)]
    times: dict[str, list[float]] = {"write_trl_s": [], "read_jsonl_s": [], "read_parquet_s": [], "read_saved_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            entry = CacheEntry(Path(tmp) / f"c{r}", "pairs", "k")
            t0 = time.perf_counter()
            write_trl(entry, pairs)
            times["write_trl_s"].append(time.perf_counter() - t0)
            files = entry.dir / "files"
            parquet = files / "pairs.parquet"
            load_from_disk(str(files / TRL_DATASET)).to_parquet(str(parquet))
            for key, path in (("read_jsonl_s", files / TRL_FILE), ("read_parquet_s", parquet),
                              ("read_saved_s", files / TRL_DATASET)):
                t0 = time.perf_counter()
                got = PreferencePairs(path=str(path)).pairs()
                times[key].append(time.perf_counter() - t0)
                assert len(got) == args.pairs and got[-1]["chosen"] == pairs[-1].chosen
    out = {"benchmark": "preference_io", "pairs": args.pairs, "repeats": args.repeats,
           **{k: round(statistics.median(v), 3) for k, v in times.items()}}
    out["read_jsonl_pairs_per_s"] = round(args.pairs / out["read_jsonl_s"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()

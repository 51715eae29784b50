"""Can each ablation see its component? Run the ablation sweeps in a world with planted effects.

    .venv/bin/python benchmarks/ablation_recovery.py                  # every component; one JSON line last
    .venv/bin/python benchmarks/ablation_recovery.py --only lingo_bp --queries 24

The world (`oyster_exp.testing.planted_world`) is served over the OpenAI-compatible HTTP path, so the real
client, call engine, retries and call cache run; each sweep is the shipped `conf/sweep/ablation_*.yaml`,
launched with `oyster-exp -m` and restricted to a baseline arm and one treatment arm, on the data-engine
stages (queries .. pairs; `model=tiny_random` for the stages that need a model). Per component it reads the
arms' artifacts, pairs the two arms on the queries they share, and reports the effect (treatment - baseline)
with a paired bootstrap CI; `recovered` is true when the CI excludes 0 on the side of the planted effect:

- lingo_bp (off -> paper): mean reward of the chosen (best) trace entry rises (the editor applies the judges'
  suggestions, and the judges prefer the planted strategies).
- stackelberg (off -> K=4): risk of the chosen entry on malicious-posterior queries falls (malicious users
  exploit the detailed-specifics strategy; the leader's follower-weighted payoff avoids it).
- risk_dims (no_follower_types -> full): risk on malicious-posterior queries falls (the follower posterior
  acts on the run even with Stackelberg off).
- pairs (best_vs_initial -> best_vs_worst, Lingo-BP paper schedule): the pair margin rises (the editor's
  first edit of some queries regresses, so the worst entry is below the initial one).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from oyster_exp.testing.ablation_recovery import COMPONENTS, recover  # noqa: E402
from oyster_exp.testing.loopback import serve  # noqa: E402
from oyster_exp.testing.planted_world import World, make_cases, write_queries  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--only", nargs="*", default=None, help="component names (default: all)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--null", action="store_true",
                    help="negative control: the world without its planted effects (nothing may be recovered)")
    ap.add_argument("--out", type=Path, default=None, help="keep the sweeps here (default: a temp dir)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        cases = make_cases(args.queries)
        queries = write_queries(out / "world_queries.jsonl", cases)
        world = World(cases, null=frozenset(c.name for c in COMPONENTS) if args.null else frozenset())
        with serve(responder=world) as (url, _state):
            for c in COMPONENTS:
                if args.only and c.name not in args.only:
                    continue
                try:
                    rows.append(recover(c, url, queries, out, args.resamples, truth=world.true_risk_of))
                except Exception as e:      # one broken sweep is a result, not a crash of the others
                    rows.append({"component": c.name, "recovered": False, "error": str(e)[:300]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "ablation_recovery", "queries": args.queries, "null_world": args.null,
                      "components": rows,
                      "all_recovered": all(r.get("recovered") for r in rows)}))


if __name__ == "__main__":
    main()

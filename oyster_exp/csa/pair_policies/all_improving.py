"""all_improving: one pair per trace entry k >= 1 that beats the initial response (ids "<qid>#<k>")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from oyster_exp.config.components import register_component
from oyster_exp.csa.pairs import Choice, PairPolicy, Skip, judged_initial, usable
from oyster_exp.csa.records import OptimizeRecord, TraceEntry


@dataclass(frozen=True)
class AllImproving(PairPolicy):
    """Every Lingo-BP step that strictly improved on the initial reply, each against that reply.

    More pairs per query than best_vs_initial from the same trace; a tie is never a pair here.
    """

    name: ClassVar[str] = "all_improving"

    def choose(self, rec: OptimizeRecord, best: TraceEntry, seed: int) -> list[Choice] | Skip:
        initial = judged_initial(rec)
        if isinstance(initial, Skip):
            return initial
        choices: list[Choice] = []
        first_skip: Skip | None = None
        for k, e in enumerate(rec.trace[1:], start=1):
            if not usable(e):
                continue
            out = self.against(e, initial, suffix=f"#{k}", strict=True)
            if not isinstance(out, Skip):
                choices += out
            elif first_skip is None or first_skip.reason == "no_improvement":
                first_skip = out   # report the most informative reason: a filter beats "no gain"
        return choices or first_skip or Skip("no_improvement", "no Lingo-BP step improved on the initial response")


register_component("pairs", "all_improving", AllImproving)

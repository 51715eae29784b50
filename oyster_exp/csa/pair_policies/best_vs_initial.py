"""best_vs_initial: chosen = the best trace entry, rejected = the initial response (entry 0)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from oyster_exp.config.components import register_component
from oyster_exp.csa.pairs import Choice, PairPolicy, Skip, judged_initial
from oyster_exp.csa.records import OptimizeRecord, TraceEntry


@dataclass(frozen=True)
class BestVsInitial(PairPolicy):
    """The paper's pair: what Lingo-BP made of a reply against the reply it started from."""

    name: ClassVar[str] = "best_vs_initial"

    def choose(self, rec: OptimizeRecord, best: TraceEntry, seed: int) -> list[Choice] | Skip:
        initial = judged_initial(rec)
        if isinstance(initial, Skip):
            return initial
        if best is initial:
            return Skip("no_improvement", "no Lingo-BP step improved on the initial response")
        return self.against(best, initial)


register_component("pairs", "best_vs_initial", BestVsInitial)

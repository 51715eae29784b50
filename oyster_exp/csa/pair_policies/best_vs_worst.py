"""best_vs_worst: chosen = the best trace entry, rejected = the lowest-rewarded other judged entry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from oyster_exp.config.components import register_component
from oyster_exp.csa.pairs import Choice, PairPolicy, Skip, judged_entries
from oyster_exp.csa.records import OptimizeRecord, TraceEntry


@dataclass(frozen=True)
class BestVsWorst(PairPolicy):
    """The widest reward gap in a trace: the rejected side may be a Lingo-BP step that regressed."""

    name: ClassVar[str] = "best_vs_worst"

    def choose(self, rec: OptimizeRecord, best: TraceEntry, seed: int) -> list[Choice] | Skip:
        judged = judged_entries(rec)
        if isinstance(judged, Skip):
            return judged
        worst = min((e for e in judged if e is not best), key=lambda e: e.reward)  # type: ignore[arg-type, return-value]
        return self.against(best, worst)


register_component("pairs", "best_vs_worst", BestVsWorst)

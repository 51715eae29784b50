"""refusal_as_rejected: chosen = the best trace entry, rejected = a plain refusal (`csa.pairs.REFUSALS`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from oyster_exp.config.components import register_component
from oyster_exp.csa.pairs import Choice, PairPolicy, Skip, refusal
from oyster_exp.csa.records import OptimizeRecord, TraceEntry


@dataclass(frozen=True)
class RefusalAsRejected(PairPolicy):
    """Teaches "guide, do not refuse": the refusal is picked from the seed and the query id, so the same
    query gets the same refusal in every run; one judged entry is enough."""

    name: ClassVar[str] = "refusal_as_rejected"
    refusal_reward: float | None = None    # the reward a refusal is assumed to get; None: no margin check

    def choose(self, rec: OptimizeRecord, best: TraceEntry, seed: int) -> list[Choice] | Skip:
        skip = self.check(best, refusal(rec.id, rec.language, seed, False), self.refusal_reward)
        if skip:
            return skip
        return [Choice("", best, None, refusal(rec.id, rec.language, seed, self.include_think), self.refusal_reward)]


register_component("pairs", "refusal_as_rejected", RefusalAsRejected)

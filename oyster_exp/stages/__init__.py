"""One module per stage of the graph; `default_stages()` lists them in order."""
from __future__ import annotations

from oyster_exp.pipeline.runner import Stage


def default_stages() -> list[Stage]:
    from oyster_exp.stages.assess import AssessStage
    from oyster_exp.stages.evaluate import EvaluateStage
    from oyster_exp.stages.extract import ExtractStage
    from oyster_exp.stages.generate import GenerateStage
    from oyster_exp.stages.optimize import OptimizeStage
    from oyster_exp.stages.pairs import PairsStage
    from oyster_exp.stages.queries import QueriesStage
    from oyster_exp.stages.report import ReportStage
    from oyster_exp.stages.train import TrainStage

    return [QueriesStage(), GenerateStage(), AssessStage(), ExtractStage(), OptimizeStage(), PairsStage(),
            TrainStage(), EvaluateStage(), ReportStage()]

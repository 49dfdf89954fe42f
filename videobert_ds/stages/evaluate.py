"""`evaluate` as a stage: the same launch as training (deepspeed / srun / mpirun), no step loop.

    deepspeed videobert_ds/train.py --config eval_tiny model.dir=runs/demo/teacher/final eval.out=eval.json

The work is videobert_ds.eval.run and its config videobert_ds.eval.config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from videobert_ds.eval.config import EvalStageConfig, check_eval_config
from videobert_ds.eval.run import run_evaluation, write_report
from videobert_ds.stages.offline import OfflineStage


class EvalStage(OfflineStage):
    name = "evaluate"
    config_cls = EvalStageConfig
    cfg: EvalStageConfig

    def check(self) -> None:
        check_eval_config(self.cfg)

    def run(self, run_dir: Path, rank: int, world: int, device: torch.device) -> dict[str, Any]:
        report = run_evaluation(self.cfg, device)
        if rank == 0:
            write_report(report, Path(self.cfg.eval.out) if self.cfg.eval.out else run_dir / "eval.json")
        return report or {}

"""The base of the stages that do their whole work in `run` instead of the training loop (build_vocab, tokenize,
evaluate): no training module, no model inputs, no model export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from videobert_ds.training.stage import Stage


class OfflineStage(Stage):
    """A stage with `trains = False`: the engine calls `check`, then `run` on every rank, and nothing else."""

    trains = False

    def build_module(self) -> nn.Module:
        raise NotImplementedError(f"{self.name} has no training module")

    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} has no training inputs")

    def export(self, module: nn.Module, out_dir: Path) -> None:
        raise NotImplementedError(f"{self.name} writes no model to export")

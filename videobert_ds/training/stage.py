"""What a training stage provides to the engine; one module per stage implements it."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from videobert_ds.core.config import StageConfig, micro_batch_size


class Stage(abc.ABC):
    """A stage = config type + model + how a loader batch becomes model inputs + export.

    The training module returned by `build_module` maps `inputs` (from `make_inputs`) to a dict of
    scalar tensors: "loss" (what is optimised) plus one entry per loss term for the curves.
    """

    name: str
    config_cls: type[StageConfig]
    trains: bool = True  # False: the stage does its own work in `run` (e.g. build_vocab) instead of the step loop

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg

    def check(self) -> None:  # noqa: B027 (optional hook)
        """Stage-specific validation before any rank starts work (raise ConfigError)."""

    def loader_batch_size(self, ds_config: dict, world_size: int) -> int | None:
        """Samples per rank per batch of the training-split loader (None: the stage reads no training split)."""
        if not self.trains:
            return None
        return micro_batch_size(ds_config, world_size)

    @abc.abstractmethod
    def build_module(self) -> nn.Module:
        """The training module. Called with ZeRO-3 construction context active when configured."""

    @abc.abstractmethod
    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, Any]:
        """Loader batch -> inputs for the training module, on `device`."""

    def prepare_host(self, batch: Any, generator: torch.Generator) -> Any:
        """The host-side half of `make_inputs` (tokenizing, masking draws, layout; CPU only, no device value read),
        run ahead in the training loader's prefetch thread; its result reaches `make_inputs` as `batch.host`.
        Draw only from `generator` (seeded from the batch's data position), never from torch's global RNG.
        None (the default): `make_inputs` does everything."""
        return None

    def setup(self, run_dir: Path, rank: int, device: torch.device) -> None:  # noqa: B027 (optional hook)
        """Work before the model is built, on every rank (e.g. rank 0 trains a tokenizer); a barrier follows.
        Frozen helper models belong here: it runs before the ZeRO-3 construction context exists, so they
        load whole instead of partitioned."""

    def step_stats(self, inputs: dict[str, Any]) -> tuple[int, float]:
        """(tokens, training FLOPs) of one micro-batch, from host-side shapes only (no device sync);
        FLOPs count forward + backward, for MFU. (0, 0.0) when not meaningful."""
        return 0, 0.0

    def images(self, module: nn.Module, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Image grids for TensorBoard from the first validation batch's inputs and outputs.

        Called on every rank (only rank 0's result is written), so an implementation may run forward
        passes: under ZeRO-3 every rank must make the same calls."""
        return {}

    def on_train_start(self, module: nn.Module, device: torch.device) -> None:  # noqa: B027 (optional hook)
        """Hook after DeepSpeed initialisation (e.g. load frozen helpers onto the device)."""

    def run(self, run_dir: Path, rank: int, world: int, device: torch.device) -> dict[str, Any]:
        """The whole work of a non-training stage (trains = False), on every rank."""
        raise NotImplementedError

    @abc.abstractmethod
    def export(self, module: nn.Module, out_dir: Path) -> None:
        """Write the consolidated model dir from a full (unpartitioned) training module."""

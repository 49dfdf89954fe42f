"""Validation during training: every `schedule.val_every` steps (and at the last step), the mean of each loss
term over the first `schedule.val_batches` batches of the val split, plus the stage's image grids."""

from __future__ import annotations

import logging
from typing import Any

import torch

from videobert_ds.core.config import StageConfig
from videobert_ds.core.distributed import DistEnv
from videobert_ds.training.loaders import build_split_loader
from videobert_ds.training.metrics import add_scalars, reduce_means
from videobert_ds.training.monitor import Monitor
from videobert_ds.training.stage import Stage

log = logging.getLogger(__name__)


class Validator:
    """Decides when to validate and does it; shards without a val split mean no validation (with a warning)."""

    def __init__(self, stage: Stage, cfg: StageConfig, env: DistEnv, batch_size: int, monitor: Monitor) -> None:
        self.stage, self.cfg, self.env, self.monitor = stage, cfg, env, monitor
        try:
            self.loader = build_split_loader(cfg, cfg.data.val_split, batch_size, env, shuffle=False)
        except ValueError as err:  # no val split in these shards: train without validation
            if env.rank == 0:
                log.warning("no validation: %s", err)
            self.loader = None

    def should_validate(self, step: int) -> bool:
        sched = self.cfg.schedule
        return self.loader is not None and (step % sched.val_every == 0 or step == sched.max_steps)

    @torch.no_grad()
    def validate(self, engine: Any, step: int) -> dict[str, float]:
        # Same masks and samples at every validation (a fixed seed), without disturbing training's RNG.
        with torch.random.fork_rng(devices=[self.env.device] if self.env.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.run.seed)
            return self._validate(engine, step)

    def _validate(self, engine: Any, step: int) -> dict[str, float]:
        engine.eval()
        self.loader.load_state_dict({"epoch": 0, "batches_in_epoch": 0})
        n = min(self.cfg.schedule.val_batches, self.loader.steps_per_epoch)
        sums: dict[str, torch.Tensor] = {}
        first = None
        for i, batch in zip(range(n), self.loader, strict=False):
            inputs = self.stage.make_inputs(batch, self.env.device)
            out = engine(inputs)
            add_scalars(sums, out)
            if i == 0:
                first = (inputs, out)
        scalars = reduce_means(sums, n, prefix="val/")
        self.monitor.scalars(step, scalars)
        if first is not None:  # on every rank: images may need forwards (ZeRO-3); the monitor writes rank 0's
            self.monitor.images(step, self.stage.images(engine.module, *first))
        if self.env.rank == 0:
            log.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
        engine.train()
        return scalars

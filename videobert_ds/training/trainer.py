"""The training loop every stage runs on DeepSpeed ZeRO-3.

The loop only trains; components decide when the rest happens, each from its own `schedule.*` fields:
MetricsLogger (training/metrics.py: log_every), Validator (training/validate.py: val_every, val_batches),
CheckpointManager (training/checkpoint.py: checkpoint_every, keep_checkpoints) and StopFlag
(training/stopping.py: signal_check_every, for SIGUSR1 / SIGTERM). Host synchronisation happens only when
one of them acts: per-step losses stay on the device between log steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from videobert_ds.core.config import StageConfig, micro_batch_size, save_config
from videobert_ds.core.distributed import DistEnv
from videobert_ds.training.checkpoint import CheckpointManager
from videobert_ds.training.loaders import HostPrefetch, SampleKeyLog, build_split_loader
from videobert_ds.training.memory import held_state_bytes, peak_rss_bytes, write_partition_report
from videobert_ds.training.metrics import MetricsLogger
from videobert_ds.training.schedule import lr_scheduler
from videobert_ds.training.stage import Stage
from videobert_ds.training.stopping import StopFlag
from videobert_ds.training.timing import StepTimer
from videobert_ds.training.validate import Validator

log = logging.getLogger(__name__)


def build_module(stage: Stage, ds_config: dict) -> tuple[torch.nn.Module, Any]:
    """Build the stage's module; under ZeRO-3 its Hugging Face models partition at construction.

    transformers only partitions inside `from_config`/`_from_config` while an `HfDeepSpeedConfig`
    is alive, so we return it for the caller to keep.
    """
    keep_alive = None
    if ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)
    return stage.build_module(), keep_alive


class Trainer:
    def __init__(self, stage: Stage, cfg: StageConfig, ds_config: dict, env: DistEnv) -> None:
        self.stage, self.cfg, self.ds_config, self.env = stage, cfg, ds_config, env
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if env.rank == 0:
            save_config(cfg, self.run_dir / "config.yaml")
        self.micro_batch = micro_batch_size(ds_config, env.world_size)
        self.stop = StopFlag(cfg.schedule)  # handlers installed now: a signal during set-up is not lost

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: str = "auto") -> dict[str, float]:
        """Train to `schedule.max_steps` (or a stop signal); -> the last validation's means."""
        cfg, env, sched = self.cfg, self.env, self.cfg.schedule
        engine = self._build_engine()
        # Read ahead in a thread or a worker process that also builds each batch's host-side inputs
        # (stage.prepare_host); a worker process builds host tensors, moved to the device as each batch is taken.
        in_process = cfg.data.prefetch_in_process()
        host = torch.device("cpu") if in_process else None
        train_loader = build_split_loader(cfg, cfg.data.train_split, self.micro_batch, env, shuffle=True, device=host)
        train_batches = HostPrefetch(
            train_loader, self.stage.prepare_host, cfg.data.prefetch, cfg.run.seed, env.rank, env.device, in_process
        )
        checkpointer = CheckpointManager(self.run_dir / "checkpoints", sched.keep_checkpoints, sched.checkpoint_every)
        states = {"loader": train_batches}  # what a checkpoint carries besides engine and RNG: the data position
        step = checkpointer.resume(engine, resume, states)
        metrics = MetricsLogger(self.run_dir, sched, env, start_step=step)  # drops rows logged past `step`
        validator = Validator(self.stage, cfg, env, self.micro_batch, metrics.monitor)
        self._log_start(step, engine, metrics)
        key_log = SampleKeyLog(self.run_dir, env.rank, enabled=cfg.data.log_sample_keys)

        timer, gas, micro = StepTimer(env.device), engine.gradient_accumulation_steps(), 0
        last_val: dict[str, float] = {}
        stopped = False
        batches = iter(train_batches)
        engine.train()
        while step < sched.max_steps:
            wait_started = time.perf_counter()
            batch = next(batches)
            timer.data_ready(wait_started)  # waiting for the loader; make_inputs below is device work
            metrics.record_data(getattr(batch, "data_counts", None))  # samples read / skipped (on_error: skip)
            inputs = self.stage.make_inputs(batch, env.device)
            tokens, flops = self.stage.step_stats(inputs)
            key_log.write(step, batch)
            out = engine(inputs)
            engine.backward(out["loss"])
            engine.step()  # DeepSpeed steps the optimizer only on the last micro-step of each accumulation
            metrics.record(out)
            micro += 1
            # The micro-step that ends a logged step syncs the device first: CUDA runs asynchronously.
            timer.step_done(self.micro_batch, tokens, flops, sync=not micro % gas and metrics.should_log(step + 1))
            if micro % gas:
                continue
            step += 1
            if micro == gas:  # optimizer state exists after the first step: record what this rank holds
                self._write_partition_report(engine.module, extra=held_state_bytes(engine))

            if metrics.should_log(step):
                metrics.log(step, engine, timer)
            if self.stop.should_check(step):
                stopped = self.stop.agreed(env.device)
            if validator.should_validate(step):
                last_val = validator.validate(engine, step)
                timer.restart_clock()
            if checkpointer.save(engine, step, states, last_step=step == sched.max_steps, force=stopped):
                timer.restart_clock()
            if stopped:
                break

        if stopped and env.rank == 0:
            log.warning(
                "stopped by signal %s at step %d; checkpoint saved, resume with --resume auto", self.stop.signal, step
            )
        train_batches.close()
        key_log.close()
        metrics.close()
        self.stopped_early = stopped
        self.final_step = step
        return last_val

    def build_only(self) -> None:
        """Build the module as training would (partitioned at construction under ZeRO-3) and report what
        each rank holds and its peak memory; nothing is trained."""
        self.stage.setup(self.run_dir, self.env.rank, self.env.device)
        dist.barrier()
        rss_before = peak_rss_bytes()
        module, self._hf_ds_config = build_module(self.stage, self.ds_config)
        self._write_partition_report(module, extra={"peak_rss_growth_bytes": peak_rss_bytes() - rss_before})
        dist.barrier()

    # -- helpers -------------------------------------------------------------------------------
    def _build_engine(self) -> Any:
        """Stage set-up, the (partitioned) module, and the DeepSpeed engine with the stage config's lr schedule."""
        env = self.env
        torch.manual_seed(self.cfg.run.seed + env.rank)
        self.stage.setup(self.run_dir, env.rank, env.device)
        dist.barrier()
        module, self._hf_ds_config = build_module(self.stage, self.ds_config)
        engine, _, _, _ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=lr_scheduler(self.cfg.schedule),
        )
        self.engine = engine
        self.stage.on_train_start(engine.module, env.device)
        self._write_partition_report(engine.module)
        return engine

    def _log_start(self, step: int, engine: Any, metrics: MetricsLogger) -> None:
        if self.env.rank == 0:
            log.info(
                "training %s: %d steps from step %d, micro-batch %d x %d ranks x %d accumulation; "
                "TensorBoard: tensorboard --logdir %s",
                self.cfg.stage,
                self.cfg.schedule.max_steps,
                step,
                self.micro_batch,
                self.env.world_size,
                engine.gradient_accumulation_steps(),
                metrics.monitor.tb_dir,
            )

    def _write_partition_report(self, module: torch.nn.Module, extra: dict | None = None) -> None:
        write_partition_report(module, self.run_dir, self.env.rank, self.env.world_size, extra)

"""The training engine every stage runs on: DeepSpeed ZeRO-3 set-up, the step loop, validation,
checkpoint / resume, and a clean stop on SIGUSR1 / SIGTERM.

Host synchronisation happens only at log, validation and checkpoint intervals: per-step losses stay on
the device and are reduced across ranks once per `schedule.log_every` steps.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from videobert_ds.training.checkpoint import CheckpointManager
from videobert_ds.core.config import StageConfig, save_config
from videobert_ds.data.loader import build_clip_loader
from videobert_ds.training.monitor import Monitor, StepTimer
from videobert_ds.training.stage import Stage

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Process group and device
# ---------------------------------------------------------------------------------------------


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def skip_cpu_shm_allreduce() -> None:
    """On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op at process-group set-up
    (a minute of g++, and a py-cpuinfo probe that can spin forever in some VMs) and maps a 64 MiB
    /dev/shm buffer per rank that it never unlinks: every run leaks RAM until the host runs dry. Training
    does not use it (ZeRO's collectives go through gloo; it serves inference all-reduce only), so mark the
    op incompatible in DeepSpeed's op table, which DeepSpeed caches and consults before building it."""
    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed() -> DistEnv:
    """Join the process group (env:// from the launcher or SLURM mapping, or MPI discovery)."""
    skip_cpu_shm_allreduce()
    deepspeed.init_distributed(auto_mpi_discovery=True)
    local_rank = int(__import__("os").environ.get("LOCAL_RANK", 0))
    accel = get_accelerator()
    if accel.device_name() == "cuda":
        accel.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


# ---------------------------------------------------------------------------------------------
# Model construction and schedule
# ---------------------------------------------------------------------------------------------


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


def lr_multiplier(step: int, warmup: int, total: int, decay: str, min_ratio: float) -> float:
    """Linear warm-up to the DeepSpeed optimizer's lr, then cosine/linear decay to min_ratio × lr."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def micro_batch_size(ds_config: dict, world_size: int) -> int:
    if "train_micro_batch_size_per_gpu" in ds_config:
        return int(ds_config["train_micro_batch_size_per_gpu"])
    gas = int(ds_config.get("gradient_accumulation_steps", 1))
    return int(ds_config["train_batch_size"]) // (gas * world_size)


def held_state_bytes(engine: Any) -> dict[str, int]:
    """Bytes of parameters and optimizer state this rank holds, measured from the live tensors (each
    storage counted once): the model's parameters (its ZeRO-3 partitions when partitioned), the
    optimizer's parameter copies that are not the model's own tensors (fp32 master partitions), and the
    optimizer state (e.g. Adam's moments)."""

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    seen: set[int] = set()
    params = 0
    for p in engine.module.parameters():
        t = p.ds_tensor if hasattr(p, "ds_tensor") else p
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            params += nbytes(t)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wrappers hold a torch optimizer
    master = state = 0
    for group in inner.param_groups:
        for p in group["params"]:
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                master += nbytes(p)
    for per_param in inner.state.values():
        for v in per_param.values():
            if torch.is_tensor(v) and v.numel() > 1 and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                state += nbytes(v)
    return {"param_bytes": params, "master_param_bytes": master, "optimizer_state_bytes": state,
            "state_bytes_total": params + master + state}


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGUSR1 (SLURM's warning before the time limit) or SIGTERM (preemption)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce; call at intervals)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, stage: Stage, cfg: StageConfig, ds_config: dict, env: DistEnv) -> None:
        self.stage, self.cfg, self.ds_config, self.env = stage, cfg, ds_config, env
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if env.rank == 0:
            save_config(cfg, self.run_dir / "config.yaml")
        self.micro_batch = micro_batch_size(ds_config, env.world_size)
        self.stop = StopFlag()

    # -- data ----------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool):
        d = self.cfg.data
        return build_clip_loader(
            d.shards,
            split,
            self.micro_batch,
            d.num_frames,
            rank=self.env.rank,
            world_size=self.env.world_size,
            seed=self.cfg.run.seed,
            shuffle=shuffle,
            backend=d.backend,
            device=self.env.device,
            num_threads=d.num_threads,
            prefetch=d.prefetch,
            shuffle_buffer=d.shuffle_buffer,
        )

    def _batches(self, loader) -> Iterator[Any]:
        """Endless stream over epochs; the loader's own state tracks epoch and position."""
        while True:
            yield from loader

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: str = "auto") -> dict[str, float]:
        cfg, env, sched = self.cfg, self.env, self.cfg.schedule
        torch.manual_seed(cfg.run.seed + env.rank)

        self.stage.setup(self.run_dir, env.rank, env.device)
        dist.barrier()
        module, self._hf_ds_config = build_module(self.stage, self.ds_config)
        optimizer_lambda = lambda step: lr_multiplier(  # noqa: E731
            step, sched.warmup_steps, sched.max_steps, sched.decay, sched.min_lr_ratio
        )
        engine, optimizer, _, _ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, optimizer_lambda),
        )
        self.engine = engine
        self.stage.on_train_start(engine.module, env.device)
        self._write_partition_report(engine.module)

        train_loader = self._loader(cfg.data.train_split, shuffle=True)
        val_loader = self._val_loader()
        ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=sched.keep_checkpoints)
        step = self._resume(resume, ckpt, engine, train_loader)

        monitor = Monitor(self.run_dir, env.rank, env.device, env.world_size)
        if env.rank == 0:
            log.info(
                "training %s: %d steps from step %d, micro-batch %d x %d ranks x %d accumulation; "
                "TensorBoard: tensorboard --logdir %s",
                cfg.stage, sched.max_steps, step, self.micro_batch, env.world_size,
                engine.gradient_accumulation_steps(), monitor.tb_dir,
            )
        key_log = self._sample_key_log() if cfg.data.log_sample_keys else None

        timer = StepTimer()
        sums: dict[str, torch.Tensor] = {}
        n_sums = 0
        gas = engine.gradient_accumulation_steps()
        micro = 0
        last_val: dict[str, float] = {}
        stopped_by_signal = False
        batches = self._batches(train_loader)
        engine.train()
        while step < sched.max_steps:
            wait_started = time.perf_counter()
            batch = next(batches)
            timer.data_ready(wait_started)  # waiting for the loader; make_inputs below is device work
            inputs = self.stage.make_inputs(batch, env.device)
            tokens, flops = self.stage.step_stats(inputs)
            if key_log is not None:
                key_log.write(json.dumps({"step": step, "keys": [m["__key__"] for m in batch.meta]}) + "\n")

            out = engine(inputs)
            engine.backward(out["loss"])
            engine.step()
            for k, v in out.items():
                if torch.is_tensor(v) and v.dim() == 0:
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_sums += 1
            micro += 1
            timer.step_done(self.micro_batch, tokens, flops)
            if micro % gas:
                continue
            step += 1
            if micro == gas:  # optimizer state exists after the first step: record what this rank holds
                self._write_partition_report(engine.module, extra=held_state_bytes(engine))

            if step % sched.log_every == 0 or step == sched.max_steps:
                scalars = self._reduce_means(sums, n_sums, prefix="train/")
                scalars["train/lr"] = engine.get_lr()[0]
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    scalars["train/grad_norm"] = float(grad_norm)
                scalars.update(monitor.throughput(timer))
                monitor.scalars(step, scalars)
                if env.rank == 0:
                    log.info("step %d/%d  loss %.4f  %.1f samples/s", step, sched.max_steps,
                             scalars["train/loss"], scalars.get("perf/samples_per_s", 0.0))
                sums, n_sums = {}, 0
                timer.reset()
            if step % sched.log_every == 0 or step % sched.signal_check_every == 0:
                stopped_by_signal = self.stop.agreed(env.device)

            if val_loader is not None and (step % sched.val_every == 0 or step == sched.max_steps):
                last_val = self.validate(engine, val_loader, monitor, step)
                timer.restart_clock()

            if stopped_by_signal or step % sched.checkpoint_every == 0 or step == sched.max_steps:
                ckpt.save(engine, step, {"step": step, "loader": train_loader.state_dict()})
                timer.restart_clock()
                if stopped_by_signal:
                    if env.rank == 0:
                        log.warning("stopped by signal %s at step %d; checkpoint saved, resume with --resume auto",
                                    self.stop.signal, step)
                    break

        if key_log is not None:
            key_log.close()
        monitor.close()
        self.stopped_early = stopped_by_signal
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

    # -- validation ----------------------------------------------------------------------------
    def _val_loader(self):
        try:
            loader = self._loader(self.cfg.data.val_split, shuffle=False)
        except ValueError as err:  # no val split in these shards: train without validation
            if self.env.rank == 0:
                log.warning("no validation: %s", err)
            return None
        return loader

    @torch.no_grad()
    def validate(self, engine, loader, monitor: Monitor, step: int) -> dict[str, float]:
        # Same masks and samples at every validation (a fixed seed), without disturbing training's RNG.
        with torch.random.fork_rng(devices=[self.env.device] if self.env.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.run.seed)
            return self._validate(engine, loader, monitor, step)

    def _validate(self, engine, loader, monitor: Monitor, step: int) -> dict[str, float]:
        engine.eval()
        loader.load_state_dict({"epoch": 0, "batches_in_epoch": 0})
        n = min(self.cfg.schedule.val_batches, loader.steps_per_epoch)
        sums: dict[str, torch.Tensor] = {}
        first = None
        for i, batch in zip(range(n), loader):
            inputs = self.stage.make_inputs(batch, self.env.device)
            out = engine(inputs)
            for k, v in out.items():
                if torch.is_tensor(v) and v.dim() == 0:
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
            if i == 0:
                first = (inputs, out)
        scalars = self._reduce_means(sums, n, prefix="val/")
        monitor.scalars(step, scalars)
        if first is not None:  # on every rank: images may need forwards (ZeRO-3); the monitor writes rank 0's
            monitor.images(step, self.stage.images(engine.module, *first))
        if self.env.rank == 0:
            log.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
        engine.train()
        return scalars

    # -- helpers -------------------------------------------------------------------------------
    def _reduce_means(self, sums: dict[str, torch.Tensor], count: int, prefix: str) -> dict[str, float]:
        """Mean of each logged term over steps and ranks: one all-reduce, one host sync."""
        if not sums:
            return {}
        keys = sorted(sums)
        stacked = torch.stack([sums[k] for k in keys]) / max(count, 1)
        dist.all_reduce(stacked)
        values = (stacked / self.env.world_size).tolist()
        return {f"{prefix}{k}": v for k, v in zip(keys, values)}

    def _resume(self, resume: str, ckpt: CheckpointManager, engine, loader) -> int:
        if resume == "none":
            return 0
        if resume == "auto":
            tag = ckpt.resume_tag()
            if tag is None:
                return 0
        else:
            path = Path(resume)
            ckpt = CheckpointManager(path.parent, keep=ckpt.keep)
            tag = path.name
        state = ckpt.load(engine, tag)
        loader.load_state_dict(state["loader"])
        if self.env.rank == 0:
            log.info("resumed from %s at step %d (data position %s)", ckpt.dir / tag, state["step"], state["loader"])
        return int(state["step"])

    def _write_partition_report(self, module: torch.nn.Module, extra: dict | None = None) -> None:
        """How much of each parameter this rank holds (ZeRO-3 keeps ≈ 1/world of every one)."""
        total = local = 0
        fractions = []
        for p in module.parameters():
            full = getattr(p, "ds_numel", p.numel())
            held = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
            total += full
            local += held
            fractions.append(held / max(full, 1))
        report = {
            "rank": self.env.rank,
            "world_size": self.env.world_size,
            "params_total": total,
            "params_local": local,
            "min_fraction": min(fractions, default=1.0),
            "max_fraction": max(fractions, default=1.0),
            **(extra or {}),
        }
        (self.run_dir / f"partition_rank{self.env.rank}.json").write_text(json.dumps(report) + "\n")
        if self.env.rank == 0:
            log.info("parameters: %d total, %d (%.1f%%) held by rank 0", total, local, 100 * local / max(total, 1))

    def _sample_key_log(self):
        return open(self.run_dir / f"samples_rank{self.env.rank}.jsonl", "a", buffering=1)

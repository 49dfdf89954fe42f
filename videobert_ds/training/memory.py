"""What a rank holds: parameter partitions, optimizer state and peak memory, written to
RUN_DIR/partition_rank{r}.json (the tests and `bench.train` read it)."""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


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
    return {
        "param_bytes": params,
        "master_param_bytes": master,
        "optimizer_state_bytes": state,
        "state_bytes_total": params + master + state,
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def partition_share(model: torch.nn.Module) -> dict[str, float]:
    """Elements this rank holds of the model, and the smallest / largest share of any one parameter (ZeRO-3 keeps
    about 1/world of every one)."""
    total = local = 0
    fractions = []
    for p in model.parameters():
        full = getattr(p, "ds_numel", p.numel())
        held = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
        total, local = total + full, local + held
        fractions.append(held / max(full, 1))
    return {
        "params_total": total,
        "params_local": local,
        "min_fraction": min(fractions, default=1.0),
        "max_fraction": max(fractions, default=1.0),
    }


def write_partition_report(
    module: torch.nn.Module, run_dir: Path, rank: int, world_size: int, extra: dict | None = None
) -> None:
    """RUN_DIR/partition_rank{rank}.json: how much of each parameter this rank holds."""
    share = partition_share(module)
    report = {"rank": rank, "world_size": world_size, **share, **(extra or {})}
    total, local = share["params_total"], share["params_local"]
    (Path(run_dir) / f"partition_rank{rank}.json").write_text(json.dumps(report) + "\n")
    if rank == 0:
        log.info("parameters: %d total, %d (%.1f%%) held by rank 0", total, local, 100 * local / max(total, 1))

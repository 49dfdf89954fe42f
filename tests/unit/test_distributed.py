"""Joining the process group (core/distributed.init_distributed) for real: a 1-rank gloo group on loopback.
The configured timeout reaches the group, and on CUDA the rank's device is set before the group exists."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from tests.helpers.distributed import free_port
from videobert_ds.core.config import ConfigError, RunConfig
from videobert_ds.core.distributed import init_distributed


@pytest.fixture
def one_rank(monkeypatch):
    """The env:// variables of a 1-rank group; DeepSpeed's communication backend starts fresh and the group
    is destroyed afterwards."""
    import deepspeed.comm.comm as ds_comm

    for var, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(ds_comm, "cdb", None)
    yield monkeypatch
    if dist.is_initialized():
        dist.destroy_process_group()


def group_timeout() -> timedelta:
    return dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout


def test_timeout_reaches_the_process_group_and_cpu_never_touches_cuda(one_rank):
    env = init_distributed(timeout_minutes=77)
    assert group_timeout() == timedelta(minutes=77)
    assert (env.rank, env.world_size, env.device) == (0, 1, torch.device("cpu"))
    assert not torch.cuda.is_initialized()


def test_run_config_carries_the_timeout():
    assert RunConfig().dist_timeout_minutes == 60
    with pytest.raises(ConfigError, match="run.dist_timeout_minutes"):
        RunConfig(dist_timeout_minutes=0)


def test_cuda_device_is_set_before_the_process_group_is_created(one_rank):
    """DeepSpeed's accelerator reports cuda (its CPU accelerator underneath, so the group is still gloo and
    nothing touches a GPU); set_device and the group's creation are recorded in the order they happen."""
    import deepspeed.accelerator.real_accelerator as real
    from deepspeed.accelerator import get_accelerator

    calls: list[tuple] = []

    class CudaReporting(type(get_accelerator())):
        def device_name(self, device_index=None):
            return "cuda"

        def set_device(self, device_index):
            calls.append(("set_device", device_index))

    create = dist.init_process_group

    def recording_init(*args, **kwargs):
        calls.append(("init_process_group", kwargs.get("timeout")))
        return create(*args, **kwargs)

    one_rank.setattr(real, "ds_accelerator", CudaReporting())
    one_rank.setattr(dist, "init_process_group", recording_init)
    one_rank.setenv("LOCAL_RANK", "3")
    env = init_distributed(timeout_minutes=5)
    assert calls == [("set_device", 3), ("init_process_group", timedelta(minutes=5))]
    assert env.device == torch.device("cuda", 3) and env.local_rank == 3
    assert not torch.cuda.is_initialized()

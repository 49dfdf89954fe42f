"""The shipped DeepSpeed configs meant for GPU nodes load no compiled DeepSpeed op (those are JIT-built with
nvcc/g++ on every node at start-up unless DeepSpeed was installed with DS_BUILD_*=1).

The optimizer is chosen by DeepSpeed's own selection code (DeepSpeedEngine._configure_basic_optimizer,
run on the config without a process group), and any op it would load is refused at OpBuilder.load, so a
config that picks FusedAdam or DeepSpeedCPUAdam fails here on a CPU-only machine."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import REPO

GPU_CONFIGS = ["zero3.json", "zero3_offload.json"]


def refuse_op_loads(monkeypatch) -> list[str]:
    """Every OpBuilder.load from now on is recorded and refused (nothing is compiled); -> the names."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    loaded: list[str] = []

    def load(self, verbose: bool = False):
        loaded.append(self.name)
        raise RuntimeError(f"test: DeepSpeed would load (JIT-build) its compiled op {self.name!r}")

    monkeypatch.setattr(OpBuilder, "load", load)
    return loaded


def basic_optimizer(ds_config: dict) -> torch.optim.Optimizer:
    """The optimizer DeepSpeed builds for `ds_config`, through the engine's own selection code: an engine
    object that holds only the parsed config (no process group, no model)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zenflow.engine import configure_zenflow

    engine = object.__new__(DeepSpeedEngine)
    vars(engine).update(_config=DeepSpeedConfig(ds_config), client_optimizer=None)
    configure_zenflow(engine)
    return engine._configure_basic_optimizer([torch.nn.Parameter(torch.zeros(8))])


def test_every_gpu_config_is_listed():
    cpu_only = {p.name for p in (REPO / "ds_configs").glob("*.json") if "cpu" in p.stem}
    assert {p.name for p in (REPO / "ds_configs").glob("*.json")} - cpu_only == set(GPU_CONFIGS)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_builds_no_deepspeed_op(name, monkeypatch):
    cfg = json.loads((REPO / "ds_configs" / name).read_text())
    loaded = refuse_op_loads(monkeypatch)
    opt = basic_optimizer(cfg)
    assert loaded == []
    assert type(opt).__module__.startswith("torch.optim"), type(opt)
    assert opt.defaults.get("fused") is True, "torch's fused AdamW kernel (CUDA on GPU, vectorised on CPU offload)"
    # The other config switches that make DeepSpeed load a compiled op: NVMe offload (async_io), ZeRO++
    # quantized weights/gradients (quantizer).
    from deepspeed.runtime.config import DeepSpeedConfig

    zero = DeepSpeedConfig(cfg).zero_config
    for offload in (zero.offload_optimizer, zero.offload_param):
        assert offload is None or offload.device != "nvme", name
    assert not zero.zero_quantized_weights and not zero.zero_quantized_gradients, name


def test_the_check_catches_deepspeeds_fused_adam(monkeypatch):
    """Without torch_adam DeepSpeed picks FusedAdam (GPU) or DeepSpeedCPUAdam (offload): both are refused."""
    cfg = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    for extra, op in (({}, "fused_adam"), (offload, "cpu_adam")):
        loaded = refuse_op_loads(monkeypatch)
        with pytest.raises(RuntimeError):
            basic_optimizer({**cfg, **extra, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})
        assert loaded == [op]

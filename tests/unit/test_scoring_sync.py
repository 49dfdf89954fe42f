"""Evaluation scoring reads the device once per batch, not once per candidate, and runs in bf16 autocast on CUDA."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from tests.helpers.tiny import SP, tiny_model
from videobert_ds.inference.scoring import EvalHeads, FilledTemplate, eval_autocast, score, template_scores
from videobert_ds.objectives.layout import joint_inputs

CPU = torch.device("cpu")


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every way a tensor's values reach the host, recorded by name."""
    seen: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            seen.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return seen


def test_template_scores_read_the_device_once_per_batch(reads):
    heads = EvalHeads(tiny_model()).eval()
    fills = [FilledTemplate([10, 11, SP.mask, 12], [2]), FilledTemplate([13, SP.mask, SP.mask], [1, 2])] * 2
    videos = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
    cands = [[[20], [21], [22], [23], [24]], [[20, 21], [22, 23], [24, 25]]] * 2  # 16 candidates in all
    reads.clear()
    got = template_scores(heads, fills, videos, cands, SP, max_len=32, device=CPU)
    assert reads == ["tolist"], reads  # one read for the whole batch; none per candidate
    reads.clear()
    # The same scores as reading them one by one.
    batch = joint_inputs([f.text_ids for f in fills], videos, SP, caption_mode=False, max_len=32, device=CPU)
    positions = torch.tensor([[1 + p for p in f.positions] + [0] * (2 - len(f.positions)) for f in fills])
    logp, _, _ = score(heads, batch, positions)
    for r, (f, row) in enumerate(zip(fills, cands)):
        n = len(f.positions)
        want = [logp[r, torch.arange(n), torch.tensor(p)].mean().item() for p in row]
        assert got[r] == pytest.approx(want, abs=1e-6)


def test_eval_autocast_is_bf16_on_cuda_only():
    assert isinstance(eval_autocast(CPU), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only torch warns that CUDA autocast is unavailable
        ctx = eval_autocast(torch.device("cuda", 0))
    assert isinstance(ctx, torch.autocast)
    assert (ctx.device, ctx.fast_dtype) == ("cuda", torch.bfloat16)

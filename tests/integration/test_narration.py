"""Stage 1's MIL-NCE loss with negatives gathered across 2 real gloo ranks (torch.multiprocessing)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.helpers.distributed import free_port
from tests.helpers.vectors import aligned
from videobert_ds.visual.narration import gather_across_ranks, mil_nce_loss


def _gather_worker(rank: int, world: int, port: int, clips, owner, texts, has, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        per_t, per_c = texts.shape[0] // world, clips.shape[0] // world
        c = clips[rank * per_c : (rank + 1) * per_c].clone().requires_grad_(True)
        t = texts[rank * per_t : (rank + 1) * per_t].clone().requires_grad_(True)
        o = owner[rank * per_c : (rank + 1) * per_c] - rank * per_t
        o = torch.where(owner[rank * per_c : (rank + 1) * per_c] >= 0, o, owner[rank * per_c : (rank + 1) * per_c])
        ac, ao, at, ah = gather_across_ranks(c, o, t, has[rank * per_t : (rank + 1) * per_t])
        real = ao >= 0
        loss, _ = mil_nce_loss(ac[real], ao[real], at, ah, temperature=0.1)
        loss.backward()
        # Every rank computed the whole loss, so all_gather's backward hands each local input the sum of
        # `world` copies of its gradient; the data-parallel average of the parameter gradients divides by world.
        out[rank] = (loss.item(), c.grad.clone() / world, t.grad.clone() / world)
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
def test_negatives_gathered_across_two_ranks_give_the_global_batch_loss_and_gradients():
    clips, owner, texts = aligned(6, 2, seed=3)
    clips = F.normalize(clips + 0.3 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(4)), dim=-1)
    owner = owner.clone()
    owner[5] = -1  # a padded clip on rank 0, left out
    has = torch.tensor([True, True, False, True, True, True])
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, free_port(), clips, owner, texts, has, out), nprocs=2, join=True)

    c, t = clips.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    real = owner >= 0
    ref, _ = mil_nce_loss(c[real], owner[real], t, has, temperature=0.1)
    ref.backward()
    for rank in (0, 1):
        loss, gc, gt = out[rank]
        assert loss == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(gc, c.grad[rank * 6 : (rank + 1) * 6])
        torch.testing.assert_close(gt, t.grad[rank * 3 : (rank + 1) * 3])

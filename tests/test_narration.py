"""Stage 1's narration objective: hashed words, the MIL-NCE loss, cross-rank negatives, the shift augmentation."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.distributed import free_port
from videobert_ds.stages.pretrain_video_encoder import random_shift
from videobert_ds.visual.narration import NarrationEncoder, gather_across_ranks, hash_words, mil_nce_loss


def test_hash_words_is_stable_and_ignores_case_and_punctuation():
    ids, offsets, has_text = hash_words(["The red Circle, moves left!", "", "the RED circle moves left"], 4096)
    assert offsets.tolist() == [0, 5, 6]
    assert has_text.tolist() == [True, False, True]
    assert ids[:5].tolist() == ids[6:].tolist()  # same words, same buckets
    assert ids[5].item() == 0  # an empty narration still has a (placeholder) bag
    # crc32 buckets are fixed: the same in every process and every run (Python's hash() is not).
    assert hash_words(["red"], 4096)[0].item() == 3983
    assert ((ids >= 0) & (ids < 4096)).all()


def _aligned(n_texts: int, clips_per_text: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    texts = F.normalize(torch.randn(n_texts, dim, generator=g), dim=-1)
    owner = torch.arange(n_texts).repeat_interleave(clips_per_text)
    clips = F.normalize(texts[owner] + 0.05 * torch.randn(len(owner), dim, generator=g), dim=-1)
    return clips, owner, texts


def test_mil_nce_is_low_for_matched_pairs_and_about_log_batch_for_unrelated_ones():
    clips, owner, texts = _aligned(8, 3)
    has = torch.ones(8, dtype=torch.bool)
    loss, acc = mil_nce_loss(clips, owner, texts, has, temperature=0.05)
    assert loss.item() < 0.05 and acc.item() == 1.0
    shuffled = owner[torch.randperm(len(owner), generator=torch.Generator().manual_seed(1))]
    random_clips = F.normalize(torch.randn(clips.shape, generator=torch.Generator().manual_seed(2)), dim=-1)
    loss_rand, _ = mil_nce_loss(random_clips, shuffled, texts, has, temperature=1.0)
    assert abs(loss_rand.item() - 0.5 * (math.log(8) + math.log(24 / 3))) < 0.5


def test_mil_nce_leaves_out_samples_without_narration():
    clips, owner, texts = _aligned(6, 2)
    has = torch.tensor([True, True, False, True, True, True])
    loss, _ = mil_nce_loss(clips, owner, texts, has, temperature=0.1)
    other = texts.clone()
    other[2] = -other[2]  # the un-narrated sample's text row must not matter
    loss2, _ = mil_nce_loss(clips, owner, other, has, temperature=0.1)
    assert loss.item() == pytest.approx(loss2.item())
    # Fewer than two narrated samples: nothing to contrast, zero loss with a graph to back-propagate.
    clips.requires_grad_(True)
    zero, _ = mil_nce_loss(clips, owner, texts, torch.tensor([True] + [False] * 5), temperature=0.1)
    zero.backward()
    assert zero.item() == 0.0 and clips.grad is not None and not clips.grad.any()


def test_mil_nce_text_side_counts_all_clips_of_a_sample_as_positives():
    """A narration is satisfied when ANY of its clips matches (MIL), not only a designated one."""
    texts = torch.eye(4)[:2]  # two narrations, orthogonal
    owner = torch.tensor([0, 0, 1, 1])
    one_match = torch.stack([texts[0], torch.eye(4)[2], texts[1], torch.eye(4)[3]])  # 2nd clip of each: unrelated
    crossed = torch.stack([texts[0], texts[1], texts[1], texts[0]])  # 2nd clip of each shows the other narration
    both_match = torch.stack([texts[0], texts[0], texts[1], texts[1]])
    has = torch.ones(2, dtype=torch.bool)
    l_one, acc_one = mil_nce_loss(one_match, owner, texts, has, temperature=0.1)
    l_crossed, acc_crossed = mil_nce_loss(crossed, owner, texts, has, temperature=0.1)
    l_both, acc_both = mil_nce_loss(both_match, owner, texts, has, temperature=0.1)
    assert acc_both.item() == 1.0 and acc_crossed.item() == 0.5
    # The text side only needs one matching clip: an unrelated second clip costs less than a crossed one.
    assert l_both.item() < l_one.item() < l_crossed.item()


def _gather_worker(rank: int, world: int, port: int, clips, owner, texts, has, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        per_t, per_c = texts.shape[0] // world, clips.shape[0] // world
        c = clips[rank * per_c:(rank + 1) * per_c].clone().requires_grad_(True)
        t = texts[rank * per_t:(rank + 1) * per_t].clone().requires_grad_(True)
        o = owner[rank * per_c:(rank + 1) * per_c] - rank * per_t
        o = torch.where(owner[rank * per_c:(rank + 1) * per_c] >= 0, o, owner[rank * per_c:(rank + 1) * per_c])
        ac, ao, at, ah = gather_across_ranks(c, o, t, has[rank * per_t:(rank + 1) * per_t])
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
    clips, owner, texts = _aligned(6, 2, seed=3)
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
        torch.testing.assert_close(gc, c.grad[rank * 6:(rank + 1) * 6])
        torch.testing.assert_close(gt, t.grad[rank * 3:(rank + 1) * 3])


def test_narration_encoder_gives_unit_vectors():
    enc = NarrationEncoder(64, 8)
    ids, offsets, _ = hash_words(["a red square", "down"], 64)
    z = enc(ids, offsets)
    assert z.shape == (2, 8)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))


def test_random_shift_moves_every_frame_of_a_clip_by_the_same_offset():
    torch.manual_seed(0)
    clips = torch.full((16, 3, 4, 12, 12), -0.5)
    for t in range(4):  # a bright pixel that moves one column per frame: its motion must survive the shift
        clips[:, :, t, 6, 3 + t] = 1.0
    shifted = random_shift(clips, 2)
    assert shifted.shape == clips.shape
    assert torch.equal(shifted.flatten(1).min(1).values, torch.full((16,), -0.5))  # uncovered pixels: background
    offsets = set()
    for n in range(16):
        pos = [(shifted[n, 0, t] == 1.0).nonzero().tolist() for t in range(4)]
        assert all(len(p) == 1 for p in pos), n  # the pixel stays whole (offsets within the pad)
        (y0, x0), = pos[0]
        assert [p[0] for p in pos] == [[y0, x0 + t] for t in range(4)]
        offsets.add((y0 - 6, x0 - 3))
        assert abs(y0 - 6) <= 2 and abs(x0 - 3) <= 2
    assert len(offsets) > 4  # clips get different offsets

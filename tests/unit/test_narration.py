"""Stage 1's narration objective in one process: hashed words, the MIL-NCE loss, the shift augmentation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.vectors import aligned
from videobert_ds.objectives.autoencoder import random_shift
from videobert_ds.visual.narration import NarrationEncoder, hash_words, mil_nce_loss


def test_hash_words_is_stable_and_ignores_case_and_punctuation():
    ids, offsets, has_text = hash_words(["The red Circle, moves left!", "", "the RED circle moves left"], 4096)
    assert offsets.tolist() == [0, 5, 6]
    assert has_text.tolist() == [True, False, True]
    assert ids[:5].tolist() == ids[6:].tolist()  # same words, same buckets
    assert ids[5].item() == 0  # an empty narration still has a (placeholder) bag
    # crc32 buckets are fixed: the same in every process and every run (Python's hash() is not).
    assert hash_words(["red"], 4096)[0].item() == 3983
    assert ((ids >= 0) & (ids < 4096)).all()


def test_mil_nce_is_low_for_matched_pairs_and_about_log_batch_for_unrelated_ones():
    clips, owner, texts = aligned(8, 3)
    has = torch.ones(8, dtype=torch.bool)
    loss, acc = mil_nce_loss(clips, owner, texts, has, temperature=0.05)
    assert loss.item() < 0.05 and acc.item() == 1.0
    shuffled = owner[torch.randperm(len(owner), generator=torch.Generator().manual_seed(1))]
    random_clips = F.normalize(torch.randn(clips.shape, generator=torch.Generator().manual_seed(2)), dim=-1)
    loss_rand, _ = mil_nce_loss(random_clips, shuffled, texts, has, temperature=1.0)
    assert abs(loss_rand.item() - 0.5 * (math.log(8) + math.log(24 / 3))) < 0.5


def test_mil_nce_leaves_out_samples_without_narration():
    clips, owner, texts = aligned(6, 2)
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
        ((y0, x0),) = pos[0]
        assert [p[0] for p in pos] == [[y0, x0 + t] for t in range(4)]
        offsets.add((y0 - 6, x0 - 3))
        assert abs(y0 - 6) <= 2 and abs(x0 - 3) <= 2
    assert len(offsets) > 4  # clips get different offsets

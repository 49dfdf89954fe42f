"""Text -> video in one process: the generation inputs, sampling visual words from a sentence, the grid, and
key-frame selection (the runs on the pipeline's outputs are in tests/integration/test_generate.py)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.tiny import SP, tiny_model
from videobert_ds.inference.text_to_video import generation_inputs, render_grid, sample_visual_words
from videobert_ds.visual.keyframes import select_keyframes, thumbnails

# ---------------------------------------------------------------------------------------------
# Unit level (in-process, no launcher)
# ---------------------------------------------------------------------------------------------


def test_generation_inputs_are_text_then_masked_video():
    inputs, positions = generation_inputs([[10, 11, 12], [20]], 4, SP, torch.device("cpu"))
    ids, types = inputs["input_ids"], inputs["token_type_ids"]
    assert ids[0].tolist() == [2, 10, 11, 12, 5, 4, 4, 4, 4, 3]
    assert ids[1, :8].tolist() == [2, 20, 5, 4, 4, 4, 4, 3] and ids[1, 8:].tolist() == [0, 0]  # right padding
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert positions.tolist() == [[5, 6, 7, 8], [3, 4, 5, 6]]


def test_sampling_is_deterministic_per_seed_and_greedy_is_the_argmax():
    model = tiny_model()
    text = [[10, 11, 12]]
    a = sample_visual_words(model, SP, text, num_words=6, temperature=1.0, seed=3)
    assert torch.equal(a, sample_visual_words(model, SP, text, num_words=6, temperature=1.0, seed=3))
    draws = {
        tuple(sample_visual_words(model, SP, text, num_words=6, temperature=2.0, seed=s)[0].tolist()) for s in range(6)
    }
    assert len(draws) > 1  # the seed matters when sampling
    assert a.shape == (1, 6) and int(a.min()) >= 0 and int(a.max()) < SP.visual_vocab_size

    greedy = sample_visual_words(model, SP, text, num_words=6, temperature=0.0, seed=0)
    assert torch.equal(greedy, sample_visual_words(model, SP, text, num_words=6, temperature=0.0, seed=99))
    assert torch.equal(greedy, sample_visual_words(model, SP, text, num_words=6, temperature=1.0, top_k=1, seed=5))
    # The same left-to-right argmax, with the sequence written out by hand.
    seq = [2, 10, 11, 12, 5] + [4] * 6 + [3]
    types = torch.tensor([[0] * 4 + [1] * 8])
    with torch.no_grad():
        for k in range(6):
            hidden, _ = model(torch.tensor([seq]), types, torch.ones(1, len(seq), dtype=torch.long))
            logits = model.token_logits(hidden[0, 5 + k])[SP.text_vocab_size : SP.text_vocab_size + 16]
            seq[5 + k] = SP.text_vocab_size + int(logits.argmax())
    assert greedy[0].tolist() == [t - SP.text_vocab_size for t in seq[5:11]]


def test_render_grid_places_each_word_key_frame():
    frames = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 6, 4, 3) * 40
    grid = render_grid(torch.tensor([[4, 0, 2], [1, 1, 3]]), frames, pad=2)
    assert grid.shape == (2 * 6 + 3 * 2, 3 * 4 + 4 * 2, 3) and grid.dtype.name == "uint8"
    assert grid[2, 2, 0] == 160 and grid[2, 8, 0] == 0 and grid[10, 14, 0] == 120 and grid[0, 0, 0] == 255
    with pytest.raises(ValueError, match="visual word ids"):
        render_grid([[5]], frames)


def test_select_keyframes_takes_the_nearest_clip_and_breaks_ties_by_clip_identity():
    leaves = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feats = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [9.0, 0.0], [0.5, 0.5]])  # clips 0 and 1 tie for leaf 0
    clips = [("b", 0), ("a", 3), ("c", 1), ("d", 0)]
    thumbs = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 2, 2, 3).contiguous()
    kf = select_keyframes(feats, thumbs, clips, leaves)
    # Leaf 0: d at distance 0.5 is nearest. Leaf 1: c. Leaf 2 is nobody's nearest centroid but gets the
    # clip nearest to it all the same (d: 0.25 + 90.25).
    assert kf.clips == [("d", 0), ("c", 1), ("d", 0)]
    assert kf.frames[:, 0, 0, 0].tolist() == [3, 2, 3]
    assert kf.distances.tolist() == pytest.approx([0.5, 1.0, 90.5])
    tie = select_keyframes(feats[:2], thumbs[:2], clips[:2], leaves[:1])
    assert tie.clips == [("a", 3)]  # equal distances: the smaller clip identity, whatever the order


def test_thumbnails_keep_aspect_ratio():
    frames = torch.full((2, 32, 48, 3), 200, dtype=torch.uint8)
    out = thumbnails(frames, 16)
    assert out.shape == (2, 16, 24, 3) and out.dtype == torch.uint8 and int(out.min()) == 200

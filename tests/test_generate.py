"""Text -> video: key frames per visual word (build_vocab), sampling visual words from a sentence, the
`videobert-generate` CLI, and the grids the teacher writes to TensorBoard at validation."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import SP, tiny_model
from videobert_ds.inference.text_to_video import generation_inputs, main, render_grid, sample_visual_words
from videobert_ds.visual.keyframes import KeyFrames, keyframes_path, select_keyframes, thumbnails

VENV_BIN = Path(sys.executable).parent


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
    draws = {tuple(sample_visual_words(model, SP, text, num_words=6, temperature=2.0, seed=s)[0].tolist())
             for s in range(6)}
    assert len(draws) > 1  # the seed matters when sampling
    assert a.shape == (1, 6) and 0 <= int(a.min()) and int(a.max()) < SP.visual_vocab_size

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


# ---------------------------------------------------------------------------------------------
# The pipeline's runs (session fixtures: 2-rank build_vocab and teacher)
# ---------------------------------------------------------------------------------------------


@pytest.mark.multiproc
def test_keyframes_are_nearest_clips_and_match_a_one_process_computation(tiny_vocab):
    from videobert_ds.core.config import load_stage_config
    from videobert_ds.stages.build_vocab import BuildVocabStage, BuildVocabStageConfig, load_clip_encoder
    from videobert_ds.visual.vocab import VisualVocabulary

    vocab = VisualVocabulary.load(tiny_vocab / "vocab.safetensors")
    kf = KeyFrames.load(keyframes_path(tiny_vocab / "vocab.safetensors"))
    assert kf.frames.shape == (vocab.size, 64, 64, 3) and kf.frames.dtype == torch.uint8
    assert len(kf.clips) == vocab.size and torch.isfinite(kf.distances).all()

    # The same clips the 2-rank run encoded (conftest runs stages on 2 ranks), in this one process.
    cfg = load_stage_config(BuildVocabStageConfig, tiny_vocab / "config.yaml", [])
    stage = BuildVocabStage(cfg)
    encoder = load_clip_encoder(cfg.encoder)
    parts = [stage.encode_split(encoder, r, 2, torch.device("cpu")) for r in range(2)]
    feats = torch.cat([p.features for p in parts])
    clips = [c for p in parts for c in p.clips]
    thumbs = torch.cat([p.thumbs for p in parts])

    one = select_keyframes(feats, thumbs, clips, vocab.tree.leaves)
    assert one.clips == kf.clips and torch.equal(one.frames, kf.frames) and torch.equal(one.distances, kf.distances)

    leaves = vocab.tree.leaves.double()
    for w in (0, 9, 31, vocab.size - 1):  # brute force: the key frame's clip is nearest the word
        d = ((feats.double() - leaves[w]) ** 2).sum(1)
        i = clips.index(kf.clips[w])
        assert d[i] == pytest.approx(float(d.min()), rel=1e-12, abs=1e-12)
        assert torch.equal(kf.frames[w], thumbs[i])


@pytest.mark.multiproc
def test_generate_cli_writes_the_grid_png(tiny_teacher, tmp_path):
    from PIL import Image

    final = tiny_teacher / "final"
    assert (final / "visual_vocab_keyframes.safetensors").is_file()  # the export carries the key frames
    out = tmp_path / "grid.png"
    proc = subprocess.run([str(VENV_BIN / "videobert-generate"), "--model", str(final), "--text",
                           "a red circle moves left", "--out", str(out), "--num-words", "5", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = [int(t) for t in proc.stdout.split()]
    assert len(ids) == 5 and all(0 <= i < 64 for i in ids)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (5 * 64 + 6 * 2, 64 + 2 * 2)  # (width, height)
    # In-process: the same seed gives the same words.
    assert main(["--model", str(final), "--text", "a red circle moves left", "--out", str(tmp_path / "again.png"),
                 "--num-words", "5", "--seed", "3"]) == 0


@pytest.mark.multiproc
def test_generate_cli_errors_are_one_line(tiny_teacher, tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["--text", "x", "--out", str(tmp_path / "g.png"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("videobert-generate: error: "), err
        return err

    assert "no exported VideoBERT model dir" in error("--model", str(tmp_path / "missing"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny_teacher / "final", bare)
    (bare / "visual_vocab_keyframes.safetensors").unlink()
    assert "build_vocab run that wrote key frames" in error("--model", str(bare))
    assert "--num-words" in error("--model", str(tiny_teacher / "final"), "--num-words", "0")


@pytest.mark.multiproc
def test_teacher_validation_writes_text_to_video_grids(tiny_teacher):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    acc = EventAccumulator(str(tiny_teacher / "tb"), size_guidance={IMAGES: 0})
    acc.Reload()
    tags = [t for t in acc.Tags()[IMAGES] if t.startswith("text_to_video/")]
    assert tags, acc.Tags()[IMAGES]
    events = acc.Images(tags[0])
    assert [e.step for e in events] == [60, 120]  # every validation
    with Image.open(io.BytesIO(events[-1].encoded_image_string)) as img:
        assert img.size == (8 * 64 + 9 * 2, 64 + 2 * 2)  # generate.num_words = 8 key frames in a row

"""Text -> video on the pipeline's real runs: key frames from the 2-rank build_vocab, the `videobert-generate` CLI
on the tiny teacher, and the grids the teacher writes to TensorBoard at validation."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videobert_ds.cli.generate import main
from videobert_ds.visual.keyframes import KeyFrames, keyframes_path, select_keyframes

VENV_BIN = Path(sys.executable).parent


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
    proc = subprocess.run(
        [
            str(VENV_BIN / "videobert-generate"),
            "--model",
            str(final),
            "--text",
            "a red circle moves left",
            "--out",
            str(out),
            "--num-words",
            "5",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = [int(t) for t in proc.stdout.split()]
    assert len(ids) == 5 and all(0 <= i < 64 for i in ids)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (5 * 64 + 6 * 2, 64 + 2 * 2)  # (width, height)
    # In-process: the same seed gives the same words.
    assert (
        main(
            [
                "--model",
                str(final),
                "--text",
                "a red circle moves left",
                "--out",
                str(tmp_path / "again.png"),
                "--num-words",
                "5",
                "--seed",
                "3",
            ]
        )
        == 0
    )


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

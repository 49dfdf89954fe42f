"""The paper's S3D path end to end on the session's tiny shards: random S3D weights saved in torchvision's
state-dict layout -> build_vocab (encoder.type=s3d) -> a few steps of a tiny teacher (visual.encoder_type=s3d)
-> its export -> loaded back the way videobert-eval and videobert-generate load a model dir; tokenize (stage 2b)
takes the same weights file.

One rank, launched as a plain process (the env:// variables a launcher would set), so the test costs seconds
beyond the work itself; S3D at its smallest input (8-frame clips of 32 pixels)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.one_rank import run_one_rank

pytestmark = pytest.mark.multiproc


def test_tiny_teacher_on_an_s3d_vocabulary(pipeline_shards, tmp_path):
    from tests.unit.test_s3d_path import random_s3d_state
    from videobert_ds.data.loader import build_clip_loader
    from videobert_ds.eval.run import load_model
    from videobert_ds.inference.text_to_video import load_generator, prompt_ids, sample_visual_words
    from videobert_ds.model.model_dir import ENCODER_DIR, VOCAB_FILE, check_model_dir
    from videobert_ds.visual.loading import load_visual_tokenizer
    from videobert_ds.visual.vocab import VisualVocabulary

    weights = tmp_path / "s3d_kinetics_layout.pth"  # torchvision's layout, classifier included
    torch.save(random_s3d_state(0), weights)

    # Stage 2 on S3D features (1024-d), 8-frame clips.
    vocab_run = tmp_path / "vocab"
    run_one_rank(
        "vocab_tiny",
        {
            "run.dir": vocab_run,
            "data.shards": pipeline_shards,
            "encoder.type": "s3d",
            "encoder.path": weights,
            "encoder.frames_per_clip": 8,
            "kmeans.depth": 1,
            "kmeans.branching": 8,
        },
    )
    vocab = VisualVocabulary.load(vocab_run / "vocab.safetensors")
    assert vocab.encoder["name"] == "s3d" and vocab.feature_dim == 1024 and vocab.frames_per_clip == 8
    report = json.loads((vocab_run / "vocab_report.json").read_text())
    assert report["clips"] > 50 and report["words_used"] >= 4

    # Stage 2b: tokenize takes the same weights file (told apart from an encoder dir by itself).
    tokens = tmp_path / "tokenize"
    run_one_rank(
        "tokenize_tiny",
        {
            "run.dir": tokens,
            "data.shards": pipeline_shards,
            "visual.encoder": weights,
            "visual.vocab": vocab_run / "vocab.safetensors",
            "splits": "[val]",
        },
    )
    made = json.loads((tokens / "tokens" / "manifest.json").read_text())
    assert {k: v for k, v in made["encoder"].items() if k != "path"} == vocab.encoder
    assert made["frames_per_clip"] == 8 and made["splits"]["val"] > 0

    # Stage 3: the teacher reads the same weights file; clip length comes from the vocabulary.
    teacher = tmp_path / "teacher"
    run_one_rank(
        "teacher_tiny",
        {
            "run.dir": teacher,
            "data.shards": pipeline_shards,
            "visual.encoder_type": "s3d",
            "visual.encoder": weights,
            "visual.vocab": vocab_run / "vocab.safetensors",
            "model.hidden_size": 32,
            "model.num_hidden_layers": 1,
            "model.num_attention_heads": 2,
            "model.intermediate_size": 64,
            "schedule.max_steps": 3,
            "schedule.warmup_steps": 1,
            "schedule.log_every": 1,
            "schedule.val_every": 3,
            "schedule.val_batches": 1,
            "schedule.checkpoint_every": 3,
        },
    )
    rows = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    losses = torch.tensor([[r["train/loss"], r["train/video"]] for r in rows if "train/loss" in r])
    # Finite and sane: S3D channels that are zero in every centroid once made the clip-feature targets ~1e10.
    assert losses.shape == (3, 2) and torch.isfinite(losses).all() and losses.max() < 1e3, losses

    # The export carries the S3D encoder as a dir, and loads as evaluation and generation load it.
    final = teacher / "final"
    check_model_dir(final)
    enc_cfg = json.loads((final / ENCODER_DIR / "config.json").read_text())
    assert enc_cfg["encoder_type"] == "s3d" and enc_cfg["frames_per_clip"] == 8
    device = torch.device("cpu")
    from_export, _ = load_visual_tokenizer(final / ENCODER_DIR, final / VOCAB_FILE, device)  # eval's call
    from_weights, _ = load_visual_tokenizer(weights, vocab_run / "vocab.safetensors", device, encoder_type="s3d")
    batch = next(iter(build_clip_loader(pipeline_shards, "val", 4, 16, shuffle=False, backend="pyav")))
    ids_export, valid = from_export(batch.frames, batch.num_frames)
    assert valid.any() and torch.equal(ids_export, from_weights(batch.frames, batch.num_frames)[0])
    _, params, config, _ = load_model(final, device, zero3=False)  # videobert-eval's model loading
    assert params > 0 and config.visual_vocab_size == vocab.size
    generator, tokenizer, specials, _ = load_generator(final, device)
    words = sample_visual_words(
        generator,
        specials,
        prompt_ids(tokenizer, ["a red circle"], 8),
        num_words=3,
        temperature=0,
        top_k=0,
        seed=0,
        device=device,
    )
    assert words.shape == (1, 3) and int(words.max()) < vocab.size

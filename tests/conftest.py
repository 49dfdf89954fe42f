"""Shared fixtures for tests/unit and tests/integration: one small synthetic corpus and its shards per test session
(built for real), and the tiny pipeline's stages as real 2-rank runs (built on demand)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The helpers hold assertions (shard checks): give them pytest's detailed failure messages too.
pytest.register_assert_rewrite("tests.helpers")

# Keep the 2-core machine responsive when several ranks run at once.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """A raw corpus (H.264 mp4 + SRT + manifest.jsonl) made by videobert-synth; returns the manifest."""
    from videobert_ds.data.synth import synthesize

    out = tmp_path_factory.mktemp("corpus")
    return synthesize(out, num_videos=8, seed=0)


@pytest.fixture(scope="session")
def prepared_shards(synth_corpus, tmp_path_factory) -> Path:
    """The synthetic corpus prepared into VP9 WebDataset shards; returns the shard directory."""
    from videobert_ds.data.prepare import prepare_corpus

    out = tmp_path_factory.mktemp("shards")
    prepare_corpus(synth_corpus, out, codec="vp9", fps=8, size=32, samples_per_shard=8)
    return out


# ---------------------------------------------------------------------------------------------
# The tiny pipeline, stage by stage, each a real 2-rank run (built once per session, on demand)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pipeline_shards(tmp_path_factory) -> Path:
    """A 24-video corpus prepared at the demo's settings: enough samples for the teacher's objectives."""
    from videobert_ds.data.prepare import prepare_corpus
    from videobert_ds.data.synth import synthesize

    root = tmp_path_factory.mktemp("pipeline")
    manifest = synthesize(root / "corpus", num_videos=24, seed=1)
    prepare_corpus(manifest, root / "shards", codec="vp9", fps=8, size=32, samples_per_shard=16)
    return root / "shards"


def _run_stage(
    config: str, run_dir: Path, overrides: dict, ds_config: str = "zero3_cpu.json", bf16: bool = True
) -> Path:
    """A 2-rank run of the shipped CPU config `ds_config`, in bf16 (the precision the GPU configs train in)
    unless `bf16` is False. The demo keeps fp32: its recorded figures are fp32."""
    from tests.helpers.distributed import run_training, write_ds_config

    ds = write_ds_config(run_dir.parent / f"{run_dir.name}_ds.json", None, base=ds_config, bf16=bf16)
    proc = run_training(ds, config, [f"run.dir={run_dir}", *(f"{k}={v}" for k, v in overrides.items())])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tiny_encoder(pipeline_shards) -> Path:
    """Stage 1: the exported clip autoencoder dir."""
    run = _run_stage(
        "video_encoder_tiny",
        pipeline_shards.parent / "encoder",
        {
            "data.shards": pipeline_shards,
            "schedule.max_steps": 150,
            "schedule.warmup_steps": 15,
            "schedule.val_every": 150,
            "schedule.checkpoint_every": 150,
        },
        # fp32: bf16 conv3d is ~10x slower on AVX2 CPUs (1.2 s vs 0.12 s a step); the clip encoder trains in
        # bf16 in test_engine's short runs instead.
        bf16=False,
    )
    return run / "final"


@pytest.fixture(scope="session")
def tiny_vocab(pipeline_shards, tiny_encoder) -> Path:
    """Stage 2: the vocabulary run dir (vocab.safetensors, vocab_report.json)."""
    return _run_stage(
        "vocab_tiny", pipeline_shards.parent / "vocab", {"data.shards": pipeline_shards, "encoder.path": tiny_encoder}
    )


@pytest.fixture(scope="session")
def tiny_tokens(pipeline_shards, tiny_encoder, tiny_vocab) -> Path:
    """Stage 2b: the tokenize run dir (tokens/ with every split's token shards, tokenize_report.json)."""
    return _run_stage(
        "tokenize_tiny",
        pipeline_shards.parent / "tokenize",
        {
            "data.shards": pipeline_shards,
            "visual.encoder": tiny_encoder,
            "visual.vocab": tiny_vocab / "vocab.safetensors",
        },
    )


@pytest.fixture(scope="session")
def tiny_teacher(pipeline_shards, tiny_encoder, tiny_vocab, tiny_tokens) -> Path:
    """Stage 3: a tiny teacher run dir (checkpoints, tb, metrics.jsonl, final/), trained from the token shards (the
    frames path trains in test_slurm's pipeline and test_distill's students)."""
    return _run_stage(
        "teacher_tiny",
        pipeline_shards.parent / "teacher",
        {
            "data.shards": pipeline_shards,
            "data.tokens": tiny_tokens / "tokens",
            "visual.encoder": tiny_encoder,
            "visual.vocab": tiny_vocab / "vocab.safetensors",
            "schedule.max_steps": 120,
            "schedule.warmup_steps": 12,
            "schedule.log_every": 10,
            "schedule.val_every": 60,
            "schedule.checkpoint_every": 60,
        },
        ds_config="zero3_cpu_bert.json",
    )

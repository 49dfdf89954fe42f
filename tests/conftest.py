"""Shared fixtures: one small synthetic corpus and its shards per test session (built for real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"

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

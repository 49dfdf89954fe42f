"""Helpers shared by the unit and integration tests: launching ranks, running the console scripts, test media,
tiny models, synthetic embeddings and shard checks."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

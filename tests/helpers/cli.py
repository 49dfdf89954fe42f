"""Run the package's console scripts from this venv, the way a user's shell would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO
from tests.helpers.distributed import launch_env

EVAL = Path(sys.executable).parent / "videobert-eval"


def eval_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """videobert-eval in one process, from the repo root, with the launcher's environment."""
    return subprocess.run([str(EVAL), *args], cwd=REPO, capture_output=True, text=True, env=launch_env(), **kw)

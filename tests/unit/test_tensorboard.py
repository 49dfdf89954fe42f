"""The logs are readable by the real TensorBoard: serve a run dir on loopback, read the scalars back over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO

TENSORBOARD = Path(sys.executable).parent / "tensorboard"


def _write_run(run_dir: Path) -> dict[str, list[float]]:
    """A run dir shaped like the engine's (RUN/tb) with a few scalar curves."""
    from torch.utils.tensorboard import SummaryWriter

    curves = {
        "train/loss": [2.0, 1.5, 1.2, 1.0, 0.9],
        "train/lr": [1e-4, 2e-4, 3e-4, 3e-4, 2e-4],
        "val/loss": [1.8, 1.1],
    }
    writer = SummaryWriter(str(run_dir / "tb"))
    for tag, values in curves.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, step)
    writer.close()
    return curves


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _start(logdir: Path) -> tuple[subprocess.Popen, str]:
    """TensorBoard on 127.0.0.1 with a port it picks itself; -> (process, base URL)."""
    proc = subprocess.Popen(
        [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0", "--reload_interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("TensorBoard did not report its address:\n" + "".join(lines))


def test_tensorboard_serves_the_scalars(tmp_path):
    curves = _write_run(tmp_path / "stage")
    proc, base = _start(tmp_path)
    try:
        assert base.startswith("http://127.0.0.1:")  # loopback only
        deadline = time.monotonic() + 120
        tags: dict = {}
        while time.monotonic() < deadline:
            tags = _get(f"{base}/data/plugin/scalars/tags")
            if tags.get("stage/tb") and set(curves) <= set(tags["stage/tb"]):
                break
            time.sleep(1)
        assert set(curves) <= set(tags.get("stage/tb", {})), tags
        for tag, values in curves.items():
            query = urllib.parse.urlencode({"run": "stage/tb", "tag": tag})
            points = _get(f"{base}/data/plugin/scalars/scalars?{query}")
            assert [p[1] for p in points] == list(range(len(values)))  # [wall time, step, value]
            assert [p[2] for p in points] == pytest.approx(values)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_make_tensorboard_serves_the_demo_on_loopback():
    out = subprocess.run(["make", "-n", "tensorboard"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    command = [line for line in out.splitlines() if "tensorboard --logdir" in line]
    assert command, out
    assert "--logdir runs/demo" in command[0] and "--host 127.0.0.1" in command[0]

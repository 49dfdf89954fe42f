"""The benchmarks' shared runs over the demo's artefacts (`make demo`): the check that they are there, and one
tiny-teacher training run under the deepspeed launcher, read back from its metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from videobert_ds.cli.demo import REPO, train_cmd

# What the benchmarks read from the demo dir.
DEMO_NEEDS = ("shards/manifest.json", "video_encoder/final/config.json", "vocab/vocab.safetensors", "teacher/tokenizer")


def demo_missing(demo: Path, prog: str) -> bool:
    """Whether an artefact the benchmarks need is missing from `demo` (then says which, on stderr, as `prog`)."""
    for need in DEMO_NEEDS:
        if not (demo / need).exists():
            print(f"{prog}: error: {demo / need} missing; run `make demo` first", file=sys.stderr)
            return True
    return False


def demo_inputs(demo: Path) -> dict[str, Any]:
    """The overrides that point a stage at the demo's shards, clip encoder and vocabulary."""
    return {
        "data.shards": demo / "shards",
        "visual.encoder": demo / "video_encoder" / "final",
        "visual.vocab": demo / "vocab" / "vocab.safetensors",
    }


def run_checked(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run `cmd` in the repo (with `env` added to this process's environment); a failure ends the benchmark with
    the tail of the run's output."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def teacher_run(
    demo: Path,
    run_dir: Path,
    steps: int,
    ranks: int,
    ds_config: str | Path,
    *,
    what: str,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """One tiny-teacher run of `steps` steps on `ranks` ranks (no validation, checkpoint or export) with the
    DeepSpeed config `ds_config` (a file name in ds_configs/, or a path); -> the last logged figures, which cover
    the second half of the run (warm-up excluded): samples_per_s, tokens_per_s, step_s, data_wait."""
    settings = {
        "run.dir": run_dir,
        **demo_inputs(demo),
        "text.tokenizer": demo / "teacher" / "tokenizer",
        "schedule.max_steps": steps,
        "schedule.warmup_steps": 1,
        "schedule.log_every": steps // 2,
        "schedule.val_every": 10**9,
        "schedule.checkpoint_every": 10**9,
        **(overrides or {}),
    }
    cmd = train_cmd("teacher_tiny", settings, ranks, str(ds_config))  # an absolute path replaces ds_configs/
    cmd.insert(cmd.index("--config"), "--no-export")
    run_checked(cmd, what, env)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "perf/samples_per_s" in r][-1]
    return {
        "samples_per_s": last["perf/samples_per_s"],
        "tokens_per_s": last.get("perf/tokens_per_s", 0.0),
        "step_s": last["perf/step_time_s"],
        "data_wait": last["perf/data_wait_frac"],
    }

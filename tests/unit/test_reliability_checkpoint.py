"""Checkpoints under damage and bad input (issue 21): a truncated newest checkpoint, a --resume path that is
not a checkpoint, a planted pickle, metrics rows of steps that are trained again. One tiny real 1-rank run
(tests/helpers/checkpoints.py), copied and damaged per case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.checkpoints import (
    Planted,
    copy_run,
    model_file,
    optim_file,
    plant_pickle,
    tiny_run,
    train_one_rank,
    truncate,
)
from tests.helpers.distributed import write_ds_config
from videobert_ds.training.checkpoint import CheckpointError, CheckpointManager, trusted_loads
from videobert_ds.training.monitor import drop_rows_after


@pytest.fixture(scope="module")
def run(prepared_shards, tmp_path_factory) -> Path:
    return tiny_run(prepared_shards, tmp_path_factory)


def train_rows(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def test_completion_marker_records_every_file_size(run):
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000004"
    for tag in ("step00000002", "step00000004"):
        record = json.loads((ckpts / tag / "COMPLETE").read_text())
        files = {p.name: p.stat().st_size for p in (ckpts / tag).iterdir() if p.name != "COMPLETE"}
        assert record == {"step": int(tag[4:]), "files": files}
        assert {"rng_rank0.pt"} < set(files) and any(n.endswith("optim_states.pt") for n in files)
    assert json.loads((run / "final" / "export.json").read_text())["tag"] == "step00000004"


def test_truncated_newest_checkpoint_falls_back_and_steps_do_not_repeat(run, prepared_shards, tmp_path):
    """The newest checkpoint's optimizer file is cut in half: `--resume auto` warns, resumes from step 2 (not
    DeepSpeed's traceback), trains on to step 6, and metrics.jsonl holds each step once."""
    run_dir = copy_run(run, tmp_path / "run")
    truncate(optim_file(run_dir / "checkpoints" / "step00000004"))
    assert train_rows(run_dir) == [1, 2, 3, 4]

    proc = train_one_rank(run_dir, prepared_shards, "schedule.max_steps=6")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "step00000004 is damaged: zero_pp_rank_0_mp_rank_00_optim_states.pt has" in out
    assert "at step 2" in out
    assert train_rows(run_dir) == [1, 2, 3, 4, 5, 6]  # rows 3 and 4 of the first attempt were dropped
    # Step 4 was saved again over the damaged one, complete and sound.
    ckpt = CheckpointManager(run_dir / "checkpoints")
    assert ckpt.problem("step00000004") is None and ckpt.resume_tag() == "step00000006"


def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(run, tmp_path):
    ckpts = copy_run(run, tmp_path / "run") / "checkpoints"
    for tag in ("step00000002", "step00000004"):
        truncate(model_file(ckpts / tag))
    with pytest.raises(CheckpointError, match=r"no loadable checkpoint .*--resume none starts over"):
        CheckpointManager(ckpts).resume_tag()


def test_checkpoints_of_older_versions_still_resume(run, tmp_path):
    """A marker with just the step (no sizes) still loads; a truncated file in such a checkpoint is found
    anyway (its zip directory is gone) and skipped."""
    ckpts = copy_run(run, tmp_path / "run") / "checkpoints"
    for tag in ("step00000002", "step00000004"):
        (ckpts / tag / "COMPLETE").write_text(f"{int(tag[4:])}\n")
    manager = CheckpointManager(ckpts)
    assert manager.problem("step00000004") is None and manager.resume_tag() == "step00000004"
    truncate(optim_file(ckpts / "step00000004"))
    assert "is unreadable" in manager.problem("step00000004")
    assert manager.resume_tag() == "step00000002"


def test_resume_path_that_is_not_a_checkpoint_is_a_one_line_error(run, prepared_shards, tmp_path, capsys):
    """Checked in train.py's validation, before the process group or any model exists."""
    import torch.distributed as dist

    from videobert_ds.train import main

    ds_config = write_ds_config(tmp_path / "ds.json", micro_batch=2)
    incomplete = tmp_path / "ck" / "step00000003"
    incomplete.mkdir(parents=True)
    (incomplete / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"partial")
    truncated = copy_run(run, tmp_path / "run") / "checkpoints" / "step00000004"
    truncate(optim_file(truncated))
    cases = {
        tmp_path / "nope" / "step00000002": "it does not exist",
        incomplete: "it is not complete (no COMPLETE marker",
        truncated: "zero_pp_rank_0_mp_rank_00_optim_states.pt has",
    }
    for path, why in cases.items():
        args = ["--deepspeed", str(ds_config), "--config", "video_encoder_tiny", "--resume", str(path)]
        assert main([*args, f"run.dir={tmp_path / 'new'}", f"data.shards={prepared_shards}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"videobert-train: error: --resume {path}: {why}") and "\n" not in err, err
    assert not dist.is_initialized() and not (tmp_path / "new").exists()


def test_planted_pickle_never_runs(run, prepared_shards, tmp_path, capsys):
    """A checkpoint file carrying an object whose unpickling would create a marker file: resume and export
    fail with a one-line error and the marker never appears; and even past the pickle scan, every load
    DeepSpeed makes (it passes weights_only=False) runs weights-only under trusted_loads."""
    from videobert_ds.cli.export import main as export_main

    run_dir = copy_run(run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    plant_pickle(model_file(run_dir / "checkpoints" / "step00000004"), marker)
    assert not marker.exists()

    proc = train_one_rank(run_dir, prepared_shards, "schedule.max_steps=6")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    assert "refusing to load: its pickle names io.open" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()

    assert export_main([str(run_dir), "--out", str(tmp_path / "export")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "export").exists()

    evil = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "planted": Planted(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to load a checkpoint file: .*io.open"), trusted_loads():
        torch.load(evil, weights_only=False)  # what DeepSpeed's loaders pass
    assert not marker.exists()
    with trusted_loads():  # DeepSpeed's own types (LossScaler, ZeroStageEnum) load
        torch.load(optim_file(run_dir / "checkpoints" / "step00000002"), weights_only=False)


def test_metrics_rows_past_the_resume_step_are_dropped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 7)] + [{"step": 4, "val/loss": 0.5}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "train/lo')  # torn last line
    assert drop_rows_after(metrics, 4) == 3  # steps 5, 6 and the torn line
    kept = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert kept == [r for r in rows if r["step"] <= 4]
    assert drop_rows_after(metrics, 4) == 0 and drop_rows_after(tmp_path / "absent.jsonl", 4) == 0

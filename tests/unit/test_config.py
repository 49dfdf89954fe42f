"""Stage configs: typed loading, dotted overrides, and one-line errors (exit 2) before any rank starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from videobert_ds.core.config import ConfigError, apply_overrides, from_dict, load_stage_config, resolve_config_path
from videobert_ds.stages.pretrain_video_encoder import VideoEncoderStageConfig
from videobert_ds.train import main as train_main
from videobert_ds.training.schedule import lr_multiplier

CPU_DS = str(REPO / "ds_configs" / "zero3_cpu.json")


def test_packaged_configs_load_and_overrides_apply():
    for name in ("video_encoder_tiny", "video_encoder"):
        cfg = load_stage_config(
            VideoEncoderStageConfig, resolve_config_path(name), ["schedule.max_steps=7", "model.channels=[8, 16]"]
        )
        assert cfg.schedule.max_steps == 7 and cfg.model.channels == [8, 16]
        assert isinstance(cfg.schedule.min_lr_ratio, float)


def test_type_and_key_errors_name_the_path():
    with pytest.raises(ConfigError, match=r"schedule.max_steps: expected int"):
        from_dict(VideoEncoderStageConfig, {"schedule": {"max_steps": "many"}})
    with pytest.raises(ConfigError, match=r"model.chanels: unknown key"):
        from_dict(VideoEncoderStageConfig, {"model": {"chanels": [1]}})
    with pytest.raises(ConfigError, match=r"data.backend: 'ffmpeg' is not one of"):
        from_dict(VideoEncoderStageConfig, {"data": {"backend": "ffmpeg"}})
    with pytest.raises(ConfigError, match=r"not of the form"):
        apply_overrides({}, ["schedule.max_steps"])


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_multiplier(s, warmup=10, total=100, decay="cosine", min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def _run(capsys, *argv: str) -> str:
    code = train_main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("videobert-train: error: ")
    return err


@pytest.fixture()
def shards(prepared_shards) -> str:
    return f"data.shards={prepared_shards}"


def test_train_entry_rejects_bad_configs(capsys, tmp_path, shards):
    assert "unknown key" in _run(
        capsys, "--deepspeed", CPU_DS, "--config", "video_encoder_tiny", shards, "model.hiden=3"
    )
    assert "set by the DeepSpeed config" in _run(
        capsys, "--deepspeed", CPU_DS, "--config", "video_encoder_tiny", shards, "data.batch_size=4"
    )
    assert "no shard directory" in _run(
        capsys, "--deepspeed", CPU_DS, "--config", "video_encoder_tiny", f"data.shards={tmp_path / 'missing'}"
    )
    assert "DeepSpeed config not found" in _run(
        capsys, "--deepspeed", str(tmp_path / "nope.json"), "--config", "video_encoder_tiny", shards
    )
    assert "config file not found" in _run(capsys, "--deepspeed", CPU_DS, "--config", str(tmp_path / "nope.yaml"))
    assert "does not match the shards' frame size" in _run(
        capsys, "--deepspeed", CPU_DS, "--config", "video_encoder_tiny", shards, "model.image_size=64"
    )
    with_scheduler = json.loads(Path(CPU_DS).read_text())
    with_scheduler["scheduler"] = {"type": "WarmupLR", "params": {}}
    (tmp_path / "sched.json").write_text(json.dumps(with_scheduler))
    assert "owned by the stage config" in _run(
        capsys, "--deepspeed", str(tmp_path / "sched.json"), "--config", "video_encoder_tiny", shards
    )


def test_a_training_split_too_small_for_the_batch_is_a_one_line_error(prepared_shards, tmp_path):
    """Checked once the world size is known (after the process group forms), before any data is read."""
    ds = json.loads(Path(CPU_DS).read_text())
    ds["train_micro_batch_size_per_gpu"] = 100000
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    proc = subprocess.run(
        [
            sys.executable,
            "videobert_ds/train.py",
            "--deepspeed",
            str(tmp_path / "ds.json"),
            "--config",
            "video_encoder_tiny",
            f"run.dir={tmp_path / 'run'}",
            f"data.shards={prepared_shards}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("videobert-train: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "data.train_split" in errors[0] and "too few for 1 rank(s) x batch size 100000" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()

"""The training engine, proven with stage 1 (clip autoencoder) in real 2-rank ZeRO-3 runs on CPU."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.distributed import (
    assert_trained_in_bf16,
    deepspeed_cmd,
    launch_env,
    launcher_tree,
    read_metrics,
    run_training,
    write_ds_config,
)

pytestmark = pytest.mark.multiproc

CONFIG = "video_encoder_tiny"


def overrides(run_dir: Path, shards: Path, **extra) -> list[str]:
    base = {
        "run.dir": run_dir,
        "data.shards": shards,
        "data.num_threads": 1,
        "data.log_sample_keys": "true",
        "schedule.max_steps": 8,
        "schedule.warmup_steps": 2,
        "schedule.log_every": 1,
        "schedule.val_every": 4,
        "schedule.val_batches": 1,
        "schedule.checkpoint_every": 4,
        "schedule.keep_checkpoints": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def sample_keys(run_dir: Path, rank: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in (run_dir / f"samples_rank{rank}.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["keys"]
    return out


@pytest.fixture(scope="module")
def ds_config(tmp_path_factory) -> Path:
    return write_ds_config(tmp_path_factory.mktemp("ds") / "zero3_cpu_bf16_test.json", micro_batch=2, bf16=True)


@pytest.fixture(scope="module")
def full_run(prepared_shards, ds_config, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run with checkpoints at steps 4 and 8 and the final export."""
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    ok(run_training(ds_config, CONFIG, overrides(run_dir, prepared_shards)))
    return run_dir


def test_loss_falls_and_logs(full_run):
    metrics = read_metrics(full_run)
    # The reconstruction term is the one that must fall in 8 steps; the contrastive term over 4 narrations per
    # step is too noisy to rank two steps by (it is only required to be logged here).
    losses = [metrics[s]["train/l_video"] for s in sorted(metrics) if "train/l_video" in metrics[s]]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    for key in (
        "train/loss",
        "train/l_nce",
        "train/acc_narration",
        "train/lr",
        "train/grad_norm",
        "perf/samples_per_s",
        "perf/data_wait_frac",
        "perf/memory_gib",
        "perf/tflops_per_device",
    ):
        assert key in metrics[8], key
    assert "val/loss" in metrics[4] and "val/loss" in metrics[8]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(full_run / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"train/loss", "val/l_video", "perf/data_wait_frac"} <= set(acc.Tags()["scalars"])
    assert "reconstruction" in acc.Tags()["images"]


def test_checkpoints_record_every_rank_file(full_run):
    """Rank 0 writes the completion marker after all ranks saved: it lists both ranks' shards and RNG files
    with their sizes, and the export names the checkpoint it came from."""
    for tag in ("step00000004", "step00000008"):
        tag_dir = full_run / "checkpoints" / tag
        record = json.loads((tag_dir / "COMPLETE").read_text())
        assert record["files"] == {p.name: p.stat().st_size for p in tag_dir.iterdir() if p.name != "COMPLETE"}
        for rank in (0, 1):
            assert f"rng_rank{rank}.pt" in record["files"]
            assert any(n.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt") for n in record["files"])
    assert json.loads((full_run / "final" / "export.json").read_text())["tag"] == "step00000008"


def test_each_rank_holds_half_of_each_parameter(full_run):
    for rank in (0, 1):
        report = json.loads((full_run / f"partition_rank{rank}.json").read_text())
        assert report["world_size"] == 2
        assert report["params_total"] > 100_000
        assert abs(report["params_local"] / report["params_total"] - 0.5) < 0.01
        assert report["max_fraction"] <= 0.5 + 1e-6 or report["min_fraction"] >= 0.45


def test_export_reproduces_checkpoint_outputs(full_run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from videobert_ds.visual.autoencoder import ClipAutoencoder

    final = full_run / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert_trained_in_bf16(full_run)  # trained in bf16 (the GPU configs' precision), exported in fp32
    exported = ClipAutoencoder.from_pretrained(final).eval()
    reference = ClipAutoencoder(exported.config).eval()
    state = get_fp32_state_dict_from_zero_checkpoint(str(full_run / "checkpoints"), tag="step00000008")
    # The narration encoder ("narration.*") only trains the clip embedding: it is not part of the export.
    assert any(k.startswith("narration.") for k in state)
    reference.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    clips = torch.rand(3, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        got, want = exported(clips), reference(clips)
    torch.testing.assert_close(got[0], want[0])  # reconstruction
    torch.testing.assert_close(got[2], want[2])  # the embedding visual words are built on
    # And the exported weights did learn something: not the fresh initialisation.
    assert not torch.allclose(exported.to_feature.weight, ClipAutoencoder(exported.config).to_feature.weight)


def test_resume_matches_uninterrupted_run(full_run, prepared_shards, ds_config, tmp_path):
    """Stop after step 4 (keep only that checkpoint), resume: steps 5..8 repeat the uninterrupted losses
    (tolerance 1e-5: same ops, same data, restored RNG) and consume exactly the same samples. metrics.jsonl
    still holds the first attempt's rows past step 4: the resumed run drops them, so each step appears once."""
    run_dir = tmp_path / "resumed"
    shutil.copytree(full_run, run_dir, ignore=shutil.ignore_patterns("final", "tb", "step00000008"))
    (run_dir / "checkpoints" / "latest").write_text("step00000004")
    for rank in (0, 1):
        keys = sample_keys(run_dir, rank)
        (run_dir / f"samples_rank{rank}.jsonl").write_text(
            "".join(json.dumps({"step": s, "keys": k}) + "\n" for s, k in keys.items() if s < 4)
        )

    proc = run_training(ds_config, CONFIG, overrides(run_dir, prepared_shards))
    ok(proc)
    assert "resumed from" in proc.stdout + proc.stderr

    train_steps = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(train_steps) == sorted(json.loads(ln)["step"] for ln in (full_run / "metrics.jsonl").open())
    full, resumed = read_metrics(full_run), read_metrics(run_dir)
    for step in range(5, 9):
        assert resumed[step]["train/loss"] == pytest.approx(full[step]["train/loss"], abs=1e-5), step
    from videobert_ds.data.loader import build_clip_loader

    steps_per_epoch = build_clip_loader(prepared_shards, "train", 2, 16, rank=0, world_size=2).steps_per_epoch
    for rank in (0, 1):
        keys = sample_keys(run_dir, rank)
        assert keys == sample_keys(full_run, rank)  # same samples, same order, none repeated or skipped
        first_epoch = [k for step in range(min(8, steps_per_epoch)) for k in keys[step]]
        assert len(first_epoch) == len(set(first_epoch))


def test_kill_during_checkpoint_resumes_from_previous(prepared_shards, ds_config, tmp_path):
    run_dir = tmp_path / "killed"
    args = overrides(
        run_dir, prepared_shards, **{"schedule.max_steps": 6, "schedule.checkpoint_every": 2, "schedule.val_every": 100}
    )
    proc = run_training(ds_config, CONFIG, args, env=launch_env(VIDEOBERT_FAULT_KILL_IN_CHECKPOINT_STEP="4"))
    assert proc.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step00000002" / "COMPLETE").is_file()
    assert not (ckpts / "step00000004" / "COMPLETE").exists()
    assert (ckpts / "latest").read_text() == "step00000002"

    proc = run_training(ds_config, CONFIG, args)
    ok(proc)
    assert "at step 2" in proc.stdout + proc.stderr
    assert (ckpts / "latest").read_text() == "step00000006"
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_sigusr1_checkpoints_and_exits_cleanly(prepared_shards, ds_config, tmp_path):
    run_dir = tmp_path / "signalled"
    args = overrides(
        run_dir,
        prepared_shards,
        **{"schedule.max_steps": 10000, "schedule.val_every": 10000, "schedule.checkpoint_every": 10000},
    )
    launcher = subprocess.Popen(
        deepspeed_cmd(ds_config, CONFIG, args),
        cwd=REPO,
        env=launch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("training never started")
        _, ranks = launcher_tree(launcher.pid)
        assert len(ranks) == 2
        for p in ranks:  # as SLURM does: every task gets the warning signal
            p.send_signal(signal.SIGUSR1)
        out, _ = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out[-4000:]
    assert "stopped by signal" in out
    tag = (run_dir / "checkpoints" / "latest").read_text()
    assert (run_dir / "checkpoints" / tag / "COMPLETE").is_file()
    assert 2 <= int(tag.removeprefix("step")) < 10000
    assert not (run_dir / "final").exists()

"""Student distillation (stage 4): real 2-rank ZeRO-3 runs against the session's tiny teacher (config errors,
distilled vs. the same student without the teacher, partitioning of both models, export, resume with the teacher
read from its ZeRO checkpoint, attention KL + teacher init)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.distributed import assert_trained_in_bf16, read_metrics, run_training, write_ds_config
from videobert_ds.model.videobert import VideoBertForPreTraining

KD_OFF = {"distill.enabled": "false"}  # ground-truth losses only, the teacher's weights not loaded
STEPS = 60


# ---------------------------------------------------------------------------------------------
# Config errors: one line, before any rank starts
# ---------------------------------------------------------------------------------------------


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["teacher.path=/nonexistent/teacher"], "teacher.path"),
        (["model.init=teacher"], "model.init=teacher"),
        (["distill.layer_map=[0, 9, 4]"], "distill.layer_map"),
        (["distill.temperature=0"], "distill.temperature"),
        (["objective.max_seq_len=500"], "max_position_embeddings"),
        (["objective.max_text_tokens=46"], "leaves no room for video"),
        (["model.num_attention_heads=3"], "num_attention_heads"),
    ],
)
def test_config_errors_are_one_line(tiny_teacher, pipeline_shards, tmp_path, capsys, overrides, message):
    from videobert_ds.train import main

    args = [
        "--deepspeed",
        "ds_configs/zero3_cpu.json",
        "--config",
        "student_tiny",
        f"run.dir={tmp_path}/run",
        f"data.shards={pipeline_shards}",
        f"teacher.path={tiny_teacher / 'final'}",
        *overrides,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.multiproc
def test_teacher_path_forms(tiny_teacher, tiny_vocab):
    from videobert_ds.core.config import ConfigError
    from videobert_ds.stages.distill_student import resolve_teacher

    assert resolve_teacher(str(tiny_teacher / "final")).kind == "model_dir"
    run = resolve_teacher(str(tiny_teacher))  # a run dir: its newest complete checkpoint
    assert (run.kind, run.path, run.tag) == ("checkpoint", tiny_teacher, "step00000120")
    tag = resolve_teacher(str(tiny_teacher / "checkpoints" / "step00000060"))
    assert (tag.kind, tag.path, tag.tag) == ("checkpoint", tiny_teacher, "step00000060")
    with pytest.raises(ConfigError, match="'build_vocab' run, not a pretrain_teacher run"):
        resolve_teacher(str(tiny_vocab))


# ---------------------------------------------------------------------------------------------
# Real 2-rank ZeRO-3 runs
# ---------------------------------------------------------------------------------------------


def overrides(run_dir: Path, shards: Path, teacher: Path, **extra) -> list[str]:
    base = {
        "run.dir": run_dir,
        "data.shards": shards,
        "data.num_threads": 1,
        "teacher.path": teacher,
        "schedule.max_steps": STEPS,
        "schedule.warmup_steps": 6,
        "schedule.log_every": 5,
        "schedule.val_every": STEPS,
        "schedule.val_batches": 8,
        "schedule.checkpoint_every": STEPS // 2,
        "schedule.keep_checkpoints": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def ds_config(tmp_path_factory) -> Path:
    return write_ds_config(tmp_path_factory.mktemp("ds") / "zero3_cpu_bf16_distill.json", micro_batch=4, bf16=True)


@pytest.fixture(scope="module")
def distilled(tiny_teacher, pipeline_shards, ds_config, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("distill") / "student"
    ok(run_training(ds_config, "student_tiny", overrides(run_dir, pipeline_shards, tiny_teacher / "final")))
    return run_dir


@pytest.fixture(scope="module")
def without_teacher(tiny_teacher, pipeline_shards, ds_config, tmp_path_factory) -> Path:
    """The same student, data, steps and seed without the teacher (distill.enabled=false: ground truth only)."""
    run_dir = tmp_path_factory.mktemp("distill") / "baseline"
    ok(run_training(ds_config, "student_tiny", overrides(run_dir, pipeline_shards, tiny_teacher / "final", **KD_OFF)))
    return run_dir


def held_out_masked_loss(
    run_dir: Path, splits: tuple[str, ...] = ("val", "test"), maskings: int = 8
) -> dict[str, float]:
    """Masked-word and masked-visual-word cross-entropy of RUN_DIR/final on the held-out splits, per
    masked position, over several random maskings of every sample (the run's own batch pipeline): the
    engine's validation sees 16 samples masked once, too few positions to separate two students."""
    from videobert_ds.data.loader import build_clip_loader
    from videobert_ds.objectives.layout import IGNORE
    from videobert_ds.objectives.pretraining import pretraining_losses
    from videobert_ds.stages import load_run_stage

    cpu = torch.device("cpu")
    stage = load_run_stage(run_dir)
    stage.setup(run_dir, 0, cpu)
    model = VideoBertForPreTraining.from_pretrained(run_dir / "final").eval()
    sums, counts = {"mlm": 0.0, "mvm": 0.0}, {"mlm": 0, "mvm": 0}
    for split in splits:
        batches = list(
            build_clip_loader(
                stage.cfg.data.shards,
                split,
                8,
                stage.cfg.data.num_frames,
                rank=0,
                world_size=1,
                shuffle=False,
                backend="pyav",
            )
        )
        for seed in range(maskings):
            torch.manual_seed(1000 + seed)
            for batch in batches:
                inputs = stage.make_inputs(batch, cpu)
                with torch.no_grad():
                    out = pretraining_losses(model, inputs, stage.cfg.objective)
                for term, labels in (("mlm", "mlm_labels"), ("mvm", "mvm_labels")):
                    n = int((inputs[labels] != IGNORE).sum())
                    sums[term] += float(out[term]) * n
                    counts[term] += n
    losses = {term: sums[term] / counts[term] for term in sums}
    return {**losses, "masked": losses["mlm"] + losses["mvm"], "positions": sum(counts.values())}


def mean(metrics: dict, steps: list[int], key: str) -> float:
    return sum(metrics[s][key] for s in steps) / len(steps)


@pytest.mark.multiproc
def test_distillation_losses_fall(distilled):
    metrics = read_metrics(distilled)
    steps = sorted(s for s in metrics if "train/loss" in metrics[s])
    assert len(steps) == STEPS // 5
    for term in ("kd_mlm", "kd_caption", "hidden", "loss_kd", "loss"):
        first, last = mean(metrics, steps[:3], f"train/{term}"), mean(metrics, steps[-3:], f"train/{term}")
        print(f"train/{term}: {first:.4f} -> {last:.4f}")
        assert last < first, term
    for key in ("val/kd_mlm", "val/kd_mvm", "val/kd_align", "val/hidden", "val/mlm", "val/mvm", "train/loss_gt"):
        assert key in metrics[STEPS], key


@pytest.mark.multiproc
def test_distilled_student_beats_the_same_student_without_teacher(distilled, without_teacher, tiny_teacher):
    kd, base = held_out_masked_loss(distilled), held_out_masked_loss(without_teacher)
    teacher = held_out_masked_loss(tiny_teacher)
    print(
        f"held-out (val + test) masked-prediction loss after {STEPS} steps, {kd['positions']} masked positions: "
        f"distilled {kd['masked']:.4f} (mlm {kd['mlm']:.4f}, mvm {kd['mvm']:.4f}) vs without teacher "
        f"{base['masked']:.4f} (mlm {base['mlm']:.4f}, mvm {base['mvm']:.4f}); the teacher {teacher['masked']:.4f}"
    )
    v_kd, v_base = read_metrics(distilled)[STEPS], read_metrics(without_teacher)[STEPS]
    print(
        f"engine validation (val split, one masking): distilled mlm {v_kd['val/mlm']:.4f} mvm {v_kd['val/mvm']:.4f}; "
        f"without teacher mlm {v_base['val/mlm']:.4f} mvm {v_base['val/mvm']:.4f}"
    )
    assert kd["masked"] < base["masked"]
    # the baseline held no teacher: its report and partition record the student alone
    assert json.loads((without_teacher / "distill_report.json").read_text())["distill"] is False
    assert "teacher" not in json.loads((without_teacher / "distill_report.json").read_text())
    assert set(json.loads((without_teacher / "distill_partition_rank0.json").read_text())) == {"student"}


@pytest.mark.multiproc
def test_teacher_and_student_are_partitioned_and_teacher_stays_frozen(distilled, tiny_teacher):
    for rank in (0, 1):
        shares = json.loads((distilled / f"distill_partition_rank{rank}.json").read_text())
        for name in ("teacher", "student"):
            share = shares[name]["params_local"] / shares[name]["params_total"]
            assert abs(share - 0.5) < 0.01, (rank, name, share)

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(distilled / "checkpoints"), tag=f"step{STEPS:08d}")
    teacher = load_file(str(tiny_teacher / "final" / "model.safetensors"))
    # The run is bf16: the frozen teacher is held and checkpointed in bf16, its exported weights rounded once.
    for name, value in teacher.items():
        torch.testing.assert_close(
            state[f"teacher.{name}"].float(), value.to(torch.bfloat16).float(), rtol=0, atol=0, msg=name
        )


@pytest.mark.multiproc
def test_export_is_self_contained_and_report_records_sizes_and_speed(distilled, tiny_teacher):
    from videobert_ds.data.text import load_tokenizer
    from videobert_ds.visual.autoencoder import AutoencoderClipEncoder
    from videobert_ds.visual.vocab import VisualVocabulary

    assert_trained_in_bf16(distilled)
    final = distilled / "final"
    student = VideoBertForPreTraining.from_pretrained(final)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (2, 80)  # student_tiny.yaml
    assert len(load_tokenizer(final)) == student.config.text_vocab_size
    assert VisualVocabulary.load(final / "visual_vocab.safetensors").size == student.config.visual_vocab_size
    AutoencoderClipEncoder.from_pretrained(str(final / "clip_encoder"))

    report = json.loads((distilled / "distill_report.json").read_text())
    teacher_params = sum(
        p.numel() for p in VideoBertForPreTraining.from_pretrained(tiny_teacher / "final").parameters()
    )
    assert report["teacher"]["params"] == teacher_params
    assert report["student"]["params"] == sum(p.numel() for p in student.parameters())
    assert report["student"]["params"] <= teacher_params / 4
    assert report["teacher"]["inference_clips_per_s"] > 0 and report["student"]["inference_clips_per_s"] > 0
    print(
        f"teacher {report['teacher']['params']:,} params, {report['teacher']['inference_clips_per_s']:.0f} clips/s; "
        f"student {report['student']['params']:,} params, {report['student']['inference_clips_per_s']:.0f} clips/s"
    )

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(distilled / "tb"))
    acc.Reload()
    assert "distill/report/text_summary" in acc.Tags()["tensors"]
    assert {"train/kd_mlm", "train/hidden", "val/kd_mvm"} <= set(acc.Tags()["scalars"])


@pytest.mark.multiproc
def test_resume_with_teacher_from_its_zero_checkpoint(distilled, tiny_teacher, pipeline_shards, ds_config, tmp_path):
    """Resume the distilled run from its half-way checkpoint, this time naming the teacher's run dir: rank 0
    consolidates the teacher's ZeRO checkpoint (the same weights as its export), and the remaining steps
    repeat the uninterrupted run's losses."""
    half = STEPS // 2
    run_dir = tmp_path / "resumed"
    shutil.copytree(distilled, run_dir, ignore=shutil.ignore_patterns("final", "tb", f"step{STEPS:08d}"))
    (run_dir / "checkpoints" / "latest").write_text(f"step{half:08d}")
    lines = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if json.loads(ln)["step"] <= half]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    proc = run_training(ds_config, "student_tiny", ["--no-export", *overrides(run_dir, pipeline_shards, tiny_teacher)])
    ok(proc)
    assert f"at step {half}" in proc.stdout + proc.stderr
    assert json.loads((run_dir / "teacher" / "source.json").read_text())["run"] == str(tiny_teacher.resolve())
    full, resumed = read_metrics(distilled), read_metrics(run_dir)
    for step in range(half + 5, STEPS + 1, 5):
        assert resumed[step]["train/loss"] == pytest.approx(full[step]["train/loss"], abs=1e-4), step


@pytest.mark.multiproc
def test_attention_kl_and_teacher_init_under_zero3(tiny_teacher, tiny_tokens, pipeline_shards, ds_config, tmp_path):
    """A student as wide as the teacher (2 x 128) starts from teacher layers 0 and 2 and also learns the
    teacher's attention distributions (eager attention in both partitioned models); it reads the token shards
    (data.tokens), the other students decode frames."""
    run_dir = tmp_path / "wide"
    proc = run_training(
        ds_config,
        "student_tiny",
        [
            "--no-export",
            *overrides(
                run_dir,
                pipeline_shards,
                tiny_teacher / "final",
                **{
                    "model.hidden_size": 128,
                    "model.intermediate_size": 256,
                    "model.num_attention_heads": 4,
                    "model.init": "teacher",
                    "data.tokens": tiny_tokens / "tokens",
                    "distill.lambda_attention": 1.0,
                    # activation checkpointing under ZeRO-3: the recompute gathers the partitioned weights again
                    "model.gradient_checkpointing": "true",
                    "schedule.max_steps": 2,
                    "schedule.warmup_steps": 1,
                    "schedule.log_every": 1,
                    "schedule.val_every": 2,
                    "schedule.checkpoint_every": 2,
                },
            ),
        ],
    )
    ok(proc)
    assert "initialised from teacher layers [0, 2]" in proc.stdout + proc.stderr
    assert "activation checkpointing on 2 transformer layers" in proc.stdout + proc.stderr
    metrics = read_metrics(run_dir)
    assert all(math.isfinite(metrics[s]["train/attention"]) and metrics[s]["train/attention"] > 0 for s in (1, 2))

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step00000002")
    # Two Adam steps at lr <= 2e-3 move a weight by at most ~4e-3 from the copied teacher layer.
    for name in ("attention.self.query.weight", "output.dense.weight"):
        s, t = state[f"student.bert.encoder.layer.1.{name}"], state[f"teacher.bert.encoder.layer.2.{name}"]
        assert (s - t).abs().max() < 6e-3, name

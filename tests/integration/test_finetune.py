"""Fine-tuning, for real: a 2-rank ZeRO-3 run of all four tasks from the tiny teacher, evaluated on the synthetic
test split beside chance, and the stage's config errors against that teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.distributed import read_metrics, run_training, write_ds_config
from videobert_ds.objectives.finetuning import TASKS

EVAL = Path(sys.executable).parent / "videobert-eval"


# ---------------------------------------------------------------------------------------------
# A real 2-rank run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(tiny_teacher, tiny_tokens, pipeline_shards, tmp_path_factory) -> Path:
    """The tiny teacher fine-tuned on all four tasks (2 ranks, ZeRO-3), from the token shards (labels, questions
    and texts from their json; test_slurm's pipeline fine-tunes from frames). In fp32, unlike the other stages'
    test runs: its 150 steps of bf16 GEMMs take about 6x as long on CPUs without native bf16 (AVX2); bf16
    fine-tuning runs in test_slurm's pipeline."""
    tmp = tmp_path_factory.mktemp("finetune")
    ds = write_ds_config(tmp / "zero3_cpu_finetune.json", micro_batch=8)
    run = tmp / "run"
    proc = run_training(
        ds,
        "finetune_tiny",
        [
            f"run.dir={run}",
            f"data.shards={pipeline_shards}",
            f"data.tokens={tiny_tokens / 'tokens'}",
            f"model.init={tiny_teacher / 'final'}",
            "schedule.max_steps=150",
            "schedule.warmup_steps=15",
            "schedule.val_every=75",
            "schedule.checkpoint_every=75",
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


@pytest.mark.multiproc
def test_finetune_trains_every_head_and_exports(finetuned):
    from transformers import BertModel

    from videobert_ds.model.finetuning import VideoBertForFinetuning

    metrics = read_metrics(finetuned)
    train = [m for _, m in sorted(metrics.items()) if "train/loss" in m]
    first, last = train[0], train[-1]
    for term in ("classification", "caption", "qa"):
        assert last[f"train/{term}"] < first[f"train/{term}"], (term, first, last)
    assert json.loads((finetuned / "partition_rank1.json").read_text())["world_size"] == 2
    assert (finetuned / "checkpoints" / "latest").read_text() == "step00000150"
    final = finetuned / "final"
    model = VideoBertForFinetuning.from_pretrained(final)
    assert model.label_sets == json.loads((finetuned / "label_sets.json").read_text())
    assert set(model.label_sets) == {"colour", "shape", "motion"}
    assert model.config.finetune_tasks == list(TASKS)
    BertModel.from_pretrained(final)  # still a plain BERT encoder for anyone else
    for f in ("tokenizer.json", "visual_vocab.safetensors", "clip_encoder/config.json"):
        assert (final / f).is_file(), f


@pytest.mark.multiproc
def test_finetuned_heads_beat_chance_on_the_test_split(finetuned, pipeline_shards, tmp_path):
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [
            str(EVAL),
            "--config",
            "eval_tiny",
            "--model",
            str(finetuned / "final"),
            "--shards",
            str(pipeline_shards),
            "--split",
            "test",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    shown = {
        k: (round(v["value"], 3), round(v["chance"], 3))
        for k, v in metrics.items()
        if k.startswith(("finetune/", "retrieval/"))
    }
    print("fine-tuned (value, chance):", shown)
    assert (
        metrics["finetune/classification/colour/top1"]["value"]
        > metrics["finetune/classification/colour/top1"]["chance"]
    )
    assert metrics["finetune/qa/accuracy"]["chance"] == pytest.approx(0.25)
    assert metrics["finetune/qa/accuracy"]["value"] > 0.25, shown
    cider = metrics["finetune/caption/CIDEr"]
    assert cider["value"] > cider["chance"], shown  # the constant caption
    for direction in ("t2v", "v2t"):  # the alignment head fine-tuned with in-batch hard negatives
        recall, rank = (
            metrics[f"finetune/retrieval/{direction}/R@5"],
            metrics[f"finetune/retrieval/{direction}/median_rank"],
        )
        assert recall["value"] > recall["chance"] and rank["value"] < rank["chance"], shown


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["finetune.tasks=[translation]"], "finetune.tasks"),
        (["model.init=/no/such/model"], "is not an exported VideoBERT model dir"),
        (["finetune.classification.label_sets=[mood]"], "no train sample has label(s) mood"),
    ],
)
def test_config_errors_are_one_line(tiny_teacher, pipeline_shards, tmp_path, capsys, overrides, message):
    from videobert_ds.train import main

    args = [
        "--deepspeed",
        "ds_configs/zero3_cpu.json",
        "--config",
        "finetune_tiny",
        f"run.dir={tmp_path}/run",
        f"data.shards={pipeline_shards}",
        f"model.init={tiny_teacher / 'final'}",
        *overrides,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err

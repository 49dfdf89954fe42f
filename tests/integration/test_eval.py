"""videobert-eval on a tiny trained teacher: 2 ranks under the deepspeed launcher with ZeRO-3 against 1 process,
and the demo report from those real evaluations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.cli import eval_cli
from tests.helpers.distributed import free_port, launch_env

DEEPSPEED = Path(sys.executable).parent / "deepspeed"
ATTRS = ("colour", "shape", "motion")
METRICS = (
    [f"zeroshot/{a}/top{k}" for a in ATTRS for k in (1, 5)]
    + [f"retrieval/{d}/R@{k}" for d in ("t2v", "v2t") for k in (1, 5, 10)]
    + [f"retrieval/{d}/median_rank" for d in ("t2v", "v2t")]
    + [f"caption/{m}" for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")]
)


# ---------------------------------------------------------------------------------------------
# Real runs on a tiny trained teacher
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_reports(tiny_teacher, pipeline_shards, tmp_path_factory) -> dict[str, dict]:
    """The same evaluation on 2 ranks (deepspeed launcher, ZeRO-3-partitioned model) and on 1 plain process."""
    out = tmp_path_factory.mktemp("eval")
    model = tiny_teacher / "final"
    common = ["--config", "eval_tiny", "--model", str(model), "--shards", str(pipeline_shards), "--split", "test"]
    two = subprocess.run(
        [
            str(DEEPSPEED),
            "--num_gpus",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(REPO / "videobert_ds" / "evaluate.py"),
            *common,
            "--out",
            str(out / "two.json"),
            "--zero3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=launch_env(),
        timeout=900,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = eval_cli(*common, "--out", str(out / "one.json"), timeout=900)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    return {
        "two": json.loads((out / "two.json").read_text()),
        "one": json.loads((out / "one.json").read_text()),
        "dir": out,
    }


def test_two_rank_eval_writes_every_field(eval_reports, tiny_teacher):
    r = eval_reports["two"]
    assert r["world_size"] == 2
    from videobert_ds.model.videobert import VideoBertForPreTraining

    model = VideoBertForPreTraining.from_pretrained(str(tiny_teacher / "final"))
    assert r["params"] == sum(p.numel() for p in model.parameters())  # counted from ZeRO-3 partitions
    assert r["clips_per_s"] > 0 and r["num_clips"] > 4
    assert set(METRICS) <= set(r["metrics"])
    for name, m in r["metrics"].items():
        assert isinstance(m["value"], float) and isinstance(m["chance"], float), name
        assert m["value"] >= 0 and m["chance"] > 0, name
    n = r["num_captioned_clips"]
    assert r["metrics"]["retrieval/t2v/R@1"]["chance"] == pytest.approx(1 / n)
    assert r["metrics"]["retrieval/t2v/median_rank"]["chance"] == pytest.approx((n + 1) / 2)
    assert r["metrics"]["zeroshot/colour/top1"]["chance"] >= 0.25  # 4 colours, or the majority label if better
    assert r["metrics"]["zeroshot/colour/top5"] == {**r["metrics"]["zeroshot/colour/top5"], "value": 1.0, "chance": 1.0}
    assert r["captions"] and all(
        c["reference"] and isinstance(c["beam"], str) and isinstance(c["greedy"], str) for c in r["captions"]
    )
    assert any(c["beam"] for c in r["captions"])  # the trained teacher says something


def test_two_ranks_agree_with_one_process(eval_reports):
    one, two = eval_reports["one"], eval_reports["two"]
    assert one["world_size"] == 1 and one["params"] == two["params"] and one["num_clips"] == two["num_clips"]
    assert one["captions"] == two["captions"]
    for name, m in one["metrics"].items():
        assert two["metrics"][name]["value"] == pytest.approx(m["value"], abs=1e-5), name
        assert two["metrics"][name]["chance"] == pytest.approx(m["chance"], abs=1e-9), name


def test_report_from_real_evaluations(eval_reports, tmp_path):
    from videobert_ds.eval.report import write

    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(eval_reports["dir"] / "one.json", demo / "eval_teacher.json")
    (demo / "timings.json").write_text(
        json.dumps(
            {"synth": {"seconds": 3.2, "videos": 48}, "pretrain_teacher": {"seconds": 100.5, "samples_per_s": 60.1}}
        )
    )
    report = write(demo)
    assert report["missing"] == [
        "eval_student.json",
        "eval_student_no_kd.json",
        "eval_untrained.json",
        "eval_finetune_teacher.json",
        "eval_finetune_student.json",
        "eval_finetune_student_no_kd.json",
    ]
    saved = json.loads((demo / "report.json").read_text())
    assert saved["stages"]["pretrain_teacher"] == {"seconds": 100.5, "samples_per_s": 60.1}
    assert set(saved["models"]) == {"teacher"}
    assert set(saved["models"]["teacher"]) == {"params", "clips_per_s", "metrics"}
    md = (demo / "report.md").read_text()
    assert "eval_student.json" in md and "tensorboard --logdir" in md
    for name in METRICS:
        assert f"| {name} |" in md
    assert eval_reports["one"]["captions"][0]["reference"] in md

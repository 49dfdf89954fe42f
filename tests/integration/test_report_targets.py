"""The demo report's targets fail for a randomly initialised teacher: the session's tiny teacher and an untrained copy
of it (its architecture, tokenizer, visual words and clip encoder, random weights: the demo's `untrained` baseline,
made by cli/demo.export_untrained without any training) evaluated for real by videobert-eval on the test split.
The target logic on hand-made numbers: tests/unit/test_report_targets.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def evaluations(tiny_teacher, pipeline_shards, tmp_path_factory) -> dict[str, dict]:
    from videobert_ds.cli.demo import export_untrained
    from videobert_ds.cli.eval import main as eval_main
    from videobert_ds.eval.report import _model_entry

    out = tmp_path_factory.mktemp("targets")
    models = {
        "trained": tiny_teacher / "final",
        "untrained": export_untrained(tiny_teacher / "final", out / "untrained"),
    }
    reports = {}
    for name, model in models.items():
        args = ["--config", "eval_tiny", "--model", str(model), "--shards", str(pipeline_shards), "--split", "test"]
        assert eval_main([*args, "--out", str(out / f"{name}.json")]) == 0
        reports[name] = _model_entry(json.loads((out / f"{name}.json").read_text()), name)
    return {**reports, "dirs": models}


def test_untrained_copy_is_the_teachers_architecture_with_new_weights(evaluations):
    from videobert_ds.model.model_dir import missing_files

    trained, untrained = (Path(evaluations["dirs"][k]) for k in ("trained", "untrained"))
    assert missing_files(untrained) == []  # self-contained: tokenizer, vocabulary, clip encoder copied
    assert json.loads((untrained / "config.json").read_text()) == json.loads((trained / "config.json").read_text())
    a, b = load_file(trained / "model.safetensors"), load_file(untrained / "model.safetensors")
    assert a.keys() == b.keys() and not all(a[k].equal(b[k]) for k in a)
    assert evaluations["untrained"]["params"] == evaluations["trained"]["params"]


def test_a_random_teacher_fails_the_targets(evaluations):
    from videobert_ds.eval.report import check_targets

    trained, rnd = evaluations["trained"], evaluations["untrained"]
    for m in (trained, rnd):
        print({k: round(v["value"], 3) for k, v in m["metrics"].items()})
    # As the teacher, beside its own untrained baseline and a trained model as the no-KD student: every teacher
    # target fails (chance, untrained, the stronger model).
    targets = check_targets({"teacher": rnd, "untrained": rnd, "student_no_kd": trained})
    teacher = [t for t in targets if t.name.startswith("teacher ")]
    assert len(teacher) >= 6, teacher  # 3 zero-shot attributes, t2v R@1, CIDEr, beats student_no_kd
    assert all(t.met is False for t in teacher), [t for t in teacher if t.met is not False]
    # Without the untrained baseline the chance half alone fails each of them.
    assert all(t.met is False for t in check_targets({"teacher": rnd}) if "chance" in t.name)
    # As the student of the trained teacher: below 80 % of it or at chance on most metrics, and not better than a
    # trained no-KD student.
    targets = {t.name: t for t in check_targets({"teacher": trained, "student": rnd, "student_no_kd": trained})}
    assert targets["student beats student_no_kd on most metrics"].met is False
    per_metric = [t for name, t in targets.items() if "of teacher and beats chance" in name]
    assert sum(t.met is False for t in per_metric) > len(per_metric) / 2, per_metric
    # That the targets can be met is shown by the demo and the unit tests, not here: the session's tiny teacher
    # (120 steps on 24 videos, 18 test clips) is itself near chance, and the random model's retrieval ranks vary.

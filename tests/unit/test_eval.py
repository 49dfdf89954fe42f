"""videobert-eval and the demo report: sequence layout, templates, pools, config errors, and the report on
hand-made inputs (the real runs on a tiny trained teacher are in tests/integration/test_eval.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers.cli import eval_cli
from videobert_ds.eval.run import retrieval_pools, sharded
from videobert_ds.inference.scoring import fill_template, label_pieces
from videobert_ds.model.specials import Specials, specials_from_tokenizer
from videobert_ds.objectives.layout import ClipSample, ObjectiveConfig, build_batch, joint_inputs, to_device

SP = Specials(cls=2, sep=3, mask=4, pad=0, video_sep=5, text_vocab_size=40, visual_vocab_size=16, first_regular_text=6)


# ---------------------------------------------------------------------------------------------
# Unit level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption", [False, True])
def test_eval_sequences_match_the_training_layout(caption):
    """joint_inputs (evaluation, generation) builds exactly what pretraining builds for an unmasked joint sample
    (ids, types, mask)."""
    cfg = ObjectiveConfig(
        joint_ratio=1.0,
        text_only_ratio=0.0,
        video_only_ratio=0.0,
        caption_ratio=float(caption),
        align_negative_prob=0.0,
        concat_neighbours_prob=0.0,
        max_subsample_rate=1,
    )
    texts, clips = [[10, 11, 12], [13]], [3, 2]
    samples = [ClipSample(t, num_clips=n, video_id=f"v{i}", segment=0) for i, (t, n) in enumerate(zip(texts, clips))]
    words = torch.tensor([[7, 1, 9], [4, 15, 0]])
    train = to_device(build_batch(samples, 3, SP, cfg, train=False), words, None, SP, torch.device("cpu"))
    ev = joint_inputs(texts, [[7, 1, 9], [4, 15]], SP, caption_mode=caption, max_len=64, device=torch.device("cpu"))
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        torch.testing.assert_close(ev[key], train[key])


def test_joint_inputs_cuts_video_to_fit():
    ev = joint_inputs([[10] * 5], [list(range(10))], SP, caption_mode=False, max_len=12, device=torch.device("cpu"))
    assert ev["input_ids"].shape == (1, 12)  # [CLS] + 5 text + [>] + 4 clips + [SEP]
    with pytest.raises(ValueError, match="does not fit"):
        joint_inputs([[10] * 12], [[1]], SP, caption_mode=False, max_len=12, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    from videobert_ds.data.text import load_tokenizer, train_wordpiece

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    sentences = ["now the red circle moves left", "a blue square goes up", "the green cross slides down"] * 20
    train_wordpiece(iter(sentences), 100, out)
    return load_tokenizer(out)


def test_template_masks_every_piece_of_the_target_slot(wordpiece):
    vocab = specials_from_tokenizer(wordpiece, visual_vocab_size=16)
    pieces = label_pieces(["red", "crosses"], wordpiece)
    assert len(pieces[0]) == 1 and len(pieces[1]) == 2  # a label word of several WordPieces (cross ##es)
    template = "now the {colour} {shape} moves {motion}"
    fill = fill_template(template, "colour", len(pieces[1]), wordpiece, vocab)
    tokens = wordpiece.convert_ids_to_tokens(fill.text_ids)
    n = len(pieces[1])
    assert tokens == ["now", "the", *["[MASK]"] * n, "[MASK]", "moves", "[MASK]"]  # other slots: one [MASK] each
    assert fill.positions == list(range(2, 2 + n))
    with pytest.raises(ValueError, match="no {colour} slot"):
        fill_template("a {shape}", "colour", 1, wordpiece, vocab)


def test_retrieval_pools_are_fixed_and_hold_the_positive_first():
    full = retrieval_pools(5, 0, seed=0)
    assert full.shape == (5, 5) and (full[:, 0] == np.arange(5)).all()
    assert all(sorted(row) == list(range(5)) for row in full.tolist())
    pools = retrieval_pools(30, 8, seed=3)
    assert pools.shape == (30, 8) and (pools[:, 0] == np.arange(30)).all()
    assert all(len(set(row)) == 8 for row in pools.tolist())
    assert (retrieval_pools(30, 8, seed=3) == pools).all() and not (retrieval_pools(30, 8, seed=4) == pools).all()


def test_sharded_keeps_order_and_calls():
    calls = []

    def fn(idx):
        calls.append(list(idx))
        return [i * 10 for i in idx]

    out, seconds = sharded(7, 3, fn)
    assert out == [i * 10 for i in range(7)] and calls == [[0, 1, 2], [3, 4, 5], [6]] and seconds >= 0
    assert sharded(0, 3, fn) == ([], 0.0)


# ---------------------------------------------------------------------------------------------
# Config errors (one line, exit 2, before any work)
# ---------------------------------------------------------------------------------------------


def test_config_errors_are_one_line(tmp_path, prepared_shards):
    proc = eval_cli("--model", str(tmp_path / "nope"), "--shards", str(prepared_shards), "--config", "eval_tiny")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"videobert-eval: error: model.dir: {tmp_path / 'nope'} is not an exported VideoBERT model dir (no config.json)"
    ]
    fake = tmp_path / "model"
    (fake / "clip_encoder").mkdir(parents=True)
    for name in ("config.json", "visual_vocab.safetensors", "clip_encoder/config.json"):
        (fake / name).write_text("{}")
    proc = eval_cli(
        "--model",
        str(fake),
        "--shards",
        str(prepared_shards),
        "--config",
        "eval_tiny",
        "zeroshot.templates.colour=a {shape} moves",
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "zeroshot.templates.colour" in proc.stderr and "no {colour} slot" in proc.stderr
    proc = eval_cli("--model", str(fake), "--shards", str(tmp_path), "--config", "eval_tiny")
    assert proc.returncode == 2 and "data.shards" in proc.stderr


# ---------------------------------------------------------------------------------------------
# The report on hand-made inputs
# ---------------------------------------------------------------------------------------------


def _model(params: int, values: dict[str, tuple[float, float]]) -> dict:
    return {
        "params": params,
        "clips_per_s": 100.0,
        "metrics": {k: {"value": v, "chance": c} for k, (v, c) in values.items()},
        "captions": [{"key": "k0", "reference": "a red circle moves left", "beam": "a red circle", "greedy": "a red"}],
    }


def test_report_targets(tmp_path):
    from videobert_ds.eval.report import main

    teacher = _model(
        1000,
        {
            "zeroshot/colour/top1": (0.6, 0.25),
            "zeroshot/shape/top1": (0.4, 0.25),
            "retrieval/t2v/R@1": (0.3, 0.05),
            "retrieval/t2v/median_rank": (2.0, 10.5),
            "caption/BLEU-4": (0.2, 0.05),
        },
    )
    student = _model(
        200,
        {
            "zeroshot/colour/top1": (0.5, 0.25),
            "zeroshot/shape/top1": (0.3, 0.25),
            "retrieval/t2v/R@1": (0.25, 0.05),
            "retrieval/t2v/median_rank": (2.4, 10.5),
            "caption/BLEU-4": (0.2, 0.05),
        },
    )
    (tmp_path / "eval_teacher.json").write_text(json.dumps(teacher))
    (tmp_path / "eval_student.json").write_text(json.dumps(student))
    tuned = _model(
        1000,
        {
            "finetune/classification/colour/top1": (0.9, 0.25),
            "finetune/qa/accuracy": (0.5, 0.25),
            "finetune/caption/BLEU-4": (0.3, 0.05),
            "caption/BLEU-4": (0.3, 0.05),
            "finetune/retrieval/t2v/R@1": (0.7, 0.05),
        },
    )
    (tmp_path / "eval_finetune_teacher.json").write_text(json.dumps(tuned))
    (tmp_path / "timings.json").write_text(
        json.dumps(
            {
                "prepare": {"seconds": 1.0, "splits": {"train": 3}},
                "build_vocab": {"seconds": 2.0, "nmi": {"shape": {"nmi": 0.1, "nmi_shuffled": 0.06}}},
            }
        )
    )
    assert main(["--demo-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    met = {t["target"]: t["met"] for t in report["targets"]}
    # no untrained evaluation here: a target that holds against chance is "not checked"
    assert met["teacher zeroshot/colour/top1 >= 2x chance and > untrained"] is None
    assert met["teacher zeroshot/shape/top1 >= 2x chance and > untrained"] is False  # 0.4 < 0.5
    assert met["teacher retrieval/t2v/R@1 >= 5x chance and > untrained"] is None
    assert met["student params <= 0.25x teacher"] is True
    assert met["student zeroshot/colour/top1 >= 80% of teacher and beats chance"] is True  # 0.5 / 0.6
    assert met["student zeroshot/shape/top1 >= 80% of teacher and beats chance"] is False  # 0.3 / 0.4
    # 2.4 <= 2.0 / 0.8, lower is better
    assert met["student retrieval/t2v/median_rank >= 80% of teacher and beats chance"] is True
    md = (tmp_path / "report.md").read_text()
    assert "**NOT MET**: teacher zeroshot/shape/top1" in md and "target(s) not met" in md
    assert "NMI(visual word; attribute) over the training clips: shape 0.10 (shuffled 0.06)" in md
    # the fine-tuned teacher's metrics, beside zero-shot (classification) and before fine-tuning (captions)
    tm = report["models"]["teacher"]["metrics"]
    assert tm["finetune/classification/colour/top1"] == {"value": 0.9, "chance": 0.25, "zeroshot": 0.6}
    assert tm["finetune/caption/BLEU-4"] == {"value": 0.3, "chance": 0.05, "before": 0.2}
    assert tm["finetune/qa/accuracy"] == {"value": 0.5, "chance": 0.25}
    assert tm["finetune/retrieval/t2v/R@1"] == {"value": 0.7, "chance": 0.05, "before": 0.3}
    assert report["missing"] == [
        "eval_student_no_kd.json",
        "eval_untrained.json",
        "eval_finetune_student.json",
        "eval_finetune_student_no_kd.json",
    ]
    assert "## Downstream (fine-tuned)" in md and "| classification/colour/top1 | 0.900 | 0.600 |" in md


def test_report_without_inputs_says_what_is_missing(tmp_path, capsys):
    from videobert_ds.eval.report import main

    assert main(["--demo-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["missing"] == [
        "timings.json",
        "eval_teacher.json",
        "eval_student.json",
        "eval_student_no_kd.json",
        "eval_untrained.json",
        "eval_finetune_teacher.json",
        "eval_finetune_student.json",
        "eval_finetune_student_no_kd.json",
    ]
    assert report["stages"] == {} and report["models"] == {}
    assert "Missing inputs" in (tmp_path / "report.md").read_text()
    assert main(["--demo-dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"report: error: no demo dir at {tmp_path / 'nope'}"

"""videobert-eval and the demo report: sequence layout, templates, pools, config errors, and real runs of
the evaluation on a tiny trained teacher (2 ranks under the deepspeed launcher with ZeRO-3, and 1 process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.distributed import free_port, launch_env
from videobert_ds.eval.run import retrieval_pools, sharded
from videobert_ds.objectives.pretraining import ClipSample, ObjectiveConfig, Specials, build_batch, to_device
from videobert_ds.inference.scoring import Vocab, fill_template, joint_batch, label_pieces

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
EVAL = Path(sys.executable).parent / "videobert-eval"
SP = Specials(cls=2, sep=3, mask=4, pad=0, video_sep=5, text_vocab_size=40, visual_vocab_size=16, first_regular_text=6)
VOCAB = Vocab(cls=2, sep=3, mask=4, pad=0, video_sep=5, text_vocab_size=40)
ATTRS = ("colour", "shape", "motion")
METRICS = (
    [f"zeroshot/{a}/top{k}" for a in ATTRS for k in (1, 5)]
    + [f"retrieval/{d}/R@{k}" for d in ("t2v", "v2t") for k in (1, 5, 10)]
    + [f"retrieval/{d}/median_rank" for d in ("t2v", "v2t")]
    + [f"caption/{m}" for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")]
)


# ---------------------------------------------------------------------------------------------
# Unit level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption", [False, True])
def test_eval_sequences_match_the_training_layout(caption):
    """joint_batch builds exactly what pretraining builds for an unmasked joint sample (ids, types, mask)."""
    cfg = ObjectiveConfig(joint_ratio=1.0, text_only_ratio=0.0, video_only_ratio=0.0, caption_ratio=float(caption),
                          align_negative_prob=0.0, concat_neighbours_prob=0.0, max_subsample_rate=1)
    texts, clips = [[10, 11, 12], [13]], [3, 2]
    samples = [ClipSample(t, num_clips=n, video_id=f"v{i}", segment=0) for i, (t, n) in enumerate(zip(texts, clips))]
    words = torch.tensor([[7, 1, 9], [4, 15, 0]])
    train = to_device(build_batch(samples, 3, SP, cfg, train=False), words, None, SP, torch.device("cpu"))
    ev = joint_batch(texts, [[7, 1, 9], [4, 15]], VOCAB, caption_mode=caption, max_len=64, device=torch.device("cpu"))
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        torch.testing.assert_close(ev[key], train[key])


def test_joint_batch_cuts_video_to_fit():
    ev = joint_batch([[10] * 5], [list(range(10))], VOCAB, caption_mode=False, max_len=12, device=torch.device("cpu"))
    assert ev["input_ids"].shape == (1, 12)  # [CLS] + 5 text + [>] + 4 clips + [SEP]
    with pytest.raises(ValueError, match="does not fit"):
        joint_batch([[10] * 12], [[1]], VOCAB, caption_mode=False, max_len=12, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    from videobert_ds.data.text import load_tokenizer, train_wordpiece

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    sentences = ["now the red circle moves left", "a blue square goes up", "the green cross slides down"] * 20
    train_wordpiece(iter(sentences), 100, out)
    return load_tokenizer(out)


def test_template_masks_every_piece_of_the_target_slot(wordpiece):
    vocab = Vocab(cls=wordpiece.cls_token_id, sep=wordpiece.sep_token_id, mask=wordpiece.mask_token_id,
                  pad=wordpiece.pad_token_id, video_sep=wordpiece.convert_tokens_to_ids("[>]"),
                  text_vocab_size=len(wordpiece))
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


def _eval_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(EVAL), *args], cwd=REPO, capture_output=True, text=True, env=launch_env(), **kw)


def test_config_errors_are_one_line(tmp_path, prepared_shards):
    proc = _eval_cli("--model", str(tmp_path / "nope"), "--shards", str(prepared_shards), "--config", "eval_tiny")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"videobert-eval: error: model.dir: {tmp_path / 'nope'} is not an exported VideoBERT model dir (no config.json)"]
    fake = tmp_path / "model"
    (fake / "clip_encoder").mkdir(parents=True)
    for name in ("config.json", "visual_vocab.safetensors", "clip_encoder/config.json"):
        (fake / name).write_text("{}")
    proc = _eval_cli("--model", str(fake), "--shards", str(prepared_shards), "--config", "eval_tiny",
                     "zeroshot.templates.colour=a {shape} moves")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "zeroshot.templates.colour" in proc.stderr and "no {colour} slot" in proc.stderr
    proc = _eval_cli("--model", str(fake), "--shards", str(tmp_path), "--config", "eval_tiny")
    assert proc.returncode == 2 and "data.shards" in proc.stderr


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
        [str(DEEPSPEED), "--num_gpus", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(REPO / "videobert_ds" / "evaluate.py"), *common, "--out", str(out / "two.json"), "--zero3"],
        cwd=REPO, capture_output=True, text=True, env=launch_env(), timeout=900)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = _eval_cli(*common, "--out", str(out / "one.json"), timeout=900)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    return {"two": json.loads((out / "two.json").read_text()), "one": json.loads((out / "one.json").read_text()),
            "dir": out}


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
    assert r["captions"] and all(c["reference"] and isinstance(c["beam"], str) and isinstance(c["greedy"], str)
                                 for c in r["captions"])
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
    (demo / "timings.json").write_text(json.dumps({"synth": {"seconds": 3.2, "videos": 48},
                                                   "pretrain_teacher": {"seconds": 100.5, "samples_per_s": 60.1}}))
    report = write(demo)
    assert report["missing"] == ["eval_student.json", "eval_finetune_teacher.json", "eval_finetune_student.json"]
    saved = json.loads((demo / "report.json").read_text())
    assert saved["stages"]["pretrain_teacher"] == {"seconds": 100.5, "samples_per_s": 60.1}
    assert set(saved["models"]) == {"teacher"}
    assert set(saved["models"]["teacher"]) == {"params", "clips_per_s", "metrics"}
    md = (demo / "report.md").read_text()
    assert "eval_student.json" in md and "tensorboard --logdir" in md
    for name in METRICS:
        assert f"| {name} |" in md
    assert eval_reports["one"]["captions"][0]["reference"] in md


# ---------------------------------------------------------------------------------------------
# The report on hand-made inputs
# ---------------------------------------------------------------------------------------------


def _model(params: int, values: dict[str, tuple[float, float]]) -> dict:
    return {"params": params, "clips_per_s": 100.0,
            "metrics": {k: {"value": v, "chance": c} for k, (v, c) in values.items()},
            "captions": [{"key": "k0", "reference": "a red circle moves left", "beam": "a red circle", "greedy": "a red"}]}


def test_report_targets(tmp_path):
    from videobert_ds.eval.report import main

    teacher = _model(1000, {"zeroshot/colour/top1": (0.6, 0.25), "zeroshot/shape/top1": (0.4, 0.25),
                            "retrieval/t2v/R@1": (0.3, 0.05), "retrieval/t2v/median_rank": (2.0, 10.5),
                            "caption/BLEU-4": (0.2, 0.05)})
    student = _model(200, {"zeroshot/colour/top1": (0.5, 0.25), "zeroshot/shape/top1": (0.3, 0.25),
                           "retrieval/t2v/R@1": (0.25, 0.05), "retrieval/t2v/median_rank": (2.4, 10.5),
                           "caption/BLEU-4": (0.2, 0.05)})
    (tmp_path / "eval_teacher.json").write_text(json.dumps(teacher))
    (tmp_path / "eval_student.json").write_text(json.dumps(student))
    tuned = _model(1000, {"finetune/classification/colour/top1": (0.9, 0.25), "finetune/qa/accuracy": (0.5, 0.25),
                          "finetune/caption/BLEU-4": (0.3, 0.05), "caption/BLEU-4": (0.3, 0.05),
                          "finetune/retrieval/t2v/R@1": (0.7, 0.05)})
    (tmp_path / "eval_finetune_teacher.json").write_text(json.dumps(tuned))
    (tmp_path / "timings.json").write_text(json.dumps({
        "prepare": {"seconds": 1.0, "splits": {"train": 3}},
        "build_vocab": {"seconds": 2.0, "nmi": {"shape": {"nmi": 0.1, "nmi_shuffled": 0.06}}}}))
    assert main(["--demo-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    met = {t["target"]: t["met"] for t in report["targets"]}
    assert met["teacher zeroshot/colour/top1 >= 2x chance"] is True
    assert met["teacher zeroshot/shape/top1 >= 2x chance"] is False  # 0.4 < 0.5
    assert met["teacher retrieval/t2v/R@1 >= 5x chance"] is True
    assert met["student params <= 0.25x teacher"] is True
    assert met["student zeroshot/colour/top1 >= 80% of teacher"] is True  # 0.5 / 0.6
    assert met["student zeroshot/shape/top1 >= 80% of teacher"] is False  # 0.3 / 0.4
    assert met["student retrieval/t2v/median_rank >= 80% of teacher"] is True  # 2.4 <= 2.0 / 0.8, lower is better
    md = (tmp_path / "report.md").read_text()
    assert "**NOT MET**: teacher zeroshot/shape/top1" in md and "target(s) not met" in md
    assert "NMI(visual word; attribute) over the training clips: shape 0.10 (shuffled 0.06)" in md
    # the fine-tuned teacher's metrics, beside zero-shot (classification) and before fine-tuning (captions)
    tm = report["models"]["teacher"]["metrics"]
    assert tm["finetune/classification/colour/top1"] == {"value": 0.9, "chance": 0.25, "zeroshot": 0.6}
    assert tm["finetune/caption/BLEU-4"] == {"value": 0.3, "chance": 0.05, "before": 0.2}
    assert tm["finetune/qa/accuracy"] == {"value": 0.5, "chance": 0.25}
    assert tm["finetune/retrieval/t2v/R@1"] == {"value": 0.7, "chance": 0.05, "before": 0.3}
    assert report["missing"] == ["eval_finetune_student.json"]
    assert "## Downstream (fine-tuned)" in md and "| classification/colour/top1 | 0.900 | 0.600 |" in md


def test_report_without_inputs_says_what_is_missing(tmp_path, capsys):
    from videobert_ds.eval.report import main

    assert main(["--demo-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["missing"] == ["timings.json", "eval_teacher.json", "eval_student.json", "eval_finetune_teacher.json",
                                 "eval_finetune_student.json"]
    assert report["stages"] == {} and report["models"] == {}
    assert "Missing inputs" in (tmp_path / "report.md").read_text()
    assert main(["--demo-dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"report: error: no demo dir at {tmp_path / 'nope'}"

"""Fine-tuning in one process: the task batch, every head in every backward, and where label sets come from
(the real 2-rank run is in tests/integration/test_finetune.py)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.tiny import SP, tiny_config
from videobert_ds.objectives.finetuning import (
    TASKS,
    FinetuneObjective,
    TaskConfig,
    TaskSample,
    build_task_batch,
    task_tensors,
)
from videobert_ds.objectives.layout import IGNORE, to_device

LABELS = {"colour": {"red": 0, "blue": 1}, "motion": {"left": 0, "right": 1, "up": 2}}


class WordTokenizer:
    """Whitespace words -> fixed ids (a tokenizer's call signature, for the unit tests)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.ids.setdefault(w, 10 + len(self.ids)) for w in text.split()]}


def _samples() -> list[TaskSample]:
    qa = {"question": "what colour", "choices": ["red", "dark blue", "green"], "answer": 1}
    return [
        TaskSample([20, 21], 2, "v0", {"colour": "red", "motion": "up"}, qa),
        TaskSample([22], 3, "v0", {"colour": "purple"}, None),  # a label outside the label set
        TaskSample([23, 24, 25], 1, "v1", {}, None),
        TaskSample([], 2, "v2", {"motion": "left"}, None),  # no text: no caption, no retrieval
    ]


def test_task_batch_rows_and_targets():
    tok = WordTokenizer()
    tb = build_task_batch(_samples(), 3, SP, TaskConfig(), LABELS, tok)
    host = tb.host
    # classification: samples 0 and 3 (sample 1's colour is outside the label set, sample 2 has no labels)
    assert tb.cls_rows.tolist() == [0, 1]
    assert tb.cls_targets["colour"].tolist() == [0, IGNORE] and tb.cls_targets["motion"].tolist() == [2, 0]
    assert host.input_ids[0, :2].tolist() == [SP.cls, SP.video_sep]  # video-only input
    # captions for the three samples with text, in sequence-to-sequence mode, labelled with the next token
    caption_rows = [2, 3, 4]
    assert host.caption_mode[caption_rows].all() and not host.caption_mode[:2].any()
    assert host.caption_labels[2, :3].tolist() == [20, 21, SP.video_sep]
    # QA: one row per choice; the slot holds as many [MASK]s as the choice has pieces
    assert tb.qa_rows.tolist() == [5, 6, 7] and tb.qa_answers.tolist() == [1]
    assert tb.qa_choices.tolist() == [[0, 1, 2]]
    for r, row in enumerate(tb.qa_rows.tolist()):
        n = int((tb.qa_pieces[r] != IGNORE).sum())
        assert n == (2 if r == 1 else 1)
        assert (host.input_ids[row, tb.qa_slots[r, :n]] == SP.mask).all()
    # retrieval: all pairs of the 3 captioned samples after the main rows; text 0 and 1 share video v0
    assert tb.num_main == 8 and tb.num_candidates == 3 and host.input_ids.shape[0] == 8 + 9
    assert tb.same_video.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    pair = 8 + 0 * 3 + 2  # text of sample 0 with the video of sample 2 (one clip)
    assert host.input_ids[pair, 1:3].tolist() == [20, 21] and (host.video_src[pair] >= 0).sum() == 1
    assert tb.counts["qa"] == 1 and tb.counts["caption"] == 3


def test_a_batch_without_labels_or_questions_still_lays_out_rows():
    tb = build_task_batch([TaskSample([], 2, "v0", {}, None)], 2, SP, TaskConfig(), LABELS, WordTokenizer())
    assert tb.num_main == 1 and tb.num_candidates == 0 and tb.host.input_ids.shape[0] == 2
    assert tb.qa_choices.shape[0] == 0 and tb.cls_rows.numel() == 0


def _tiny_model():
    from videobert_ds.model.finetuning import VideoBertForFinetuning

    config = tiny_config()
    config.finetune_label_sets = {k: list(v) for k, v in LABELS.items()}
    torch.manual_seed(0)
    return VideoBertForFinetuning(config)


def _inputs(samples: list[TaskSample]) -> dict:
    tb = build_task_batch(samples, 3, SP, TaskConfig(), LABELS, WordTokenizer())
    words = torch.randint(0, 16, (len(samples), 3))
    inputs = to_device(tb.host, words, None, SP, torch.device("cpu"))
    inputs.update(task=task_tensors(tb, torch.device("cpu")), num_main=tb.num_main, num_candidates=tb.num_candidates)
    return inputs


@pytest.mark.parametrize("samples", [_samples(), [TaskSample([], 2, "v0", {}, None)]], ids=["full", "empty"])
def test_every_head_is_in_every_backward(samples):
    """ZeRO-3 reduces gradients parameter by parameter: a head left out of one rank's backward hangs the others.
    Even a batch with no labels, questions or captions gives every parameter a (possibly zero) gradient."""
    model = _tiny_model()
    out = FinetuneObjective(model, TaskConfig())(_inputs(samples))
    assert set(TASKS) <= set(out) and torch.isfinite(out["loss"])
    assert not model.feature_head[0].weight.requires_grad  # pretraining's clip-feature head: frozen
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    if len(samples) > 1:  # the full batch moves every task head
        assert model.label_heads["colour"].weight.grad.abs().sum() > 0
        assert model.alignment.weight.grad.abs().sum() > 0


def test_label_sets_come_from_the_manifest_or_else_the_samples(prepared_shards, tmp_path):
    """videobert-prepare records each split's label values in manifest.json; shards prepared before it did
    are read sample by sample, with the same result."""
    import shutil

    from videobert_ds.stages.finetune import discover_label_sets

    recorded = discover_label_sets(prepared_shards, "train", [])
    assert set(recorded) == {"colour", "shape", "motion"} and all(len(v) >= 2 for v in recorded.values())
    older = tmp_path / "older"
    shutil.copytree(prepared_shards, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["labels"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert discover_label_sets(older, "train", []) == recorded
    assert discover_label_sets(older, "train", ["motion"]) == {"motion": recorded["motion"]}

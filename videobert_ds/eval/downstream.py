"""Downstream metrics of a fine-tuned model (the `finetune` stage's heads), each beside its chance level.

  finetune/classification/<label set>/top1   the label head on `[CLS] [>] video [SEP]` (or with the text, as
                                             trained); chance = max(uniform, the most frequent training label)
  finetune/qa/accuracy                       the candidate whose WordPieces the masked-word head rates most
                                             likely at the answer slot after the question; chance = 1 / choices
  finetune/caption/<metric>                  the captioning metrics of the fine-tuned model; chance = a constant
                                             caption (the report adds the pretrained model's value as `before`)
  finetune/retrieval/<t2v|v2t>/<R@k|median_rank>
                                             the fine-tuned alignment head's retrieval; chance = random ranking
                                             (the report adds the pretrained model's value as `before`)

Work is split across ranks with `sharding.sharded` (equal forward calls on every rank, ZeRO-3-safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from videobert_ds.core.distributed import sharded
from videobert_ds.eval.items import EvalItem
from videobert_ds.eval.metrics import majority_topk_accuracy, topk_chance
from videobert_ds.inference.scoring import FilledTemplate, score, template_scores
from videobert_ds.model.specials import Specials
from videobert_ds.objectives.layout import joint_inputs


def finetuned_label_sets(config: Any) -> dict[str, list[str]]:
    return dict(getattr(config, "finetune_label_sets", None) or {})


def label_logits(
    heads: Any,
    items: Sequence[EvalItem],
    with_text: bool,
    vocab: Specials,
    max_len: int,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """(items, sum of label-set sizes): every label head's logits on each item's video (and text)."""

    def fn(idx: list[int]) -> list[list[float]]:
        texts = [items[i].text_ids if with_text else [] for i in idx]
        batch = joint_inputs(
            texts, [items[i].visual_ids for i in idx], vocab, caption_mode=False, max_len=max_len, device=device
        )
        _, _, logits = score(heads, batch, torch.zeros((len(idx), 1), dtype=torch.long, device=device))
        return logits.tolist()

    rows, _ = sharded(len(items), batch_size, fn)
    return np.asarray(rows, dtype=np.float64)


def classification_metrics(
    items: Sequence[EvalItem], logits: np.ndarray, label_sets: dict[str, list[str]], baseline_meta: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    start = 0
    for name, labels in label_sets.items():
        cols = logits[:, start : start + len(labels)]
        start += len(labels)
        keep = [i for i, it in enumerate(items) if it.labels.get(name) in labels]
        if not keep:
            continue
        truth = [items[i].labels[name] for i in keep]
        predicted = [labels[int(j)] for j in cols[keep].argmax(1)]
        train = [
            str(m["labels"][name]) for m in baseline_meta if isinstance(m.get("labels"), dict) and name in m["labels"]
        ]
        uniform, majority = (
            topk_chance(len(labels), 1),
            (majority_topk_accuracy(train, truth, labels, 1) if train else 0.0),
        )
        out[f"finetune/classification/{name}/top1"] = {
            "value": float(np.mean([p == t for p, t in zip(predicted, truth)])),
            "chance": max(uniform, majority),
            "n": len(keep),
            "baseline": "the most frequent training label"
            if majority > uniform
            else f"uniform over {len(labels)} labels",
        }
    return out


def qa_rows(
    items: Sequence[EvalItem], tokenizer: Any, vocab: Specials, max_text_tokens: int
) -> list[tuple[int, int, FilledTemplate, list[int]]]:
    """(item, choice, question + [MASK] slot, the choice's pieces) for every candidate answer."""
    rows = []
    for i, it in enumerate(items):
        if not it.qa or not it.visual_ids:
            continue
        question = tokenizer(it.qa["question"], add_special_tokens=False)["input_ids"]
        pieces = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in it.qa["choices"]]
        if any(not p for p in pieces):
            continue
        question = question[: max(max_text_tokens - max(len(p) for p in pieces), 0)]
        for c, p in enumerate(pieces):
            fill = FilledTemplate(question + [vocab.mask] * len(p), list(range(len(question), len(question) + len(p))))
            rows.append((i, c, fill, p))
    return rows


def qa_metrics(
    heads: Any,
    items: Sequence[EvalItem],
    tokenizer: Any,
    vocab: Specials,
    max_len: int,
    max_text_tokens: int,
    device: torch.device,
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    rows = qa_rows(items, tokenizer, vocab, max_text_tokens)
    if not rows:
        return {}

    def fn(idx: list[int]) -> list[float]:
        picked = [rows[i] for i in idx]
        scores = template_scores(
            heads,
            [f for _, _, f, _ in picked],
            [items[i].visual_ids for i, _, _, _ in picked],
            [[p] for _, _, _, p in picked],
            vocab,
            max_len=max_len,
            device=device,
        )
        return [s[0] for s in scores]

    values, _ = sharded(len(rows), batch_size, fn)
    best: dict[int, tuple[float, int]] = {}
    for (i, c, _, _), v in zip(rows, values):
        if i not in best or v > best[i][0]:
            best[i] = (v, c)
    correct = [best[i][1] == int(items[i].qa["answer"]) for i in best]
    chance = float(np.mean([1.0 / len(items[i].qa["choices"]) for i in best]))
    return {
        "finetune/qa/accuracy": {
            "value": float(np.mean(correct)),
            "chance": chance,
            "n": len(best),
            "baseline": "a random choice",
        }
    }


def as_finetuned(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fine-tuned model's captioning (reported decoder) and retrieval metrics, also under finetune/ (the
    report pairs them with the pretrained model's)."""
    return {
        f"finetune/{k}": dict(v)
        for k, v in metrics.items()
        if (k.startswith("caption/") and k.count("/") == 1) or k.startswith("retrieval/")
    }

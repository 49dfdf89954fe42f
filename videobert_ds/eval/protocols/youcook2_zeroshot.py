"""youcook2-zeroshot: VideoBERT's zero-shot action classification (Sun et al. 2019, section 4.2) on YouCook2's
validation segments.

Each segment's video is given with the template "now let me show you how to [MASK] the [MASK]"; the masked-word head
fills the slots. The truth is the verb and the object of the segment's reference sentence, found by the rule in
verb_object.py. Scoring reuses eval/run.py's template filling (inference/scoring.py: fill_template,
template_scores, label_pieces): the verb slot is scored with the object slot masked as one [MASK], and the object
slot with the verb slot masked as one [MASK] (both masked, as in VideoBERT); a label of several WordPieces takes as
many [MASK]s and scores the mean log-probability of its pieces, all masked at once.

Label sets: the TOP_N most frequent verbs (objects) of the evaluated split's references, ties in alphabetical order;
a segment whose verb (object) is not among them is skipped for that attribute ("not_in_labels"), as are sentences
where the rule finds none ("no_verb", "no_object"). Chance: the better of a random ranking of the labels and always
answering the k most frequent labels of the training split (of the evaluated split when the shards hold no
training split), as eval/run.py reports it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from videobert_ds.core.distributed import rank_world
from videobert_ds.data.splits import split_meta
from videobert_ds.eval.config import EvalStageConfig, ZeroShotSection
from videobert_ds.eval.items import EvalItem
from videobert_ds.eval.protocols.common import has_split, load, report
from videobert_ds.eval.protocols.verb_object import verb_object
from videobert_ds.eval.run import zeroshot_metrics, zeroshot_scores

NAME = "youcook2-zeroshot"
TEMPLATE = "now let me show you how to {verb} the {object}"
ATTRS = ("verb", "object")
TOP_N = 100


def label_set(values: list[str], top_n: int = TOP_N) -> list[str]:
    """The top_n most frequent values, most frequent first, ties alphabetical."""
    counts = Counter(values)
    return sorted(counts, key=lambda w: (-counts[w], w))[:top_n]


def sentence_labels(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(attribute -> label, attribute -> why it has none) for one reference sentence."""
    vo = verb_object(text)
    labels, reasons = {}, {}
    for attr, value, reason in (("verb", vo.verb, vo.verb_reason), ("object", vo.object, vo.object_reason)):
        if value is None:
            reasons[attr] = reason or f"no_{attr}"
        else:
            labels[attr] = value
    return labels, reasons


def run(cfg: EvalStageConfig, device: torch.device, split_file: Path | None = None) -> dict[str, Any] | None:
    loaded = load(cfg, device)
    skipped: dict[str, Counter] = {attr: Counter() for attr in ATTRS}
    labelled: list[EvalItem] = []
    for it in loaded.items:
        reason = "no_video" if not it.visual_ids else "no_text" if not it.text.strip() else None
        if reason:
            for attr in ATTRS:
                skipped[attr][reason] += 1
            continue
        labels, reasons = sentence_labels(it.text)
        for attr, why in reasons.items():
            skipped[attr][why] += 1
        labelled.append(dataclasses.replace(it, labels=labels))
    label_sets = {attr: label_set([it.labels[attr] for it in labelled if attr in it.labels]) for attr in ATTRS}

    # Every rank holds the same items and label sets, so every rank makes the same forward calls (ZeRO-3).
    scored: dict[str, tuple[list[EvalItem], dict[str, list[list[float]]], EvalStageConfig]] = {}
    for attr in ATTRS:
        labels = label_sets[attr]
        with_label = [it for it in labelled if attr in it.labels]
        sub = [it for it in with_label if it.labels[attr] in labels]
        if len(with_label) > len(sub):
            skipped[attr]["not_in_labels"] += len(with_label) - len(sub)
        if len(labels) < 2:  # nothing to choose between: the attribute is left out, its segments counted
            skipped[attr]["fewer_than_2_labels"] += len(sub)
            continue
        acfg = dataclasses.replace(cfg, zeroshot=ZeroShotSection({attr: TEMPLATE}, {attr: labels}))
        scored[attr] = (sub, zeroshot_scores(loaded.ctx._replace(cfg=acfg), sub), acfg)
    if rank_world()[0] != 0:
        return None

    baseline = cfg.eval.baseline_split if has_split(cfg.data.shards, cfg.eval.baseline_split) else cfg.eval.split
    baseline_meta = [
        {"labels": sentence_labels(str(m.get("text", "")))[0]}
        for m in split_meta(cfg.data.shards, baseline)
        if str(m.get("text", "")).strip()
    ]
    metrics: dict[str, dict[str, Any]] = {}
    examples: dict[str, dict[str, Any]] = {}
    for attr, (sub, scores, acfg) in scored.items():
        acfg = dataclasses.replace(acfg, eval=dataclasses.replace(acfg.eval, baseline_split=baseline))
        metrics.update(zeroshot_metrics(sub, scores, acfg, baseline_meta))
        labels = label_sets[attr]
        for it, row in list(zip(sub, scores[attr]))[: cfg.eval.num_samples]:
            ex = examples.setdefault(it.key, {"key": it.key, "reference": it.text, **it.labels})
            ex[f"predicted_{attr}"] = labels[max(range(len(labels)), key=row.__getitem__)]
    return report(
        NAME,
        cfg,
        loaded,
        num_items=len(labelled),
        skipped={attr: dict(sorted(c.items())) for attr, c in skipped.items()},
        metrics=metrics,
        template=TEMPLATE.format(verb="[MASK]", object="[MASK]"),
        labels=label_sets,
        label_source=f"the {TOP_N} most frequent of the {cfg.eval.split} split's references",
        baseline_split=baseline,
        rule="videobert_ds/eval/protocols/verb_object.py",
        examples=list(examples.values()),
    )

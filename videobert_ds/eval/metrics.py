"""Evaluation metrics and their chance levels: classification accuracy, retrieval ranks, caption scores.

Accuracy and ranks are a few lines of tensor arithmetic; the captioning metrics (BLEU-4, METEOR,
ROUGE-L, CIDEr) come from `pycocoevalcap`, the MS-COCO caption evaluation code that captioning papers
(VideoBERT's YouCook II numbers included) report with. Its METEOR and its PTB tokenizer run Java; without
a Java runtime METEOR is left out (with a warning) and the others are computed on Python-tokenized text.

Ties in retrieval scores are broken at random *in expectation*: a query whose true candidate ties with
`e` others and is beaten by `g` has an expected rank of g + 1 + e/2 and a probability
clamp((k - g) / (e + 1), 0, 1) of landing in the top k. So a constant scorer gets exactly the
random-ranking chance levels (R@k = k/N), never a lucky R@1 = 1.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)
CAPTION_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose label is among the k highest scores; scores (N, C), labels (N,) class indices.
    Ties count against the label (a constant scorer is not right by luck)."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"need scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no rows to score")
    true = scores.gather(1, labels[:, None].long())
    better_or_tied = (scores >= true).sum(1) - 1  # other classes at or above the label's score
    return float((better_or_tied < k).float().mean())


def topk_chance(num_classes: int, k: int) -> float:
    """Top-k accuracy of a uniformly random ranking of the classes."""
    if num_classes < 1:
        raise ValueError("need at least one class")
    return min(k, num_classes) / num_classes


def majority_topk_accuracy(
    train_labels: Sequence[str], test_labels: Sequence[str], classes: Sequence[str], k: int
) -> float:
    """Top-k accuracy on the test labels of always predicting the k most frequent training labels
    (ties between equally frequent labels broken by the class order)."""
    if not test_labels:
        raise ValueError("no test labels")
    counts = Counter(train_labels)
    ranked = sorted(classes, key=lambda c: (-counts[c], list(classes).index(c)))[:k]
    return sum(label in ranked for label in test_labels) / len(test_labels)


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------


def _tie_stats(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: (candidates scoring above the positive, other candidates tied with it)."""
    if scores.ndim != 2 or positive.shape != scores.shape[:1]:
        raise ValueError(f"need scores (Q, C) and positive (Q,), got {tuple(scores.shape)} and {tuple(positive.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no queries to rank")
    pos = scores.gather(1, positive[:, None].long())
    greater = (scores > pos).sum(1).float()
    tied = (scores == pos).sum(1).float() - 1
    return greater, tied


def expected_ranks(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's positive candidate (column `positive[q]` of row q), ties averaged."""
    greater, tied = _tie_stats(scores, positive)
    return greater + 1 + tied / 2


def recall_at_k(scores: torch.Tensor, positive: torch.Tensor, k: int) -> float:
    """Expected share of queries whose positive candidate is in the top k (random tie-breaking)."""
    greater, tied = _tie_stats(scores, positive)
    return float(((k - greater) / (tied + 1)).clamp(0, 1).mean())


def median_rank(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Median over queries of the positive's (expected) rank; lower is better."""
    return float(torch.quantile(expected_ranks(scores, positive), 0.5))


def recall_chance(pool_size: int, k: int) -> float:
    """R@k of a random ranking of `pool_size` candidates."""
    return min(k, pool_size) / pool_size


def median_rank_chance(pool_size: int) -> float:
    """Expected median rank of a random ranking of `pool_size` candidates."""
    return (pool_size + 1) / 2


# ---------------------------------------------------------------------------------------------
# Captioning (pycocoevalcap)
# ---------------------------------------------------------------------------------------------


def have_java() -> bool:
    return shutil.which("java") is not None


def _python_tokenize(captions: Mapping[Any, list[dict[str, str]]]) -> dict[Any, list[str]]:
    """Without Java: the COCO pipeline's normalisation in Python (lower-case, punctuation split off and
    dropped with coco-caption's own punctuation list). Same tokens as the PTB tokenizer on plain captions."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    out = {}
    for key, caps in captions.items():
        out[key] = [
            " ".join(w for w in re.findall(r"[\w']+|[^\w\s]", c["caption"].lower()) if w not in PUNCTUATIONS)
            for c in caps
        ]
    return out


def _clean(text: str) -> str:
    # METEOR's stdio protocol splits on "|||" and newlines; neither belongs in a caption.
    return " ".join(text.replace("|||", " ").split())


def caption_scores(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> dict[str, float]:
    """Corpus BLEU-4, METEOR, ROUGE-L and CIDEr of one hypothesis per id against its references
    (see caption_scores_many)."""
    return caption_scores_many(references, {"system": hypotheses})["system"]


def caption_scores_many(
    references: Mapping[str, Sequence[str]], systems: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, float]]:
    """For each system (name -> {id: hypothesis}): corpus BLEU-4, METEOR, ROUGE-L and CIDEr (CIDEr-D as in
    coco-caption) against the references, with the COCO pipeline (PTB tokenization, lower-casing,
    punctuation removed). One tokenizer run and one METEOR process serve all systems.
    Scores are in the package's native scale: 0-1 for BLEU/METEOR/ROUGE-L (papers often print x100),
    CIDEr unbounded (IDF over this set's references)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not references:
        raise ValueError("no captions to score")
    if any(len(refs) == 0 for refs in references.values()):
        raise ValueError("every id needs at least one reference caption")
    for name, hyps in systems.items():
        if set(hyps) != set(references):
            raise ValueError(f"hypotheses of {name!r} and the references must have the same ids")
    java = have_java()
    if not java:
        log.warning(
            "no java on PATH: METEOR is left out and captions are tokenized in Python, not by the PTB "
            "tokenizer (apt-get install default-jre-headless for the full COCO pipeline)"
        )
    ids = sorted(references)
    # METEOR's JVM loads its paraphrase tables for seconds: start it first, so that overlaps the tokenizer's JVM.
    meteor = Meteor() if java else None
    out: dict[str, dict[str, float]] = {}
    try:
        # One tokenizer run (one JVM start) for the references and every system's hypotheses.
        both: dict[tuple[str, ...], list[dict[str, str]]] = {
            ("ref", i): [{"caption": _clean(r)} for r in references[i]] for i in ids
        }
        for name, hyps in systems.items():
            both.update({("hyp", name, i): [{"caption": _clean(hyps[i])}] for i in ids})
        tokenized = PTBTokenizer().tokenize(both) if java else _python_tokenize(both)
        gts = {i: tokenized[("ref", i)] for i in ids}
        for name in systems:
            res = {i: tokenized[("hyp", name, i)] for i in ids}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            rouge, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            out[name] = {"BLEU-4": float(bleu[3]), "ROUGE-L": float(rouge), "CIDEr": float(cider)}
            if meteor is not None:
                out[name]["METEOR"] = float(meteor.compute_score(gts, res)[0])
    finally:
        if meteor is not None:
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()
    return {name: {m: scores[m] for m in CAPTION_METRICS if m in scores} for name, scores in out.items()}


def most_frequent(texts: Sequence[str]) -> str:
    """The most frequent non-empty text (first seen wins ties): the constant-caption baseline."""
    counts = Counter(t for t in texts if t.strip())
    if not counts:
        raise ValueError("no non-empty texts to pick a constant caption from")
    return counts.most_common(1)[0][0]

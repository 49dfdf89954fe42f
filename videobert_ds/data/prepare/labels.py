"""Labels and QA carried from the manifest into samples: a video's labels, merged with those of the annotation
that overlaps a sample's span most. Malformed fields are counted by reason and left out, never fatal."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any


def _span(a: Any) -> tuple[float, float] | None:
    try:
        s, e = float(a["start"]), float(a["end"])
    except (KeyError, TypeError, ValueError):
        return None
    return (s, e) if math.isfinite(s) and math.isfinite(e) and e > s else None


def valid_qa(qa: Any) -> bool:
    """question: str, choices: list of >= 2 str, answer: int index into choices."""
    return (
        isinstance(qa, dict)
        and isinstance(qa.get("question"), str)
        and isinstance(qa.get("choices"), list)
        and len(qa["choices"]) >= 2
        and all(isinstance(c, str) for c in qa["choices"])
        and isinstance(qa.get("answer"), int)
        and not isinstance(qa.get("answer"), bool)
        and 0 <= qa["answer"] < len(qa["choices"])
    )


class Annotator:
    """Video-level labels merged with those of the annotation overlapping a span most."""

    def __init__(self, raw: dict[str, Any], reasons: Counter) -> None:
        self.labels: dict[str, Any] = {}
        labels = raw.get("labels")
        if isinstance(labels, dict):
            self.labels = labels
        elif labels is not None:
            reasons["labels_malformed"] += 1
        self.annotations: list[tuple[float, float, dict[str, Any]]] = []
        anns = raw.get("annotations")
        if anns is None:
            return
        if not isinstance(anns, list):
            reasons["annotations_malformed"] += 1
            return
        for a in anns:
            span = _span(a) if isinstance(a, dict) else None
            if span is None:
                reasons["annotation_malformed"] += 1
                continue
            self.annotations.append((span[0], span[1], a))

    def fields(self, start: float, end: float, reasons: Counter) -> dict[str, Any]:
        best, overlap = None, 0.0
        for a0, a1, ann in self.annotations:
            ov = min(end, a1) - max(start, a0)
            if ov > overlap:
                best, overlap = ann, ov
        out: dict[str, Any] = {}
        labels = dict(self.labels)
        if best is not None:
            if isinstance(best.get("labels"), dict):
                labels.update(best["labels"])
            elif best.get("labels") is not None:
                reasons["labels_malformed"] += 1
            if "qa" in best:
                if valid_qa(best["qa"]):
                    q = best["qa"]
                    out["qa"] = {"question": q["question"], "choices": list(q["choices"]), "answer": q["answer"]}
                else:
                    reasons["qa_malformed"] += 1
        if labels:
            out["labels"] = labels
        return out

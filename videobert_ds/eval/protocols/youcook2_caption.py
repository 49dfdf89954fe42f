"""youcook2-caption: captioning of YouCook2's validation segments (VideoBERT's captioning evaluation, section 4.3),
each segment's reference sentence as its one reference.

eval/run.py's captioning path does the work: greedy and beam decoding with the autoregressive head, a fixed number
of steps on every rank (caption.max_len, caption.beam_size), scored with pycocoevalcap (BLEU-4, METEOR when Java is
present, ROUGE-L, CIDEr). caption/* are the decoder named by caption.report (beam by default), caption/<other>/* the
other one. Chance: a constant caption, the most frequent training-split sentence (of the evaluated split when the
shards hold no training split), scored the same way. Segments without video or text are skipped, counted.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from videobert_ds.core.distributed import rank_world
from videobert_ds.data.splits import split_meta
from videobert_ds.eval.config import EvalStageConfig
from videobert_ds.eval.protocols.common import has_split, load, report, with_video_and_text
from videobert_ds.eval.run import caption_metrics, generate_captions

NAME = "youcook2-caption"


def run(cfg: EvalStageConfig, device: torch.device, split_file: Path | None = None) -> dict[str, Any] | None:
    loaded = load(cfg, device)
    skipped: Counter = Counter()
    captioned = with_video_and_text(loaded.items, skipped)
    if not captioned:
        raise ValueError(f"split {cfg.eval.split!r} of {cfg.data.shards} has no segment with both video and text")
    captions = generate_captions(loaded.ctx, captioned)  # the same decoding steps on every rank
    if rank_world()[0] != 0:
        return None
    baseline = cfg.eval.baseline_split if has_split(cfg.data.shards, cfg.eval.baseline_split) else cfg.eval.split
    baseline_meta = split_meta(cfg.data.shards, baseline)
    bcfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, baseline_split=baseline))
    metrics, constant = caption_metrics(captioned, captions, bcfg, baseline_meta)
    samples = [
        {"key": it.key, "reference": it.text, "greedy": g, "beam": b, "constant": constant}
        for it, (g, b) in list(zip(captioned, captions))[: cfg.eval.num_samples]
    ]
    return report(
        NAME,
        cfg,
        loaded,
        num_items=len(captioned),
        skipped=dict(sorted(skipped.items())),
        metrics=metrics,
        baseline_split=baseline,
        decoder=cfg.caption.report,
        captions=samples,
    )

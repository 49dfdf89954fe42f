"""msrvtt-1ka: text -> video retrieval on MSR-VTT's 1k-A test split (JSFusion's 1,000 test videos, one sentence
each), R@1, R@5, R@10 and median rank.

The split: with --split-file, the published `MSRVTT_JSFUSION_test.csv` (split_file.py): each row's sentence is the
query and its video the target; rows whose video is not in the evaluated split of the shards are skipped
("video_not_in_split"). Without it, every video of the evaluated split (prepared from MSR-VTT's
test_videodatainfo.json: split "test") with its first caption. Either way only each video's first sample is decoded
(`videobert-prepare --format msrvtt` writes the same clip once per caption, `segment` = caption index).

Retrieval is eval/run.py's: the alignment head scores every (sentence, video) pair of the split, a cross-encoder as
in VideoBERT; the whole split is the pool (retrieval.pool_size is not used), so chance is R@k = k / N and a median
rank of (N + 1) / 2. The same scores give video -> text retrieval (retrieval/v2t/*) at no extra cost.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from videobert_ds.core.distributed import rank_world
from videobert_ds.eval.config import EvalStageConfig
from videobert_ds.eval.items import EvalItem
from videobert_ds.eval.protocols.common import load, report, with_video_and_text
from videobert_ds.eval.protocols.split_file import read_split_file
from videobert_ds.eval.run import retrieval_metrics

NAME = "msrvtt-1ka"


def _first_sample(meta: dict[str, Any]) -> bool:
    return meta.get("segment", 0) == 0


def run(cfg: EvalStageConfig, device: torch.device, split_file: Path | None = None) -> dict[str, Any] | None:
    skipped: Counter = Counter()
    if split_file is None:
        loaded = load(cfg, device, keep=_first_sample)
        queries = with_video_and_text(loaded.items, skipped)
        source = f"the {cfg.eval.split} split's videos, first caption each"
    else:
        split = read_split_file(split_file)
        wanted = {row.video_id for row in split.rows}
        loaded = load(cfg, device, keep=lambda m: _first_sample(m) and str(m.get("video_id", "")) in wanted)
        by_video = {it.video_id: it for it in loaded.items}
        ids = loaded.ctx.tokenizer(
            [row.sentence for row in split.rows],
            add_special_tokens=False,
            truncation=True,
            max_length=cfg.eval.max_text_tokens,
        )["input_ids"]
        queries = []
        for row, text_ids in zip(split.rows, ids):
            it = by_video.get(row.video_id)
            if it is None:
                skipped["video_not_in_split"] += 1
            elif not it.visual_ids:
                skipped["no_video"] += 1
            else:
                queries.append(EvalItem(it.key, it.video_id, row.sentence, list(text_ids), it.visual_ids))
        for reason, n in (("duplicate_video_row", split.duplicates), ("empty_row", split.empty)):
            if n:
                skipped[reason] += n
        source = str(split_file)
    if len(queries) < 2:
        raise ValueError(f"msrvtt-1ka: {len(queries)} video(s) with a sentence in split {cfg.eval.split!r}; need 2")
    rcfg = dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, pool_size=0))
    metrics = retrieval_metrics(loaded.ctx._replace(cfg=rcfg), queries)  # every rank: the same forward calls
    if rank_world()[0] != 0:
        return None
    return report(
        NAME,
        cfg,
        loaded,
        num_items=len(queries),
        skipped=dict(sorted(skipped.items())),
        metrics=metrics,
        split_source=source,
        pool=len(queries),
    )

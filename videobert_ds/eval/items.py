"""The evaluation split as model-ready items: every sample once (no dropped tail), split across ranks.

Each rank decodes the samples with `index % world_size == rank` (DALI or PyAV, as the training loader
chooses), turns frames into visual words with the model's own frozen clip encoder + vocabulary, and
tokenizes the text; `gather_items` then gives every rank the whole split in key order, so the scoring
work that follows can be divided evenly whatever the decode split was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from videobert_ds.data.crops import crop_starts
from videobert_ds.data.decoders.base import EncodedBatch, to_device
from videobert_ds.data.decoders.dali import probe_gpu_decode
from videobert_ds.data.loader import VIDEO_EXTS, choose_decoder, manifest_frame_size, open_decoder, read_shard_manifest
from videobert_ds.data.sampling import RawSample
from videobert_ds.data.splits import rank_samples


@dataclass
class EvalItem:
    """One evaluation sample: text and visual words (valid clips only), with its annotations."""

    key: str
    video_id: str
    text: str
    text_ids: list[int]
    visual_ids: list[int]
    labels: dict[str, str] = field(default_factory=dict)
    qa: dict[str, Any] | None = None  # question, choices, answer (validated by videobert-prepare)


def _video(sample: RawSample) -> bytes:
    for ext in VIDEO_EXTS:
        if ext in sample:
            return sample[ext]
    raise RuntimeError(f"sample {sample['__key__']} has no video member ({', '.join(VIDEO_EXTS)})")


def _batches(samples: Iterator[RawSample], batch_size: int) -> list[tuple[list[bytes], list[dict[str, Any]]]]:
    out = []
    while chunk := list(islice(samples, batch_size)):
        out.append(([_video(s) for s in chunk], [{**json.loads(s["json"]), "__key__": s["__key__"]} for s in chunk]))
    return out


def encode_items(
    shard_dir: str | Path,
    split: str,
    *,
    rank: int,
    world_size: int,
    text_tokenizer: Any,
    visual_tokenizer: Any,
    num_frames: int,
    max_text_tokens: int,
    batch_size: int,
    device: torch.device,
    backend: str = "auto",
    num_threads: int = 2,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[list[EvalItem], float]:
    """This rank's items, and the seconds spent turning decoded frames into visual words (with `keep`: only the
    samples whose json it accepts are decoded)."""
    batches = _batches(rank_samples(shard_dir, split, rank, world_size, keep), batch_size)
    if not batches:
        return [], 0.0
    manifest = read_shard_manifest(shard_dir)
    choice = choose_decoder(backend, manifest.get("codec", "vp9"), device, manifest_frame_size(manifest))
    if choice.dali_device == "mixed":  # fail now, with what to do, if this GPU cannot decode video
        probe_gpu_decode(batches[0][0][0], device)
    # Each clip's centre num_frames (data/crops.py). The decoders read ahead; repeating the last batch keeps them
    # fed past the end (never consumed).
    centred = (EncodedBatch(c, m, crop_starts("center", m, num_frames)) for c, m in batches)
    feed = chain(centred, repeat((batches[-1][0], None)))
    decoder = open_decoder(
        choice, feed, batch_size=batch_size, num_frames=num_frames, device=device, num_threads=num_threads, prefetch=1
    )
    items: list[EvalItem] = []
    seconds = 0.0
    try:
        for _ in batches:
            frames, meta = next(decoder)
            counts = to_device(torch.tensor([min(int(m["num_frames"]), num_frames) for m in meta]), frames.device)
            start = time.perf_counter()
            ids, valid = visual_tokenizer(frames, counts)
            ids, valid = ids.cpu(), valid.cpu()
            seconds += time.perf_counter() - start
            texts = [m.get("text", "") for m in meta]
            text_ids = text_tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_text_tokens)[
                "input_ids"
            ]
            for m, t, tid, row, ok in zip(meta, texts, text_ids, ids, valid):
                labels = m.get("labels") if isinstance(m.get("labels"), dict) else {}
                items.append(
                    EvalItem(
                        key=m["__key__"],
                        video_id=str(m.get("video_id", "")),
                        text=t,
                        text_ids=list(tid),
                        visual_ids=row[ok].tolist(),
                        labels={k: str(v) for k, v in labels.items()},
                        qa=m.get("qa") if isinstance(m.get("qa"), dict) else None,
                    )
                )
    finally:
        decoder.close()
    return items, seconds


def gather_items(items: list[EvalItem]) -> list[EvalItem]:
    """Every rank's items on every rank, sorted by key (the order does not depend on the rank count)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[list[EvalItem] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, items)
        items = [it for part in parts for it in (part or [])]
    return sorted(items, key=lambda it: it.key)

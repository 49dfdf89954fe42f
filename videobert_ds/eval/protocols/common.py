"""What the protocols share: the evaluated split as items with the model loaded (as eval/run.py does it), whether a
split exists, and the report's common fields."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from videobert_ds.core.distributed import rank_world
from videobert_ds.data.loader import read_shard_manifest
from videobert_ds.eval.config import EvalStageConfig
from videobert_ds.eval.items import EvalItem, gather_items
from videobert_ds.eval.run import EvalContext, encode_split, load_model
from videobert_ds.model.model_dir import ENCODER_DIR, VOCAB_FILE
from videobert_ds.model.specials import specials_from_config

log = logging.getLogger("videobert_ds.eval.protocols")


class Loaded(NamedTuple):
    """The split's items (every rank holds all of them, in key order) and the model, ready to score."""

    ctx: EvalContext
    items: list[EvalItem]  # every sample `keep` accepted, with or without valid clips
    params: int
    world: int
    keep_alive: Any  # the ZeRO-3 config object; hold it until scoring is done
    started: float


def load(cfg: EvalStageConfig, device: torch.device, keep: Callable[[dict[str, Any]], bool] | None = None) -> Loaded:
    """Decode and tokenize the split (only the samples `keep` accepts), gather it on every rank, load the model."""
    from videobert_ds.data.text import load_tokenizer
    from videobert_ds.visual.loading import load_visual_tokenizer

    started = time.perf_counter()
    world = rank_world()[1]
    model_dir = Path(cfg.model.dir)
    tokenizer = load_tokenizer(model_dir)
    visual_tokenizer, _ = load_visual_tokenizer(model_dir / ENCODER_DIR, model_dir / VOCAB_FILE, device)
    local, _ = encode_split(cfg, device, tokenizer, visual_tokenizer, keep)
    items = gather_items(local)
    heads, params, config, keep_alive = load_model(model_dir, device, cfg.model.zero3)
    vocab = specials_from_config(config, tokenizer)
    max_len = cfg.eval.max_seq_len or int(config.max_position_embeddings)
    if cfg.eval.max_text_tokens + 4 > max_len or cfg.caption.max_len + 4 > max_len:
        raise ValueError(
            f"eval.max_text_tokens ({cfg.eval.max_text_tokens}) and caption.max_len "
            f"({cfg.caption.max_len}) must leave room for video in sequences of {max_len}"
        )
    ctx = EvalContext(heads, cfg, tokenizer, vocab, max_len, device)
    return Loaded(ctx, items, int(params), world, keep_alive, started)


def with_video_and_text(items: list[EvalItem], skipped: Counter) -> list[EvalItem]:
    """The items with both a clip and a caption; the others counted in `skipped` as no_video / no_text."""
    kept = []
    for it in items:
        if not it.visual_ids:
            skipped["no_video"] += 1
        elif not (it.text.strip() and it.text_ids):
            skipped["no_text"] += 1
        else:
            kept.append(it)
    return kept


def has_split(shards: str, split: str) -> bool:
    """Whether the shard dir holds samples of `split`."""
    splits = read_shard_manifest(shards).get("splits") or {}
    return bool(splits.get(split)) if isinstance(splits, dict) else split in splits


def report(
    name: str,
    cfg: EvalStageConfig,
    loaded: Loaded,
    *,
    num_items: int,
    skipped: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """The protocol report: what was evaluated, on how many items, what was skipped and why, the metrics beside
    their chance levels (as eval/run.py's report gives them)."""
    return {
        "protocol": name,
        "model": str(cfg.model.dir),
        "shards": str(cfg.data.shards),
        "split": cfg.eval.split,
        "world_size": loaded.world,
        "params": loaded.params,
        "num_items": num_items,
        "skipped": skipped,
        "metrics": metrics,
        **extra,
        "seconds": round(time.perf_counter() - loaded.started, 3),
    }

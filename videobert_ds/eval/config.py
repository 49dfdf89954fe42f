"""The evaluation's typed config (YAML `eval*.yaml`, stage key `evaluate`) and its checks."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from videobert_ds.core.config import ConfigError, StageConfig, check_paths
from videobert_ds.model.model_dir import frames_problem, missing_files


@dataclass
class ModelSection:
    dir: str = "runs/demo/teacher/final"  # an exported model dir (config.json, weights, tokenizer, vocabulary, encoder)
    zero3: bool = False  # partition the model across ranks with DeepSpeed ZeRO-3 (models too big for one device)


@dataclass
class EvalSection:
    split: str = "test"
    baseline_split: str = "train"  # where the most-frequent label and the constant caption come from
    out: str = ""  # the report; "" = RUN_DIR/eval.json
    batch_size: int = 32  # sequences per forward call
    clip_batch_size: int = 8  # clips per decode batch
    max_text_tokens: int = 64
    max_seq_len: int = 0  # 0 = the model's max_position_embeddings
    num_samples: int = 5  # generated captions shown beside their references


@dataclass
class ZeroShotSection:
    # attribute -> template with a {attribute} slot; other {slots} become one [MASK] each
    templates: dict[str, str] = field(default_factory=dict)
    # attribute -> its label words (each may be several WordPieces)
    labels: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RetrievalSection:
    pool_size: int = 0  # candidates per query, the true one included; 0 = the whole split
    seed: int = 0  # picks the fixed negatives of each pool


@dataclass
class CaptionSection:
    max_len: int = 24  # decoding steps, the same on every rank
    beam_size: int = 4
    length_penalty: float = 1.0  # final beam score = log-prob / length ** length_penalty
    report: Literal["beam", "greedy"] = "beam"  # which decoder's scores are the caption/* metrics


@dataclass
class EvalStageConfig(StageConfig):
    model: ModelSection = field(default_factory=ModelSection)
    eval: EvalSection = field(default_factory=EvalSection)
    zeroshot: ZeroShotSection = field(default_factory=ZeroShotSection)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    caption: CaptionSection = field(default_factory=CaptionSection)


def check_eval_config(cfg: EvalStageConfig) -> None:
    """One-line ConfigErrors for a config that cannot evaluate."""
    model_dir = Path(cfg.model.dir)
    for name in missing_files(model_dir, ("config.json", "visual_vocab.safetensors", "clip_encoder/config.json")):
        raise ConfigError(f"model.dir: {model_dir} is not an exported VideoBERT model dir (no {name})")
    problem = frames_problem(model_dir)  # evaluation decodes the split's video
    if problem:
        raise ConfigError(f"model.dir: {problem}")
    check_paths(cfg)  # the shard dir exists and is whole: the same check as training's
    z = cfg.zeroshot
    if set(z.templates) != set(z.labels):
        raise ConfigError(
            f"zeroshot: templates ({', '.join(sorted(z.templates))}) and labels "
            f"({', '.join(sorted(z.labels))}) must name the same attributes"
        )
    for attr, template in z.templates.items():
        slots = {s for _, s, _, _ in string.Formatter().parse(template) if s is not None}
        if attr not in slots:
            raise ConfigError(f"zeroshot.templates.{attr}: {template!r} has no {{{attr}}} slot")
        labels = z.labels[attr]
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
            raise ConfigError(f"zeroshot.labels.{attr}: need a list of at least two label words")
    e, c = cfg.eval, cfg.caption
    for name in ("batch_size", "clip_batch_size", "max_text_tokens"):
        if getattr(e, name) < 1:
            raise ConfigError(f"eval.{name} must be >= 1")
    if c.max_len < 1 or c.beam_size < 1:
        raise ConfigError("caption.max_len and caption.beam_size must be >= 1")
    if cfg.retrieval.pool_size == 1 or cfg.retrieval.pool_size < 0:
        raise ConfigError("retrieval.pool_size must be 0 (the whole split) or >= 2")

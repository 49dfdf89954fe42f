"""Stage 5, `finetune`: a pretrained teacher or student fine-tuned on downstream tasks under ZeRO-3.

`model.init` is any exported VideoBERT model dir (a teacher's or a student's `final/`); it brings its text
tokenizer, visual vocabulary and clip encoder, so the fine-tuned dir is self-contained too. The tasks
(`finetune.tasks`: classification, caption, qa, retrieval; one or several trained together) and their
losses are in `videobert_ds.objectives.finetuning`; labels, questions and answers come from the samples' json (the
manifest's `labels` and `qa`, carried by videobert-prepare).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videobert_ds.core.atomic import write_json
from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.data.loader import read_shard_manifest
from videobert_ds.data.splits import split_meta
from videobert_ds.data.text import load_tokenizer
from videobert_ds.data.tokens import check_tokens, frames_span
from videobert_ds.model.finetuning import VideoBertForFinetuning
from videobert_ds.model.flops import transformer_flops_per_token
from videobert_ds.model.model_dir import ENCODER_DIR, VOCAB_FILE, missing_files, save_model_dir
from videobert_ds.model.specials import Specials, specials_from_config
from videobert_ds.model.videobert import apply_memory_levers
from videobert_ds.objectives.finetuning import (
    TASKS,
    FinetuneObjective,
    TaskBatch,
    TaskConfig,
    TaskSample,
    build_task_batch,
    task_tensors,
)
from videobert_ds.objectives.layout import text_ids_and_clip_counts, thread_tokenizer, to_device
from videobert_ds.objectives.pretraining import batch_visual_words
from videobert_ds.training.stage import Stage
from videobert_ds.visual.loading import features_problem, load_visual_tokenizer
from videobert_ds.visual.vocab import vocab_metadata

log = logging.getLogger(__name__)

LABELS_FILE = "label_sets.json"


@dataclass
class FinetuneModelConfig:
    init: str = "runs/teacher/final"  # an exported teacher or student model dir
    # Memory levers, as the teacher stage's model.*: recompute layer activations in backward; torch.compile layers.
    gradient_checkpointing: bool = False
    compile: bool = False


@dataclass
class FinetuneVisualConfig:
    clips_per_batch: int = 256  # clips per visual-tokenizer forward


@dataclass
class FinetuneStageConfig(StageConfig):
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    visual: FinetuneVisualConfig = field(default_factory=FinetuneVisualConfig)
    finetune: TaskConfig = field(default_factory=TaskConfig)


def discover_label_sets(shards: str | Path, split: str, wanted: list[str]) -> dict[str, list[str]]:
    """label set -> its sorted label names, from the shard manifest's per-split label values (written by
    videobert-prepare), or for shards prepared before it recorded them, from every sample json of the split
    (read once, videos not decoded). `wanted` = [] takes every label key found."""
    recorded = read_shard_manifest(shards).get("labels")
    values: dict[str, set[str]] = {}
    if isinstance(recorded, dict):
        values = {key: set(v) for key, v in (recorded.get(split) or {}).items()}
    else:
        for meta in split_meta(shards, split):
            for key, value in (meta.get("labels") or {}).items():
                values.setdefault(key, set()).add(str(value))
    missing = [k for k in wanted if k not in values]
    if missing:
        raise ConfigError(
            f"finetune.classification.label_sets: no {split} sample has label(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(values)) or 'none'})"
        )
    keys = wanted or sorted(values)
    return {k: sorted(values[k]) for k in keys if len(values[k]) >= 2}


class FinetuneStage(Stage):
    name = "finetune"
    config_cls = FinetuneStageConfig
    cfg: FinetuneStageConfig

    # -- validation before any rank works ------------------------------------------------------
    def check(self) -> None:
        init, f = Path(self.cfg.model.init), self.cfg.finetune
        missing = missing_files(init)
        if missing:
            raise ConfigError(
                f"model.init: {init} is not an exported VideoBERT model dir (missing {', '.join(missing)})"
            )
        unknown = [t for t in f.tasks if t not in TASKS]
        if unknown or not f.tasks:
            raise ConfigError(f"finetune.tasks: {unknown or 'empty'}; choose from {', '.join(TASKS)}")
        if f.classification.input not in ("video", "video_text"):
            raise ConfigError(
                f"finetune.classification.input must be video or video_text, got {f.classification.input!r}"
            )
        weights = {t: getattr(f, t).weight for t in TASKS}
        if any(w < 0 for w in weights.values()):
            raise ConfigError(f"finetune: task weights must be >= 0 ({weights})")
        if f.retrieval.hard_negatives < 1 or f.retrieval.max_candidates < 2:
            raise ConfigError("finetune.retrieval: hard_negatives must be >= 1 and max_candidates >= 2")
        positions = self.init_config["max_position_embeddings"]
        if f.max_seq_len > positions:
            raise ConfigError(
                f"finetune.max_seq_len ({f.max_seq_len}) exceeds the model's max_position_embeddings ({positions})"
            )
        problem = features_problem(vocab_metadata(init / VOCAB_FILE)["encoder"], self.cfg.data.tokens)
        if problem:
            raise ConfigError(f"model.init: {problem}")
        frames_per_clip = vocab_metadata(init / VOCAB_FILE)["frames_per_clip"]
        if self.cfg.data.num_frames < frames_per_clip:
            raise ConfigError(
                f"data.num_frames ({self.cfg.data.num_frames}) is shorter than one clip ({frames_per_clip})"
            )
        if self.cfg.data.tokens:  # token shards made with the model dir's own vocabulary and encoder
            vocab = init / VOCAB_FILE
            check_tokens(
                self.cfg.data.tokens,
                vocab,
                vocab_metadata(vocab)["encoder"],
                self.cfg.data.num_frames,
                "model.init's vocabulary",
            )
        self.label_sets = self.resolve_label_sets(Path(self.cfg.run.dir))

    @functools.cached_property
    def init_config(self) -> dict[str, Any]:
        return json.loads((Path(self.cfg.model.init) / "config.json").read_text())

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, run_dir: Path, rank: int, device: torch.device) -> None:
        init = Path(self.cfg.model.init)
        self.visual_tokenizer, _ = load_visual_tokenizer(
            init / ENCODER_DIR,
            init / VOCAB_FILE,
            device,
            self.cfg.visual.clips_per_batch,
            tokens=bool(self.cfg.data.tokens),
        )
        if not (run_dir / LABELS_FILE).is_file() and rank == 0:
            write_json(run_dir / LABELS_FILE, self.label_sets)

    def resolve_label_sets(self, run_dir: Path) -> dict[str, list[str]]:
        """Fixed once per run: a resumed run (or an export) reads them from the run dir, so its heads keep
        their shapes; a new run reads the training split's labels."""
        if "classification" not in self.cfg.finetune.tasks:
            return {}
        path = run_dir / LABELS_FILE
        if path.is_file():
            return json.loads(path.read_text())
        sets = discover_label_sets(
            self.cfg.data.shards, self.cfg.data.train_split, self.cfg.finetune.classification.label_sets
        )
        if not sets:
            raise ConfigError(
                f"finetune: classification needs labels, and no {self.cfg.data.train_split} sample "
                "carries a label set with two or more values"
            )
        return sets

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.model.init)

    @functools.cached_property
    def specials(self) -> Specials:
        return specials_from_config(self.init_config, self.tokenizer)

    @functools.cached_property
    def label_index(self) -> dict[str, dict[str, int]]:
        return {name: {label: i for i, label in enumerate(labels)} for name, labels in self.label_sets.items()}

    def build_module(self) -> nn.Module:
        from transformers import BertConfig

        config = BertConfig.from_pretrained(self.cfg.model.init, local_files_only=True)
        if not hasattr(self, "label_sets"):  # export rebuilds the module without check(): the run dir has them
            self.label_sets = self.resolve_label_sets(Path(self.cfg.run.dir))
        config.finetune_label_sets = self.label_sets
        config.finetune_tasks = list(self.cfg.finetune.tasks)
        config.finetune_classification_input = self.cfg.finetune.classification.input
        model = VideoBertForFinetuning.from_pretrained(self.cfg.model.init, config=config, local_files_only=True)
        m = self.cfg.model
        apply_memory_levers(model, gradient_checkpointing=m.gradient_checkpointing, compile=m.compile)
        return FinetuneObjective(model, self.cfg.finetune)

    # -- per step ------------------------------------------------------------------------------
    def task_samples(self, batch: Any, tokenizer: Any = None) -> list[TaskSample]:
        ids, clips = text_ids_and_clip_counts(
            batch, tokenizer or self.tokenizer, self.visual_tokenizer.frames_per_clip, self.cfg.finetune.max_text_tokens
        )
        return [
            TaskSample(
                text_ids=i,
                num_clips=n,
                video_id=str(m.get("video_id", "")),
                labels={k: str(v) for k, v in (m.get("labels") or {}).items()},
                qa=m.get("qa"),
            )
            for i, n, m in zip(ids, clips, batch.meta)
        ]

    def prepare_host(self, batch: Any, generator: torch.Generator | None) -> TaskBatch:
        """The task batch, on the host (the clip count per sample is the frames' shape; nothing random)."""
        n_clips = frames_span(batch) // self.visual_tokenizer.frames_per_clip
        tokenizer = thread_tokenizer(self.tokenizer)
        return build_task_batch(
            self.task_samples(batch, tokenizer), n_clips, self.specials, self.cfg.finetune, self.label_index, tokenizer
        )

    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, Any]:
        tb = getattr(batch, "host", None) or self.prepare_host(batch, None)
        ids, _ = batch_visual_words(batch, self.visual_tokenizer)  # a token batch carries them
        inputs: dict[str, Any] = to_device(tb.host, ids, None, self.specials, device)
        inputs.update(
            task=task_tensors(tb, device),
            num_main=tb.num_main,
            num_candidates=tb.num_candidates,
            _num_tokens=tb.counts["num_tokens"],
        )
        return inputs

    def step_stats(self, inputs: dict[str, Any]) -> tuple[int, float]:
        """Training FLOPs of the micro-batch's real tokens, counted as the teacher stage counts them."""
        c, tokens = self.init_config, inputs["_num_tokens"]
        per_token = transformer_flops_per_token(
            c["num_hidden_layers"],
            c["hidden_size"],
            c["intermediate_size"],
            inputs["input_ids"].shape[1],
            training=True,
        )
        return tokens, float(tokens * per_token)

    # -- export --------------------------------------------------------------------------------
    def export(self, module: nn.Module, out_dir: Path) -> None:
        """Weights + config (label sets and tasks included), and the init dir's tokenizer, visual vocabulary,
        clip encoder and any other vocabulary files beside them (e.g. visual-word key frames)."""
        init = Path(self.cfg.model.init)
        save_model_dir(module.model, self.tokenizer, out_dir, vocab=init / VOCAB_FILE, encoder_dir=init / ENCODER_DIR)

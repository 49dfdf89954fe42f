"""Stage 3, `pretrain_teacher`: VideoBERT pretraining on text, visual words and both together.

Visual words are computed on the fly on the training device: DALI-decoded frames -> the frozen clip
encoder of stage 1 -> nearest word of the stage-2 vocabulary. The student (stage 4) is the same model class
at a smaller size and builds its batches the same way (objectives.pretraining.PretrainingInputs).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.data.text import load_tokenizer, shard_texts, train_wordpiece
from videobert_ds.data.tokens import check_tokens
from videobert_ds.model.flops import transformer_flops_per_token
from videobert_ds.model.model_dir import save_model_dir
from videobert_ds.model.specials import Specials, specials_from_tokenizer
from videobert_ds.model.videobert import VideoBertForPreTraining, apply_memory_levers, videobert_config
from videobert_ds.objectives.layout import ObjectiveConfig, check_sequence_budget
from videobert_ds.objectives.pretraining import PretrainingInputs, PretrainingObjective
from videobert_ds.training.stage import Stage
from videobert_ds.visual.loading import encoder_problem, load_visual_tokenizer
from videobert_ds.visual.vocab import feature_stats, vocab_metadata

log = logging.getLogger(__name__)


@dataclass
class TextConfig:
    tokenizer: str = ""  # a local Hugging Face tokenizer dir; empty = train WordPiece on the transcripts
    vocab_size: int = 8000  # for the trained WordPiece tokenizer


@dataclass
class VisualConfig:
    # The clip encoder the vocabulary was fit on: "autoencoder" (`encoder` = the exported stage-1 dir) or "s3d"
    # (`encoder` = the torchvision-layout S3D weights file; clip length and resize come from the vocabulary).
    encoder_type: str = "autoencoder"
    encoder: str = "runs/video_encoder/final"
    vocab: str = "runs/vocab/vocab.safetensors"  # stage-2 vocabulary file
    init_from_centroids: bool = True  # visual-word embeddings from the centroids through a projection
    clips_per_batch: int = 256


@dataclass
class BertSize:
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    visual_vocab_size: int = 0  # 0 = the vocabulary's size; otherwise it must match it
    init_text_from: str = ""  # a local BERT checkpoint dir to initialise the text side from
    # Alignment logit = [CLS] classifier + scaled cosine of the mean text and video states (see model/videobert.py);
    # false = VideoBERT's [CLS] classifier alone.
    alignment_similarity: bool = True
    # Recompute each layer's activations in the backward pass instead of keeping them (~1/3 more compute, a
    # fraction of the activation memory: BERT-large batches); compile: torch.compile each layer (off: see
    # docs/benchmarks.md). Neither changes the weights, checkpoints or exports.
    gradient_checkpointing: bool = False
    compile: bool = False


@dataclass
class GenerateConfig:
    """Text -> video grids written to TensorBoard at every validation (needs the vocabulary's key frames)."""

    prompts: list[str] = field(default_factory=list)  # empty = up to 4 texts of the first validation batch
    num_words: int = 8
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = the whole visual vocabulary


@dataclass
class TeacherStageConfig(StageConfig):
    text: TextConfig = field(default_factory=TextConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    model: BertSize = field(default_factory=BertSize)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


class TeacherStage(Stage):
    name = "pretrain_teacher"
    config_cls = TeacherStageConfig
    cfg: TeacherStageConfig

    # -- validation before any rank works ------------------------------------------------------
    def check(self) -> None:
        v, m = self.cfg.visual, self.cfg.model
        meta = vocab_metadata(v.vocab)
        problem = encoder_problem(v.encoder_type, v.encoder, meta["encoder"], self.cfg.data.tokens)
        if problem:
            raise ConfigError(f"visual.encoder: {problem}")
        if m.visual_vocab_size and m.visual_vocab_size != meta["size"]:
            raise ConfigError(
                f"model.visual_vocab_size ({m.visual_vocab_size}) does not match the visual "
                f"vocabulary's {meta['size']} words ({v.vocab})"
            )
        if self.cfg.data.num_frames < meta["frames_per_clip"]:
            raise ConfigError(
                f"data.num_frames ({self.cfg.data.num_frames}) is shorter than one clip ({meta['frames_per_clip']})"
            )
        if self.cfg.data.tokens:  # token shards made with this vocabulary and the encoder it was fit on
            check_tokens(self.cfg.data.tokens, v.vocab, meta["encoder"], self.cfg.data.num_frames)
        if self.cfg.text.tokenizer and not Path(self.cfg.text.tokenizer).is_dir():
            raise ConfigError(f"text.tokenizer: no tokenizer dir at {self.cfg.text.tokenizer}")
        if m.init_text_from and not Path(m.init_text_from).is_dir():
            raise ConfigError(f"model.init_text_from: no BERT checkpoint dir at {m.init_text_from}")
        o = self.cfg.objective
        check_sequence_budget(o)
        if o.max_text_tokens + 2 + o.max_seq_len > m.max_position_embeddings:
            raise ConfigError(
                f"model.max_position_embeddings ({m.max_position_embeddings}) must cover the video "
                f"positions: at least objective.max_text_tokens + 2 + objective.max_seq_len "
                f"= {o.max_text_tokens + 2 + o.max_seq_len}"
            )
        g = self.cfg.generate
        if not 1 <= g.num_words <= o.max_seq_len - 3:
            raise ConfigError(
                f"generate.num_words: must be in [1, objective.max_seq_len - 3 = {o.max_seq_len - 3}], "
                f"got {g.num_words}"
            )
        if g.temperature < 0 or g.top_k < 0:
            raise ConfigError(f"generate: temperature and top_k must be >= 0, got {g.temperature} and {g.top_k}")

    # -- set-up --------------------------------------------------------------------------------
    def tokenizer_dir(self) -> Path:
        return Path(self.cfg.text.tokenizer) if self.cfg.text.tokenizer else Path(self.cfg.run.dir) / "tokenizer"

    def setup(self, run_dir: Path, rank: int, device: torch.device) -> None:
        if not self.cfg.text.tokenizer and rank == 0 and not self.tokenizer_dir().is_dir():
            log.info(
                "training a %d-word WordPiece tokenizer on the %s transcripts",
                self.cfg.text.vocab_size,
                self.cfg.data.train_split,
            )
            train_wordpiece(
                shard_texts(self.cfg.data.shards, self.cfg.data.train_split),
                self.cfg.text.vocab_size,
                self.tokenizer_dir(),
            )
        self.visual_tokenizer, self.vocab = load_visual_tokenizer(
            self.cfg.visual.encoder,
            self.cfg.visual.vocab,
            device,
            self.cfg.visual.clips_per_batch,
            encoder_type=self.cfg.visual.encoder_type,
            tokens=bool(self.cfg.data.tokens),  # a features vocabulary: no frame encoder, words from token shards
        )
        self.feature_stats = feature_stats(self.vocab, device)
        self.keyframes = self.load_keyframes(rank)

    def load_keyframes(self, rank: int):
        """The vocabulary's key frames for the text -> video grids, or None (then no grids are drawn)."""
        from videobert_ds.visual.keyframes import KeyFrames, keyframes_path

        path = keyframes_path(self.cfg.visual.vocab)
        if not path.is_file():
            if rank == 0:
                log.warning(
                    "no key frames at %s (a build_vocab run with keyframe_size > 0 writes them): "
                    "no text -> video images in TensorBoard",
                    path,
                )
            return None
        keyframes = KeyFrames.load(path)
        if keyframes.num_words != self.vocab.size:  # a stale file: a picture is not worth stopping training for
            if rank == 0:
                log.warning(
                    "%s holds %d key frames, the vocabulary %d words: no text -> video images",
                    path,
                    keyframes.num_words,
                    self.vocab.size,
                )
            return None
        return keyframes

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_dir())

    @functools.cached_property
    def specials(self) -> Specials:
        return specials_from_tokenizer(self.tokenizer, vocab_metadata(self.cfg.visual.vocab)["size"])

    def model_config(self):
        m, sp = self.cfg.model, self.specials
        meta = vocab_metadata(self.cfg.visual.vocab)
        return videobert_config(
            text_vocab_size=sp.text_vocab_size,
            visual_vocab_size=sp.visual_vocab_size,
            visual_feature_dim=meta["feature_dim"],
            special_token_ids=sp.token_ids(),
            hidden_size=m.hidden_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_position_embeddings,
            hidden_dropout_prob=m.hidden_dropout_prob,
            attention_probs_dropout_prob=m.attention_probs_dropout_prob,
            video_position_offset=self.cfg.objective.max_text_tokens + 2,
            alignment_similarity=m.alignment_similarity,
        )

    def build_module(self) -> nn.Module:
        """Initialisations happen here, before deepspeed.initialize: afterwards ZeRO-3's optimizer holds its
        own fp32 partitions and would overwrite anything written into the parameters at the first step."""
        model = VideoBertForPreTraining._from_config(self.model_config())
        if self.cfg.model.init_text_from:
            from videobert_ds.model.init_weights import copy_text_weights

            copy_text_weights(self.cfg.model.init_text_from, model)
        if self.cfg.visual.init_from_centroids and hasattr(self, "vocab"):  # a resumed run loads its checkpoint
            model.init_visual_embeddings(self.vocab.tree.leaves, seed=self.cfg.run.seed)
        m = self.cfg.model
        apply_memory_levers(model, gradient_checkpointing=m.gradient_checkpointing, compile=m.compile)
        return PretrainingObjective(model, self.cfg.objective)

    # -- per step ------------------------------------------------------------------------------
    @functools.cached_property
    def inputs(self) -> PretrainingInputs:
        return PretrainingInputs(
            self.tokenizer, self.visual_tokenizer, self.specials, self.cfg.objective, self.feature_stats
        )

    def prepare_host(self, batch: Any, generator: torch.Generator) -> Any:
        return self.inputs.host(batch, generator)

    def make_inputs(self, batch: Any, device: torch.device, train: bool = True) -> dict[str, Any]:
        return self.inputs(batch, device, train=train)

    def step_stats(self, inputs: dict[str, Any]) -> tuple[int, float]:
        """Training FLOPs of the micro-batch's real tokens over its padded length (model/flops.py)."""
        m, tokens = self.cfg.model, inputs["_num_tokens"]
        per_token = transformer_flops_per_token(
            m.num_hidden_layers, m.hidden_size, m.intermediate_size, inputs["input_ids"].shape[1], training=True
        )
        return tokens, float(tokens * per_token)

    # -- validation images ---------------------------------------------------------------------
    def images(self, module: nn.Module, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Text -> video: per prompt, a row of sampled visual words shown as their key frames. Every rank
        runs the same `generate.num_words` forward passes (all prompts in one batch), as ZeRO-3 needs."""
        if getattr(self, "keyframes", None) is None:  # set by setup; None when the vocabulary has none
            return {}
        from videobert_ds.inference.text_to_video import prompt_ids, prompt_tag, render_grid, sample_visual_words

        g = self.cfg.generate
        prompts = list(g.prompts) or list(dict.fromkeys(t for t in inputs.get("_texts", []) if t.strip()))[:4] or [""]
        text_ids = prompt_ids(self.tokenizer, prompts, self.cfg.objective.max_text_tokens)
        words = sample_visual_words(
            module.model,
            self.specials,
            text_ids,
            num_words=g.num_words,
            temperature=g.temperature,
            top_k=g.top_k,
            seed=self.cfg.run.seed,
            device=inputs["input_ids"].device,
        )
        return {prompt_tag(p): render_grid(w[None], self.keyframes.frames) for p, w in zip(prompts, words)}

    # -- export --------------------------------------------------------------------------------
    def export(self, module: nn.Module, out_dir: Path) -> None:
        """A self-contained model dir: weights + config, the text tokenizer, the visual vocabulary (with its
        key frames when build_vocab wrote them) and the clip encoder that turns frames into its visual words."""
        save_model_dir(
            module.model, self.tokenizer, out_dir, vocab=self.cfg.visual.vocab, encoder_dir=self.cfg.visual.encoder
        )

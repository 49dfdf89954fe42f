"""VideoBERT's five pretraining losses, each weighted by its lambda (objective.lambda_*):

  mlm      masked text tokens (80% [MASK] / 10% random / 10% kept), logits over the text vocabulary
  mvm      masked visual words, logits over the visual vocabulary
  align    linguistic-visual alignment on [CLS]: the video swapped for another video's with prob. 0.5
  caption  autoregressive captioning: a sequence-to-sequence mask where video sees only video and text
           sees the video and earlier text; position i predicts text token i+1, the last predicts [>]
  video    masked clip-feature regression: the frozen encoder's (standardised) feature at masked video
           positions, the source design's video reconstruction loss inside the joint model

The batches come from objectives/layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videobert_ds.data.tokens import TokenBatch, frames_span
from videobert_ds.model.specials import Specials
from videobert_ds.objectives.layout import (
    IGNORE,
    ClipSample,
    HostBatch,
    ObjectiveConfig,
    build_batch,
    host_to_device,
    selection,
    text_ids_and_clip_counts,
    thread_tokenizer,
    to_device,
)


def _flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of x's flattened (B * L) positions, by gather (no host sync)."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, index)


def _masked_ce(
    logits_fn, hidden: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, lo: int, hi: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over vocabulary slice [lo, hi) at the flat positions `index` (labels there are ids of the
    joint vocabulary, in [lo, hi)); (sum loss / count, accuracy). The head computes only the slice's rows and the
    count is the index's length, known on the host. Empty selections give 0 with the head still in the graph
    (every rank's backward touches the same params)."""
    logits = logits_fn(_flat(hidden, index), lo, hi).float()
    target = _flat(labels, index) - lo
    count = max(index.shape[0], 1)
    loss = F.cross_entropy(logits, target, reduction="sum") / count
    acc = (logits.argmax(-1) == target).float().sum() / count
    return loss, acc.detach()


def pretraining_losses(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], cfg: ObjectiveConfig
) -> dict[str, torch.Tensor]:
    hidden, pooled = model(inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"])
    return losses_from_outputs(model, hidden, pooled, inputs, cfg)


def losses_from_outputs(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    pooled: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    cfg: ObjectiveConfig,
) -> dict[str, torch.Tensor]:
    """The losses from an encoder forward already run (distillation runs it itself, for every layer's states)."""
    text_vocab = model.config.text_vocab_size
    vocab = model.config.vocab_size
    out: dict[str, torch.Tensor] = {}
    mlm_index = selection(inputs, "mlm_index", inputs["mlm_labels"] != IGNORE)
    mvm_index = selection(inputs, "mvm_index", inputs["mvm_labels"] != IGNORE)
    caption_index = selection(inputs, "caption_index", inputs["caption_labels"] != IGNORE)
    out["mlm"], out["acc_text"] = _masked_ce(model.token_logits, hidden, inputs["mlm_labels"], mlm_index, 0, text_vocab)
    shifted = inputs["mvm_labels"] + text_vocab  # read only at mvm_index, where a visual word is labelled
    out["mvm"], out["acc_visual"] = _masked_ce(model.token_logits, hidden, shifted, mvm_index, text_vocab, vocab)
    out["caption"], out["acc_caption"] = _masked_ce(
        model.token_logits, hidden, inputs["caption_labels"], caption_index, 0, text_vocab
    )

    align = inputs["align_labels"]
    has_align = align >= 0
    logits = model.alignment_logits(hidden, pooled, inputs["input_ids"], inputs["token_type_ids"]).float()
    per = F.binary_cross_entropy_with_logits(logits, align.clamp_min(0), reduction="none")
    n_align = has_align.sum().clamp_min(1)
    out["align"] = (per * has_align).sum() / n_align
    out["acc_align"] = (((logits > 0).float() == align) & has_align).float().sum().detach() / n_align

    if "feature_targets" in inputs:
        pred = model.clip_features(_flat(hidden, mvm_index)).float()
        out["video"] = F.mse_loss(pred, _flat(inputs["feature_targets"], mvm_index), reduction="sum") / (
            max(mvm_index.shape[0], 1) * pred.shape[-1]
        )
    else:
        out["video"] = hidden.sum() * 0.0
    out["loss"] = (
        cfg.lambda_mlm * out["mlm"]
        + cfg.lambda_mvm * out["mvm"]
        + cfg.lambda_align * out["align"]
        + cfg.lambda_caption * out["caption"]
        + cfg.lambda_video * out["video"]
    )
    for k in ("mlm", "mvm", "align", "caption", "video"):
        out[k] = out[k].detach()
    return out


class PretrainingObjective(nn.Module):
    """The teacher's training module: VideoBERT -> its weighted pretraining losses."""

    def __init__(self, model: nn.Module, cfg: ObjectiveConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = pretraining_losses(self.model, inputs, self.cfg)
        out["skipped_samples"] = inputs["skipped_samples"]
        return out


def batch_visual_words(
    batch: Any, visual_tokenizer: Any, features: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(visual-word ids (B, n_clips), clip features (B, n_clips, D) or None) of a loader batch on its device: a token
    batch (data/tokens.py) carries them, computed once by the tokenize stage; a clip batch's frames go through the
    frozen visual tokenizer here. Invalid clips have id 0 either way."""
    if isinstance(batch, TokenBatch):
        return batch.ids, batch.features if features else None
    if features:
        ids, _, feats = visual_tokenizer(batch.frames, batch.num_frames, return_features=True)
        return ids, feats
    ids, _ = visual_tokenizer(batch.frames, batch.num_frames)
    return ids, None


@dataclass
class PretrainingInputs:
    """Loader batch -> pretraining inputs and targets on the device: the text's WordPieces, the frozen visual
    tokenizer's words and clip features (or a token batch's: batch_visual_words), sequences and masks drawn on the
    host (layout.build_batch), resolved on the device. The teacher and the student (one batch feeds both of its
    models) build their batches with it.

    Two halves: `host` (tokenizing, masking draws, layout; CPU only, run ahead in the trainer's prefetch thread,
    which stores its result as `batch.host`) and `__call__` (the visual words and the device tensors; builds the
    host half itself, from torch's global RNG, when the batch has none, e.g. in validation)."""

    tokenizer: Any
    visual_tokenizer: Any  # visual.tokenizer.VisualTokenizer
    specials: Specials
    objective: ObjectiveConfig
    feature_stats: tuple[torch.Tensor, torch.Tensor]

    def samples(self, batch: Any) -> list[ClipSample]:
        tokenizer, fpc = thread_tokenizer(self.tokenizer), self.visual_tokenizer.frames_per_clip
        ids, clips = text_ids_and_clip_counts(batch, tokenizer, fpc, self.objective.max_text_tokens)
        return [
            ClipSample(text_ids=i, num_clips=n, video_id=str(m.get("video_id", "")), segment=int(m.get("segment", 0)))
            for i, n, m in zip(ids, clips, batch.meta)
        ]

    def host(self, batch: Any, generator: torch.Generator | None = None, train: bool = True) -> HostBatch:
        """The host half: no device tensor is read (the clip count per sample is the frames' shape, or a token
        batch's span)."""
        n_clips = frames_span(batch) // self.visual_tokenizer.frames_per_clip
        samples = self.samples(batch)
        return build_batch(samples, n_clips, self.specials, self.objective, train=train, generator=generator)

    def __call__(self, batch: Any, device: torch.device, train: bool = True) -> dict[str, Any]:
        host = getattr(batch, "host", None) if train else None
        if host is None:
            host = self.host(batch, train=train)
        ids, feats = batch_visual_words(batch, self.visual_tokenizer, features=True)
        inputs = to_device(host, ids, feats, self.specials, device, self.feature_stats)
        inputs["skipped_samples"] = host_to_device(torch.tensor(float(host.counts["skipped"])), device)
        inputs["_num_tokens"] = host.counts["num_tokens"]
        inputs["_texts"] = [m.get("text", "") for m in batch.meta]  # default prompts of the text -> video grids
        return inputs

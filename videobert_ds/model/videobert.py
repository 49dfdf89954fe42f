"""VideoBERT on Hugging Face BERT: text WordPieces, special tokens and visual words in one vocabulary.

Token ids: [0, text_vocab_size) are the text tokenizer's (special tokens included), then
[text_vocab_size, text_vocab_size + visual_vocab_size) are visual words. Token type 0 = text, 1 = video.
The config is a plain `BertConfig` (model_type "bert") with VideoBERT's extra fields, and the encoder
lives under `bert.`, so an exported dir also loads as `transformers.BertModel.from_pretrained(dir)`.
Teacher and student are this one class at two sizes.

Heads: one masked-token head over the joint vocabulary (tied to the input embeddings; used for text MLM,
masked visual words and autoregressive captioning), an alignment logit, and a clip-feature regression
head for masked video positions.

The alignment logit is VideoBERT's classifier on the pooled [CLS], plus (config.alignment_similarity, the
default for new models) a learned-scale cosine between the mean text state and the mean video state of
the same joint forward. Why: the [CLS] classifier alone must discover a multiplicative text x video
interaction through attention, a saddle it did not leave in CPU-size runs (its scores came out additive,
f(text) + g(video), and retrieval stayed exactly at chance), while the cosine is that interaction directly;
both halves are contextualised by the joint encoder, so it is still a cross-modal score, not two towers.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers import initialization as hf_init
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

log = logging.getLogger(__name__)


def videobert_config(
    *,
    text_vocab_size: int,
    visual_vocab_size: int,
    visual_feature_dim: int,
    special_token_ids: dict[str, int],
    hidden_size: int = 1024,
    num_hidden_layers: int = 24,
    num_attention_heads: int = 16,
    intermediate_size: int = 4096,
    max_position_embeddings: int = 512,
    hidden_dropout_prob: float = 0.1,
    attention_probs_dropout_prob: float = 0.1,
    video_position_offset: int | None = None,
    alignment_similarity: bool = True,
) -> BertConfig:
    return BertConfig(
        vocab_size=text_vocab_size + visual_vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        hidden_dropout_prob=hidden_dropout_prob,
        attention_probs_dropout_prob=attention_probs_dropout_prob,
        pad_token_id=special_token_ids["pad"],
        text_vocab_size=text_vocab_size,
        visual_vocab_size=visual_vocab_size,
        visual_feature_dim=visual_feature_dim,
        special_token_ids=dict(special_token_ids),
        video_position_offset=video_position_offset,
        alignment_similarity=alignment_similarity,
        architectures=["VideoBertForPreTraining"],
    )


ALIGNMENT_SCALE_INIT = 5.0  # the cosine's starting weight in the alignment logit (learned)


def _masked_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    keep = keep.to(hidden.dtype)[..., None]
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class VocabDecoder(nn.Linear):
    """The masked-token head's output projection (tied to the input embeddings) that can compute only a slice of
    the joint vocabulary's rows: text MLM needs the text rows, masked visual words the visual rows, and at
    BERT-large the joint vocabulary is ~50 k rows. The slice is taken inside this module's own forward, so under
    ZeRO-3 the (tied, partitioned) weight is gathered by this module's hooks exactly as for the full product."""

    def forward(self, x: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        if lo == 0 and (hi is None or hi == self.out_features):
            return super().forward(x)
        bias = self.bias[lo:hi] if self.bias is not None else None
        return F.linear(x, self.weight[lo:hi], bias)


class VideoBertForPreTraining(BertPreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=True)
        self.cls = BertOnlyMLMHead(config)
        self.cls.predictions.decoder = VocabDecoder(config.hidden_size, config.vocab_size)  # tied in post_init
        self.alignment = nn.Linear(config.hidden_size, 1)
        self.alignment_text = self.alignment_video = self.alignment_scale = None
        if getattr(config, "alignment_similarity", False):
            self.alignment_text = nn.Linear(config.hidden_size, config.hidden_size)
            self.alignment_video = nn.Linear(config.hidden_size, config.hidden_size)
            self.alignment_scale = nn.Parameter(torch.full((1,), ALIGNMENT_SCALE_INIT))
        self.feature_head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
            nn.Linear(config.hidden_size, config.visual_feature_dim),
        )
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @property
    def text_vocab_size(self) -> int:
        return self.config.text_vocab_size

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (sequence hidden states (B, L, H), pooled [CLS] (B, H)).

        `attention_mask` is (B, L) for bidirectional attention or a boolean (B, 1, L, L) for per-sample
        patterns such as captioning's sequence-to-sequence mask (True = may attend).
        """
        out = self.bert(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            position_ids=self.position_ids(token_type_ids),
        )
        return out.last_hidden_state, out.pooler_output

    def position_ids(self, token_type_ids: torch.Tensor) -> torch.Tensor | None:
        """Text counts positions from 0, video from `video_position_offset`: where the video starts then
        does not depend on the caption's length, so a caption generated token by token sees the video at
        the same positions it was trained with. None (the default) = BERT's plain 0..L-1."""
        offset = getattr(self.config, "video_position_offset", None)
        if offset is None:
            return None
        is_video = token_type_ids == 1
        text_pos = (~is_video).long().cumsum(1) - 1
        video_pos = is_video.long().cumsum(1) - 1 + offset
        return torch.where(is_video, video_pos, text_pos)

    def token_logits(self, hidden: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Logits over the joint vocabulary's ids [lo, hi) (default: all) for selected positions (..., H) ->
        (..., hi - lo): equal to the full logits sliced, without computing the other rows."""
        head = self.cls.predictions
        x = head.transform(hidden)
        if isinstance(head.decoder, VocabDecoder):
            return head.decoder(x, lo, hi)
        return head.decoder(x)[..., lo:hi]  # a plain Linear set by set_output_embeddings

    def alignment_logits(
        self, hidden: torch.Tensor, pooled: torch.Tensor, input_ids: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B,) "is this text aligned with this video" logits from one joint forward's outputs.

        The [CLS] classifier, plus with `alignment_similarity` the scaled cosine of the mean text state
        (token type 0 after [CLS]) and the mean video state (token type 1: [>], visual words, [SEP]);
        padding excluded. A row without text or without video gets a cosine of 0."""
        logits = self.alignment(pooled).squeeze(-1)
        if self.alignment_text is None:
            return logits
        real = input_ids != self.config.pad_token_id
        text = (token_type_ids == 0) & real
        text[:, 0] = False  # [CLS]
        video = (token_type_ids == 1) & real
        cos = F.cosine_similarity(
            self.alignment_text(_masked_mean(hidden, text)), self.alignment_video(_masked_mean(hidden, video)), dim=-1
        )
        both = text.any(1) & video.any(1)
        return logits + self.alignment_scale * torch.where(both, cos, torch.zeros_like(cos))

    def clip_features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.feature_head(hidden)

    @torch.no_grad()
    def init_visual_embeddings(self, centroids: torch.Tensor, seed: int = 0) -> None:
        """Initialise the visual-word embeddings from the vocabulary's leaf centroids through a fixed random
        projection (feature_dim -> hidden, Johnson-Lindenstrauss style: it keeps the centroids' geometry),
        rescaled to the embedding init scale."""
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(centroids.shape[1], self.config.hidden_size, generator=gen) / math.sqrt(
            self.config.hidden_size
        )
        emb = (centroids.float().cpu() - centroids.float().cpu().mean(0)) @ proj
        emb = emb / emb.std().clamp_min(1e-6) * self.config.initializer_range
        table = self.bert.embeddings.word_embeddings.weight
        start = self.config.text_vocab_size
        # Under ZeRO-3 the table is partitioned: gather it, write, and let rank 0's copy be re-partitioned.
        gathered = contextlib.nullcontext()
        if hasattr(table, "ds_id"):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([table], modifier_rank=0)
        with gathered:
            table[start : start + emb.shape[0]].copy_(emb.to(table.device, table.dtype))

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.LayerNorm):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)
        if isinstance(module, VideoBertForPreTraining) and module.alignment_scale is not None:
            hf_init.constant_(module.alignment_scale, ALIGNMENT_SCALE_INIT)


def apply_memory_levers(model: BertPreTrainedModel, *, gradient_checkpointing: bool, compile: bool = False) -> None:
    """The memory/speed switches of a VideoBERT model in training (`model.gradient_checkpointing`,
    `model.compile` of the teacher, student and fine-tuning stages).

    gradient_checkpointing: each transformer layer keeps only its input for the backward pass and recomputes
    its activations there (about one more forward per step). torch.utils.checkpoint with use_reentrant=False
    and preserve_rng_state (its default) replays dropout exactly, so the loss and gradients are those of the
    plain model. Under ZeRO-3 the layer's own pre-forward hook stays outside the checkpoint (transformers
    checkpoints `forward`, not `__call__`) and its submodules' hooks gather their partitioned weights again in
    the recompute. Layers run as usual where no backward follows (eval, torch.no_grad: a frozen teacher).

    compile: each transformer layer is compiled in place (nn.Module.compile: parameter names, checkpoints and
    exports are unchanged). Off by default: on CPU it did not pay for its compile time (docs/benchmarks.md)."""
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        log.info("activation checkpointing on %d transformer layers", len(model.bert.encoder.layer))
    if compile:
        for layer in model.bert.encoder.layer:
            layer.compile()
        log.info("torch.compile on %d transformer layers", len(model.bert.encoder.layer))

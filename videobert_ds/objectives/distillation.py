"""Knowledge-distillation losses (teacher -> student) and the layer mappings they use.

Anchors: DistilBERT (soft-target KL at a temperature T, scaled by T^2 so its gradients keep their size as
T changes; student initialised from every other teacher layer) and TinyBERT (hidden-state MSE through a
learned projection student width -> teacher width, attention-distribution loss, uniform layer mapping).

Hidden-state indices follow Hugging Face's `output_hidden_states`: 0 is the embedding output, i is the
output of transformer layer i. A layer map gives, for every student index 0..M, the teacher index it
imitates (-1: that student index is not distilled).

Every loss here is a mean over a selection that may be empty on some rank (no masked visual word in a
micro-batch); an empty selection gives 0 with the same ops and parameters in the graph, so every rank's
backward touches the same parameters and ZeRO-3 cannot hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from videobert_ds.objectives.layout import ObjectiveConfig
from videobert_ds.objectives.pretraining import losses_from_outputs


@dataclass
class DistillConfig:
    temperature: float = 2.0
    lambda_kd_mlm: float = 1.0  # soft targets on masked text tokens
    lambda_kd_mvm: float = 1.0  # soft targets on masked visual words
    lambda_kd_caption: float = 1.0  # soft targets on the captioning (next text token) positions
    lambda_kd_align: float = 1.0  # soft targets on the alignment logit (as a 2-class distribution)
    lambda_hidden: float = 1.0  # hidden-state MSE through the learned projection
    lambda_attention: float = 0.0  # attention-distribution KL; > 0 runs both models with eager attention
    # Teacher hidden-state index for each student index 0..M (0 = embeddings); -1 skips one; [] = uniform.
    layer_map: list[int] = field(default_factory=list)

    def kd_lambdas(self) -> dict[str, float]:
        return {
            "kd_mlm": self.lambda_kd_mlm,
            "kd_mvm": self.lambda_kd_mvm,
            "kd_caption": self.lambda_kd_caption,
            "kd_align": self.lambda_kd_align,
            "hidden": self.lambda_hidden,
            "attention": self.lambda_attention,
        }


# ---------------------------------------------------------------------------------------------
# Layer mappings
# ---------------------------------------------------------------------------------------------


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's g(m) = m * N / M: embeddings to embeddings, student layer m to teacher layer m*N/M
    (the last to the last)."""
    return [m * teacher_layers // student_layers for m in range(student_layers + 1)]


def resolve_layer_map(layer_map: list[int], student_layers: int, teacher_layers: int) -> list[int]:
    """The configured map, or the uniform one when empty; ValueError (one line) when it does not fit."""
    if not layer_map:
        return uniform_layer_map(student_layers, teacher_layers)
    if len(layer_map) != student_layers + 1:
        raise ValueError(
            f"layer_map needs {student_layers + 1} entries (student embeddings + {student_layers} "
            f"layers), got {len(layer_map)}"
        )
    bad = [t for t in layer_map if not -1 <= t <= teacher_layers]
    if bad:
        raise ValueError(f"layer_map entries must be -1 or teacher hidden-state indices 0..{teacher_layers}, got {bad}")
    if all(t < 0 for t in layer_map):
        raise ValueError("layer_map skips every student layer; set lambda_hidden=0 instead")
    return list(layer_map)


def init_layer_sources(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (0-based) each student layer is copied from: every other layer for a half-depth
    student (DistilBERT), evenly spaced otherwise."""
    if student_layers > teacher_layers:
        raise ValueError(
            f"a {student_layers}-layer student cannot be initialised from a {teacher_layers}-layer teacher"
        )
    return [j * teacher_layers // student_layers for j in range(student_layers)]


def init_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module) -> list[int]:
    """DistilBERT's initialisation for a student as wide as its teacher: embeddings, pooler and heads
    copied, student layer j from teacher layer j*N/M. Works on ZeRO-3-partitioned models (copy_param
    gathers both sides). Returns the teacher layers used."""
    from videobert_ds.model.init_weights import copy_module, copy_param

    sources = init_layer_sources(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    for j, k in enumerate(sources):
        copy_module(student.bert.encoder.layer[j], teacher.bert.encoder.layer[k])
    for name in ("bert.embeddings", "bert.pooler", "cls", "alignment", "feature_head"):
        copy_module(student.get_submodule(name), teacher.get_submodule(name))
    if student.alignment_text is not None and teacher.alignment_text is not None:
        copy_module(student.alignment_text, teacher.alignment_text)
        copy_module(student.alignment_video, teacher.alignment_video)
        copy_param(student.alignment_scale, teacher.alignment_scale)
    return sources


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions over the last dim, x T^2,
    averaged over rows (0 for no rows)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_row = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    return per_row.sum() / max(per_row.shape[0], 1) * t * t


def binary_soft_kl(student_logit: torch.Tensor, teacher_logit: torch.Tensor, temperature: float) -> torch.Tensor:
    """soft_kl for one binary logit per row, as the 2-class distribution softmax([0, logit])."""

    def two_class(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(x), x], dim=-1)

    return soft_kl(two_class(student_logit), two_class(teacher_logit), temperature)


def hidden_mse(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    projection: torch.nn.Module,
    layer_map: list[int],
    valid: torch.Tensor,
) -> torch.Tensor:
    """Mean over mapped layers of the MSE between projected student states and teacher states at the
    valid (non-padding) positions; the projection is shared by all layers (TinyBERT's W_h). `valid` holds the
    flat indices of those positions in (B * L) (layout.SELECTIONS' valid_index: gathered, counted on the host)."""
    losses = []
    count = max(valid.shape[0], 1)
    for s_idx, t_idx in enumerate(layer_map):
        if t_idx < 0:
            continue
        s_h, t_h = student_hidden[s_idx], teacher_hidden[t_idx]
        pred = projection(s_h.reshape(-1, s_h.shape[-1]).index_select(0, valid)).float()
        target = t_h.reshape(-1, t_h.shape[-1]).index_select(0, valid).float()
        losses.append(F.mse_loss(pred, target, reduction="sum") / (count * target.shape[-1]))
    return torch.stack(losses).mean()


def attention_kl(
    student_attn: tuple[torch.Tensor, ...],
    teacher_attn: tuple[torch.Tensor, ...],
    layer_map: list[int],
    valid: torch.Tensor,
    eps: float = 1e-12,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (each query row is a distribution over
    keys), averaged over heads and valid queries ((B, L) bool), then over mapped transformer layers (the embedding
    entry of the map has no attention). Per head when both models have as many heads; otherwise the
    head-averaged distributions are compared (still distributions, so the KL stays meaningful). Padding queries
    are weighted out rather than indexed out, so nothing here reads the device on the host."""
    losses = []
    weight = valid.float()[:, None, :]  # (B, 1, L)
    for s_idx, t_idx in enumerate(layer_map):
        if s_idx == 0 or t_idx <= 0:
            continue
        p_s, p_t = student_attn[s_idx - 1].float(), teacher_attn[t_idx - 1].float()  # (B, heads, L, L)
        if p_s.shape[1] != p_t.shape[1]:
            p_s, p_t = p_s.mean(1, keepdim=True), p_t.mean(1, keepdim=True)
        # Masked keys have p = 0 in both: xlogy makes 0 * log 0 = 0, the clamp keeps log p_s finite there.
        kl = (torch.xlogy(p_t, p_t) - p_t * torch.log(p_s.clamp_min(eps))).sum(-1)  # (B, heads, L)
        losses.append((kl * weight).sum() / (weight.sum() * kl.shape[1]).clamp_min(1))
    if not losses:
        raise ValueError("attention KL needs at least one student transformer layer mapped to a teacher layer")
    return torch.stack(losses).mean()


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean (B, 1, L, L) may-attend mask as the additive float mask eager attention expects: eager
    attention adds the mask to the scores, so a boolean one would add 1/0 instead of masking (SDPA accepts
    either, and gives the same result with this one)."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


# ---------------------------------------------------------------------------------------------
# All distillation terms of one batch
# ---------------------------------------------------------------------------------------------


def distillation_losses(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    student_out,
    teacher_out,
    inputs: dict[str, torch.Tensor],
    cfg: DistillConfig,
    projection: torch.nn.Module,
    layer_map: list[int],
) -> dict[str, torch.Tensor]:
    """Every distillation term (undetached, unweighted) plus "loss_kd", their weighted sum.

    `student_out` / `teacher_out` are the encoders' outputs with `hidden_states` (and `attentions` when
    lambda_attention > 0); the teacher's were computed without grad and its heads run without grad here.
    Both models share the vocabulary, so logits are compared over the same slice: the text vocabulary for
    masked words and captioning, the visual words for masked visual words. Alignment is compared on the
    rows that carry an alignment label (joint, non-captioning rows), where the teacher was trained on it.
    """
    from videobert_ds.objectives.layout import IGNORE, selection

    text_vocab, vocab = student.config.text_vocab_size, student.config.vocab_size
    s_h, t_h = student_out.last_hidden_state, teacher_out.last_hidden_state
    hs, ht = s_h.reshape(-1, s_h.shape[-1]), t_h.reshape(-1, t_h.shape[-1])
    index = {
        "kd_mlm": selection(inputs, "mlm_index", inputs["mlm_labels"] != IGNORE),
        "kd_caption": selection(inputs, "caption_index", inputs["caption_labels"] != IGNORE),
        "kd_mvm": selection(inputs, "mvm_index", inputs["mvm_labels"] != IGNORE),
    }
    # One head call per model and vocabulary slice: the text rows for masked words and captioning together, the
    # visual rows for masked visual words (the decoder is the largest matrix of a small model; only the rows a
    # loss reads are computed). Row counts are the index lengths, known on the host.
    text = torch.cat([index["kd_mlm"], index["kd_caption"]])
    s_text = student.token_logits(hs.index_select(0, text), 0, text_vocab)
    s_vis = student.token_logits(hs.index_select(0, index["kd_mvm"]), text_vocab, vocab)
    with torch.no_grad():
        t_text = teacher.token_logits(ht.index_select(0, text), 0, text_vocab)
        t_vis = teacher.token_logits(ht.index_select(0, index["kd_mvm"]), text_vocab, vocab)
    n_mlm = index["kd_mlm"].shape[0]
    out: dict[str, torch.Tensor] = {}
    out["kd_mlm"] = soft_kl(s_text[:n_mlm], t_text[:n_mlm], cfg.temperature)
    out["kd_mvm"] = soft_kl(s_vis, t_vis, cfg.temperature)
    out["kd_caption"] = soft_kl(s_text[n_mlm:], t_text[n_mlm:], cfg.temperature)

    rows = selection(inputs, "align_index", inputs["align_labels"] >= 0)
    ids, types = inputs["input_ids"], inputs["token_type_ids"]
    s_align = student.alignment_logits(s_h, student_out.pooler_output, ids, types)
    with torch.no_grad():
        t_align = teacher.alignment_logits(t_h, teacher_out.pooler_output, ids, types)
    out["kd_align"] = binary_soft_kl(s_align.index_select(0, rows), t_align.index_select(0, rows), cfg.temperature)

    valid = inputs["input_ids"] != student.config.pad_token_id
    valid_index = selection(inputs, "valid_index", valid)
    out["hidden"] = hidden_mse(student_out.hidden_states, teacher_out.hidden_states, projection, layer_map, valid_index)
    if cfg.lambda_attention > 0:
        out["attention"] = attention_kl(student_out.attentions, teacher_out.attentions, layer_map, valid)
    lambdas = cfg.kd_lambdas()
    out["loss_kd"] = sum(lambdas[k] * v for k, v in out.items())
    return out


class DistillationObjective(nn.Module):
    """Teacher (frozen, always in eval mode) + student + the projection student width -> teacher width."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, objective: ObjectiveConfig, distill: DistillConfig
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.projection = nn.Linear(student.config.hidden_size, teacher.config.hidden_size)
        self.objective = objective
        self.distill = distill
        self.layer_map = resolve_layer_map(
            distill.layer_map, student.config.num_hidden_layers, teacher.config.num_hidden_layers
        )

    def train(self, mode: bool = True) -> DistillationObjective:
        super().train(mode)
        self.teacher.eval()  # no dropout in the targets
        return self

    def _encode(self, model: nn.Module, inputs: dict[str, torch.Tensor], mask: torch.Tensor):
        return model.bert(
            input_ids=inputs["input_ids"],
            token_type_ids=inputs["token_type_ids"],
            attention_mask=mask,
            output_hidden_states=True,
            output_attentions=self.distill.lambda_attention > 0,
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = inputs["attention_mask"]
        if self.distill.lambda_attention > 0:  # eager attention (for the probabilities) needs an additive mask
            mask = additive_mask(mask, self.student.dtype)
        with torch.no_grad():
            t_out = self._encode(self.teacher, inputs, mask)
        s_out = self._encode(self.student, inputs, mask)
        out = losses_from_outputs(self.student, s_out.last_hidden_state, s_out.pooler_output, inputs, self.objective)
        out["loss_gt"] = out.pop("loss")
        kd = distillation_losses(
            self.student, self.teacher, s_out, t_out, inputs, self.distill, self.projection, self.layer_map
        )
        out["loss"] = out["loss_gt"] + kd["loss_kd"]
        out.update({k: v.detach() for k, v in kd.items()})
        out["loss_gt"] = out["loss_gt"].detach()
        out["skipped_samples"] = inputs["skipped_samples"]
        return out


# ---------------------------------------------------------------------------------------------
# Counting and timing
# ---------------------------------------------------------------------------------------------

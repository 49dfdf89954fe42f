"""VideoBERT sequences for evaluation and the one forward that scores them.

Layout, as in pretraining (objectives/layout.py, `joint_inputs`): `[CLS] text [>] video [SEP]`, token type 0
for `[CLS] text` and 1 from `[>]` on, visual word w as token id text_vocab_size + w. Bidirectional attention for
template filling and alignment; captioning's sequence-to-sequence mask for generation, where the text
position k (the `[CLS]` for k = 0) predicts text token k + 1 and the last one predicts `[>]`.

`EvalHeads` is one module with one forward for all three tasks (log-probs of text tokens at chosen
positions + the alignment logit), so the same code runs on a plain model or a DeepSpeed ZeRO-3 engine.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from videobert_ds.data.decoders.base import to_device
from videobert_ds.model.specials import Specials
from videobert_ds.objectives.layout import joint_inputs


class EvalHeads(nn.Module):
    """(input_ids, token_type_ids, attention_mask, positions (B, P)) ->
    (log-probs over the text vocabulary at those positions (B, P, V_text), alignment logits (B,),
    the fine-tuned label heads' logits on [CLS] side by side (B, sum of label-set sizes; (B, 0) without))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden, pooled = self.model(input_ids, token_type_ids, attention_mask)
        picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.model.token_logits(picked)[..., : self.model.config.text_vocab_size]
        heads = getattr(self.model, "label_heads", {})
        labels = [heads[name](pooled).float() for name in heads] or [pooled.new_zeros((pooled.shape[0], 0))]
        return (
            logits.float().log_softmax(-1),
            self.model.alignment_logits(hidden, pooled, input_ids, token_type_ids).float(),
            torch.cat(labels, -1),
        )


def eval_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA device (tensor cores; the heads return fp32 log-probs), nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def score(
    heads: nn.Module, batch: dict[str, torch.Tensor], positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of the heads, without gradients, in bf16 autocast on CUDA; the outputs stay on the device."""
    with torch.no_grad(), eval_autocast(batch["input_ids"].device):
        return heads(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], positions)


# ---------------------------------------------------------------------------------------------
# Zero-shot classification by template filling
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilledTemplate:
    """A template with the target slot as `n` [MASK]s; `positions` are their indices in the text block."""

    text_ids: list[int]
    positions: list[int]


def fill_template(template: str, target: str, n_pieces: int, tokenizer: Any, vocab: Specials) -> FilledTemplate:
    """`template` with `{target}` as n_pieces [MASK]s and every other `{slot}` as one [MASK]
    (VideoBERT masks both the verb and the noun of its template)."""
    ids: list[int] = []
    positions: list[int] = []
    for literal, slot, _, _ in string.Formatter().parse(template):
        if literal.strip():
            ids += tokenizer(literal, add_special_tokens=False)["input_ids"]
        if slot is None:
            continue
        if slot == target:
            positions += list(range(len(ids), len(ids) + n_pieces))
            ids += [vocab.mask] * n_pieces
        else:
            ids.append(vocab.mask)
    if not positions:
        raise ValueError(f"template {template!r} has no {{{target}}} slot")
    return FilledTemplate(ids, positions)


def label_pieces(labels: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Each label word's WordPieces (a word may be several)."""
    pieces = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    for label, p in zip(labels, pieces):
        if not p:
            raise ValueError(f"label {label!r} tokenizes to nothing")
    return pieces


def template_scores(
    heads: nn.Module,
    fills: Sequence[FilledTemplate],
    videos: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    vocab: Specials,
    *,
    max_len: int,
    device: torch.device,
) -> list[list[float]]:
    """For each row: every candidate's mean log-probability over its pieces at the masked slot (all pieces
    masked at once, the video visible). `candidates[r]` lists the piece ids of the labels scored on row r,
    each exactly as long as `fills[r].positions`."""
    batch = joint_inputs([f.text_ids for f in fills], videos, vocab, caption_mode=False, max_len=max_len, device=device)
    width = max(len(f.positions) for f in fills)
    # +1: the text block starts after [CLS]; padded slots point at [CLS] and are never read.
    positions = torch.tensor([[1 + p for p in f.positions] + [0] * (width - len(f.positions)) for f in fills])
    # Every candidate's pieces as one flat (row, slot, token) index and its candidate number, built on the
    # host and copied once: all means are computed on the device and read back together (no per-candidate sync).
    rows, slots, tokens, owner, counts = [], [], [], [], []
    for r, (f, cands) in enumerate(zip(fills, candidates)):
        for pieces in cands:
            if len(pieces) != len(f.positions):
                raise ValueError(f"a candidate of {len(pieces)} pieces for a slot of {len(f.positions)}")
            rows += [r] * len(pieces)
            slots += range(len(pieces))
            tokens += pieces
            owner += [len(counts)] * len(pieces)
            counts.append(len(pieces))
    index = to_device(torch.tensor([rows, slots, tokens, owner], dtype=torch.long), device)
    logp, _, _ = score(heads, batch, to_device(positions, device))
    picked = logp[index[0], index[1], index[2]]
    sums = torch.zeros(len(counts), dtype=picked.dtype, device=picked.device).index_add_(0, index[3], picked)
    means = (sums / to_device(torch.tensor(counts, dtype=picked.dtype), device)).tolist()
    out, start = [], 0
    for cands in candidates:
        out.append(means[start : start + len(cands)])
        start += len(cands)
    return out


# ---------------------------------------------------------------------------------------------
# Retrieval and captioning
# ---------------------------------------------------------------------------------------------


def alignment_scores(
    heads: nn.Module,
    texts: Sequence[Sequence[int]],
    videos: Sequence[Sequence[int]],
    vocab: Specials,
    *,
    max_len: int,
    device: torch.device,
) -> list[float]:
    """The alignment logit of each (text, video) pair."""
    batch = joint_inputs(texts, videos, vocab, caption_mode=False, max_len=max_len, device=device)
    positions = torch.zeros((len(texts), 1), dtype=torch.long, device=device)
    _, align, _ = score(heads, batch, positions)
    return align.tolist()


def caption_step_fn(
    heads: nn.Module, videos: Sequence[Sequence[int]], vocab: Specials, *, max_len: int, device: torch.device
):
    """A generate.StepFn: the next-token log-probs of `[CLS] prefix [>] video [SEP]` in captioning mode."""

    def step(prefix: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        texts = prefix.tolist()
        rows = [videos[int(s)] for s in sources.tolist()]
        batch = joint_inputs(texts, rows, vocab, caption_mode=True, max_len=max_len, device=device)
        positions = torch.full((len(texts), 1), prefix.shape[1], dtype=torch.long, device=device)
        logp, _, _ = score(heads, batch, positions)
        return logp[:, 0]

    return step

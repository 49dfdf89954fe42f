"""Initialising VideoBERT parameters from other checkpoints, partitioned (ZeRO-3) or whole.

Both the text-side initialisation (from a local BERT dir) and the student's DistilBERT-style
initialisation (from every other teacher layer) copy tensors between two models whose parameters may
be partitioned; `copy_param` gathers both sides, copies on rank 0 and lets DeepSpeed re-partition.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def _gathered(params: list[nn.Parameter], modify: bool):
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None)


@torch.no_grad()
def copy_param(dst: nn.Parameter, src: torch.Tensor | nn.Parameter) -> None:
    """dst[:n] = src[:n] over the rows both have (e.g. a text-only embedding table into a joint one)."""
    with _gathered([src] if isinstance(src, nn.Parameter) else [], modify=False):
        value = src.detach().clone()
    with _gathered([dst], modify=True):
        if value.shape[1:] != dst.shape[1:]:
            raise ValueError(f"cannot copy a {tuple(value.shape)} tensor into {tuple(dst.shape)}")
        n = min(value.shape[0], dst.shape[0])
        dst[:n].copy_(value[:n].to(dst.device, dst.dtype))


def copy_module(dst: nn.Module, src: nn.Module) -> None:
    """Copy every parameter of `src` into the same-named parameter of `dst`."""
    dst_params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        copy_param(dst_params[name], p)


def copy_text_weights(bert_dir: str, model: nn.Module) -> None:
    """Initialise the encoder from a local BERT checkpoint: all transformer layers, position and type
    embeddings, and the text rows of the word embeddings (the visual rows keep their own init)."""
    from transformers import BertModel

    src = BertModel.from_pretrained(bert_dir, local_files_only=True, add_pooling_layer=False)
    dst = model.bert
    if src.config.hidden_size != dst.config.hidden_size or src.config.num_hidden_layers != dst.config.num_hidden_layers:
        raise ValueError(
            f"{bert_dir}: BERT of {src.config.num_hidden_layers}x{src.config.hidden_size} does not match "
            f"the model's {dst.config.num_hidden_layers}x{dst.config.hidden_size}"
        )
    if src.config.vocab_size > model.config.text_vocab_size:
        raise ValueError(
            f"{bert_dir}: its {src.config.vocab_size}-token vocabulary is larger than the text tokenizer's "
            f"{model.config.text_vocab_size}; use its tokenizer (text.tokenizer={bert_dir})"
        )
    copy_module(dst.encoder, src.encoder)
    copy_module(dst.embeddings.LayerNorm, src.embeddings.LayerNorm)
    copy_param(dst.embeddings.word_embeddings.weight, src.embeddings.word_embeddings.weight)
    copy_param(dst.embeddings.position_embeddings.weight, src.embeddings.position_embeddings.weight)
    copy_param(dst.embeddings.token_type_embeddings.weight, src.embeddings.token_type_embeddings.weight[:1])
    log.info("initialised the text side from %s", bert_dir)

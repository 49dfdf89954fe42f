"""A tiny VideoBERT and its special tokens, for in-process unit tests."""

from __future__ import annotations

import torch
from transformers import BertConfig

from videobert_ds.model.specials import Specials
from videobert_ds.model.videobert import VideoBertForPreTraining, videobert_config

SP = Specials(cls=2, sep=3, mask=4, pad=0, video_sep=5, text_vocab_size=40, visual_vocab_size=16, first_regular_text=6)


def tiny_config() -> BertConfig:
    return videobert_config(
        text_vocab_size=40,
        visual_vocab_size=16,
        visual_feature_dim=8,
        special_token_ids={"cls": 2, "sep": 3, "mask": 4, "pad": 0, "video_sep": 5},
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        video_position_offset=26,
    )


def tiny_model(seed: int = 0) -> VideoBertForPreTraining:
    torch.manual_seed(seed)
    return VideoBertForPreTraining(tiny_config()).eval()

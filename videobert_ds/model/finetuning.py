"""VideoBERT with downstream task heads, for the `finetune` stage.

The pretrained model keeps its own heads, and the tasks use them where they fit:
  captioning   the masked-token head in sequence-to-sequence mode (the pretraining captioning loss)
  video QA     the masked-token head: each candidate answer fills a masked slot after the question and
               scores the mean log-probability of its WordPieces given the video (template filling)
  retrieval    the alignment head on the pooled [CLS]
and adds one linear classifier per label set on the pooled [CLS] (`config.finetune_label_sets`, label set
-> label names, saved in config.json). A fine-tuned dir still loads as `VideoBertForPreTraining` and as
`transformers.BertModel` (the extra heads are then ignored).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig

from videobert_ds.model.videobert import VideoBertForPreTraining


class VideoBertForFinetuning(VideoBertForPreTraining):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        label_sets: dict[str, list[str]] = dict(getattr(config, "finetune_label_sets", None) or {})
        self.label_heads = nn.ModuleDict(
            {name: nn.Linear(config.hidden_size, len(labels)) for name, labels in label_sets.items()}
        )
        config.architectures = ["VideoBertForFinetuning"]
        # No second post_init(): from_pretrained initialises the new heads as missing weights.

    @property
    def label_sets(self) -> dict[str, list[str]]:
        return dict(getattr(self.config, "finetune_label_sets", None) or {})

    def label_logits(self, name: str, pooled: torch.Tensor) -> torch.Tensor:
        return self.label_heads[name](pooled)

"""VideoBERT-DS: VideoBERT teacher pretraining and student distillation with DeepSpeed ZeRO-3."""

__version__ = "0.1.0"

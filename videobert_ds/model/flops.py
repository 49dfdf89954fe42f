"""The transformer compute count every stage reports for throughput and MFU, in one place.

Per token: 2 FLOPs per multiply-add of the weights (attention projections 4 h^2, MLP 2 h i per layer) and the
attention scores and values over the padded sequence (2 x 2 h L per layer); a training step is forward +
backward = 3x the forward. Heads and embeddings are left out (the usual convention).
"""

from __future__ import annotations


def transformer_flops_per_token(layers: int, hidden: int, intermediate: int, seq_len: int, *, training: bool) -> int:
    weights = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = layers * hidden * seq_len
    return (6 * weights + 12 * attention) if training else (2 * weights + 4 * attention)

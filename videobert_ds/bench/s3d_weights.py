"""Random S3D weights in torchvision's state-dict layout, for benchmarks and tests that need the paper's clip
encoder without its Kinetics weights (none can be downloaded here). The cost of a forward does not depend on the
weights; BatchNorm statistics are calibrated on random clips so that features vary from clip to clip (with the
default statistics every clip's features are almost the same, and k-means finds one word)."""

from __future__ import annotations

from pathlib import Path

import torch

from videobert_ds.visual.s3d import s3d_features


def random_s3d_state(seed: int, frames: int = 8, size: int = 32) -> dict[str, torch.Tensor]:
    """A random S3D in torchvision's state-dict layout (classifier included), BatchNorm statistics calibrated
    on 4 random clips of `frames` frames of `size` pixels (the smallest S3D input by default)."""
    torch.manual_seed(seed)
    trunk = s3d_features()
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = None  # cumulative average over the calibration batch
    trunk.train()
    with torch.no_grad():
        trunk(torch.randn(4, 3, frames, size, size))
    state = {f"features.{k}": v.clone() for k, v in trunk.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(400, 1024, 1, 1, 1)  # torchvision's head: dropped on load
    state["classifier.1.bias"] = torch.zeros(400)
    return state


def write_random_s3d(path: str | Path, seed: int = 0) -> Path:
    """`random_s3d_state(seed)` saved with torch.save at `path` (as torchvision's `.pth` files are); -> path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_s3d_state(seed), path)
    return path

"""S3D clip encoder: 1024-d globally pooled features of the S3D backbone, from a local weights file.

The backbone is torchvision's S3D (`torchvision.models.video.s3d`, Xie et al. 2018) rebuilt here with the
same module tree, so its state-dict keys and shapes are exactly torchvision's: a file saved from
`torchvision.models.video.s3d(weights=...).state_dict()` (e.g. the Kinetics-400 `s3d-d76dad2f.pth`)
loads as is. It is rebuilt rather than imported because the only torchvision wheels installable here are
CUDA builds, which fail to import next to the CPU torch build (`operator torchvision::nms does not
exist`) and then also break `transformers` model imports in the same environment; tests pin the key
and shape set against torchvision's (tests/test_tokenizer.py).

Input normalisation is torchvision's S3D preset (VideoClassification): uint8 -> [0, 1] float, then
per-channel mean (0.43216, 0.394666, 0.37645) / std (0.22803, 0.22145, 0.216989), layout (N, C, T, H, W).
The preset's 256 resize + 224 centre crop is optional here (`resize`), since frames usually arrive at the
corpus size already. Features are the average over (T, H, W) of the last feature map (the input of the
classifier), as VideoBERT takes them: any clip of >= 8 frames and >= 32 pixels gives one 1024-d vector.

An exported model dir carries its S3D encoder as a folder (`save_dir`): `config.json` (`encoder_type: s3d`,
frames per clip, resize) + `model.safetensors` (the `features.*` tensors), which `S3DEncoder.from_dir` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from videobert_ds.core.atomic import save_safetensors, write_json
from videobert_ds.visual.encoders import ClipEncoder

MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)
FEATURE_DIM = 1024
ENCODER_TYPE = "s3d"  # the `encoder_type` an exported S3D encoder dir's config.json names
WEIGHTS_FILE = "model.safetensors"


def _conv_bn_relu(cin: int, cout: int, kernel, stride=1, padding=0) -> nn.Sequential:
    # torchvision's Conv3dNormActivation: conv (no bias) -> BatchNorm3d(eps=1e-3, momentum=1e-3) -> ReLU.
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm3d(cout, eps=0.001, momentum=0.001),
        nn.ReLU(inplace=True),
    )


def _sep_conv(cin: int, cout: int, k: int, stride: int, padding: int) -> nn.Sequential:
    """Spatial (1,k,k) then temporal (k,1,1) convolution (torchvision's TemporalSeparableConv)."""
    return nn.Sequential(
        _conv_bn_relu(cin, cout, (1, k, k), (1, stride, stride), (0, padding, padding)),
        _conv_bn_relu(cout, cout, (k, 1, 1), (stride, 1, 1), (padding, 0, 0)),
    )


class _SepInception(nn.Module):
    """torchvision's SepInceptionBlock3D: four branches concatenated along channels."""

    def __init__(self, cin: int, b0: int, b1m: int, b1: int, b2m: int, b2: int, b3: int) -> None:
        super().__init__()
        self.branch0 = _conv_bn_relu(cin, b0, 1)
        self.branch1 = nn.Sequential(_conv_bn_relu(cin, b1m, 1), _sep_conv(b1m, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(_conv_bn_relu(cin, b2m, 1), _sep_conv(b2m, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), _conv_bn_relu(cin, b3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


def s3d_features() -> nn.Sequential:
    """The S3D feature trunk, module-for-module as torchvision's `S3D.features` (input (N, 3, T, H, W))."""
    return nn.Sequential(
        _sep_conv(3, 64, 7, 2, 3),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        _conv_bn_relu(64, 64, 1),
        _sep_conv(64, 192, 3, 1, 1),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        _SepInception(192, 64, 96, 128, 16, 32, 32),
        _SepInception(256, 128, 128, 192, 32, 96, 64),
        nn.MaxPool3d((3, 3, 3), (2, 2, 2), (1, 1, 1)),
        _SepInception(480, 192, 96, 208, 16, 48, 64),
        _SepInception(512, 160, 112, 224, 24, 64, 64),
        _SepInception(512, 128, 128, 256, 24, 64, 64),
        _SepInception(512, 112, 144, 288, 32, 64, 64),
        _SepInception(528, 256, 160, 320, 32, 128, 128),
        nn.MaxPool3d((2, 2, 2), (2, 2, 2), (0, 0, 0)),
        _SepInception(832, 256, 160, 320, 32, 128, 128),
        _SepInception(832, 384, 192, 384, 48, 128, 128),
    )


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors file or a torch file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"S3D weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read S3D weights file {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"S3D weights file {path} does not hold a state dict of tensors")
    return state


def read_dir_config(path: str | os.PathLike) -> dict:
    """config.json of an encoder dir as a dict ({} when there is none or it is not a JSON object)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


class S3DEncoder(ClipEncoder):
    """Frozen S3D backbone -> 1024-d clip features; `weights` is a local file (required: no downloads)."""

    name = "s3d"
    feature_dim = FEATURE_DIM

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        frames_per_clip: int = 30,
        resize: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if frames_per_clip < 8:
            raise ValueError(f"S3D needs clips of >= 8 frames (temporal stride 8), got {frames_per_clip}")
        self.frames_per_clip = int(frames_per_clip)
        if resize and (len(resize) != 2 or min(int(v) for v in resize) < 32):
            raise ValueError(f"S3D resize must be [height, width], each >= 32 pixels, got {list(resize)}")
        self.resize = (int(resize[0]), int(resize[1])) if resize else None
        self.features = s3d_features()
        self._load(weights)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def _load(self, weights: str | os.PathLike) -> None:
        state = load_weights_file(weights)
        # Accept a whole torchvision S3D state dict (classifier included) or only its `features.*` part.
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        own = self.features.state_dict()
        want = {f"features.{k}": v for k, v in own.items()}
        missing = sorted(set(want) - set(state))
        unexpected = sorted(set(state) - set(want))
        wrong = sorted(k for k in set(want) & set(state) if tuple(state[k].shape) != tuple(want[k].shape))
        if missing or unexpected or wrong:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
                if keys:
                    parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
            raise ValueError(f"S3D weights file {weights} does not match torchvision's S3D: " + ", ".join(parts))
        self.features.load_state_dict({k[len("features.") :]: v for k, v in state.items()})

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> S3DEncoder:
        """An S3D encoder dir written by `save_dir` (e.g. an exported model dir's clip_encoder/)."""
        cfg = read_dir_config(path)
        if cfg.get("encoder_type") != ENCODER_TYPE:
            raise ValueError(f"{path} is not an S3D encoder dir (config.json encoder_type {cfg.get('encoder_type')!r})")
        return cls(Path(path) / WEIGHTS_FILE, frames_per_clip=int(cfg["frames_per_clip"]), resize=cfg.get("resize"))

    def save_dir(self, out: str | os.PathLike) -> Path:
        """Write the encoder as a folder (config.json + model.safetensors of the `features.*` tensors): the layout
        a model dir's clip_encoder/ has, so checking and copying it works as for the autoencoder's."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {f"features.{k}": v.detach().cpu().contiguous() for k, v in self.features.state_dict().items()}
        save_safetensors(state, out / WEIGHTS_FILE, {"format": "pt"})
        config = {
            "encoder_type": ENCODER_TYPE,
            "frames_per_clip": self.frames_per_clip,
            "feature_dim": self.feature_dim,
            "resize": list(self.resize) if self.resize else None,
        }
        write_json(out / "config.json", config)
        return out

    def identity(self) -> dict:
        ident = super().identity()
        if self.resize is not None:  # the resize changes every feature; absent when off (older vocabularies)
            ident["resize"] = list(self.resize)
        return ident

    def train(self, mode: bool = True) -> S3DEncoder:
        # A frozen feature extractor: BatchNorm must keep its running statistics.
        return super().train(False)

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"clips must be (N, T, H, W, 3) uint8, got {tuple(clips.shape)}")
        x = clips.to(self.mean.device).permute(0, 4, 1, 2, 3).float().div_(255.0)  # (N, C, T, H, W)
        if self.resize is not None:
            n, c, t = x.shape[:3]
            x = x.transpose(1, 2).reshape(n * t, c, *x.shape[3:])
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
            x = x.reshape(n, t, c, *self.resize).transpose(1, 2)
        x = (x - self.mean) / self.std
        return self.features(x).mean(dim=(2, 3, 4))

"""Stage 2, `build_vocab`: every rank encodes the clips of its own shards with the frozen clip encoder,
then a distributed hierarchical k-means turns the features into the visual vocabulary.

Writes RUN_DIR/vocab.safetensors (the vocabulary contract), RUN_DIR/vocab_keyframes.safetensors (per
word, a thumbnail of the middle frame of the training clip nearest its centroid: what text -> video
generation shows) and RUN_DIR/vocab_report.json: clip and word counts, and where the samples carry labels
(the synthetic corpus: colour, shape, motion), the normalised mutual information between word ids and each
label beside the same figure with the labels shuffled.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.training.stage import Stage
from videobert_ds.visual.encoders import ClipEncoder
from videobert_ds.visual.loading import ENCODER_TYPES, load_encoder

log = logging.getLogger(__name__)


@dataclass
class EncoderConfig:
    type: str = "autoencoder"  # "autoencoder" (an exported stage-1 dir) or "s3d" (torchvision S3D + local weights)
    path: str = "runs/video_encoder/final"  # the autoencoder dir, or the S3D weights file


@dataclass
class KMeansConfig:
    depth: int = 4
    branching: int = 12
    max_iter: int = 25
    tol: float = 1e-4
    max_clips_per_rank: int = 0  # 0 = every clip of the rank's shards


@dataclass
class BuildVocabStageConfig(StageConfig):
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    encode_batch_size: int = 32
    # Height of each word's key-frame thumbnail (width keeps the aspect ratio); 0 = no key frames file.
    # Every encoded clip's thumbnail is held in host memory until the tree is fit: clips x size^2 x 3 bytes
    # per rank (12 KiB a clip at 64).
    keyframe_size: int = 64


@dataclass
class EncodedClips:
    """One rank's encoded clips, row i of each field describing the same clip."""

    features: torch.Tensor  # (N, D) float32 on the device
    labels: list[dict]  # the sample's labels (may be empty)
    clips: list[tuple[str, int]]  # (sample key, clip index within the sample)
    thumbs: torch.Tensor  # (N, h, w, 3) uint8 on the CPU: middle frames; (N, 0, 0, 3) without key frames


def load_clip_encoder(cfg: EncoderConfig) -> ClipEncoder:
    if cfg.type not in ENCODER_TYPES:
        raise ConfigError(f"encoder.type: {cfg.type!r} is not one of {', '.join(ENCODER_TYPES)}")
    try:
        return load_encoder(cfg.type, cfg.path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"encoder.path: {err}") from None


def nmi_report(words: np.ndarray, labels: dict[str, list[str]], seed: int) -> dict[str, dict[str, float]]:
    """NMI(word ids; label) per attribute, beside NMI with the labels shuffled (the chance level)."""
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(seed)
    out = {}
    for name, values in labels.items():
        values = np.asarray(values)
        out[name] = {
            "nmi": float(normalized_mutual_info_score(values, words)),
            "nmi_shuffled": float(normalized_mutual_info_score(rng.permutation(values), words)),
        }
    return out


class BuildVocabStage(Stage):
    name = "build_vocab"
    config_cls = BuildVocabStageConfig
    cfg: BuildVocabStageConfig
    trains = False

    def check(self) -> None:
        k = self.cfg.kmeans
        if k.depth < 1 or k.branching < 2:
            raise ConfigError(f"kmeans: need depth >= 1 and branching >= 2, got {k.depth} and {k.branching}")
        if self.cfg.keyframe_size < 0:
            raise ConfigError(f"keyframe_size: must be >= 0 (0 = no key frames), got {self.cfg.keyframe_size}")
        if self.cfg.encoder.type == "autoencoder":
            load_clip_encoder(self.cfg.encoder)
        elif not Path(self.cfg.encoder.path).is_file():
            raise ConfigError(f"encoder.path: S3D weights file not found: {self.cfg.encoder.path}")

    def loader_batch_size(self, ds_config: dict, world_size: int) -> int | None:
        return self.cfg.encode_batch_size

    def build_module(self) -> nn.Module:  # no trainable module: build_vocab does not train
        raise NotImplementedError("build_vocab has no training module")

    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError("build_vocab has no training inputs")

    def export(self, module: nn.Module, out_dir: Path) -> None:
        raise NotImplementedError("build_vocab exports a vocabulary file, not a model")

    @torch.no_grad()
    def encode_split(self, encoder, rank: int, world: int, device: torch.device) -> EncodedClips:
        """This rank's valid clips: features, labels, identities and middle-frame thumbnails."""
        from videobert_ds.data.loader import build_clip_loader
        from videobert_ds.visual.keyframes import thumbnails

        d = self.cfg.data
        loader = build_clip_loader(
            d.shards,
            d.train_split,
            self.cfg.encode_batch_size,
            d.num_frames,
            rank=rank,
            world_size=world,
            seed=self.cfg.run.seed,
            shuffle=False,
            backend=d.backend,
            device=device,
            num_threads=d.num_threads,
            prefetch=d.prefetch,
        )
        fpc = encoder.frames_per_clip
        size = self.cfg.keyframe_size
        feats, labels, clips, thumbs = [], [], [], []
        cap = self.cfg.kmeans.max_clips_per_rank
        for batch in tqdm(loader, desc="encoding clips", disable=rank != 0, total=loader.steps_per_epoch):
            f = encoder(batch.frames)  # (B, n, D)
            n = f.shape[1]
            valid = (torch.arange(n, device=f.device)[None] + 1) * fpc <= batch.num_frames[:, None].to(f.device)
            feats.append(f[valid].float())
            if size:  # clip c spans frames [c * fpc, (c + 1) * fpc): keep its middle one
                middle = torch.arange(n, device=batch.frames.device) * fpc + fpc // 2
                frames = batch.frames[:, middle][valid.to(batch.frames.device)]  # (valid clips, H, W, C)
                thumbs.append(thumbnails(frames, size).cpu())
            for meta, row in zip(batch.meta, valid.cpu()):
                labels += [meta.get("labels", {})] * int(row.sum())
                clips += [(str(meta["__key__"]), c) for c in row.nonzero().flatten().tolist()]
            if cap and sum(x.shape[0] for x in feats) >= cap:
                break
        x = torch.cat(feats) if feats else torch.zeros(0, encoder.feature_dim, device=device)
        t = torch.cat(thumbs) if thumbs else torch.zeros((x.shape[0], 0, 0, 3), dtype=torch.uint8)
        if cap:
            x, labels, clips, t = x[:cap], labels[:cap], clips[:cap], t[:cap]
        return EncodedClips(x, labels, clips, t)

    def run(self, run_dir: Path, rank: int, world: int, device: torch.device) -> dict[str, Any]:
        from videobert_ds.visual.keyframes import keyframes_path, select_keyframes
        from videobert_ds.visual.vocab import VisualVocabulary

        started = time.perf_counter()
        encoder = load_clip_encoder(self.cfg.encoder).to(device)
        enc = self.encode_split(encoder, rank, world, device)
        x, labels = enc.features, enc.labels
        encoded_s = time.perf_counter() - started
        k = self.cfg.kmeans
        vocab = VisualVocabulary.fit(
            x, encoder, depth=k.depth, branching=k.branching, seed=self.cfg.run.seed, max_iter=k.max_iter, tol=k.tol
        )
        words = vocab.to(device).assign(x)  # the same method the VisualTokenizer uses in training
        keyframes = None
        if self.cfg.keyframe_size:  # a collective: every rank takes part
            keyframes = select_keyframes(x, enc.thumbs, enc.clips, vocab.tree.leaves.to(device))

        # Rank 0 gathers (word, labels) pairs for the report; a clip count per rank first (sizes differ).
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (words.cpu().tolist(), labels))
        report: dict[str, Any] = {}
        if rank == 0:
            all_words = np.array([w for ws, _ in gathered for w in ws])
            all_labels = [lab for _, ls in gathered for lab in ls]
            names = sorted({name for lab in all_labels for name in lab})
            labelled = {n: [lab.get(n, "") for lab in all_labels] for n in names}
            report = {
                "vocab_size": vocab.size,
                "depth": vocab.depth,
                "branching": vocab.branching,
                "feature_dim": vocab.feature_dim,
                "clips": int(len(all_words)),
                "words_used": int(len(np.unique(all_words))),
                "encoder": vocab.encoder,
                "seconds": {"encode": encoded_s, "total": time.perf_counter() - started},
                "clips_per_s_encode": len(all_words) / max(encoded_s, 1e-9),
                "nmi": nmi_report(all_words, labelled, self.cfg.run.seed) if names else {},
            }
            vocab.save(run_dir / "vocab.safetensors")
            if keyframes is not None:
                path = keyframes.save(keyframes_path(run_dir / "vocab.safetensors"))
                report["keyframes"] = {
                    "file": path.name,
                    "frame_size": list(keyframes.frames.shape[1:3]),
                    "mean_distance": float(keyframes.distances.mean()),
                }
            tmp = run_dir / ".vocab_report.json.tmp"
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(run_dir / "vocab_report.json")
            log.info(
                "visual vocabulary: %d words (%d used) from %d clips -> %s",
                vocab.size,
                report["words_used"],
                report["clips"],
                run_dir / "vocab.safetensors",
            )
            for name, v in report["nmi"].items():
                log.info("  NMI(words; %s) = %.3f   (shuffled labels: %.3f)", name, v["nmi"], v["nmi_shuffled"])
        dist.barrier()
        return report

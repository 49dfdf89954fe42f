"""Stage 2, `build_vocab`: every rank encodes the clips of its own shards with the frozen clip encoder,
then a distributed hierarchical k-means turns the features into the visual vocabulary.

Writes RUN_DIR/vocab.safetensors (the vocabulary contract), RUN_DIR/vocab_keyframes.safetensors (per
word, a thumbnail of the middle frame of the training clip nearest its centroid: what text -> video
generation shows) and RUN_DIR/vocab_report.json: clip and word counts, and where the samples carry labels
(the synthetic corpus: colour, shape, motion), the normalised mutual information between word ids and each
label beside the same figure with the labels shuffled.

The clip features come from the frozen clip encoder named by `encoder.type` and `encoder.path`: an exported
stage-1 autoencoder dir, torchvision-layout S3D weights (the paper's encoder; `encoder.frames_per_clip`,
`encoder.resize`), or a features dir of pre-extracted per-video arrays cut by the samples' times
(`encoder.type: features`, `encoder.rate`, `encoder.clip_seconds`; visual/features.py): no video is decoded
then, and no key frames are written (there are no frames to show).
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
from tqdm import tqdm

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.stages.offline import OfflineStage
from videobert_ds.visual.encoders import ClipEncoder
from videobert_ds.visual.features import FeaturesDir
from videobert_ds.visual.loading import VOCAB_SOURCES, load_encoder
from videobert_ds.visual.vocab import FEATURES_ENCODER

log = logging.getLogger(__name__)


@dataclass
class EncoderConfig:
    # "autoencoder" (an exported stage-1 dir), "s3d" (torchvision-layout S3D weights in a local file) or
    # "features" (a dir of pre-extracted per-video feature arrays, visual/features.py)
    type: str = "autoencoder"
    path: str = "runs/video_encoder/final"  # the autoencoder dir, the S3D weights file or the features dir
    frames_per_clip: int = 0  # S3D's clip length in frames (>= 8; 0 = 30, the paper's); the autoencoder's is fixed
    resize: list[int] = field(default_factory=list)  # S3D: [height, width] to resize frames to (>= 32); [] = as decoded
    rate: float = 0.0  # features: rows per second (0 = the dir's features.json)
    clip_seconds: float = 0.0  # features: clip length in seconds (0 = one row)


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
    if cfg.type not in VOCAB_SOURCES or cfg.type == FEATURES_ENCODER:
        raise ConfigError(f"encoder.type: {cfg.type!r} is not one of {', '.join(VOCAB_SOURCES)}")
    try:
        return load_encoder(cfg.type, cfg.path, frames_per_clip=cfg.frames_per_clip, resize=cfg.resize or None)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"encoder: {err}") from None


def open_features_dir(cfg: EncoderConfig) -> FeaturesDir:
    try:
        return FeaturesDir(cfg.path, rate=cfg.rate, clip_seconds=cfg.clip_seconds)
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


class BuildVocabStage(OfflineStage):
    name = "build_vocab"
    config_cls = BuildVocabStageConfig
    cfg: BuildVocabStageConfig

    def check(self) -> None:
        k = self.cfg.kmeans
        if k.depth < 1 or k.branching < 2:
            raise ConfigError(f"kmeans: need depth >= 1 and branching >= 2, got {k.depth} and {k.branching}")
        if self.cfg.keyframe_size < 0:
            raise ConfigError(f"keyframe_size: must be >= 0 (0 = no key frames), got {self.cfg.keyframe_size}")
        e = self.cfg.encoder
        if e.type not in VOCAB_SOURCES:
            raise ConfigError(f"encoder.type: {e.type!r} is not one of {', '.join(VOCAB_SOURCES)}")
        if e.type != FEATURES_ENCODER and (e.rate or e.clip_seconds):
            raise ConfigError("encoder.rate and encoder.clip_seconds apply to encoder.type features only")
        if e.type != "s3d" and (e.resize or (e.frames_per_clip and e.type == FEATURES_ENCODER)):
            raise ConfigError(f"encoder.resize and encoder.frames_per_clip apply to S3D, not {e.type}")
        if e.type == "s3d":  # S3D weights load in the run: check the cheap things here
            if not Path(e.path).exists():
                raise ConfigError(f"encoder.path: S3D weights file not found: {e.path}")
            if e.frames_per_clip and e.frames_per_clip < 8:
                raise ConfigError(f"encoder.frames_per_clip: S3D needs >= 8 frames, got {e.frames_per_clip}")
            if e.resize and (len(e.resize) != 2 or min(e.resize) < 32):
                raise ConfigError(f"encoder.resize: must be [height, width], each >= 32, got {e.resize}")
        elif e.type == FEATURES_ENCODER:
            open_features_dir(e)
        else:
            load_clip_encoder(e)

    def loader_batch_size(self, ds_config: dict, world_size: int) -> int | None:
        return self.cfg.encode_batch_size

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

    def features_split(self, source: FeaturesDir, rank: int, world: int, device: torch.device) -> EncodedClips:
        """This rank's clips from a features dir: rows cut by the samples' times, no video decoded."""
        from videobert_ds.data.loader import read_shard_manifest
        from videobert_ds.visual.features import iter_clip_features

        d = self.cfg.data
        fps = float(read_shard_manifest(d.shards)["fps"])
        max_clips = d.num_frames // source.frames_per_clip(fps)  # as many clips as data.num_frames frames hold
        feats, labels, clips = [], [], []
        cap = self.cfg.kmeans.max_clips_per_rank
        samples = iter_clip_features(d.shards, d.train_split, source, rank=rank, world_size=world, max_clips=max_clips)
        for meta, f in samples:
            feats.append(f)
            labels += [meta.get("labels", {})] * f.shape[0]
            clips += [(str(meta["__key__"]), c) for c in range(f.shape[0])]
            if cap and len(clips) >= cap:
                break
        x = torch.cat(feats).to(device) if feats else torch.zeros(0, source.feature_dim, device=device)
        if cap:
            x, labels, clips = x[:cap], labels[:cap], clips[:cap]
        return EncodedClips(x, labels, clips, torch.zeros((x.shape[0], 0, 0, 3), dtype=torch.uint8))

    def run(self, run_dir: Path, rank: int, world: int, device: torch.device) -> dict[str, Any]:
        from videobert_ds.data.loader import read_shard_manifest
        from videobert_ds.visual.keyframes import keyframes_path, select_keyframes
        from videobert_ds.visual.vocab import VisualVocabulary

        started = time.perf_counter()
        e = self.cfg.encoder
        source: FeaturesDir | None = None
        if e.type == FEATURES_ENCODER:
            source = open_features_dir(e)
            enc = self.features_split(source, rank, world, device)
            encoder: ClipEncoder | dict = source.identity(float(read_shard_manifest(self.cfg.data.shards)["fps"]))
        else:
            encoder = load_clip_encoder(e).to(device)
            enc = self.encode_split(encoder, rank, world, device)
        x, labels = enc.features, enc.labels
        encoded_s = time.perf_counter() - started
        k = self.cfg.kmeans
        vocab = VisualVocabulary.fit(
            x, encoder, depth=k.depth, branching=k.branching, seed=self.cfg.run.seed, max_iter=k.max_iter, tol=k.tol
        )
        words = vocab.to(device).assign(x)  # the same method the VisualTokenizer uses in training
        keyframes = None
        if self.cfg.keyframe_size and source is None:  # a collective: every rank takes part (no frames: none)
            keyframes = select_keyframes(x, enc.thumbs, enc.clips, vocab.tree.leaves.to(device))

        # Rank 0 gathers (word, labels) pairs for the report; a clip count per rank first (sizes differ).
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (words.cpu().tolist(), labels, source.stats if source else None))
        report: dict[str, Any] = {}
        if rank == 0:
            all_words = np.array([w for ws, _, _ in gathered for w in ws])
            all_labels = [lab for _, ls, _ in gathered for lab in ls]
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
            if source is not None:  # samples seen, skipped for want of a features file, clips made and dropped
                stats = [st for _, _, st in gathered]
                report["features"] = {
                    key: sum(st[key] for st in stats) for key in ("samples", "missing", "clips", "dropped_clips")
                }
                report["features"]["missing_ids"] = [v for st in stats for v in st["missing_ids"]][:5]
                if report["features"]["missing"]:
                    log.warning(
                        "%d of %d samples have no features file in %s (e.g. %s): skipped",
                        report["features"]["missing"],
                        report["features"]["samples"],
                        e.path,
                        ", ".join(report["features"]["missing_ids"]),
                    )
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

"""Stage 2b, `tokenize`: every clip turned into its visual word once, so the stages after it train from token shards
(`data.tokens`) without decoding video or running the clip encoder at every step.

Every rank takes its share of the source shards (shard i goes to rank i % world size), decodes each with the clip
loader's decoder (DALI, or PyAV where DALI cannot read the codec), runs the frozen clip encoder and the vocabulary's
word assignment (the VisualTokenizer the frames path uses, so the ids are the same), and writes one token shard per
source shard (data/tokens.py) under a temporary name, renamed when whole. A shard already written is skipped when
the stage runs again with the same encoder, vocabulary, frame count and source shards (identity.json), so a killed
run resumes; with anything else changed it starts over. Rank 0 writes manifest.json last, and
RUN_DIR/tokenize_report.json (samples, clips, seconds, clips/s).

A vocabulary built from pre-extracted features (build_vocab's encoder.type=features) has no clip encoder: then
`visual.encoder` names the features dir it was built on (checked against the vocabulary's identity), and each
sample's clips are cut from its video's array by the sample's times (visual/features.py) with only the shards'
json members read, no video decoded. A sample whose video has no features file is written with no clips, so the
token shards keep every sample; such samples are counted per shard (shard-NNNNNN.features.json, kept with a
finished shard across a resume) and in total in manifest.json's and the report's `features`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from videobert_ds.core.atomic import atomic_path, write_json
from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.stages.offline import OfflineStage
from videobert_ds.visual.vocab import FEATURES_ENCODER, vocab_metadata

log = logging.getLogger(__name__)

TOKENS_DIR = "tokens"
REPORT = "tokenize_report.json"


@dataclass
class TokenizeVisualConfig:
    # The exported stage-1 clip encoder dir, the vocabulary's S3D weights, or (a features vocabulary) its features dir.
    encoder: str = "runs/video_encoder/final"
    vocab: str = "runs/vocab/vocab.safetensors"  # stage-2 vocabulary file
    clips_per_batch: int = 256  # clips per encoder forward


@dataclass
class TokenizeStageConfig(StageConfig):
    visual: TokenizeVisualConfig = field(default_factory=TokenizeVisualConfig)
    splits: list[str] = field(default_factory=list)  # the splits to tokenize; empty = every split of the shards
    encode_batch_size: int = 32  # samples decoded and encoded together


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather(obj: Any, world: int) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


class TokenizeStage(OfflineStage):
    name = "tokenize"
    config_cls = TokenizeStageConfig
    cfg: TokenizeStageConfig

    def check(self) -> None:
        v = self.cfg.visual
        meta = vocab_metadata(v.vocab)
        from videobert_ds.visual.loading import encoder_problem  # autoencoder dir, S3D weights or S3D encoder dir

        if self.from_features():
            if not Path(self.cfg.data.shards).is_dir():  # the json members are read by seeking in the local tars
                shards = self.cfg.data.shards
                raise ConfigError(f"data.shards: a features vocabulary needs a local shard dir, got {shards}")
            self.features_source()  # the features dir the vocabulary was built on: one line otherwise
        else:
            problem = encoder_problem("auto", v.encoder, meta["encoder"])
            if problem:
                raise ConfigError(f"visual.encoder: {problem}")
        if self.cfg.data.num_frames < meta["frames_per_clip"]:
            raise ConfigError(
                f"data.num_frames ({self.cfg.data.num_frames}) is shorter than one clip ({meta['frames_per_clip']})"
            )
        if self.cfg.encode_batch_size < 1 or v.clips_per_batch < 1:
            raise ConfigError("encode_batch_size and visual.clips_per_batch must be >= 1")
        self.source_shards()  # unknown splits fail here, on every rank, before any work

    # -- what to read --------------------------------------------------------------------------
    def from_features(self) -> bool:
        """Whether the vocabulary was built from a pre-extracted features dir (no clip encoder)."""
        return vocab_metadata(self.cfg.visual.vocab)["encoder"].get("name") == FEATURES_ENCODER

    def features_source(self, device: torch.device | str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
        """(FeaturesDir, vocabulary on `device`, the dir's identity) for a features vocabulary: `visual.encoder` opened
        at the vocabulary's rate and clip length; a missing dir or one other than the vocabulary's is a one-line
        ConfigError."""
        from videobert_ds.visual.features import FeaturesDir
        from videobert_ds.visual.vocab import VisualVocabulary

        v = self.cfg.visual
        vocab = VisualVocabulary.load(v.vocab, device)
        try:
            source = FeaturesDir(v.encoder, rate=vocab.encoder["rate"], clip_seconds=vocab.encoder["clip_seconds"])
            ident = source.identity(float(self.source_manifest()["fps"]))
            vocab.check_encoder(ident)
        except (OSError, ValueError) as err:
            raise ConfigError(f"visual.encoder: {err}") from None
        return source, vocab, ident

    def source_manifest(self) -> dict[str, Any]:
        from videobert_ds.data.loader import read_shard_manifest

        try:
            return read_shard_manifest(self.cfg.data.shards)
        except FileNotFoundError as err:
            raise ConfigError(f"data.shards: {err}") from None

    def source_shards(self) -> list[tuple[dict[str, Any], Any]]:
        """(manifest entry, ShardInfo) of every shard of the chosen splits, in manifest order."""
        from videobert_ds.data.loader import split_shards

        manifest = self.source_manifest()
        present = sorted({e["split"] for e in manifest.get("shards", [])})
        splits = self.cfg.splits or present
        unknown = [s for s in splits if s not in present]
        if unknown:
            where = f"{self.cfg.data.shards} (splits: {', '.join(present)})"
            raise ConfigError(f"splits: {', '.join(unknown)} not in {where}")
        out = []
        for split in splits:
            infos = split_shards(self.cfg.data.shards, manifest, split)
            entries = [e for e in manifest["shards"] if e["split"] == split]
            out += list(zip(entries, infos))
        return out

    def identity(self, encoder_identity: dict[str, Any]) -> dict[str, Any]:
        from videobert_ds.data.tokens import FORMAT, file_sha256, vocab_identity

        meta = vocab_metadata(self.cfg.visual.vocab)
        return {
            "format": FORMAT,
            "encoder": {**encoder_identity, "path": str(Path(self.cfg.visual.encoder).resolve())},
            "vocab": {**vocab_identity(self.cfg.visual.vocab), "size": meta["size"]},
            "num_frames": self.cfg.data.num_frames,
            "frames_per_clip": meta["frames_per_clip"],
            "feature_dim": meta["feature_dim"],
            "source": {
                "shards": str(Path(self.cfg.data.shards).resolve()),
                "manifest_sha256": file_sha256(Path(self.cfg.data.shards) / "manifest.json"),
            },
        }

    # -- the work ------------------------------------------------------------------------------
    def prepare_dir(self, out: Path, ident: dict[str, Any]) -> None:
        """Rank 0, before any rank writes: keep finished shards of the same identity, else start over; drop the
        temporary files of a killed run."""
        from videobert_ds.data.tokens import IDENTITY, IDENTITY_KEYS, MANIFEST

        out.mkdir(parents=True, exist_ok=True)
        for p in out.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink()
        old = out / IDENTITY
        same = old.is_file() and {k: json.loads(old.read_text()).get(k) for k in IDENTITY_KEYS} == {
            k: ident[k] for k in IDENTITY_KEYS
        }
        if not same:
            if old.is_file():
                log.warning("%s: made from other inputs than this run's; tokenizing again from scratch", out)
            (out / MANIFEST).unlink(missing_ok=True)
            for p in [*out.glob("shard-*.tar"), *out.glob("shard-*.features.json")]:
                p.unlink()
            write_json(old, ident)

    def run(self, run_dir: Path, rank: int, world: int, device: torch.device) -> dict[str, Any]:
        from videobert_ds.data.tokens import MANIFEST
        from videobert_ds.visual.loading import load_visual_tokenizer

        started = time.perf_counter()
        v = self.cfg.visual
        features = self.from_features()
        if features:
            source, vocab, encoder_identity = self.features_source(device)
        else:
            tokenizer, _ = load_visual_tokenizer(v.encoder, v.vocab, device, v.clips_per_batch)
            encoder_identity = tokenizer.encoder.identity()
        ident = self.identity(encoder_identity)
        out = run_dir / TOKENS_DIR
        if rank == 0:
            self.prepare_dir(out, ident)
        _barrier()
        shards = self.source_shards()
        mine = shards[rank::world]
        stats = {"samples": 0, "clips": 0, "written": 0, "skipped": 0}
        for entry, info in mine:
            target = out / Path(entry["file"]).name
            if target.is_file():
                stats["skipped"] += 1
                continue
            if features:
                samples, clips = self.features_shard(source, vocab, info, target, device)
            else:
                samples, clips = self.tokenize_shard(tokenizer, info, target, device)
            stats["samples"] += samples
            stats["clips"] += clips
            stats["written"] += 1
        stats["seconds"] = time.perf_counter() - started
        gathered = _gather(stats, world)
        report: dict[str, Any] = {}
        if rank == 0:
            entries = []
            for entry, _ in shards:
                name = Path(entry["file"]).name
                if not (out / name).is_file():
                    raise RuntimeError(f"token shard {out / name} is missing after every rank finished")
                entries.append({"file": name, "split": entry["split"], "num_samples": int(entry["num_samples"])})
            splits: dict[str, int] = {}
            for e in entries:
                splits[e["split"]] = splits.get(e["split"], 0) + e["num_samples"]
            extra = {"features": _features_totals(out, entries)} if features else {}
            write_json(
                out / MANIFEST, {**ident, "total": sum(splits.values()), "splits": splits, "shards": entries, **extra}
            )
            total = {k: sum(g[k] for g in gathered) for k in ("samples", "clips", "written", "skipped")}
            seconds = max(g["seconds"] for g in gathered)
            report = {
                **total,
                "ranks": world,
                "seconds": round(seconds, 3),
                "clips_per_s": round(total["clips"] / max(seconds, 1e-9), 1),
                "samples_per_s": round(total["samples"] / max(seconds, 1e-9), 1),
                "tokens": str(out),
                **extra,
            }
            write_json(run_dir / REPORT, report)
            log.info(
                "tokenized %d samples (%d clips) into %s: %d shards written, %d kept from an earlier run; %.1f clips/s",
                total["samples"],
                total["clips"],
                out,
                total["written"],
                total["skipped"],
                report["clips_per_s"],
            )
        _barrier()
        return report

    @torch.no_grad()
    def tokenize_shard(self, tokenizer: Any, info: Any, target: Path, device: torch.device) -> tuple[int, int]:
        """Decode, encode and assign one source shard; its token shard appears under `target` only when whole.
        -> (samples, valid clips)."""
        import webdataset as wds

        from videobert_ds.data.loader import DecoderChoice, choose_decoder, manifest_frame_size, open_decoder
        from videobert_ds.data.sampling import read_shards
        from videobert_ds.data.tokens import sample_files

        d, fpc = self.cfg.data, tokenizer.frames_per_clip
        manifest = self.source_manifest()
        choice: DecoderChoice = choose_decoder(
            d.backend, manifest.get("codec", "vp9"), device, manifest_frame_size(manifest)
        )
        decoder = open_decoder(
            choice,
            _encoded_batches(read_shards([info]), self.cfg.encode_batch_size),
            batch_size=self.cfg.encode_batch_size,
            num_frames=d.num_frames,
            device=device,
            num_threads=d.num_threads,
            prefetch=d.prefetch,
            pad_mode="constant",
        )
        samples = clips = 0
        try:
            with atomic_path(target) as tmp:
                # An int mtime: a float one costs every member a PAX header, which doubles the tar parsing of a reader.
                writer = wds.TarWriter(str(tmp), mtime=0)
                for frames, raw in decoder:
                    counts = torch.tensor([min(int(m["num_frames"]), d.num_frames) for _, _, m in raw])
                    ids, _, feats = tokenizer(frames, counts, return_features=True)
                    ids, feats = ids.cpu().numpy(), feats.half().cpu().numpy()
                    for i, (key, meta_json, _) in enumerate(raw):
                        n = int(counts[i]) // fpc
                        writer.write({"__key__": key, **sample_files(meta_json, ids[i, :n], feats[i, :n])})
                        clips += n
                    samples += len(raw)
                    if samples >= info.num_samples:
                        break
                writer.close()
                if samples != info.num_samples:
                    raise RuntimeError(f"{info.path} gave {samples} samples, its manifest says {info.num_samples}")
        finally:
            decoder.close()
        return samples, clips

    @torch.no_grad()
    def features_shard(self, source: Any, vocab: Any, info: Any, target: Path, device: torch.device) -> tuple[int, int]:
        """One source shard's samples cut from the features dir (only its json members are read) and assigned their
        words as the VisualTokenizer assigns them; written as tokenize_shard writes, with the shard's counts of
        samples without a features file beside it (features_stats_path). -> (samples, clips)."""
        import webdataset as wds

        from videobert_ds.data.text import tar_json_members
        from videobert_ds.data.tokens import sample_files

        d, fpc = self.cfg.data, vocab.frames_per_clip
        stats: dict[str, Any] = {"samples": 0, "clips": 0, "missing": 0, "missing_ids": []}
        with open(info.path, "rb", buffering=0) as f, atomic_path(target) as tmp:  # unbuffered: clip bytes skipped
            writer = wds.TarWriter(str(tmp), mtime=0)
            members = tar_json_members(f)
            while batch := list(islice(members, self.cfg.encode_batch_size)):
                cut = []
                for _, data in batch:
                    meta = json.loads(data)
                    feats = source.clip_features(meta, d.num_frames // fpc)
                    if feats is None:  # no features file: the sample stays, with no clips
                        stats["missing"] += 1
                        if len(stats["missing_ids"]) < 5 and meta.get("video_id") not in stats["missing_ids"]:
                            stats["missing_ids"].append(meta.get("video_id"))
                        feats = torch.zeros(0, source.feature_dim)
                    # The clips whole within the sample's frames, as the frames path keeps.
                    cut.append(feats[: min(int(meta["num_frames"]), d.num_frames) // fpc])
                counts = [len(c) for c in cut]
                every = torch.cat(cut)
                ids = vocab.assign(every.to(device)).cpu() if len(every) else torch.zeros(0, dtype=torch.long)
                for (name, data), feats, words in zip(batch, cut, ids.split(counts)):
                    key = name[: -len(".json")]
                    writer.write({"__key__": key, **sample_files(data, words.numpy(), feats.numpy())})
                stats["samples"] += len(batch)
                stats["clips"] += sum(counts)
            writer.close()
            if stats["samples"] != info.num_samples:
                raise RuntimeError(f"{info.path} gave {stats['samples']} samples, its manifest says {info.num_samples}")
            write_json(features_stats_path(target), stats)  # before the shard appears: a kept shard has its counts
        return stats["samples"], stats["clips"]


def features_stats_path(shard: Path) -> Path:
    """Where a features-made token shard's counts (samples, clips, samples without a features file) are kept."""
    return shard.with_name(shard.name.removesuffix(".tar") + ".features.json")


def _features_totals(out: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-shard features counts summed over every token shard (this run's and kept ones); each manifest entry
    gets its own `missing_features`."""
    total: dict[str, Any] = {"samples": 0, "clips": 0, "missing": 0, "missing_ids": []}
    for e in entries:
        stats = json.loads(features_stats_path(out / e["file"]).read_text())
        e["missing_features"] = stats["missing"]
        for k in ("samples", "clips", "missing"):
            total[k] += stats[k]
        total["missing_ids"] += [i for i in stats["missing_ids"] if i not in total["missing_ids"]]
    total["missing_ids"] = total["missing_ids"][:5]
    return total


def _encoded_batches(samples: Iterator[dict[str, Any]], size: int) -> Iterator[tuple[list[bytes], list[tuple]]]:
    """(encoded clips, [(key, json bytes, json dict)]) batches of one shard, in its order."""
    from videobert_ds.data.loader import VIDEO_EXTS

    while batch := list(islice(samples, size)):
        clips, raw = [], []
        for s in batch:
            ext = next((e for e in VIDEO_EXTS if e in s), None)
            if ext is None:
                raise RuntimeError(f"sample {s['__key__']} in {s.get('__url__')} has no video member")
            clips.append(s[ext])
            raw.append((s["__key__"], s["json"], json.loads(s["json"])))
        yield clips, raw

"""VideoBERT's sequences and masking, built on the host: the batch every pretraining-style stage trains on.

Sequences: joint `[CLS] text [>] video [SEP]`, text-only `[CLS] text [SEP]`, video-only
`[CLS] [>] video [SEP]`, mixed by configured ratios. Every random decision (sample kind, masked
positions, negatives, sub-sampling rate, neighbour concatenation) is made on the host from lengths the
host already knows (token counts, the clips' frame counts in the sample json), using torch's global CPU
RNG (restored on resume); the visual-word ids and clip features themselves stay on the device and are
placed by index (`to_device`), so building a batch never waits for the GPU. The losses that read these
batches are in objectives/pretraining.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from videobert_ds.core.config import ConfigError
from videobert_ds.model.specials import Specials

IGNORE = -100
KIND_JOINT, KIND_TEXT, KIND_VIDEO = 0, 1, 2
# Visual replacement codes for masked video positions.
REPLACE_MASK, REPLACE_KEEP = -1, -2
# Segment codes used to build attention masks on the device.
SEG_TEXT, SEG_VIDEO, SEG_PAD = 0, 1, 2


@dataclass
class ObjectiveConfig:
    lambda_mlm: float = 1.0
    lambda_mvm: float = 1.0
    lambda_align: float = 1.0
    lambda_caption: float = 1.0
    lambda_video: float = 1.0
    mask_prob: float = 0.15
    joint_ratio: float = 0.6
    text_only_ratio: float = 0.2
    video_only_ratio: float = 0.2
    caption_ratio: float = 0.25  # share of joint samples trained in captioning mode
    align_negative_prob: float = 0.5
    concat_neighbours_prob: float = 0.2
    max_subsample_rate: int = 5
    max_text_tokens: int = 64
    max_seq_len: int = 128


@dataclass
class ClipSample:
    """What the batch builder needs of one loader sample, all on the host."""

    text_ids: list[int]
    num_clips: int  # valid visual words available (from the json frame count)
    video_id: str
    segment: int


@dataclass
class HostBatch:
    """Index and label tensors built on the host (CPU); `to_device` resolves the visual parts."""

    input_ids: torch.Tensor  # (B, L) token ids; video positions hold 0 until resolved
    video_src: torch.Tensor  # (B, L) flat index into the (B0 * n_clips) visual ids, -1 elsewhere
    token_type_ids: torch.Tensor
    segments: torch.Tensor  # (B, L) SEG_TEXT / SEG_VIDEO / SEG_PAD
    caption_mode: torch.Tensor  # (B,) bool
    mlm_labels: torch.Tensor  # (B, L) text labels or IGNORE
    visual_masked: torch.Tensor  # (B, L) bool
    visual_replace: torch.Tensor  # (B, L) REPLACE_MASK / REPLACE_KEEP / a random visual word id
    caption_labels: torch.Tensor  # (B, L) next text token or IGNORE
    align_labels: torch.Tensor  # (B,) 1 aligned / 0 swapped / -1 not applicable
    counts: dict[str, int] = field(default_factory=dict)


def _choice(probs: list[float]) -> int:
    return int(torch.multinomial(torch.tensor(probs, dtype=torch.float), 1).item())


def _rand() -> float:
    return float(torch.rand(()).item())


def _randint(low: int, high: int) -> int:
    """Uniform in [low, high)."""
    return int(torch.randint(low, high, ()).item())


def _mask_positions(n: int, prob: float) -> list[int]:
    """Positions to mask among n: each with probability `prob`, and at least one when n > 0 and prob > 0
    (short sequences would otherwise often carry no prediction at all)."""
    if n == 0 or prob <= 0:
        return []
    picked = (torch.rand(n) < prob).nonzero().flatten().tolist()
    return picked or [_randint(0, n)]


@dataclass
class Row:
    """One unmasked sequence `[CLS] text [>] clips [SEP]` (no `[>]` without clips): pretraining masks on
    top of its layout, fine-tuning uses it as is.
    `clips` index the loader batch as (sample, clip); `caption` selects the sequence-to-sequence mask and
    labels each text position with the next text token."""

    text: list[int]
    clips: list[tuple[int, int]]
    caption: bool = False


def layout_rows(rows: list[Row], n_clips: int, sp: Specials, max_seq_len: int) -> HostBatch:
    """Rows -> a HostBatch without masking or alignment labels (resolved on the device by `to_device`).
    Clips beyond `max_seq_len` are cut, as in pretraining."""
    if not rows:
        raise ValueError("layout_rows needs at least one row")
    fitted = []
    for r in rows:
        room = max_seq_len - 2 - len(r.text) - (1 if r.clips else 0)
        if room < 0:
            raise ValueError(f"a text of {len(r.text)} tokens does not fit a sequence of {max_seq_len}")
        fitted.append((r, r.clips[:room]))
    length = max(2 + len(r.text) + (1 + len(c) if c else 0) for r, c in fitted)
    b = len(rows)
    input_ids = torch.full((b, length), sp.pad, dtype=torch.long)
    video_src = torch.full((b, length), -1, dtype=torch.long)
    token_type = torch.zeros((b, length), dtype=torch.long)
    segments = torch.full((b, length), SEG_PAD, dtype=torch.long)
    caption_labels = torch.full((b, length), IGNORE, dtype=torch.long)
    n_tokens = 0
    for i, (r, clips) in enumerate(fitted):
        seq = [sp.cls, *r.text]
        seg = [SEG_TEXT] * len(seq)
        v_start = len(seq) + 1
        if clips:
            seq += [sp.video_sep] + [0] * len(clips)
            seg += [SEG_VIDEO] * (1 + len(clips))
        seq.append(sp.sep)
        seg.append(SEG_VIDEO if clips else SEG_TEXT)
        n = len(seq)
        n_tokens += n
        input_ids[i, :n] = torch.tensor(seq)
        segments[i, :n] = torch.tensor(seg)
        if clips:
            token_type[i, v_start - 1 : n] = 1
            video_src[i, v_start : v_start + len(clips)] = torch.tensor([s * n_clips + c for s, c in clips])
        if r.caption:
            targets = [*r.text, sp.video_sep]
            caption_labels[i, : len(targets)] = torch.tensor(targets)
    caption_mode = torch.tensor([r.caption for r in rows], dtype=torch.bool)
    return HostBatch(
        input_ids,
        video_src,
        token_type,
        segments,
        caption_mode,
        mlm_labels=torch.full((b, length), IGNORE, dtype=torch.long),
        visual_masked=torch.zeros((b, length), dtype=torch.bool),
        visual_replace=torch.full((b, length), REPLACE_KEEP, dtype=torch.long),
        caption_labels=caption_labels,
        align_labels=torch.full((b,), -1.0),
        counts={"num_tokens": n_tokens, "rows": b},
    )


def build_batch(
    samples: list[ClipSample], n_clips: int, sp: Specials, cfg: ObjectiveConfig, train: bool = True
) -> HostBatch:
    """Sequences, masks and labels for one micro-batch (see the module docstring)."""
    counts = {"skipped": 0, "concatenated": 0}

    # Each entry: (text ids, [(source sample, clip index)], kind, caption?, aligned?)
    entries: list[dict[str, Any]] = []
    used = [False] * len(samples)
    for i, s in enumerate(samples):
        if used[i]:
            continue
        used[i] = True
        text, clips = list(s.text_ids), [(i, c) for c in range(min(s.num_clips, n_clips))]
        # Augmentation: concatenate with the next segment of the same video when it is in the batch.
        if train and _rand() < cfg.concat_neighbours_prob:
            for j in range(len(samples)):
                t = samples[j]
                if not used[j] and t.video_id == s.video_id and t.segment == s.segment + 1:
                    used[j] = True
                    text += t.text_ids
                    clips += [(j, c) for c in range(min(t.num_clips, n_clips))]
                    counts["concatenated"] += 1
                    break
        if not text and not clips:
            counts["skipped"] += 1  # empty text and zero frames: nothing to learn from
            continue
        if not text:
            kind = KIND_VIDEO
        elif not clips:
            kind = KIND_TEXT
        else:
            kind = (
                [KIND_JOINT, KIND_TEXT, KIND_VIDEO][
                    _choice([cfg.joint_ratio, cfg.text_only_ratio, cfg.video_only_ratio])
                ]
                if train
                else KIND_JOINT
            )
        # Augmentation: sub-sample the visual words at a random rate 1..max_subsample_rate.
        if train and clips and cfg.max_subsample_rate > 1:
            clips = clips[:: _randint(1, cfg.max_subsample_rate + 1)]
        caption = kind == KIND_JOINT and _rand() < cfg.caption_ratio
        entries.append(
            {
                "text": text,
                "clips": clips,
                "kind": kind,
                "caption": caption,
                "video_id": s.video_id,
                "aligned": 1 if kind == KIND_JOINT and not caption else -1,
            }
        )

    # Alignment negatives: swap the video for another video's own clips (taken from the originals, so a
    # swap never hands an entry back clips of its own video).
    originals = [(o["video_id"], o["clips"]) for o in entries if o["clips"]]
    for e in entries:
        if e["aligned"] == 1 and _rand() < cfg.align_negative_prob:
            others = [clips for video_id, clips in originals if video_id != e["video_id"]]
            if others:
                e["clips"] = others[_randint(0, len(others))]
                e["aligned"] = 0

    if not entries:  # nothing usable: one empty [CLS][SEP] keeps every rank's forward calls equal
        entries.append({"text": [], "clips": [], "kind": KIND_TEXT, "caption": False, "video_id": "", "aligned": -1})

    # Lay the sequences out (clips beyond max_seq_len are cut there), then mask on top of that layout.
    rows = [
        Row(
            e["text"][: cfg.max_text_tokens] if e["kind"] in (KIND_JOINT, KIND_TEXT) else [],
            e["clips"] if e["kind"] in (KIND_JOINT, KIND_VIDEO) else [],
            caption=e["caption"],
        )
        for e in entries
    ]
    host = layout_rows(rows, n_clips, sp, cfg.max_seq_len)
    host.align_labels = torch.tensor([float(e["aligned"]) for e in entries])
    host.counts.update(counts)
    if not train:
        return host
    for r, row in enumerate(rows):
        if row.caption:
            continue
        for k in _mask_positions(len(row.text), cfg.mask_prob):
            pos = 1 + k
            host.mlm_labels[r, pos] = row.text[k]
            u = _rand()
            if u < 0.8:
                host.input_ids[r, pos] = sp.mask
            elif u < 0.9:
                host.input_ids[r, pos] = _randint(sp.first_regular_text, sp.text_vocab_size)
        v_start = 2 + len(row.text)  # after [CLS] text [>]
        for k in _mask_positions(int((host.video_src[r] >= 0).sum()), cfg.mask_prob):
            pos = v_start + k
            host.visual_masked[r, pos] = True
            u = _rand()
            host.visual_replace[r, pos] = (
                REPLACE_MASK if u < 0.8 else (_randint(0, sp.visual_vocab_size) if u < 0.9 else REPLACE_KEEP)
            )
    return host


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy without waiting for the device: from pageable memory a CUDA copy blocks the host until the
    stream's earlier kernels finish, from pinned memory it is queued."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def attention_mask(segments: torch.Tensor, caption_mode: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True = may attend. Bidirectional over real tokens, except in captioning mode:
    video attends only to video (so no text can leak back through it) and text attends to the video and
    to itself and earlier text."""
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    real_k = seg_k != SEG_PAD
    length = segments.shape[1]
    pos = torch.arange(length, device=segments.device)
    earlier = pos[None, None, :] <= pos[None, :, None]
    seq2seq = torch.where(
        seg_q == SEG_VIDEO, seg_k == SEG_VIDEO, (seg_k == SEG_VIDEO) | ((seg_k == SEG_TEXT) & earlier)
    )
    mask = torch.where(caption_mode[:, None, None], seq2seq, torch.ones_like(seq2seq)) & real_k
    # Padding queries attend to themselves only, so no row is empty (SDPA would return NaN).
    eye = torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    mask = mask | (eye & (seg_q == SEG_PAD))
    return mask[:, None]


def to_device(
    host: HostBatch,
    visual_ids: torch.Tensor,
    visual_features: torch.Tensor | None,
    sp: Specials,
    device: torch.device,
    feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Resolve video positions from the device-side visual words; returns the model's inputs and targets.
    Clip-feature targets are standardised per dimension by `feature_stats` (mean, std): raw encoder features
    carry large constant offsets that would make the regression trivial."""
    t = {
        k: host_to_device(getattr(host, k), device)
        for k in (
            "input_ids",
            "video_src",
            "token_type_ids",
            "segments",
            "caption_mode",
            "mlm_labels",
            "visual_masked",
            "visual_replace",
            "caption_labels",
            "align_labels",
        )
    }
    flat_ids = visual_ids.reshape(-1)
    is_video = t["video_src"] >= 0
    src = t["video_src"].clamp_min(0)
    words = flat_ids[src]  # (B, L) visual word per video position
    input_ids = torch.where(is_video, words + sp.text_vocab_size, t["input_ids"])
    replace = t["visual_replace"]
    input_ids = torch.where(
        t["visual_masked"] & (replace == REPLACE_MASK), torch.full_like(input_ids, sp.mask), input_ids
    )
    input_ids = torch.where(t["visual_masked"] & (replace >= 0), replace + sp.text_vocab_size, input_ids)
    out = {
        "input_ids": input_ids,
        "token_type_ids": t["token_type_ids"],
        "attention_mask": attention_mask(t["segments"], t["caption_mode"]),
        "mlm_labels": t["mlm_labels"],
        "mvm_labels": torch.where(t["visual_masked"], words, torch.full_like(words, IGNORE)),
        "caption_labels": t["caption_labels"],
        "align_labels": t["align_labels"],
    }
    if visual_features is not None:
        feats = visual_features.reshape(-1, visual_features.shape[-1])[src].float()  # (B, L, D)
        if feature_stats is not None:
            mean, std = feature_stats
            feats = (feats - mean) / std
        out["feature_targets"] = feats
    return out


def check_sequence_budget(o: ObjectiveConfig) -> None:
    """A joint sequence `[CLS] text [>] video [SEP]` must keep room for video after the longest text."""
    if o.max_text_tokens + 4 > o.max_seq_len:
        raise ConfigError(
            f"objective.max_seq_len ({o.max_seq_len}) leaves no room for video after "
            f"objective.max_text_tokens ({o.max_text_tokens}): it must be at least max_text_tokens + 4"
        )


def text_ids_and_clip_counts(
    batch: Any, tokenizer: Any, frames_per_clip: int, max_text_tokens: int
) -> tuple[list[list[int]], list[int]]:
    """Per sample of a loader batch: its text's WordPieces (no special tokens, at most `max_text_tokens`) and
    the number of whole clips its decoded frames hold."""
    ids = tokenizer(
        [m.get("text", "") for m in batch.meta], add_special_tokens=False, truncation=True, max_length=max_text_tokens
    )["input_ids"]
    t = batch.frames.shape[1]
    return ids, [min(int(m["num_frames"]), t) // frames_per_clip for m in batch.meta]


def joint_inputs(
    texts: Sequence[Sequence[int]],
    videos: Sequence[Sequence[int]],
    sp: Specials,
    *,
    caption_mode: bool,
    max_len: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Model inputs for `[CLS] text [>] video [SEP]` rows of known visual words (evaluation, generation): the
    training layout (`layout_rows`) with the words placed on the host; clips beyond max_len are cut."""
    n_clips = max((len(v) for v in videos), default=0) or 1
    words = torch.zeros((len(videos), n_clips), dtype=torch.long)
    for i, video in enumerate(videos):
        words[i, : len(video)] = torch.as_tensor(list(video), dtype=torch.long)
    rows = [Row(list(text), [(i, j) for j in range(len(video))]) for i, (text, video) in enumerate(zip(texts, videos))]
    host = layout_rows(rows, n_clips, sp, max_len)
    is_video = host.video_src >= 0
    input_ids = torch.where(
        is_video, words.reshape(-1)[host.video_src.clamp_min(0)] + sp.text_vocab_size, host.input_ids
    )
    mode = torch.full((len(rows),), caption_mode, dtype=torch.bool)
    return {
        "input_ids": input_ids.to(device),
        "token_type_ids": host.token_type_ids.to(device),
        "attention_mask": attention_mask(host.segments, mode).to(device),
    }

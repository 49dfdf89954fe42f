"""VideoBERT's sequences and masking, built on the host: the batch every pretraining-style stage trains on.

Sequences: joint `[CLS] text [>] video [SEP]`, text-only `[CLS] text [SEP]`, video-only
`[CLS] [>] video [SEP]`, mixed by configured ratios. Every random decision (sample kind, masked
positions, negatives, sub-sampling rate, neighbour concatenation) is made on the host from lengths the
host already knows (token counts, the clips' frame counts in the sample json), using a CPU generator the caller
passes (the trainer's prefetch derives one from the run seed, the rank and the batch's data position, so a batch
built ahead in a background thread, or again after a resume, is the same batch); the masking draws are vectorised
over the batch. The visual-word ids and clip features themselves stay on the device and are placed by index
(`to_device`), so building a batch never waits for the GPU, and the losses find their positions through index
tensors built here (`SELECTIONS`) instead of reading masks back from the device. The losses that read these
batches are in objectives/pretraining.py.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from videobert_ds.core.config import ConfigError
from videobert_ds.data.decoders.base import to_device as host_to_device  # pinned, non_blocking on a GPU
from videobert_ds.data.tokens import frames_span
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


def generator_from_global() -> torch.Generator:
    """A CPU generator seeded by one draw of torch's global RNG: callers that do not pass their own generator get
    draws that follow the global seed (restored on resume, fixed by the validator)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))


def _mask_draws(eligible: torch.Tensor, prob: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking over (B, L) eligible positions, vectorised: each position is picked with probability `prob`,
    and a row with eligible positions but no pick gets one uniformly chosen position (short sequences would
    otherwise often carry no prediction at all). -> (picked (B, L) bool, u (B, L) uniform draws that choose the
    replacement: < 0.8 [MASK], < 0.9 a random token, else kept)."""
    b, length = eligible.shape
    if prob <= 0 or length == 0:
        return torch.zeros_like(eligible), torch.zeros(eligible.shape)
    picked = (torch.rand((b, length), generator=g) < prob) & eligible
    n = eligible.sum(1)
    # The fallback pick: the k-th eligible position, k uniform in [0, n).
    k = (torch.rand(b, generator=g) * n).long().clamp_max((n - 1).clamp_min(0))
    rank = eligible.long().cumsum(1) - 1
    fallback = eligible & (rank == k[:, None]) & ~picked.any(1, keepdim=True)
    return picked | fallback, torch.rand((b, length), generator=g)


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
    # Filled as numpy arrays (a slice assignment from a list is cheap; one small torch.tensor per row is not).
    input_ids = np.full((b, length), sp.pad, dtype=np.int64)
    video_src = np.full((b, length), -1, dtype=np.int64)
    token_type = np.zeros((b, length), dtype=np.int64)
    segments = np.full((b, length), SEG_PAD, dtype=np.int64)
    caption_labels = np.full((b, length), IGNORE, dtype=np.int64)
    n_tokens = 0
    for i, (r, clips) in enumerate(fitted):
        t = len(r.text)
        n = 2 + t + (1 + len(clips) if clips else 0)
        n_tokens += n
        input_ids[i, 0] = sp.cls
        input_ids[i, 1 : 1 + t] = r.text
        input_ids[i, n - 1] = sp.sep
        segments[i, :n] = SEG_TEXT
        if clips:
            input_ids[i, 1 + t] = sp.video_sep
            input_ids[i, 2 + t : n - 1] = 0
            segments[i, 1 + t : n] = SEG_VIDEO
            token_type[i, 1 + t : n] = 1
            video_src[i, 2 + t : 2 + t + len(clips)] = [s * n_clips + c for s, c in clips]
        if r.caption:
            caption_labels[i, :t] = r.text
            caption_labels[i, t] = sp.video_sep
    input_ids, video_src, token_type, segments, caption_labels = (
        torch.from_numpy(x) for x in (input_ids, video_src, token_type, segments, caption_labels)
    )
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
    samples: list[ClipSample],
    n_clips: int,
    sp: Specials,
    cfg: ObjectiveConfig,
    train: bool = True,
    generator: torch.Generator | None = None,
) -> HostBatch:
    """Sequences, masks and labels for one micro-batch (see the module docstring). Every draw comes from
    `generator` (default: one seeded from torch's global RNG), so a batch built ahead in another thread is the
    same batch."""
    g = generator if generator is not None else generator_from_global()
    counts = {"skipped": 0, "concatenated": 0}

    # Every per-sample draw at once, one row per sample (drawn whether used or not, so the stream is fixed):
    # neighbour concatenation, sequence kind, sub-sampling rate, captioning, alignment negative, which negative.
    draws = torch.rand((len(samples), 6), generator=g).tolist()
    kinds = [cfg.joint_ratio, cfg.text_only_ratio, cfg.video_only_ratio]
    bounds = np.cumsum(kinds) / sum(kinds)  # inverse CDF of the kind mixture

    # Each entry: (text ids, [(source sample, clip index)], kind, caption?, aligned?)
    entries: list[dict[str, Any]] = []
    used = [False] * len(samples)
    for i, s in enumerate(samples):
        if used[i]:
            continue
        used[i] = True
        u_concat, u_kind, u_rate, u_caption = draws[i][:4]
        text, clips = list(s.text_ids), [(i, c) for c in range(min(s.num_clips, n_clips))]
        # Augmentation: concatenate with the next segment of the same video when it is in the batch.
        if train and u_concat < cfg.concat_neighbours_prob:
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
            kind = (KIND_JOINT, KIND_TEXT, KIND_VIDEO)[min(int(np.searchsorted(bounds, u_kind, "right")), 2)]
            kind = kind if train else KIND_JOINT
        # Augmentation: sub-sample the visual words at a random rate 1..max_subsample_rate.
        if train and clips and cfg.max_subsample_rate > 1:
            clips = clips[:: 1 + min(int(u_rate * cfg.max_subsample_rate), cfg.max_subsample_rate - 1)]
        caption = kind == KIND_JOINT and u_caption < cfg.caption_ratio
        entries.append(
            {
                "text": text,
                "clips": clips,
                "kind": kind,
                "caption": caption,
                "video_id": s.video_id,
                "aligned": 1 if kind == KIND_JOINT and not caption else -1,
                "draws": draws[i][4:],
            }
        )

    # Alignment negatives: swap the video for another video's own clips (taken from the originals, so a
    # swap never hands an entry back clips of its own video).
    originals = [(o["video_id"], o["clips"]) for o in entries if o["clips"]]
    for e in entries:
        u_negative, u_which = e["draws"]
        if e["aligned"] == 1 and u_negative < cfg.align_negative_prob:
            others = [clips for video_id, clips in originals if video_id != e["video_id"]]
            if others:
                e["clips"] = others[min(int(u_which * len(others)), len(others) - 1)]
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
    # Masking, vectorised over the whole batch; captioning rows are never masked.
    b, length = host.input_ids.shape
    pos = torch.arange(length)
    text_len = torch.tensor([len(row.text) for row in rows])
    open_rows = ~host.caption_mode[:, None]
    # Text: positions 1..len(text) (after [CLS]); 80% [MASK], 10% a random regular token, 10% kept.
    picked, u = _mask_draws(open_rows & (pos >= 1) & (pos <= text_len[:, None]), cfg.mask_prob, g)
    random_text = torch.randint(sp.first_regular_text, sp.text_vocab_size, (b, length), generator=g)
    host.mlm_labels = torch.where(picked, host.input_ids, host.mlm_labels)
    host.input_ids = torch.where(picked & (u < 0.8), sp.mask, host.input_ids)
    host.input_ids = torch.where(picked & (u >= 0.8) & (u < 0.9), random_text, host.input_ids)
    # Visual words: every placed clip; 80% [MASK], 10% a random visual word, 10% kept.
    picked, u = _mask_draws(open_rows & (host.video_src >= 0), cfg.mask_prob, g)
    random_word = torch.randint(0, sp.visual_vocab_size, (b, length), generator=g)
    host.visual_masked = picked
    replace = torch.where(u < 0.8, REPLACE_MASK, torch.where(u < 0.9, random_word, REPLACE_KEEP))
    host.visual_replace = torch.where(picked, replace, host.visual_replace)
    return host


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


# Where each loss reads, as flat indices into the (B * L) positions (or B rows for alignment), known on the host:
# the losses gather with index_select and take counts from the index length, so no step reads the device to find
# out which positions are masked (a boolean mask index or a count would make the host wait for the GPU).
SELECTIONS = ("mlm_index", "mvm_index", "caption_index", "align_index", "valid_index")


def selections(host: HostBatch) -> dict[str, torch.Tensor]:
    """The SELECTIONS of a host batch (CPU tensors)."""

    def where(mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(-1).nonzero().flatten()

    return {
        "mlm_index": where(host.mlm_labels != IGNORE),
        "mvm_index": where(host.visual_masked),
        "caption_index": where(host.caption_labels != IGNORE),
        "align_index": where(host.align_labels >= 0),
        "valid_index": where(host.segments != SEG_PAD),
    }


def selection(inputs: dict[str, torch.Tensor], name: str, mask: torch.Tensor) -> torch.Tensor:
    """inputs[name], or (inputs built elsewhere, e.g. by hand in a test) the flat positions of `mask`, which makes
    the host wait for the device: training inputs come from `to_device` and always carry them."""
    index = inputs.get(name)
    return index if index is not None else mask.reshape(-1).nonzero().flatten()


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
    t.update({k: host_to_device(v, device) for k, v in selections(host).items()})
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
        **{k: t[k] for k in SELECTIONS},
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


_THREAD = threading.local()


def thread_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer` in the main thread, this thread's own copy elsewhere: a Hugging Face fast tokenizer is not safe to
    call from two threads at once (changing its truncation settings while another call runs raises "Already
    borrowed"), and the trainer's prefetch thread tokenizes while the main thread may (validation)."""
    if threading.current_thread() is threading.main_thread():
        return tokenizer
    copies = _THREAD.__dict__.setdefault("tokenizers", {})
    if id(tokenizer) not in copies:
        copies[id(tokenizer)] = (tokenizer, copy.deepcopy(tokenizer))  # the original kept: its id stays unique
    return copies[id(tokenizer)][1]


def text_ids_and_clip_counts(
    batch: Any, tokenizer: Any, frames_per_clip: int, max_text_tokens: int
) -> tuple[list[list[int]], list[int]]:
    """Per sample of a loader batch: its text's WordPieces (no special tokens, at most `max_text_tokens`) and
    the number of whole clips its decoded frames hold."""
    ids = tokenizer(
        [m.get("text", "") for m in batch.meta], add_special_tokens=False, truncation=True, max_length=max_text_tokens
    )["input_ids"]
    t = frames_span(batch)  # decoded frames, or what a token batch stands for
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

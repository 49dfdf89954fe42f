"""Downstream fine-tuning: the task batch and the task losses, for any subset of four tasks.

One micro-batch of loader samples becomes rows of one padded batch, laid out on the host (as in
pretraining, the visual words are placed on the device by index):

  classification  `[CLS] [>] video [SEP]` (or with the text) -> one linear head per label set on [CLS]
  caption         `[CLS] text [>] video [SEP]` in sequence-to-sequence mode -> the next text token
  qa              `[CLS] question [MASK]*n [>] video [SEP]` per candidate answer of n WordPieces -> the mean
                  log-probability of its pieces at the slot (the masked-word head) -> softmax over the
                  candidates, cross-entropy with the right answer
  retrieval       every (text i, video j) pair of the batch's captioned samples: a no-grad forward scores
                  them all with the alignment head, then each text is trained against its own video and
                  the k highest-scoring other videos (and each video against its k hardest texts), softmax
                  cross-entropy over those candidates: in-batch hard negatives

Every rank makes the same forward calls whatever its samples hold (one scoring forward when retrieval is
on, then one training forward), and every head takes part in every backward (empty selections give zero
loss with the head in the graph), so ZeRO-3 never waits on a rank that skipped something.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videobert_ds.model.specials import Specials
from videobert_ds.objectives.layout import IGNORE, HostBatch, Row, layout_rows, selection
from videobert_ds.objectives.pretraining import _masked_ce

TASKS = ("classification", "caption", "qa", "retrieval")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class ClassificationConfig:
    # Keys of the samples' `labels` to classify; [] = every label key of the training split.
    label_sets: list[str] = field(default_factory=list)
    input: str = "video"  # video: `[CLS] [>] video [SEP]`; video_text: with the sample's text
    weight: float = 1.0


@dataclass
class CaptionConfig:
    weight: float = 1.0


@dataclass
class QAConfig:
    weight: float = 1.0


@dataclass
class RetrievalConfig:
    weight: float = 1.0
    hard_negatives: int = 3  # per text and per video, the highest-scoring wrong candidates of the batch
    max_candidates: int = 8  # captioned samples per micro-batch that take part (pairs grow as its square)


@dataclass
class TaskConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    max_text_tokens: int = 32
    max_seq_len: int = 64


# ---------------------------------------------------------------------------------------------
# The batch, on the host
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskSample:
    """What the task batch needs of one loader sample, all on the host."""

    text_ids: list[int]
    num_clips: int
    video_id: str
    labels: dict[str, str]
    qa: dict[str, Any] | None  # question, choices, answer (validated by videobert-prepare)


@dataclass
class TaskBatch:
    host: HostBatch  # rows: [main rows | retrieval pair rows]
    num_main: int  # classification + caption + qa rows (+ one filler row when there are none)
    cls_rows: torch.Tensor  # (n_cls,) row indices
    cls_targets: dict[str, torch.Tensor]  # label set -> (n_cls,) label index or IGNORE
    qa_rows: torch.Tensor  # (n_qa,) one row per candidate answer
    qa_slots: torch.Tensor  # (n_qa, W) positions of the answer's pieces (0 = padding)
    qa_pieces: torch.Tensor  # (n_qa, W) the pieces' text ids (IGNORE = padding)
    qa_choices: torch.Tensor  # (n_questions, C) index into the qa rows per candidate, -1 = none
    qa_answers: torch.Tensor  # (n_questions,)
    num_candidates: int  # retrieval: captioned samples taking part (pair rows = its square)
    same_video: torch.Tensor  # (n, n) bool: pair (i, j) shows text i's own video (never a negative)
    counts: dict[str, int] = field(default_factory=dict)


def _slot_pieces(choice: str, tokenizer: Any) -> list[int]:
    return tokenizer(choice, add_special_tokens=False)["input_ids"]


def build_task_batch(
    samples: list[TaskSample],
    n_clips: int,
    sp: Specials,
    cfg: TaskConfig,
    label_index: dict[str, dict[str, int]],
    tokenizer: Any,
) -> TaskBatch:
    rows: list[Row] = []
    counts = {"classification": 0, "caption": 0, "qa": 0, "retrieval": 0}

    def clips_of(i: int) -> list[tuple[int, int]]:
        return [(i, c) for c in range(min(samples[i].num_clips, n_clips))]

    # Classification: every sample with a video and at least one wanted label.
    cls_rows, cls_targets = [], {name: [] for name in label_index}
    if "classification" in cfg.tasks:
        for i, s in enumerate(samples):
            targets = {name: index.get(str(s.labels.get(name)), IGNORE) for name, index in label_index.items()}
            if not clips_of(i) or all(t == IGNORE for t in targets.values()):
                continue
            text = s.text_ids[: cfg.max_text_tokens] if cfg.classification.input == "video_text" else []
            cls_rows.append(len(rows))
            rows.append(Row(text, clips_of(i)))
            for name, t in targets.items():
                cls_targets[name].append(t)
        counts["classification"] = len(cls_rows)

    # Captioning: every sample with text and video.
    if "caption" in cfg.tasks:
        for i, s in enumerate(samples):
            if s.text_ids and clips_of(i):
                rows.append(Row(s.text_ids[: cfg.max_text_tokens], clips_of(i), caption=True))
                counts["caption"] += 1

    # QA: one row per candidate answer, its pieces masked after the question.
    qa_rows, slots, pieces, choices, answers = [], [], [], [], []
    if "qa" in cfg.tasks:
        for i, s in enumerate(samples):
            if not s.qa or not clips_of(i):
                continue
            question = tokenizer(s.qa["question"], add_special_tokens=False)["input_ids"]
            per_choice = [_slot_pieces(c, tokenizer) for c in s.qa["choices"]]
            if any(not p for p in per_choice):
                continue  # an answer that tokenizes to nothing cannot be scored
            question = question[: max(cfg.max_text_tokens - max(len(p) for p in per_choice), 0)]
            idx = []
            for p in per_choice:
                idx.append(len(qa_rows))
                qa_rows.append(len(rows))
                slots.append([1 + len(question) + k for k in range(len(p))])
                pieces.append(p)
                rows.append(Row(question + [sp.mask] * len(p), clips_of(i)))
            choices.append(idx)
            answers.append(int(s.qa["answer"]))
        counts["qa"] = len(answers)

    if not rows:  # nothing for the main forward: one row keeps every rank's calls equal
        rows.append(Row([], clips_of(0) if samples else []))
    num_main = len(rows)

    # Retrieval: all (text i, video j) pairs of the captioned samples, row num_main + i * n + j.
    same_video = torch.zeros((0, 0), dtype=torch.bool)
    n = 0
    if "retrieval" in cfg.tasks:
        cand = [i for i, s in enumerate(samples) if s.text_ids and clips_of(i)][: cfg.retrieval.max_candidates]
        n = len(cand)
        for i in cand:
            for j in cand:
                rows.append(Row(samples[i].text_ids[: cfg.max_text_tokens], clips_of(j)))
        same_video = torch.tensor(
            [[samples[i].video_id == samples[j].video_id for j in cand] for i in cand], dtype=torch.bool
        ).reshape(n, n)
        if n == 0:  # the scoring forward still runs on every rank
            rows.append(Row([], clips_of(0) if samples else []))
        counts["retrieval"] = n

    host = layout_rows(rows, n_clips, sp, cfg.max_seq_len)
    width = max((len(s) for s in slots), default=1)
    n_choices = max((len(c) for c in choices), default=1)
    return TaskBatch(
        host=host,
        num_main=num_main,
        cls_rows=torch.tensor(cls_rows, dtype=torch.long),
        cls_targets={k: torch.tensor(v, dtype=torch.long) for k, v in cls_targets.items()},
        qa_rows=torch.tensor(qa_rows, dtype=torch.long),
        qa_slots=torch.tensor([s + [0] * (width - len(s)) for s in slots], dtype=torch.long).reshape(-1, width),
        qa_pieces=torch.tensor([p + [IGNORE] * (width - len(p)) for p in pieces], dtype=torch.long).reshape(-1, width),
        qa_choices=torch.tensor([c + [-1] * (n_choices - len(c)) for c in choices], dtype=torch.long).reshape(
            -1, n_choices
        ),
        qa_answers=torch.tensor(answers, dtype=torch.long),
        num_candidates=n,
        same_video=same_video,
        counts={**counts, "num_tokens": host.counts["num_tokens"]},
    )


# ---------------------------------------------------------------------------------------------
# The losses, on the device
# ---------------------------------------------------------------------------------------------


def _empty_safe_ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy over rows whose target is not IGNORE; 0 (in the graph) when none. The
    ignored rows are weighted out (ignore_index), not indexed out, so nothing reads the device on the host."""
    keep = target != IGNORE
    count = keep.sum().clamp_min(1)
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum") / count
    acc = ((logits.argmax(-1) == target) & keep).float().sum() / count
    in_graph = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits)).sum() * 0.0  # -inf * 0 is NaN
    return loss + in_graph, acc.detach()


def qa_choice_logits(
    model: nn.Module, hidden: torch.Tensor, slots: torch.Tensor, pieces: torch.Tensor, choices: torch.Tensor
) -> torch.Tensor:
    """(n_questions, C) scores: each candidate's mean log-prob of its pieces at its slot; -inf = no candidate."""
    text_vocab = model.config.text_vocab_size
    picked = hidden.gather(1, slots[..., None].expand(-1, -1, hidden.shape[-1]))  # (n_qa, W, H)
    logp = model.token_logits(picked, 0, text_vocab).float().log_softmax(-1)
    valid = pieces != IGNORE
    per_piece = logp.gather(-1, pieces.clamp_min(0)[..., None]).squeeze(-1) * valid
    per_row = per_piece.sum(-1) / valid.sum(-1).clamp_min(1)
    padded = torch.cat([per_row, per_row.new_full((1,), float("-inf"))])  # index -1 -> -inf
    return padded[choices]


def _hardest(scores: torch.Tensor, forbidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k highest-scoring allowed columns: (indices (n, k), valid (n, k))."""
    k = min(k, scores.shape[1])
    masked = scores.masked_fill(forbidden, float("-inf"))
    top, idx = masked.topk(k, dim=1)
    return idx, torch.isfinite(top)


class FinetuneObjective(nn.Module):
    """The fine-tuned model + how a task batch becomes its weighted losses."""

    def __init__(self, model: nn.Module, cfg: TaskConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        # The clip-feature regression head of pretraining serves no task here: frozen, out of the optimizer.
        model.feature_head.requires_grad_(False)

    def forward(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.model
        tb: dict[str, torch.Tensor] = inputs["task"]
        ids, types, mask = inputs["input_ids"], inputs["token_type_ids"], inputs["attention_mask"]
        main = slice(0, inputs["num_main"])
        rows_ids, rows_types, rows_mask = ids[main], types[main], mask[main]
        n = inputs["num_candidates"]
        if "retrieval" in cfg.tasks:
            pair = slice(inputs["num_main"], ids.shape[0])
            with torch.no_grad():  # score every pair, to pick the hard negatives
                pair_hidden, pooled = model(ids[pair], types[pair], mask[pair])
                scores = (
                    model.alignment_logits(pair_hidden, pooled, ids[pair], types[pair]).float()[: n * n].reshape(n, n)
                )
            diag = torch.arange(n, device=ids.device)
            hard = cfg.retrieval.hard_negatives
            t2v, t2v_ok = _hardest(scores, tb["same_video"], hard)  # text i -> videos
            v2t, v2t_ok = _hardest(scores.t(), tb["same_video"].t(), hard)  # video j -> texts
            # Pair rows to train: the n positives, then text i x video t2v[i], then text v2t[j] x video j.
            chosen = torch.cat(
                [diag * n + diag, (diag[:, None] * n + t2v).flatten(), (v2t * n + diag[:, None]).flatten()]
            )
            chosen = chosen + inputs["num_main"]
            rows_ids = torch.cat([rows_ids, ids[chosen]])
            rows_types = torch.cat([rows_types, types[chosen]])
            rows_mask = torch.cat([rows_mask, mask[chosen]])
        hidden, pooled = model(rows_ids, rows_types, rows_mask)
        out: dict[str, torch.Tensor] = {}
        zero = pooled.sum() * 0.0
        total = zero

        if "classification" in cfg.tasks:
            terms = []
            for name in model.label_sets:
                logits = model.label_logits(name, pooled[tb["cls_rows"]])
                loss, acc = _empty_safe_ce(logits, tb["cls_targets"][name])
                out[f"acc_{name}"] = acc
                terms.append(loss)
            out["classification"] = torch.stack(terms).mean() if terms else zero
            total = total + cfg.classification.weight * out["classification"]

        if "caption" in cfg.tasks:
            # Caption labels sit in the main rows, which come first in `hidden` as in the host batch: the host's
            # flat caption positions index both.
            labels = inputs["caption_labels"][main]
            index = selection(inputs, "caption_index", labels != IGNORE)
            out["caption"], out["acc_caption"] = _masked_ce(
                model.token_logits, hidden, labels, index, 0, model.config.text_vocab_size
            )
            total = total + cfg.caption.weight * out["caption"]

        if "qa" in cfg.tasks:
            qa_hidden = hidden[tb["qa_rows"]]
            logits = qa_choice_logits(model, qa_hidden, tb["qa_slots"], tb["qa_pieces"], tb["qa_choices"])
            out["qa"], out["acc_qa"] = _empty_safe_ce(logits, tb["qa_answers"])
            total = total + cfg.qa.weight * out["qa"]

        if "retrieval" in cfg.tasks:
            tail = slice(inputs["num_main"], None)
            align = model.alignment_logits(hidden[tail], pooled[tail], rows_ids[tail], rows_types[tail]).float()
            k = t2v.shape[1]
            pos, rest = align[:n], align[n:]
            t2v_neg = rest[: n * k].reshape(n, k).masked_fill(~t2v_ok, float("-inf"))
            v2t_neg = rest[n * k :].reshape(n, k).masked_fill(~v2t_ok, float("-inf"))
            target = torch.zeros(n, dtype=torch.long, device=align.device)
            if n > 1:
                l1, a1 = _empty_safe_ce(torch.cat([pos[:, None], t2v_neg], 1), target)
                l2, a2 = _empty_safe_ce(torch.cat([pos[:, None], v2t_neg], 1), target)
                out["retrieval"], out["acc_retrieval"] = (l1 + l2) / 2 + align.sum() * 0.0, (a1 + a2) / 2
            else:  # one candidate: nothing to rank against
                out["retrieval"], out["acc_retrieval"] = align.sum() * 0.0, zero.detach()
            total = total + cfg.retrieval.weight * out["retrieval"]

        out = {k: v.detach() for k, v in out.items()}
        out["loss"] = total
        return out


def task_tensors(tb: TaskBatch, device: torch.device) -> dict[str, Any]:
    """The task batch's index tensors on the device (small; copied once per step)."""
    from videobert_ds.objectives.layout import host_to_device

    t = {
        k: host_to_device(getattr(tb, k), device)
        for k in ("cls_rows", "qa_rows", "qa_slots", "qa_pieces", "qa_choices", "qa_answers", "same_video")
    }
    t["cls_targets"] = {k: host_to_device(v, device) for k, v in tb.cls_targets.items()}
    return t

"""The evaluation run: what a pretrained VideoBERT (teacher or student) does downstream, beside chance.

Run by `videobert-eval` (cli/eval.py), by `videobert_ds/evaluate.py` under a launcher, and by the `evaluate`
stage (`deepspeed videobert_ds/train.py --config eval_tiny model.dir=...`).

The algorithm:
  1. every rank decodes its share of the split and maps frames to visual words with the model's own
     clip encoder and vocabulary; the items are gathered so that every rank holds the whole split;
  2. zero-shot classification by template filling (VideoBERT's method): the masked-word head fills the
     attribute's slot of a text template given the video; each label word scores the mean log-prob of
     its WordPieces, all masked at once; top-1 / top-5 accuracy;
  3. text->video and video->text retrieval ranked by the alignment head over the split (or over fixed
     candidate pools): R@1, R@5, R@10, median rank;
  4. captioning from the video with the autoregressive head, greedy and beam search, a fixed number of
     steps on every rank; BLEU-4, METEOR, ROUGE-L, CIDEr from pycocoevalcap;
  5. inference throughput (frames -> visual words -> one joint forward per clip) and parameters;
  6. for a fine-tuned model (the `finetune` stage), its task heads: classification per label set, video
     QA, and captioning again under finetune/ (videobert_ds.eval.downstream).
Steps 2-5 split their work evenly: every rank makes the same number of forward calls (ZeRO-3-safe).
Every metric is reported with its chance level or trivial baseline:
  zero-shot top-k   max(random ranking of the labels, the k most frequent training labels)
  retrieval         a random ranking of the pool (R@k = k / pool, median rank = (pool + 1) / 2)
  captioning        a constant caption: the most frequent training caption, scored the same way
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from videobert_ds.core.atomic import write_json
from videobert_ds.core.distributed import all_gather, rank_world, sharded
from videobert_ds.data.splits import split_meta
from videobert_ds.eval.config import EvalStageConfig
from videobert_ds.eval.downstream import (
    as_finetuned,
    classification_metrics,
    finetuned_label_sets,
    label_logits,
    qa_metrics,
)
from videobert_ds.eval.items import EvalItem, encode_items, gather_items
from videobert_ds.eval.metrics import (
    CAPTION_METRICS,
    caption_scores_many,
    majority_topk_accuracy,
    median_rank,
    median_rank_chance,
    most_frequent,
    recall_at_k,
    recall_chance,
    topk_accuracy,
    topk_chance,
)
from videobert_ds.inference.decoding import beam_decode, greedy_decode
from videobert_ds.inference.scoring import (
    EvalHeads,
    alignment_scores,
    caption_step_fn,
    fill_template,
    label_pieces,
    template_scores,
)
from videobert_ds.model.model_dir import ENCODER_DIR, VOCAB_FILE
from videobert_ds.model.specials import Specials, specials_from_config

log = logging.getLogger("videobert_ds.eval.run")
TOPK = (1, 5)
RECALL_K = (1, 5, 10)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def load_model(model_dir: Path, device: torch.device, zero3: bool) -> tuple[Any, int, Any, Any]:
    """-> (the scoring module (EvalHeads, or its ZeRO-3 engine), parameter count, model config, keep-alive)."""
    # A pretrained dir has no label heads and loads as plain VideoBERT; a fine-tuned one brings its heads.
    from videobert_ds.model.finetuning import VideoBertForFinetuning

    if not zero3:
        model = VideoBertForFinetuning.from_pretrained(str(model_dir)).to(device).eval()
        return EvalHeads(model).eval(), sum(p.numel() for p in model.parameters()), model.config, None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    keep_alive = HfDeepSpeedConfig(ds_config)  # from_pretrained partitions the weights as it loads them
    model = VideoBertForFinetuning.from_pretrained(str(model_dir))
    engine, *_ = deepspeed.initialize(model=EvalHeads(model), config=ds_config)
    engine.eval()
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return engine, params, model.config, keep_alive


# ---------------------------------------------------------------------------------------------
# The three tasks (every rank runs them; results are gathered on every rank)
# ---------------------------------------------------------------------------------------------


class EvalContext(NamedTuple):
    """What every task's scoring needs: the model's scoring heads and its tokenizers, lengths and device."""

    heads: Any
    cfg: EvalStageConfig
    tokenizer: Any
    vocab: Specials
    max_len: int
    device: torch.device


def zeroshot_scores(ctx: EvalContext, items: Sequence[EvalItem]) -> dict[str, list[list[float]]]:
    """attribute -> per item (in `items` order) the score of each label word."""
    heads, cfg, tokenizer, vocab, max_len, device = ctx
    rows: list[tuple[int, str, int]] = []  # (item, attribute, WordPieces of the slot)
    fills, cands, members = {}, {}, {}
    for attr, template in cfg.zeroshot.templates.items():
        pieces = label_pieces(cfg.zeroshot.labels[attr], tokenizer)
        for n in sorted({len(p) for p in pieces}):
            fills[attr, n] = fill_template(template, attr, n, tokenizer, vocab)
            members[attr, n] = [j for j, p in enumerate(pieces) if len(p) == n]
            cands[attr, n] = [pieces[j] for j in members[attr, n]]
            rows += [(i, attr, n) for i in range(len(items))]

    def fn(idx: list[int]) -> list[list[float]]:
        picked = [rows[i] for i in idx]
        return template_scores(
            heads,
            [fills[a, n] for _, a, n in picked],
            [items[i].visual_ids for i, _, _ in picked],
            [cands[a, n] for _, a, n in picked],
            vocab,
            max_len=max_len,
            device=device,
        )

    results, _ = sharded(len(rows), cfg.eval.batch_size, fn)
    out = {attr: [[0.0] * len(labels) for _ in items] for attr, labels in cfg.zeroshot.labels.items()}
    for (i, attr, n), row in zip(rows, results):
        for j, s in zip(members[attr, n], row):
            out[attr][i][j] = s
    return out


def retrieval_pools(n: int, pool_size: int, seed: int) -> np.ndarray:
    """(n, P) candidate indices per query, the true one (= the query's own index) in column 0."""
    if pool_size == 0 or pool_size >= n:
        return np.stack([np.roll(np.arange(n), -i) for i in range(n)])
    pools = np.empty((n, pool_size), dtype=np.int64)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        pools[i] = [i, *np.random.default_rng([seed, i]).choice(others, pool_size - 1, replace=False)]
    return pools


def retrieval_metrics(ctx: EvalContext, items: Sequence[EvalItem]) -> dict[str, dict[str, Any]]:
    heads, cfg, tokenizer, vocab, max_len, device = ctx
    n = len(items)
    pools = retrieval_pools(n, cfg.retrieval.pool_size, cfg.retrieval.seed)
    # t2v: text q against videos pools[q]; v2t: video q against texts pools[q]. Score each (text, video) once.
    pairs = sorted(
        {(q, int(c)) for q in range(n) for c in pools[q]} | {(int(c), q) for q in range(n) for c in pools[q]}
    )

    def fn(idx: list[int]) -> list[float]:
        picked = [pairs[i] for i in idx]
        return alignment_scores(
            heads,
            [items[t].text_ids for t, _ in picked],
            [items[v].visual_ids for _, v in picked],
            vocab,
            max_len=max_len,
            device=device,
        )

    values, _ = sharded(len(pairs), cfg.eval.batch_size, fn)
    table = dict(zip(pairs, values))
    t2v = torch.tensor([[table[q, int(c)] for c in pools[q]] for q in range(n)])
    v2t = torch.tensor([[table[int(c), q] for c in pools[q]] for q in range(n)])
    positive = torch.zeros(n, dtype=torch.long)
    pool = pools.shape[1]
    out: dict[str, dict[str, Any]] = {}
    for name, scores in (("t2v", t2v), ("v2t", v2t)):
        for k in RECALL_K:
            out[f"retrieval/{name}/R@{k}"] = {
                "value": recall_at_k(scores, positive, k),
                "chance": recall_chance(pool, k),
                "baseline": f"random ranking of {pool} candidates",
            }
        out[f"retrieval/{name}/median_rank"] = {
            "value": median_rank(scores, positive),
            "chance": median_rank_chance(pool),
            "lower_is_better": True,
            "baseline": f"random ranking of {pool} candidates",
        }
    return out


def generate_captions(ctx: EvalContext, items: Sequence[EvalItem]) -> list[tuple[str, str]]:
    """(greedy, beam) caption per item."""
    heads, cfg, tokenizer, vocab, max_len, device = ctx
    c = cfg.caption
    banned = sorted(set(tokenizer.all_special_ids) - {vocab.video_sep})

    def fn(idx: list[int]) -> list[tuple[str, str]]:
        step = caption_step_fn(heads, [items[i].visual_ids for i in idx], vocab, max_len=max_len, device=device)
        greedy = greedy_decode(step, len(idx), max_len=c.max_len, end_id=vocab.video_sep, banned=banned, device=device)
        beam = beam_decode(
            step,
            len(idx),
            max_len=c.max_len,
            end_id=vocab.video_sep,
            beam_size=c.beam_size,
            banned=banned,
            length_penalty=c.length_penalty,
            device=device,
        )
        return [
            (tokenizer.decode(g, skip_special_tokens=True), tokenizer.decode(b, skip_special_tokens=True))
            for g, b in zip(greedy, beam)
        ]

    results, _ = sharded(len(items), cfg.eval.batch_size, fn)
    return results


def joint_throughput(ctx: EvalContext, items: Sequence[EvalItem]) -> float:
    """Seconds (slowest rank) for one joint forward of every clip with its own text, after a warm-up call."""
    heads, cfg, tokenizer, vocab, max_len, device = ctx
    alignment_scores(heads, [items[0].text_ids], [items[0].visual_ids], vocab, max_len=max_len, device=device)

    def fn(idx: list[int]) -> list[float]:
        return alignment_scores(
            heads,
            [items[i].text_ids for i in idx],
            [items[i].visual_ids for i in idx],
            vocab,
            max_len=max_len,
            device=device,
        )

    _, seconds = sharded(len(items), cfg.eval.batch_size, fn)
    return seconds


# ---------------------------------------------------------------------------------------------
# Metrics on rank 0
# ---------------------------------------------------------------------------------------------


def zeroshot_metrics(
    items: Sequence[EvalItem],
    scores: dict[str, list[list[float]]],
    cfg: EvalStageConfig,
    baseline_meta: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for attr, labels in cfg.zeroshot.labels.items():
        keep = [i for i, it in enumerate(items) if it.labels.get(attr) in labels]
        if not keep:
            log.warning("zero-shot %s: no %s clip has a %s label among %s; skipped", attr, cfg.eval.split, attr, labels)
            continue
        truth = [items[i].labels[attr] for i in keep]
        table = torch.tensor([scores[attr][i] for i in keep])
        target = torch.tensor([labels.index(t) for t in truth])
        train = [
            str(m["labels"][attr]) for m in baseline_meta if isinstance(m.get("labels"), dict) and attr in m["labels"]
        ]
        for k in TOPK:
            uniform = topk_chance(len(labels), k)
            majority = majority_topk_accuracy(train, truth, labels, k) if train else 0.0
            out[f"zeroshot/{attr}/top{k}"] = {
                "value": topk_accuracy(table, target, k),
                "chance": max(uniform, majority),
                "n": len(keep),
                "baseline": (
                    f"the {k} most frequent {cfg.eval.baseline_split} label(s)"
                    if majority > uniform
                    else f"random ranking of {len(labels)} labels"
                ),
            }
    return out


def caption_metrics(
    items: Sequence[EvalItem],
    captions: list[tuple[str, str]],
    cfg: EvalStageConfig,
    baseline_meta: list[dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], str]:
    constant = most_frequent([str(m.get("text", "")) for m in baseline_meta])
    refs = {it.key: [it.text] for it in items}
    systems = {
        "greedy": {it.key: g for it, (g, _) in zip(items, captions)},
        "beam": {it.key: b for it, (_, b) in zip(items, captions)},
        "constant": {it.key: constant for it in items},
    }
    scores = caption_scores_many(refs, systems)
    report, other = cfg.caption.report, "greedy" if cfg.caption.report == "beam" else "beam"
    out: dict[str, dict[str, Any]] = {}
    for prefix, system in (("caption", report), (f"caption/{other}", other)):
        for m in (m for m in CAPTION_METRICS if m in scores[system]):  # METEOR needs Java
            out[f"{prefix}/{m}"] = {
                "value": scores[system][m],
                "chance": scores["constant"][m],
                "decoder": system,
                "baseline": f"constant caption (most frequent {cfg.eval.baseline_split} caption)",
            }
    return out, constant


# ---------------------------------------------------------------------------------------------
# The whole evaluation
# ---------------------------------------------------------------------------------------------


def encode_split(
    cfg: EvalStageConfig,
    device: torch.device,
    text_tokenizer: Any,
    visual_tokenizer: Any,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[list[EvalItem], float]:
    """This rank's share of `eval.split` as items (only the samples `keep` accepts), and the seconds spent turning
    decoded frames into visual words."""
    rank, world = rank_world()
    return encode_items(
        cfg.data.shards,
        cfg.eval.split,
        rank=rank,
        world_size=world,
        text_tokenizer=text_tokenizer,
        visual_tokenizer=visual_tokenizer,
        num_frames=cfg.data.num_frames,
        max_text_tokens=cfg.eval.max_text_tokens,
        batch_size=cfg.eval.clip_batch_size,
        device=device,
        backend=cfg.data.backend,
        num_threads=cfg.data.num_threads,
        keep=keep,
    )


def run_evaluation(cfg: EvalStageConfig, device: torch.device) -> dict[str, Any] | None:
    """Every rank takes part; rank 0 returns the report, the others None."""
    from videobert_ds.data.text import load_tokenizer
    from videobert_ds.visual.loading import load_visual_tokenizer

    started = time.perf_counter()
    rank, world = rank_world()
    model_dir = Path(cfg.model.dir)
    tokenizer = load_tokenizer(model_dir)
    visual_tokenizer, _ = load_visual_tokenizer(model_dir / ENCODER_DIR, model_dir / VOCAB_FILE, device)
    encoder_params = sum(p.numel() for p in visual_tokenizer.encoder.parameters())

    # 1. The split as items, on every rank.
    local, tok_seconds = encode_split(cfg, device, tokenizer, visual_tokenizer)
    tok_seconds = max(all_gather(tok_seconds))
    every = gather_items(local)
    items = [it for it in every if it.visual_ids]
    captioned = [it for it in items if it.text.strip() and it.text_ids]
    if not captioned:
        raise ValueError(f"split {cfg.eval.split!r} of {cfg.data.shards} has no clip with both video and text")
    if rank == 0:
        log.info(
            "evaluating %s on %d %s clips (%d with text) on %d rank(s)",
            model_dir,
            len(items),
            cfg.eval.split,
            len(captioned),
            world,
        )

    heads, params, config, keep_alive = load_model(model_dir, device, cfg.model.zero3)
    vocab = specials_from_config(config, tokenizer)
    max_len = cfg.eval.max_seq_len or int(config.max_position_embeddings)
    if cfg.eval.max_text_tokens + 4 > max_len or cfg.caption.max_len + 4 > max_len:
        raise ValueError(
            f"eval.max_text_tokens ({cfg.eval.max_text_tokens}) and caption.max_len "
            f"({cfg.caption.max_len}) must leave room for video in sequences of {max_len}"
        )

    # 2-5. The tasks; every rank computes its share, every rank gets all results.
    timings = {}
    t = time.perf_counter()
    ctx = EvalContext(heads, cfg, tokenizer, vocab, max_len, device)
    zs = zeroshot_scores(ctx, items) if cfg.zeroshot.templates else {}
    timings["zeroshot"] = time.perf_counter() - t
    t = time.perf_counter()
    retrieval = retrieval_metrics(ctx, captioned) if len(captioned) >= 2 else {}
    timings["retrieval"] = time.perf_counter() - t
    t = time.perf_counter()
    captions = generate_captions(ctx, captioned)
    timings["captioning"] = time.perf_counter() - t
    fwd_seconds = joint_throughput(ctx, items)
    finetuned = bool(getattr(config, "finetune_tasks", None))
    label_sets = finetuned_label_sets(config)
    if finetuned:
        t = time.perf_counter()
        with_text = getattr(config, "finetune_classification_input", "video") == "video_text"
        logits = (
            label_logits(heads, items, with_text, vocab, max_len, device, cfg.eval.batch_size) if label_sets else None
        )
        qa = qa_metrics(heads, items, tokenizer, vocab, max_len, cfg.eval.max_text_tokens, device, cfg.eval.batch_size)
        timings["finetune"] = time.perf_counter() - t
    del keep_alive
    if rank != 0:
        return None

    baseline_meta = split_meta(cfg.data.shards, cfg.eval.baseline_split)
    metrics = zeroshot_metrics(items, zs, cfg, baseline_meta)
    metrics.update(retrieval)
    caption_table, constant = caption_metrics(captioned, captions, cfg, baseline_meta)
    metrics.update(caption_table)
    if finetuned:
        if logits is not None:
            metrics.update(classification_metrics(items, logits, label_sets, baseline_meta))
        metrics.update(qa)
        metrics.update(as_finetuned({**retrieval, **caption_table}))
    samples = [
        {"key": it.key, "reference": it.text, "greedy": g, "beam": b, "constant": constant}
        for it, (g, b) in list(zip(captioned, captions))[: cfg.eval.num_samples]
    ]
    return {
        "model": str(model_dir),
        "split": cfg.eval.split,
        "num_clips": len(items),
        "num_captioned_clips": len(captioned),
        "world_size": world,
        "params": int(params),
        "clip_encoder_params": int(encoder_params),
        # frames -> visual words -> one joint forward per clip; decoding the video excluded
        "clips_per_s": len(items) / max(tok_seconds + fwd_seconds, 1e-9),
        "metrics": metrics,
        "captions": samples,
        "seconds": {**{k: round(v, 3) for k, v in timings.items()}, "total": round(time.perf_counter() - started, 3)},
    }


def write_report(report: dict[str, Any] | None, path: Path) -> None:
    if report is None:
        return
    write_json(path, report)
    log.info("wrote %s", path)

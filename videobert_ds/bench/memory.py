"""Memory levers of the transformer stages, side by side on the CPU (`model.gradient_checkpointing`, `model.compile`).

    python -m videobert_ds.bench.memory [--layers 12 --hidden 768 --batch 2 --seq 128] [--compile-steps 30]

1. Activation checkpointing at a BERT-base width (12 x 768, 12 heads, 3072 FFN; a small batch): the bytes the
   autograd graph keeps for the backward pass (counted by torch.autograd.graph.saved_tensors_hooks over one
   training forward, dropout on) and the step time (forward + backward), without and with checkpointing; the
   loss must be the same (it is checked).
2. torch.compile at the tiny CPU size (teacher_tiny's 2 x 128): the first step (compilation included) and the
   mean of the steady steps after it, without and with each layer compiled (nn.Module.compile).
Each pair runs in one process, one after the other, on the same inputs and weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from videobert_ds.model.videobert import VideoBertForPreTraining, apply_memory_levers, videobert_config

SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "video_sep": 5}


def build(layers: int, hidden: int, heads: int, ffn: int, seq: int, seed: int = 0) -> VideoBertForPreTraining:
    torch.manual_seed(seed)
    config = videobert_config(
        text_vocab_size=8000,
        visual_vocab_size=512,
        visual_feature_dim=64,
        special_token_ids=SPECIALS,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max(seq, 64),
    )
    return VideoBertForPreTraining(config).train()


def inputs(batch: int, seq: int, vocab: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (batch, seq), generator=g)
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}


def step(model: VideoBertForPreTraining, x: dict[str, torch.Tensor], seed: int = 7) -> dict[str, Any]:
    """One forward + backward from a fixed RNG state: loss, bytes saved for backward, seconds."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden, _ = model(**x)
        loss = F.cross_entropy(model.token_logits(hidden).flatten(0, 1), x["input_ids"].flatten())
    loss.backward()
    seconds = time.perf_counter() - started
    return {"loss": float(loss.detach()), "saved_bytes": saved, "seconds": seconds}


def checkpointing(layers: int, hidden: int, heads: int, ffn: int, batch: int, seq: int, repeats: int = 3):
    """(without, with) activation checkpointing: saved bytes, best step seconds, loss."""
    out = []
    x = inputs(batch, seq, 8512)
    for on in (False, True):
        model = build(layers, hidden, heads, ffn, seq)
        apply_memory_levers(model, gradient_checkpointing=on)
        runs = [step(model, x) for _ in range(repeats)]  # the first one is the warm-up
        out.append({**runs[0], "seconds": min(r["seconds"] for r in runs[1:] or runs)})
        del model
    return out


def compiled(steps: int, layers: int = 2, hidden: int = 128, batch: int = 8, seq: int = 64):
    """(eager, compiled) first-step and steady-step seconds of a tiny training step with an optimizer."""
    out = []
    x = inputs(batch, seq, 8512)
    for on in (False, True):
        torch._dynamo.reset()
        model = build(layers, hidden, 4, 2 * hidden, seq)
        apply_memory_levers(model, gradient_checkpointing=False, compile=on)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times, losses = [], []
        for _ in range(steps):
            r = step(model, x)
            opt.step()
            times.append(r["seconds"])
            losses.append(r["loss"])
        out.append({"first": times[0], "steady": sum(times[1:]) / max(len(times) - 1, 1), "loss": losses[-1]})
        del model, opt
    return out


def rows(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(label, without, with, with / without) rows for this module's table and `make bench`'s."""
    plain, ckpt = checkpointing(args.layers, args.hidden, args.heads, args.ffn, args.batch, args.seq)
    if abs(plain["loss"] - ckpt["loss"]) > 1e-4 * max(1.0, abs(plain["loss"])):
        raise RuntimeError(f"checkpointing changed the loss: {plain['loss']} vs {ckpt['loss']}")
    size = f"{args.layers}x{args.hidden}, {args.batch}x{args.seq}"
    mib = 2**20
    out = [
        (
            f"activations saved MiB ({size})",
            f"{plain['saved_bytes'] / mib:.1f}",
            f"{ckpt['saved_bytes'] / mib:.1f}",
            f"{ckpt['saved_bytes'] / plain['saved_bytes']:.3f}x",
        ),
        (
            "fwd+bwd step s (no ckpt | ckpt)",
            f"{plain['seconds']:.3f}",
            f"{ckpt['seconds']:.3f}",
            f"{ckpt['seconds'] / plain['seconds']:.2f}x",
        ),
    ]
    if args.compile_steps > 1:
        eager, comp = compiled(args.compile_steps)
        out += [
            ("tiny step s, steady (eager | compile)", f"{eager['steady']:.4f}", f"{comp['steady']:.4f}",
             f"{comp['steady'] / eager['steady']:.2f}x"),
            ("tiny 1st step s (eager | compile)", f"{eager['first']:.2f}", f"{comp['first']:.2f}",
             f"{comp['first'] / eager['first']:.1f}x"),
        ]  # fmt: skip
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m videobert_ds.bench.memory", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--compile-steps", type=int, default=30, help="tiny steps per torch.compile run (0: skip)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    table = rows(args)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"| {'benchmark':40s} | {'without':>10s} | {'with':>10s} | {'ratio':>8s} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")
    for label, a, b, r in table:
        print(f"| {label:40s} | {a:>10s} | {b:>10s} | {r:>8s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory levers of the transformer stages, side by side on the CPU (`model.gradient_checkpointing`, `model.compile`).

    python -m videobert_ds.bench.memory [--layers 12 --hidden 768 --batch 2 --seq 128] [--repeats 3]
                                        [--compile-steps 30]

1. Activation checkpointing at a BERT-base width (12 x 768, 12 heads, 3072 FFN; a small batch): the bytes the
   autograd graph keeps for the backward pass (counted by torch.autograd.graph.saved_tensors_hooks over one
   training forward, dropout on) and the step time (forward + backward), without and with checkpointing; the
   loss must be the same (it is checked).
2. torch.compile at the tiny CPU size (teacher_tiny's 2 x 128): the first step (compilation included) and the
   mean of the steady steps after it, without and with each layer compiled (nn.Module.compile).
Each pair runs in one process, one after the other, on the same inputs and weights. The table's columns: with the
lever, without it, and with / without. `make bench` (bench/__main__.py) takes part 1's rows, with 2 steps a run;
not part 2: compiling takes over a minute on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from videobert_ds.bench.table import Row, machine_line, print_table, ratio_row
from videobert_ds.model.videobert import VideoBertForPreTraining, apply_memory_levers, videobert_config

SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "video_sep": 5}


def build(
    layers: int, hidden: int, heads: int, ffn: int, seq: int, seed: int = 0, **config: Any
) -> VideoBertForPreTraining:
    """A VideoBERT in training mode, weights drawn from `seed`; `config`: other videobert_config values (vocabulary
    sizes, dropout, ...)."""
    torch.manual_seed(seed)
    settings: dict[str, Any] = {
        "text_vocab_size": 8000,
        "visual_vocab_size": 512,
        "visual_feature_dim": 64,
        "max_position_embeddings": max(seq, 64),
        **config,
    }
    model_config = videobert_config(
        special_token_ids=SPECIALS,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        **settings,
    )
    return VideoBertForPreTraining(model_config).train()


def inputs(batch: int, seq: int, vocab: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (batch, seq), generator=g)
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids)}


def token_loss(
    model: VideoBertForPreTraining, hidden: torch.Tensor, pooled: torch.Tensor, x: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The benchmark's loss: every position predicts its own token."""
    return F.cross_entropy(model.token_logits(hidden).flatten(0, 1), x["input_ids"].flatten())


LossFn = Callable[[VideoBertForPreTraining, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def step(
    model: VideoBertForPreTraining, x: dict[str, torch.Tensor], seed: int = 7, loss_fn: LossFn = token_loss
) -> dict[str, Any]:
    """One forward + backward from a fixed RNG state (dropout masks included): loss, bytes the autograd graph saved
    for backward during the forward, seconds. The gradients stay on the model's parameters."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden, pooled = model(**x)
        loss = loss_fn(model, hidden, pooled, x)
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


def rows(args: argparse.Namespace) -> list[Row]:
    """(label, with, without, with / without) rows for this module's table and `make bench`'s (A | B, A / B)."""
    plain, ckpt = checkpointing(args.layers, args.hidden, args.heads, args.ffn, args.batch, args.seq, args.repeats)
    if abs(plain["loss"] - ckpt["loss"]) > 1e-4 * max(1.0, abs(plain["loss"])):
        raise RuntimeError(f"checkpointing changed the loss: {plain['loss']} vs {ckpt['loss']}")
    size = f"{args.layers}x{args.hidden}, {args.batch}x{args.seq}"
    mib = 2**20
    out = [
        ratio_row(
            f"activations saved MiB, {size} (ckpt | none)",
            ckpt["saved_bytes"] / mib,
            plain["saved_bytes"] / mib,
            ratio="{:.3f}x",
        ),
        ratio_row("fwd+bwd step s (ckpt | none)", ckpt["seconds"], plain["seconds"], "{:.3f}"),
    ]
    if args.compile_steps > 1:
        eager, comp = compiled(args.compile_steps)
        out += [
            ratio_row("tiny step s, steady (compile | eager)", comp["steady"], eager["steady"], "{:.4f}"),
            ratio_row("tiny 1st step s (compile | eager)", comp["first"], eager["first"], "{:.2f}", "{:.1f}x"),
        ]
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m videobert_ds.bench.memory", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="steps per checkpointing run; the first is a warm-up")
    p.add_argument("--compile-steps", type=int, default=30, help="tiny steps per torch.compile run (0: skip)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    figures = rows(args)
    print("\n" + machine_line(f"{torch.get_num_threads()} torch threads"))
    print_table(("benchmark", "with", "without", "with / without"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Token shards vs frames: the tiny teacher trained from the tokenize stage's token shards and from decoded frames,
same model, config, micro-batch, seed and steps, side by side in one run; plus the tokenize stage's own speed.

    python -m videobert_ds.bench.tokens [--demo-dir runs/demo] [--steps 60] [--ranks 2] [--repeats 2]

The two runs alternate --repeats times; each path's fastest counts (every run is printed too). Prints, for both
paths, samples/s and tokens/s (the second half of the run: warm-up excluded), the step time and the
share of it spent waiting for data; how one step of the frames path splits (decoding the micro-batch and running
the clip encoder over it, each timed alone in this process on one thread, vs the step from tokens); and the
tokenize stage's clips/s on the same ranks. Needs the demo's shards, clip encoder, vocabulary and tokenizer
(`make demo`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from videobert_ds.bench import table
from videobert_ds.bench.runs import demo_inputs, demo_missing, run_checked, teacher_run
from videobert_ds.cli.demo import REPO, train_cmd

DS_CONFIG = "zero3_cpu_mb32.json"  # the demo teacher's: micro-batch 32 per rank


# Each rank's torch on one thread (2 ranks share 2 cores here), and loopback for the ranks' traffic.
ENV = {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def tokenize(demo: Path, work: Path, ranks: int) -> dict:
    """The tokenize stage over every split of the demo shards; its report (clips/s over the slowest rank's time,
    model loading included)."""
    run_dir = work / "tokenize"
    run_checked(train_cmd("tokenize_tiny", {"run.dir": run_dir, **demo_inputs(demo)}, ranks), "tokenize", ENV)
    return {**json.loads((run_dir / "tokenize_report.json").read_text()), "dir": run_dir / "tokens"}


def teacher(demo: Path, work: Path, steps: int, ranks: int, tokens: Path | None) -> dict:
    """One tiny-teacher run (ZeRO-3, the demo's micro-batch), from `tokens` or, when None, from frames."""
    name = "tokens" if tokens else "frames"
    extra = {"data.tokens": tokens} if tokens else {}
    what = f"teacher from {name}"
    return teacher_run(demo, work / name, steps, ranks, DS_CONFIG, what=what, overrides=extra, env=ENV)


def frames_step_parts(demo: Path, micro_batch: int, batches: int = 8) -> dict:
    """Seconds per micro-batch of the two jobs the frames path adds to a step, each alone on one thread: decoding
    (DALI, the loader's decoder, 1 thread) and the frozen clip encoder + word assignment."""
    from videobert_ds.data.loader import build_clip_loader
    from videobert_ds.visual.loading import load_visual_tokenizer

    torch.set_num_threads(1)
    loader = build_clip_loader(demo / "shards", "train", micro_batch, 16, num_threads=1, prefetch=1, device="cpu")
    it = iter(loader)
    batch = next(it)  # warm-up (pipeline build)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    decode = (time.perf_counter() - started) / batches
    tok, _ = load_visual_tokenizer(
        demo / "video_encoder" / "final", demo / "vocab" / "vocab.safetensors", torch.device("cpu")
    )
    tok(batch.frames, batch.num_frames, return_features=True)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        tok(batch.frames, batch.num_frames, return_features=True)
    encode = (time.perf_counter() - started) / batches
    return {"decode_s": decode, "encode_s": encode}


def compare(demo: Path, steps: int, ranks: int, repeats: int = 2) -> dict:
    """Everything the table shows, as numbers. The two runs alternate `repeats` times and each path keeps its
    fastest run: on a machine shared with other jobs, a burst of load during one run says nothing about the path."""
    import os

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = tokenize(demo, work, ranks)
        runs: dict[str, list[dict]] = {"tokens": [], "frames": []}
        for i in range(repeats):
            for name, tokens in (("tokens", tok["dir"]), ("frames", None)):
                r = teacher(demo, work / str(i), steps, ranks, tokens)
                runs[name].append({**r, "load_avg_1min": round(os.getloadavg()[0], 2)})
        from_tokens, from_frames = (max(runs[n], key=lambda r: r["samples_per_s"]) for n in ("tokens", "frames"))
    micro_batch = json.loads((REPO / "ds_configs" / DS_CONFIG).read_text())["train_micro_batch_size_per_gpu"]
    return {
        "tokenize": {k: v for k, v in tok.items() if k != "dir"},
        "tokens": from_tokens,
        "frames": from_frames,
        "parts": frames_step_parts(demo, micro_batch),
        "micro_batch": micro_batch,
        "runs": runs,
    }


def print_report(r: dict, steps: int, ranks: int) -> None:
    t, f, p = r["tokens"], r["frames"], r["parts"]
    print(
        f"\nTiny teacher, {ranks} ranks, ZeRO-3, micro-batch {r['micro_batch']}, {steps} steps (second half timed), "
        "from token shards vs from frames"
    )
    rows = [
        table.ratio_row(label, t[key], f[key], fmt)
        for key, label, fmt in [
            ("samples_per_s", "samples/s", "{:.1f}"),
            ("tokens_per_s", "tokens/s", "{:.0f}"),
            ("step_s", "step time (s)", "{:.3f}"),
        ]
    ]
    rows.append(("data wait (share of step)", f"{t['data_wait']:.4f}", f"{f['data_wait']:.4f}", ""))
    table.print_table(("", "tokens", "frames", "tokens / frames"), rows)
    for name in ("tokens", "frames"):
        each = ", ".join(f"{x['samples_per_s']:.1f} (load {x['load_avg_1min']})" for x in r["runs"][name])
        print(f"  every {name} run, samples/s: {each}")
    print(
        f"\nFrames step split: {f['step_s']:.3f} s = token step {t['step_s']:.3f} s + "
        f"{f['step_s'] - t['step_s']:.3f} s; one micro-batch alone on one thread: decode {p['decode_s']:.3f} s, "
        f"clip encoder + words {p['encode_s']:.3f} s"
    )
    k = r["tokenize"]
    print(
        f"tokenize: {k['samples']} samples, {k['clips']} clips on {k['ranks']} ranks in {k['seconds']:.1f} s "
        f"= {k['clips_per_s']:.0f} clips/s (model loading included)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videobert_ds.bench.tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="runs/demo", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    demo = args.demo_dir.resolve()
    if demo_missing(demo, "bench.tokens"):
        return 2
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    r = compare(demo, args.steps, args.ranks, args.repeats)
    print_report(r, args.steps, args.ranks)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

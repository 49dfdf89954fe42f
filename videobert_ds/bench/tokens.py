"""Token shards vs frames: the tiny teacher trained from the tokenize stage's token shards and from decoded frames,
same model, config, micro-batch, seed and steps, side by side in one run; plus the tokenize stage's own speed. Two
clip encoders, each its own pair of runs and table:

- autoencoder: the demo's clip encoder and vocabulary (a tiny 32-px autoencoder over 4-frame clips);
- s3d: the paper's S3D (random weights in torchvision's layout, written to the temp dir: a forward costs the same
  whatever the weights) over 8-frame clips of the demo frames at their own 32 x 32 (no upscaling: S3D's cheapest
  input), with its own vocabulary built first (build_vocab, 64 words) over the demo shards.

    python -m videobert_ds.bench.tokens [--demo-dir runs/demo] [--steps 60] [--ranks 2] [--repeats 2]
                                        [--encoders autoencoder,s3d]

Per encoder: the tokenize stage, then the two teacher runs alternating --repeats times; each path's fastest counts
(every run is printed too). Prints, for both paths, samples/s and tokens/s (the second half of the run: warm-up
excluded), the step time and the share of it spent waiting for data; how one step of the frames path splits
(decoding the micro-batch and running the clip encoder over it, each timed alone in this process on one thread, vs
the step from tokens); and the tokenize stage's clips/s on the same ranks. The autoencoder pair runs a third path:
from tokens with the batches read ahead in a thread (data.prefetch_worker=thread) instead of the default worker
process, for the data wait each costs. Needs the demo's shards, clip encoder,
vocabulary and tokenizer (`make demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from videobert_ds.bench import table
from videobert_ds.bench.runs import demo_inputs, demo_missing, run_checked, teacher_run
from videobert_ds.bench.s3d_weights import write_random_s3d
from videobert_ds.cli.demo import REPO, train_cmd

DS_CONFIG = "zero3_cpu_mb32.json"  # the demo teacher's: micro-batch 32 per rank
NUM_FRAMES = 16  # teacher_tiny's and tokenize_tiny's data.num_frames
ENCODERS = ("autoencoder", "s3d")
S3D_FRAMES_PER_CLIP = 8  # S3D's shortest clip (temporal stride 8): 2 clips of the 16 frames a sample holds
# 8 x 8 = 64 words, as many as the demo's vocabulary, so the teacher differs from the autoencoder pair's only in
# the clip-feature width (1024 vs 64); k-means over ~1,700 clips is cheap beside S3D encoding them.
S3D_KMEANS = {"kmeans.depth": 2, "kmeans.branching": 8}


# Each rank's torch on one thread (2 ranks share 2 cores here), and loopback for the ranks' traffic.
ENV = {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def s3d_inputs(demo: Path, work: Path, ranks: int) -> tuple[dict[str, Any], dict]:
    """Random S3D weights (torchvision's layout) under `work` and a vocabulary built on them over the demo shards
    (`vocab_tiny` with encoder.type=s3d, 8-frame clips); -> the overrides that point a stage at them (as
    `demo_inputs` does for the demo's encoder) and the build_vocab report."""
    weights = write_random_s3d(work / "s3d_random.pth", seed=0)
    run_dir = work / "vocab_s3d"
    settings = {
        "run.dir": run_dir,
        "data.shards": demo / "shards",
        "encoder.type": "s3d",
        "encoder.path": weights,
        "encoder.frames_per_clip": S3D_FRAMES_PER_CLIP,
        **S3D_KMEANS,
    }
    run_checked(train_cmd("vocab_tiny", settings, ranks), "build_vocab (S3D)", ENV)
    report = json.loads((run_dir / "vocab_report.json").read_text())
    inputs = {"data.shards": demo / "shards", "visual.encoder": weights, "visual.vocab": run_dir / "vocab.safetensors"}
    return inputs, report


def tokenize(work: Path, ranks: int, inputs: dict[str, Any]) -> dict:
    """The tokenize stage over every split of the demo shards with the clip encoder and vocabulary of `inputs`; its
    report (clips/s over the slowest rank's time, model loading included)."""
    run_dir = work / "tokenize"
    run_checked(train_cmd("tokenize_tiny", {"run.dir": run_dir, **inputs}, ranks), "tokenize", ENV)
    return {**json.loads((run_dir / "tokenize_report.json").read_text()), "dir": run_dir / "tokens"}


def teacher(
    demo: Path,
    work: Path,
    steps: int,
    ranks: int,
    tokens: Path | None,
    inputs: dict[str, Any] | None = None,
    name: str = "",
) -> dict:
    """One tiny-teacher run (ZeRO-3, the demo's micro-batch), from `tokens` or, when None, from frames; `inputs`
    replaces the demo's clip encoder and vocabulary (and may set visual.encoder_type) or adds settings."""
    name = name or ("tokens" if tokens else "frames")
    extra = {**(inputs or {}), **({"data.tokens": tokens} if tokens else {})}
    what = f"teacher from {name}"
    return teacher_run(demo, work / name, steps, ranks, DS_CONFIG, what=what, overrides=extra, env=ENV)


def frames_step_parts(
    demo: Path, micro_batch: int, inputs: dict[str, Any] | None = None, batches: int = 8, encoder_type: str = "auto"
) -> dict:
    """Seconds per micro-batch of the two jobs the frames path adds to a step, each alone on one thread: decoding
    (DALI, the loader's decoder, 1 thread) and the frozen clip encoder + word assignment, loaded as the teacher
    loads it (clip length from the vocabulary); also that clip length and the clips a sample gives."""
    from videobert_ds.data.loader import build_clip_loader
    from videobert_ds.visual.loading import load_visual_tokenizer

    inputs = inputs or demo_inputs(demo)
    torch.set_num_threads(1)
    loader = build_clip_loader(
        demo / "shards", "train", micro_batch, NUM_FRAMES, num_threads=1, prefetch=1, device="cpu"
    )
    it = iter(loader)
    batch = next(it)  # warm-up (pipeline build)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    decode = (time.perf_counter() - started) / batches
    tok, _ = load_visual_tokenizer(
        inputs["visual.encoder"], inputs["visual.vocab"], torch.device("cpu"), encoder_type=encoder_type
    )
    ids, _, _ = tok(batch.frames, batch.num_frames, return_features=True)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        tok(batch.frames, batch.num_frames, return_features=True)
    encode = (time.perf_counter() - started) / batches
    return {
        "decode_s": decode,
        "encode_s": encode,
        "frames_per_clip": tok.frames_per_clip,
        "clips_per_sample": ids.shape[1],
        "frame_size": list(batch.frames.shape[2:4]),
    }


def compare(demo: Path, steps: int, ranks: int, repeats: int = 2, encoder: str = "autoencoder") -> dict:
    """Everything one encoder's table shows, as numbers. The two runs alternate `repeats` times and each path keeps
    its fastest run: on a machine shared with other jobs, a burst of load during one run says nothing about the
    path. `encoder` "autoencoder" is the demo's clip encoder and vocabulary; "s3d" builds a random S3D and its
    vocabulary first (in the same temp dir)."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder {encoder!r} is not one of {', '.join(ENCODERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vocab_report = None
        if encoder == "s3d":
            inputs, vocab_report = s3d_inputs(demo, work, ranks)
            teacher_inputs = {**inputs, "visual.encoder_type": "s3d"}  # the tokenize stage tells them apart itself
        else:
            inputs = teacher_inputs = demo_inputs(demo)
        tok = tokenize(work, ranks, inputs)
        paths = [("tokens", tok["dir"], {}), ("frames", None, {})]
        if encoder == "autoencoder":  # token shards read ahead in a thread as well: the data wait it costs
            paths.append(("tokens_thread", tok["dir"], {"data.prefetch_worker": "thread"}))
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in paths}
        for i in range(repeats):
            for name, tokens, settings in paths:
                r = teacher(demo, work / str(i), steps, ranks, tokens, {**teacher_inputs, **settings}, name)
                runs[name].append({**r, "load_avg_1min": round(os.getloadavg()[0], 2)})
        best = {name: max(runs[name], key=lambda r: r["samples_per_s"]) for name in runs}
        micro_batch = json.loads((REPO / "ds_configs" / DS_CONFIG).read_text())["train_micro_batch_size_per_gpu"]
        encoder_type = teacher_inputs.get("visual.encoder_type", "auto")
        parts = frames_step_parts(demo, micro_batch, inputs, encoder_type=encoder_type)
    if encoder == "s3d" and parts["frames_per_clip"] != S3D_FRAMES_PER_CLIP:
        raise SystemExit(f"S3D vocabulary has {parts['frames_per_clip']}-frame clips, not {S3D_FRAMES_PER_CLIP}")
    out = {
        "encoder": encoder,
        "tokenize": {k: v for k, v in tok.items() if k != "dir"},
        **best,  # tokens, frames (and tokens_thread)
        "parts": parts,
        "micro_batch": micro_batch,
        "runs": runs,
    }
    if vocab_report:
        keep = ("vocab_size", "clips", "words_used", "encoder", "seconds", "clips_per_s_encode")
        out["vocab"] = {k: vocab_report[k] for k in keep if k in vocab_report}
    return out


def encoder_line(r: dict) -> str:
    p = r["parts"]
    clips = f"{p['frames_per_clip']}-frame clips ({p['clips_per_sample']} a sample of {NUM_FRAMES} frames)"
    size = "x".join(str(s) for s in p["frame_size"])
    if r["encoder"] == "s3d":
        v = r["vocab"]
        return (
            f"clip encoder: S3D (random weights, torchvision's layout), {clips}, frames at the demo's own {size} px, "
            f"no upscaling: S3D's cheapest input (the paper's 224 px is ~49x the pixels); vocabulary: "
            f"{v['vocab_size']} words fit on {v['clips']} clips"
        )
    return f"clip encoder: the demo's autoencoder, {clips}, {size} px; vocabulary: the demo's"


def print_report(r: dict, steps: int, ranks: int) -> None:
    t, f, p = r["tokens"], r["frames"], r["parts"]
    name = "S3D" if r["encoder"] == "s3d" else "autoencoder"
    print(
        f"\n[{name}] Tiny teacher, {ranks} ranks, ZeRO-3, micro-batch {r['micro_batch']}, {steps} steps "
        "(second half timed), from token shards vs from frames"
    )
    print(f"  {encoder_line(r)}")
    rows = [
        table.ratio_row(label, t[key], f[key], fmt)
        for key, label, fmt in [
            ("samples_per_s", "samples/s", "{:.1f}"),
            ("tokens_per_s", "tokens/s", "{:.0f}"),
            ("step_s", "step time (s)", "{:.3f}"),
        ]
    ]
    # The same sequences on both paths: as many tokens a sample (text + one visual word a clip).
    per_sample = [x["tokens_per_s"] / x["samples_per_s"] for x in (t, f)]
    rows.append(("tokens a sample", *(f"{v:.1f}" for v in per_sample), ""))
    rows.append(("data wait (share of step)", f"{t['data_wait']:.4f}", f"{f['data_wait']:.4f}", ""))
    if "tokens_thread" in r:  # the token run read ahead in a thread instead of the worker process
        th = r["tokens_thread"]
        rows.append(("tokens, thread prefetch: samples/s", f"{th['samples_per_s']:.1f}", "", ""))
        rows.append(("tokens, thread prefetch: data wait", f"{th['data_wait']:.4f}", "", ""))
    table.print_table(("", "tokens", "frames", "tokens / frames"), rows)
    for path in r["runs"]:
        each = ", ".join(
            f"{x['samples_per_s']:.1f} (data wait {x['data_wait']:.2%}, load {x['load_avg_1min']})"
            for x in r["runs"][path]
        )
        print(f"  every {path} run, samples/s: {each}")
    encoder = "S3D" if r["encoder"] == "s3d" else "clip encoder"
    print(
        f"\n[{name}] Frames step split: {f['step_s']:.3f} s = token step {t['step_s']:.3f} s + "
        f"{f['step_s'] - t['step_s']:.3f} s; one micro-batch alone on one thread: decode {p['decode_s']:.3f} s, "
        f"{encoder} + words {p['encode_s']:.3f} s"
    )
    if "vocab" in r:
        v = r["vocab"]
        print(
            f"[{name}] build_vocab: {v['clips']} clips encoded at {v['clips_per_s_encode']:.0f} clips/s, "
            f"{v['words_used']} of {v['vocab_size']} words used"
        )
    k = r["tokenize"]
    print(
        f"[{name}] tokenize: {k['samples']} samples, {k['clips']} clips on {k['ranks']} ranks in {k['seconds']:.1f} s "
        f"= {k['clips_per_s']:.0f} clips/s (model loading included)"
    )


def parse_encoders(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in ENCODERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{value!r}: a comma-separated list of {', '.join(ENCODERS)}")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videobert_ds.bench.tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="runs/demo", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path; the fastest counts")
    parser.add_argument(
        "--encoders",
        type=parse_encoders,
        default=list(ENCODERS),
        help="clip encoders to compare, each its own pair of runs (default: autoencoder,s3d)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file, keyed by encoder")
    args = parser.parse_args(argv)
    demo = args.demo_dir.resolve()
    if demo_missing(demo, "bench.tokens"):
        return 2
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    results = {}
    for encoder in args.encoders:
        results[encoder] = r = compare(demo, args.steps, args.ranks, args.repeats, encoder)
        print_report(r, args.steps, args.ranks)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

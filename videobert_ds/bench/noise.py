"""Narration noise: how much each evaluation metric loses as more of the training narration stops describing the clip.

    python -m videobert_ds.bench.noise [--levels 0,0.3,0.6] [--narration-offset 0] [--num-videos 120]
                                       [--encoder-steps 150] [--teacher-steps 150] [--ranks 2] [--root runs/bench_noise]

For each level: `videobert-synth --narration-noise LEVEL` (same seed: the same videos, labels and clean val/test
narration; only that share of train cues becomes off-screen talk, and a higher level keeps a lower one's off-topic
cues; after the first level the videos are hard-linked, not encoded again, as narration never changes pixels)
-> the demo's pipeline (prepare, clip encoder, visual words, token shards, teacher; videobert_ds/cli/demo.py's
commands, fewer steps) -> videobert-eval of the teacher on the clean test split. Prints one table, metric x level,
with chance, and writes ROOT/noise.json. Each level's stages are skipped when already done (ROOT/noise_LEVEL/
timings.json), so an interrupted run resumes; --force starts over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from videobert_ds.cli.demo import BIN, Demo, mpi_launch, train_cmd
from videobert_ds.core.atomic import write_text
from videobert_ds.data.synth import Realism, assign_splits, manifest_record, plan_video, srt_text

# Rows first in the table (the rest follow in the report's order).
_HEADLINE = (
    "zeroshot/colour/top1",
    "zeroshot/shape/top1",
    "zeroshot/motion/top1",
    "retrieval/t2v/R@1",
    "retrieval/t2v/R@5",
    "retrieval/v2t/R@1",
    "caption/BLEU-4",
    "caption/CIDEr",
)


def _schedule(steps: int) -> dict:
    """The stage's schedule cut to `steps`: validation halfway (as the demo's configs), one checkpoint at the end."""
    return {
        "schedule.max_steps": steps,
        "schedule.warmup_steps": max(1, steps // 10),
        "schedule.val_every": max(1, steps // 2),
        "schedule.checkpoint_every": steps,
    }


def narration_only(videos_from: Path, out: Path, num_videos: int, seed: int, realism: Realism) -> None:
    """`videobert-synth --narration-noise ...` without encoding a video: narration options never change the pixels
    (each option draws from its own stream), so the first level's videos are hard-linked and only the transcripts and
    the manifest are written, from the same plans videobert-synth writes them from."""
    (out / "videos").mkdir(parents=True, exist_ok=True)
    records = []
    for index, split in enumerate(assign_splits(num_videos, seed)):
        plan = plan_video(seed, index, realism, split)
        link = out / "videos" / f"{plan.id}.mp4"
        link.unlink(missing_ok=True)
        link.hardlink_to(videos_from / "videos" / f"{plan.id}.mp4")
        write_text(out / "transcripts" / f"{plan.id}.srt", srt_text(plan))
        records.append(json.dumps(manifest_record(plan, split)) + "\n")
    write_text(out / "manifest.jsonl", "".join(records))


def run_level(root: Path, level: float, args: argparse.Namespace, videos_from: Path | None) -> dict:
    """Synth at `level` -> prepare -> encoder -> vocab -> tokens -> teacher -> eval; returns the level's figures.
    `videos_from`: a corpus of the same seed and size whose videos to reuse (None: encode them)."""
    demo = Demo(root, args.ranks, args.num_videos)
    corpus, shards = root / "corpus", root / "shards"
    if videos_from is None:
        synth = [str(BIN / "videobert-synth"), "--out", str(corpus), "--num-videos", str(args.num_videos)]
        synth += ["--seed", str(args.seed), "--workers", str(args.ranks), "--narration-noise", str(level)]
        synth += ["--narration-offset", str(args.narration_offset)]
        demo.stage("synth", corpus / "manifest.jsonl", lambda: demo.sh(synth, "synth"))
    else:
        realism = Realism(narration_noise=level, narration_offset=args.narration_offset)
        demo.stage(
            "synth",
            corpus / "manifest.jsonl",
            lambda: narration_only(videos_from, corpus, args.num_videos, args.seed, realism),
        )
    prepare = [*mpi_launch(args.ranks), str(BIN / "videobert-prepare"), "--manifest", str(corpus / "manifest.jsonl")]
    prepare += ["--out", str(shards), "--fps", "8", "--size", "32", "--samples-per-shard", "16", "--no-progress"]
    demo.stage("prepare", shards / "manifest.json", lambda: demo.sh(prepare, "prepare"))

    enc, vocab, tok, teacher = root / "video_encoder", root / "vocab", root / "tokenize", root / "teacher"
    enc_over = {"run.dir": enc, "data.shards": shards, **_schedule(args.encoder_steps)}
    demo.stage(
        "video_encoder",
        enc / "final" / "config.json",
        lambda: demo.sh(train_cmd("video_encoder_tiny", enc_over, args.ranks), "video_encoder"),
    )
    vocab_over = {"run.dir": vocab, "data.shards": shards, "encoder.path": enc / "final"}
    demo.stage(
        "build_vocab",
        vocab / "vocab.safetensors",
        lambda: demo.sh(train_cmd("vocab_tiny", vocab_over, args.ranks), "build_vocab"),
    )
    visual = {"visual.encoder": enc / "final", "visual.vocab": vocab / "vocab.safetensors"}
    tok_over = {"run.dir": tok, "data.shards": shards, **visual}
    demo.stage(
        "tokenize",
        tok / "tokens" / "manifest.json",
        lambda: demo.sh(train_cmd("tokenize_tiny", tok_over, args.ranks), "tokenize"),
    )
    teacher_over = {
        "run.dir": teacher,
        "data.shards": shards,
        "data.tokens": tok / "tokens",
        **visual,
        **_schedule(args.teacher_steps),
    }
    demo.stage(
        "pretrain_teacher",
        teacher / "final" / "config.json",
        lambda: demo.sh(train_cmd("teacher_tiny", teacher_over, args.ranks, "zero3_cpu_mb32.json"), "teacher"),
    )
    out = root / "eval_teacher.json"
    demo.stage("evaluate_teacher", out, lambda: demo.evaluate(teacher / "final", shards, out, "eval_teacher"))

    report = json.loads(out.read_text())
    metrics = {k: v["value"] for k, v in report["metrics"].items() if isinstance(v, dict) and "value" in v}
    chance = {k: v.get("chance") for k, v in report["metrics"].items() if isinstance(v, dict)}
    nmi = json.loads((vocab / "vocab_report.json").read_text()).get("nmi", {})
    for attr, v in nmi.items():  # how well the visual words separate each attribute (the encoder learns from text)
        metrics[f"vocab/nmi/{attr}"] = v["nmi"]
        chance[f"vocab/nmi/{attr}"] = v.get("nmi_shuffled")
    manifest = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]
    train_cues = [a for r in manifest if r["split"] == "train" for a in r["annotations"]]
    off_topic = sum(1 for a in train_cues if a.get("narrated") is False)
    teacher_m = demo.last_metrics(teacher)
    return {
        "level": level,
        "train_cues": len(train_cues),
        "off_topic_share": round(off_topic / max(1, len(train_cues)), 4),
        "teacher_val_loss": teacher_m.get("val/loss"),
        "metrics": metrics,
        "chance": chance,
        "timings": {k: v["seconds"] for k, v in demo.timings.items()},
    }


def table(results: list[dict]) -> str:
    """Metric x level, with chance; headline rows first."""
    names = list(results[0]["metrics"])
    names = [n for n in _HEADLINE if n in names] + [n for n in names if n not in _HEADLINE]
    head = f"{'metric':32s} {'chance':>8s}" + "".join(f" {'noise ' + format(r['level'], 'g'):>10s}" for r in results)
    lines = [head, "-" * len(head)]

    def cell(v: float | None) -> str:
        return f"{v:10.3f}" if isinstance(v, (int, float)) else f"{'-':>10s}"

    for n in names:
        chance = results[0]["chance"].get(n)
        lines.append(f"{n:32s} {cell(chance)[2:]:>8s}" + "".join(f" {cell(r['metrics'].get(n))}" for r in results))
    lines.append(f"{'(train cues off-topic)':32s} {'':8s}" + "".join(f" {r['off_topic_share']:10.3f}" for r in results))
    lines.append(f"{'(teacher val loss)':32s} {'':8s}" + "".join(f" {cell(r['teacher_val_loss'])}" for r in results))
    lines.append("chance: the eval report's chance or baseline (caption: a constant caption; NMI: shuffled labels)")
    return "\n".join(lines)


def _levels(text: str) -> list[float]:
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of shares in [0, 1], got {text!r}") from None
    if not levels or any(not 0.0 <= x <= 1.0 for x in levels):
        raise argparse.ArgumentTypeError(f"expected a comma list of shares in [0, 1], got {text!r}")
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videobert_ds.bench.noise", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=_levels, default=[0.0, 0.3, 0.6], help="narration noise shares (0,0.3,0.6)")
    parser.add_argument("--narration-offset", type=float, default=0.0, help="also offset train cues (seconds; 0)")
    parser.add_argument("--num-videos", type=int, default=120, help="corpus size per level (default 120; demo 160)")
    parser.add_argument("--seed", type=int, default=0, help="synth seed (default 0)")
    parser.add_argument("--encoder-steps", type=int, default=150, help="clip encoder steps (default 150; demo 400)")
    parser.add_argument("--teacher-steps", type=int, default=150, help="teacher steps (default 150; demo 300)")
    parser.add_argument("--ranks", type=int, default=2, help="training ranks (default 2)")
    parser.add_argument("--root", type=Path, default=Path("runs/bench_noise"), help="work dir (runs/bench_noise)")
    parser.add_argument("--force", action="store_true", help="delete the level dirs under --root and start over")
    args = parser.parse_args(argv)
    if args.encoder_steps < 1 or args.teacher_steps < 1 or args.num_videos < 3 or args.ranks < 1:
        parser.error("--encoder-steps, --teacher-steps and --ranks must be >= 1, --num-videos >= 3")
    root = args.root.resolve()
    started = time.perf_counter()
    results, videos_from = [], None
    for level in args.levels:
        level_root = root / f"noise_{level:g}"
        if args.force:
            shutil.rmtree(level_root, ignore_errors=True)
        level_root.mkdir(parents=True, exist_ok=True)
        print(f"[bench-noise] narration noise {level:g} -> {level_root}", flush=True)
        results.append(run_level(level_root, level, args, videos_from))
        videos_from = level_root / "corpus"  # the next levels differ in narration only: reuse these videos
    summary = {
        "levels": args.levels,
        "narration_offset": args.narration_offset,
        "num_videos": args.num_videos,
        "encoder_steps": args.encoder_steps,
        "teacher_steps": args.teacher_steps,
        "ranks": args.ranks,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    (root / "noise.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\n[bench-noise] {summary['seconds']:.0f} s; figures in {root / 'noise.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

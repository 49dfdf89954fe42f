"""`make demo`: the whole pipeline on the embedded synthetic corpus, small enough for a 2-core CPU.

    synth -> prepare -> loader pass -> video encoder -> vocabulary -> token shards -> teacher -> student
          -> the same student without the teacher (student_no_kd) -> an untrained copy of the teacher
          -> evaluation of all four -> fine-tuning of the three trained (classification, captioning, QA, retrieval)
          -> their evaluation -> report (every target against chance and against a baseline model)

Each stage is skipped when its output already exists (so a re-run only does what is missing);
`--force` (or `make demo-clean`) starts over. Per-stage wall time and throughput go to
runs/demo/timings.json, which the report reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(config: str, overrides: dict, ranks: int, ds_config: str = "zero3_cpu.json") -> list[str]:
    """The deepspeed launcher on loopback; BERT-style stages use the CPU config with a BERT learning rate."""
    return [
        str(BIN / "deepspeed"),
        "--num_gpus",
        str(ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(REPO / "videobert_ds" / "train.py"),
        "--deepspeed",
        str(REPO / "ds_configs" / ds_config),
        "--config",
        config,
        *(f"{k}={v}" for k, v in overrides.items()),
    ]


def mpi_launch(ranks: int) -> list[str]:
    """`mpirun -n RANKS` on loopback (ranks split the inputs), or nothing without an MPI launcher or with 1 rank."""
    mpirun = shutil.which("mpirun")
    if ranks < 2 or mpirun is None:
        return []
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [
        mpirun,
        "-n",
        str(ranks),
        *root,
        "--oversubscribe",
        "--mca",
        "btl_tcp_if_include",
        "lo",
        "--mca",
        "oob_tcp_if_include",
        "lo",
    ]


def export_untrained(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """`model_dir`'s architecture with random weights (seeded) beside its tokenizer, visual vocabulary and clip
    encoder: the untrained baseline the report's targets compare with. No training; written atomically."""
    import torch

    from videobert_ds.core.atomic import atomic_dir, write_json
    from videobert_ds.model.videobert import VideoBertForPreTraining

    config = VideoBertForPreTraining.config_class.from_pretrained(str(model_dir))
    with atomic_dir(out) as tmp:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        torch.manual_seed(seed)
        VideoBertForPreTraining(config).save_pretrained(str(tmp), safe_serialization=True)
        write_json(tmp / "export.json", {"untrained_copy_of": str(model_dir), "seed": seed})
    return out


class Demo:
    def __init__(
        self, root: Path, ranks: int, num_videos: int, narration_noise: float = 0.0, narration_offset: float = 0.0
    ) -> None:
        self.root, self.ranks, self.num_videos = root, ranks, num_videos
        self.narration_noise, self.narration_offset = narration_noise, narration_offset
        self.timings_file = root / "timings.json"
        self.timings = json.loads(self.timings_file.read_text()) if self.timings_file.is_file() else {}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def stage(self, name: str, output: Path, run: Callable[[], dict | None]) -> None:
        """Run one stage unless it completed before (recorded in timings.json and its output exists)."""
        if name in self.timings and output.exists():
            print(f"[demo] {name}: already done ({output}); skipping")
            return
        print(f"[demo] {name} ...", flush=True)
        started = time.perf_counter()
        extra = run() or {}
        self.timings[name] = {"seconds": round(time.perf_counter() - started, 2), **extra}
        tmp = self.timings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.timings, indent=2) + "\n")
        tmp.replace(self.timings_file)
        print(f"[demo] {name}: {self.timings[name]['seconds']:.1f} s  {json.dumps(extra)}", flush=True)

    def sh(self, cmd: list[str], log_name: str, threads: int = 1) -> None:
        """Run a stage command, its output in runs/demo/logs/<stage>.log; fail loudly with the log's tail.
        `threads`: torch's intra-op threads per process (1 for multi-rank commands: one core per rank)."""
        log = self.path("logs", f"{log_name}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise SystemExit(f"[demo] {log_name} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")

    def last_metrics(self, run_dir: Path) -> dict:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        merged: dict = {}
        for row in rows:
            merged.update(row)
        return merged

    def training_figures(self, run_dir: Path, with_tokens: bool = True) -> dict:
        """What the report shows of a training stage: last train and val loss, samples/s (and tokens/s)."""
        m = self.last_metrics(run_dir)
        figures = {
            "final_loss": m.get("train/loss"),
            "val_loss": m.get("val/loss"),
            "samples_per_s": m.get("perf/samples_per_s"),
        }
        if with_tokens:
            figures["tokens_per_s"] = m.get("perf/tokens_per_s")
        return figures

    def evaluate(self, model_dir: Path, shards: Path, out: Path, log_name: str) -> dict:
        """videobert-eval of one model dir on the test split."""
        self.sh(
            [
                str(BIN / "videobert-eval"),
                "--config",
                "eval_tiny",
                "--model",
                str(model_dir),
                "--shards",
                str(shards),
                "--split",
                "test",
                "--out",
                str(out),
                # The constant-caption and majority-label baselines from the (clean) val split: the train split's
                # most frequent caption is off-screen talk once its narration is noisy, a baseline no model misses.
                "eval.baseline_split=val",
            ],
            log_name,
            threads=self.ranks,
        )  # one process: all the cores
        r = json.loads(out.read_text())
        return {"clips": r.get("num_clips"), "clips_per_s": r.get("clips_per_s")}

    # -- the stages ----------------------------------------------------------------------------
    def run(self) -> None:
        corpus, shards = self.path("corpus"), self.path("shards")

        def synth() -> dict:
            self.sh(
                [
                    str(BIN / "videobert-synth"),
                    "--out",
                    str(corpus),
                    "--num-videos",
                    str(self.num_videos),
                    "--seed",
                    "0",
                    "--workers",
                    str(self.ranks),
                    # Training narration as real ASR is: a share of cues about something else, cues off their
                    # action in time (val/test references stay clean: videobert-synth's --noisy-splits default).
                    "--narration-noise",
                    str(self.narration_noise),
                    "--narration-offset",
                    str(self.narration_offset),
                ],
                "synth",
            )
            return {
                "videos": self.num_videos,
                "narration_noise": self.narration_noise,
                "narration_offset": self.narration_offset,
            }

        self.stage("synth", corpus / "manifest.jsonl", synth)

        def prepare() -> dict:
            self.sh(
                [
                    *mpi_launch(self.ranks),
                    str(BIN / "videobert-prepare"),
                    "--manifest",
                    str(corpus / "manifest.jsonl"),
                    "--out",
                    str(shards),
                    "--fps",
                    "8",
                    "--size",
                    "32",
                    "--samples-per-shard",
                    "16",
                    "--no-progress",
                ],
                "prepare",
            )
            m = json.loads((shards / "manifest.json").read_text())
            return {"samples": m["total"], "splits": m["splits"], "shards": len(m["shards"])}

        self.stage("prepare", shards / "manifest.json", prepare)

        def loader_pass() -> dict:
            from videobert_ds.data.loader import build_clip_loader

            loader = build_clip_loader(shards, "train", 16, 16, shuffle=True, num_threads=2)
            started, clips = time.perf_counter(), 0
            for batch in loader:
                clips += batch.frames.shape[0]
            seconds = time.perf_counter() - started
            return {
                "backend": loader.backend,
                "clips": clips,
                "clips_per_s": round(clips / seconds, 1),
                "frames_per_s": round(clips * 16 / seconds, 1),
            }

        self.stage("loader", shards / "manifest.json", loader_pass)

        enc = self.path("video_encoder")

        def video_encoder() -> dict:
            self.sh(
                train_cmd("video_encoder_tiny", {"run.dir": enc, "data.shards": shards}, self.ranks), "video_encoder"
            )
            m = self.last_metrics(enc)
            return {
                "final_l_video": m.get("train/l_video"),
                "val_l_video": m.get("val/l_video"),
                "samples_per_s": m.get("perf/samples_per_s"),
            }

        self.stage("video_encoder", enc / "final" / "config.json", video_encoder)

        vocab = self.path("vocab")

        def build_vocab() -> dict:
            self.sh(
                train_cmd(
                    "vocab_tiny", {"run.dir": vocab, "data.shards": shards, "encoder.path": enc / "final"}, self.ranks
                ),
                "build_vocab",
            )
            r = json.loads((vocab / "vocab_report.json").read_text())
            return {
                "vocab_size": r["vocab_size"],
                "clips": r["clips"],
                "nmi": r["nmi"],
                "clips_per_s": round(r["clips_per_s_encode"], 1),
            }

        self.stage("build_vocab", vocab / "vocab.safetensors", build_vocab)

        # Every clip's visual word and clip feature, once: the teacher, student and fine-tuning read these token
        # shards and decode no video (the frames path stays for runs that augment clips: drop data.tokens).
        tokenized = self.path("tokenize")
        tokens = tokenized / "tokens"

        def tokenize() -> dict:
            self.sh(
                train_cmd(
                    "tokenize_tiny",
                    {
                        "run.dir": tokenized,
                        "data.shards": shards,
                        "visual.encoder": enc / "final",
                        "visual.vocab": vocab / "vocab.safetensors",
                    },
                    self.ranks,
                ),
                "tokenize",
            )
            r = json.loads((tokenized / "tokenize_report.json").read_text())
            return {"samples": r["samples"], "clips": r["clips"], "clips_per_s": r["clips_per_s"]}

        self.stage("tokenize", tokens / "manifest.json", tokenize)

        teacher = self.path("teacher")

        def pretrain_teacher() -> dict:
            self.sh(
                train_cmd(
                    "teacher_tiny",
                    {
                        "run.dir": teacher,
                        "data.shards": shards,
                        "data.tokens": tokens,
                        "visual.encoder": enc / "final",
                        "visual.vocab": vocab / "vocab.safetensors",
                    },
                    self.ranks,
                    "zero3_cpu_mb32.json",
                ),
                "teacher",
            )
            return self.training_figures(teacher)

        self.stage("pretrain_teacher", teacher / "final" / "config.json", pretrain_teacher)

        student = self.path("student")

        def distill_student() -> dict:
            self.sh(
                train_cmd(
                    "student_tiny",
                    {
                        "run.dir": student,
                        "data.shards": shards,
                        "data.tokens": tokens,
                        "teacher.path": teacher / "final",
                    },
                    self.ranks,
                    "zero3_cpu_mb32_lr4e-3.json",
                ),
                "student",
            )
            r = json.loads((student / "distill_report.json").read_text())
            return {
                **self.training_figures(student),
                "teacher_params": r["teacher"]["params"],
                "student_params": r["student"]["params"],
            }

        self.stage("distill_student", student / "final" / "config.json", distill_student)

        # The baselines every target compares with: the same student (size, data, steps, seed, learning rate)
        # trained on the ground-truth losses alone, no teacher loaded; and the teacher's architecture untrained.
        no_kd = self.path("student_no_kd")

        def student_no_kd() -> dict:
            self.sh(
                train_cmd(
                    "student_tiny",
                    {
                        "run.dir": no_kd,
                        "data.shards": shards,
                        "data.tokens": tokens,
                        "teacher.path": teacher / "final",  # its tokenizer and visual words only
                        "distill.enabled": "false",
                    },
                    self.ranks,
                    "zero3_cpu_mb32_lr4e-3.json",
                ),
                "student_no_kd",
            )
            return self.training_figures(no_kd)

        self.stage("student_no_kd", no_kd / "final" / "config.json", student_no_kd)

        untrained = self.path("untrained")
        self.stage(
            "untrained",
            untrained / "final" / "config.json",
            lambda: {"seed": 0} if export_untrained(teacher / "final", untrained / "final", seed=0) else None,
        )

        for name, model in (
            ("teacher", teacher),
            ("student", student),
            ("student_no_kd", no_kd),
            ("untrained", untrained),
        ):
            out = self.path(f"eval_{name}.json")
            self.stage(
                f"evaluate_{name}",
                out,
                lambda model=model, out=out, name=name: self.evaluate(model / "final", shards, out, f"eval_{name}"),
            )

        for name, model in (("teacher", teacher), ("student", student), ("student_no_kd", no_kd)):
            tuned = self.path(f"finetune_{name}")

            def finetune(model: Path = model, tuned: Path = tuned, name: str = name) -> dict:
                self.sh(
                    train_cmd(
                        "finetune_tiny",
                        {"run.dir": tuned, "data.shards": shards, "data.tokens": tokens, "model.init": model / "final"},
                        self.ranks,
                    ),
                    f"finetune_{name}",
                )
                return self.training_figures(tuned, with_tokens=False)

            self.stage(f"finetune_{name}", tuned / "final" / "config.json", finetune)

            out = self.path(f"eval_finetune_{name}.json")
            self.stage(
                f"evaluate_finetune_{name}",
                out,
                lambda tuned=tuned, out=out, name=name: self.evaluate(
                    tuned / "final", shards, out, f"eval_finetune_{name}"
                ),
            )

        self.sh([sys.executable, "-m", "videobert_ds.eval.report", "--demo-dir", str(self.root)], "report")
        self.summary()

    def summary(self) -> None:
        print("\n[demo] done. Stage times:")
        for name, t in self.timings.items():
            rest = {k: v for k, v in t.items() if k != "seconds"}
            print(f"  {name:18s} {t['seconds']:7.1f} s  {json.dumps(rest)}")
        enc = self.timings.get("video_encoder", {})
        if enc:
            print(f"[demo] final reconstruction loss (L_video): {enc.get('final_l_video')}")
        vocab = self.timings.get("build_vocab", {})
        if vocab:
            print(f"[demo] visual vocabulary: {vocab.get('vocab_size')} words")
            for attr, v in vocab.get("nmi", {}).items():
                print(f"  NMI(words; {attr}) = {v['nmi']:.3f}  (shuffled labels: {v['nmi_shuffled']:.3f})")
        print(f"[demo] report: {self.root / 'report.md'} and report.json")
        print(
            f"[demo] TensorBoard: .venv/bin/tensorboard --logdir {self.root} --host 127.0.0.1  (or: make tensorboard)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videobert-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/demo", help="demo output dir (default: %(default)s)")
    parser.add_argument("--ranks", type=int, default=2, help="training ranks (default: %(default)s)")
    parser.add_argument("--num-videos", type=int, default=160, help="synthetic corpus size (default: %(default)s)")
    parser.add_argument(
        "--narration-noise",
        type=float,
        default=0.2,
        help="share of training cues replaced by off-screen talk (videobert-synth; default: %(default)s)",
    )
    parser.add_argument(
        "--narration-offset",
        type=float,
        default=0.5,
        help="max seconds a training cue is shifted from its action (videobert-synth; default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="delete the demo dir and start over")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.force:  # refuse to delete what a demo did not make
        from videobert_ds.core.atomic import is_within

        is_demo = (root / "timings.json").exists() or (root / "logs").is_dir()
        if root.is_dir() and any(root.iterdir()) and not is_demo:
            parser.error(f"--force would delete {root}, which is not a demo dir (no timings.json or logs/)")
        if is_within(Path.cwd(), root) or is_within(REPO, root):
            parser.error(f"--force would delete {root}, which holds the current folder or the repository")
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    Demo(root.resolve(), args.ranks, args.num_videos, args.narration_noise, args.narration_offset).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 4, `distill_student`: a small VideoBERT learns from a frozen teacher under ZeRO-3.

One training module holds both models: the teacher (loaded from its model dir, parameters frozen) and the
student (the same class at a smaller size) are built under the ZeRO-3 construction context, so both are
partitioned across ranks and a teacher that does not fit on one device still works; only the student and
the hidden-state projection reach the optimizer. Each step, one masked batch (the teacher stage's batch
pipeline: tokenizer, visual words, masking) runs through the teacher without grad and through the student;
the loss is the ground-truth pretraining losses plus the distillation terms of `videobert_ds.objectives.distillation`.

The student reuses the teacher's text tokenizer, visual vocabulary and clip encoder (all in the teacher's
model dir), so its exported dir is self-contained as well. `teacher.path` is that model dir, or a teacher
run dir / checkpoint tag dir, which rank 0 first consolidates into RUN_DIR/teacher (host memory, not device).

RUN_DIR/distill_report.json (and TensorBoard text `distill/report`) records both models' parameter counts
and, at export, their inference throughput on the exporting host.

`distill.enabled: false` trains the same student on the ground-truth losses alone (the baseline that measures
what distillation adds): the teacher's weights are never loaded and the distill.* weights are ignored; the
teacher's model dir still supplies the tokenizer, visual vocabulary, clip encoder and vocabulary sizes, so both
students read the same batches and start from the same weights (same seed).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from videobert_ds.core.atomic import write_json
from videobert_ds.core.config import ConfigError, StageConfig, load_yaml
from videobert_ds.data.text import load_tokenizer
from videobert_ds.data.tokens import check_tokens
from videobert_ds.eval.distill_report import report_markdown, update_report
from videobert_ds.inference.throughput import count_params, inference_clips_per_s
from videobert_ds.model.flops import transformer_flops_per_token
from videobert_ds.model.model_dir import ENCODER_DIR, VOCAB_FILE, missing_files, save_model_dir
from videobert_ds.model.specials import Specials, specials_from_config
from videobert_ds.model.videobert import VideoBertForPreTraining, apply_memory_levers, videobert_config
from videobert_ds.objectives.distillation import (
    DistillationObjective,
    DistillConfig,
    init_from_teacher,
    resolve_layer_map,
)
from videobert_ds.objectives.layout import ObjectiveConfig, check_sequence_budget
from videobert_ds.objectives.pretraining import PretrainingInputs, losses_from_outputs
from videobert_ds.stages import cast_unpartitioned
from videobert_ds.training.checkpoint import COMPLETE, CheckpointManager
from videobert_ds.training.memory import partition_share
from videobert_ds.training.stage import Stage
from videobert_ds.visual.loading import features_problem, load_visual_tokenizer
from videobert_ds.visual.vocab import feature_stats, vocab_metadata

log = logging.getLogger(__name__)

TEACHER_SIZE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


@dataclass
class TeacherSourceConfig:
    # An exported teacher model dir (config.json, model.safetensors, tokenizer, visual_vocab.safetensors,
    # clip_encoder/), or a pretrain_teacher run dir (its newest complete checkpoint), or a checkpoint tag dir.
    path: str = "runs/teacher/final"


@dataclass
class StudentVisualConfig:
    clips_per_batch: int = 256  # clips per visual-tokenizer forward
    init_from_centroids: bool = True  # a randomly initialised student's visual-word embeddings


@dataclass
class StudentSize:
    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # auto: copy teacher layers (every other one for half depth) when the widths match, random otherwise.
    init: Literal["auto", "teacher", "random"] = "auto"
    # The student's memory levers (as the teacher stage's model.*); the frozen teacher runs without gradients.
    gradient_checkpointing: bool = False
    compile: bool = False


@dataclass
class StudentDistillConfig(DistillConfig):
    # false: no teacher weights loaded, ground-truth losses only (the no-KD baseline; the weights above ignored).
    enabled: bool = True


@dataclass
class StudentStageConfig(StageConfig):
    teacher: TeacherSourceConfig = field(default_factory=TeacherSourceConfig)
    visual: StudentVisualConfig = field(default_factory=StudentVisualConfig)
    model: StudentSize = field(default_factory=StudentSize)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # ground-truth losses and masking
    distill: StudentDistillConfig = field(default_factory=StudentDistillConfig)


class GroundTruthObjective(nn.Module):
    """The student alone on the ground-truth pretraining losses (`distill.enabled: false`): the same outputs as
    DistillationObjective without its distillation terms, so logs and checkpoints keep their names."""

    def __init__(self, student: nn.Module, objective: ObjectiveConfig) -> None:
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s_out = self.student.bert(
            input_ids=inputs["input_ids"],
            token_type_ids=inputs["token_type_ids"],
            attention_mask=inputs["attention_mask"],
        )
        out = losses_from_outputs(self.student, s_out.last_hidden_state, s_out.pooler_output, inputs, self.objective)
        out["loss_gt"] = out["loss"].detach()
        out["skipped_samples"] = inputs["skipped_samples"]
        return out


# ---------------------------------------------------------------------------------------------
# Where the teacher comes from
# ---------------------------------------------------------------------------------------------


@dataclass
class TeacherSource:
    kind: Literal["model_dir", "checkpoint"]
    path: Path  # the model dir, or the teacher's run dir
    tag: str | None = None  # the checkpoint tag (kind == "checkpoint")


def resolve_teacher(path: str) -> TeacherSource:
    """Classify `teacher.path`; ConfigError (one line) when it is none of the accepted forms."""
    p = Path(path)
    if (p / "config.json").is_file():
        missing = missing_files(p)
        if missing:
            raise ConfigError(
                f"teacher.path: {p} is not a self-contained VideoBERT model dir (missing {', '.join(missing)})"
            )
        return TeacherSource("model_dir", p)
    if (p / COMPLETE).is_file() and (p.parent.parent / "config.yaml").is_file():
        _check_teacher_run(p.parent.parent)
        return TeacherSource("checkpoint", p.parent.parent, p.name)
    if (p / "config.yaml").is_file():
        _check_teacher_run(p)
        tag = CheckpointManager(p / "checkpoints").resume_tag()
        if tag is None:
            raise ConfigError(f"teacher.path: run dir {p} has no complete checkpoint")
        return TeacherSource("checkpoint", p, tag)
    raise ConfigError(
        f"teacher.path: {p} is neither a teacher model dir (config.json) nor a teacher run or checkpoint dir"
    )


def _check_teacher_run(run_dir: Path) -> None:
    stage = load_yaml(run_dir / "config.yaml").get("stage")
    if stage != "pretrain_teacher":
        raise ConfigError(f"teacher.path: {run_dir} is a {stage!r} run, not a pretrain_teacher run")


def teacher_sizes(source: TeacherSource) -> dict[str, Any]:
    """The teacher's architecture sizes and its vocabulary file, read without building it."""
    if source.kind == "model_dir":
        cfg = json.loads((source.path / "config.json").read_text())
        return {**{k: cfg[k] for k in TEACHER_SIZE_KEYS}, "vocab": source.path / "visual_vocab.safetensors"}
    run_cfg = load_yaml(source.path / "config.yaml")
    return {**{k: run_cfg["model"][k] for k in TEACHER_SIZE_KEYS}, "vocab": Path(run_cfg["visual"]["vocab"])}


def consolidate_teacher(source: TeacherSource, out_dir: Path) -> None:
    """Export a teacher checkpoint to a model dir once (a marker names the checkpoint it came from)."""
    from videobert_ds.stages import export_run  # the teacher stage's export, found by the run's `stage:` key

    marker = out_dir / "source.json"
    wanted = {"run": str(source.path.resolve()), "tag": source.tag}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    log.info("consolidating teacher checkpoint %s/%s into %s", source.path, source.tag, out_dir)
    export_run(source.path, out_dir, source.tag)
    write_json(marker, wanted)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


class StudentStage(Stage):
    """A frozen teacher and a small student, fed the teacher stage's batches (PretrainingInputs)."""

    name = "distill_student"
    config_cls = StudentStageConfig
    cfg: StudentStageConfig
    inference_batch = 32
    training_build = False  # set by setup(): only a training build initialises the student

    # -- validation before any rank works ------------------------------------------------------
    def check(self) -> None:
        source = resolve_teacher(self.cfg.teacher.path)
        t = teacher_sizes(source)
        m, d = self.cfg.model, self.cfg.distill
        if min(m.num_hidden_layers, m.hidden_size, m.num_attention_heads) < 1 or m.hidden_size % m.num_attention_heads:
            raise ConfigError(
                f"model: hidden_size ({m.hidden_size}) must be a positive multiple of "
                f"num_attention_heads ({m.num_attention_heads}), with num_hidden_layers >= 1"
            )
        if m.init == "teacher" and not d.enabled:
            raise ConfigError(
                "model.init=teacher copies the teacher's weights, which distill.enabled=false does not load; "
                "use init=random or auto"
            )
        if m.init == "teacher" and not self.widths_match(t):
            raise ConfigError(
                f"model.init=teacher needs the teacher's widths (hidden {t['hidden_size']}, intermediate "
                f"{t['intermediate_size']}, heads {t['num_attention_heads']}) and at most its "
                f"{t['num_hidden_layers']} layers; use init=random or auto"
            )
        if d.enabled:  # the distillation terms' settings (ignored without a teacher)
            self.check_distill(t)
        check_sequence_budget(self.cfg.objective)
        if self.cfg.objective.max_seq_len > t["max_position_embeddings"]:
            raise ConfigError(
                f"objective.max_seq_len ({self.cfg.objective.max_seq_len}) exceeds the teacher's "
                f"max_position_embeddings ({t['max_position_embeddings']})"
            )
        if self.cfg.data.tokens:  # token shards made with the teacher's vocabulary and encoder
            meta = vocab_metadata(t["vocab"])
            check_tokens(
                self.cfg.data.tokens, t["vocab"], meta["encoder"], self.cfg.data.num_frames, "the teacher's vocabulary"
            )
        problem = features_problem(vocab_metadata(t["vocab"])["encoder"], self.cfg.data.tokens)
        if problem:
            raise ConfigError(f"teacher.path: {problem}")
        frames_per_clip = vocab_metadata(t["vocab"])["frames_per_clip"]
        if self.cfg.data.num_frames < frames_per_clip:
            raise ConfigError(
                f"data.num_frames ({self.cfg.data.num_frames}) is shorter than one clip ({frames_per_clip})"
            )

    def check_distill(self, t: dict[str, Any]) -> None:
        m, d = self.cfg.model, self.cfg.distill
        try:
            layer_map = resolve_layer_map(d.layer_map, m.num_hidden_layers, t["num_hidden_layers"])
        except ValueError as err:
            raise ConfigError(f"distill.layer_map: {err}") from None
        if d.temperature <= 0:
            raise ConfigError(f"distill.temperature must be positive, got {d.temperature}")
        negative = [k for k, v in d.kd_lambdas().items() if v < 0]
        if negative:
            raise ConfigError(f"distill: weights must be >= 0 ({', '.join('lambda_' + k for k in negative)})")
        if d.lambda_attention > 0 and all(t_idx <= 0 for t_idx in layer_map[1:]):
            raise ConfigError("distill.lambda_attention > 0 but layer_map maps no student layer to a teacher layer")

    def widths_match(self, t: dict[str, Any]) -> bool:
        """Teacher layers fit the student as they are: same widths and heads, no more layers than the teacher."""
        m = self.cfg.model
        same = (m.hidden_size, m.intermediate_size, m.num_attention_heads) == (
            t["hidden_size"],
            t["intermediate_size"],
            t["num_attention_heads"],
        )
        return same and m.num_hidden_layers <= t["num_hidden_layers"]

    # -- the teacher's files -------------------------------------------------------------------
    @functools.cached_property
    def source(self) -> TeacherSource:
        return resolve_teacher(self.cfg.teacher.path)

    def teacher_dir(self) -> Path:
        return self.source.path if self.source.kind == "model_dir" else Path(self.cfg.run.dir) / "teacher"

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.teacher_dir())

    @functools.cached_property
    def teacher_config(self) -> dict[str, Any]:
        return json.loads((self.teacher_dir() / "config.json").read_text())

    def setup(self, run_dir: Path, rank: int, device: torch.device) -> None:
        self.rank = rank
        self.training_build = True  # export builds the module without setup: its weights come from a checkpoint
        if self.source.kind == "checkpoint":
            if rank == 0:
                consolidate_teacher(self.source, self.teacher_dir())
            dist.barrier()  # every rank reads the consolidated dir below
        t = self.teacher_dir()
        self.visual_tokenizer, self.vocab = load_visual_tokenizer(
            t / ENCODER_DIR, t / VOCAB_FILE, device, self.cfg.visual.clips_per_batch, tokens=bool(self.cfg.data.tokens)
        )
        self.feature_stats = feature_stats(self.vocab, device)  # clip-feature targets scaled as the teacher's were
        if len(self.tokenizer) != self.teacher_config["text_vocab_size"]:
            raise ValueError(
                f"{t}: tokenizer has {len(self.tokenizer)} tokens, the teacher {self.teacher_config['text_vocab_size']}"
            )

    @functools.cached_property
    def specials(self) -> Specials:
        return specials_from_config(self.teacher_config, self.tokenizer)

    def prepare_host(self, batch: Any, generator: torch.Generator) -> Any:
        return self.batches.host(batch, generator)

    def make_inputs(self, batch: Any, device: torch.device, train: bool = True) -> dict[str, Any]:
        return self.batches(batch, device, train=train)

    @functools.cached_property
    def batches(self) -> PretrainingInputs:
        """The teacher stage's batch pipeline over the teacher's tokenizer, visual words and feature scale: one
        masked batch feeds both models."""
        sp, objective = self.specials, self.cfg.objective
        return PretrainingInputs(self.tokenizer, self.visual_tokenizer, sp, objective, self.feature_stats)

    def model_config(self):
        """The teacher's vocabulary, special tokens, positions and alignment head at the student's size."""
        c, m = self.teacher_config, self.cfg.model
        return videobert_config(
            text_vocab_size=c["text_vocab_size"],
            visual_vocab_size=c["visual_vocab_size"],
            visual_feature_dim=c["visual_feature_dim"],
            special_token_ids=c["special_token_ids"],
            hidden_size=m.hidden_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            intermediate_size=m.intermediate_size,
            max_position_embeddings=c["max_position_embeddings"],
            hidden_dropout_prob=m.hidden_dropout_prob,
            attention_probs_dropout_prob=m.attention_probs_dropout_prob,
            video_position_offset=c.get("video_position_offset"),
            alignment_similarity=bool(c.get("alignment_similarity", False)),
        )

    # -- the models ----------------------------------------------------------------------------
    def build_module(self) -> nn.Module:
        # SDPA does not return attention probabilities: the attention loss needs eager attention (both models).
        enabled = self.cfg.distill.enabled
        attn = "eager" if enabled and self.cfg.distill.lambda_attention > 0 else None
        extra = {"attn_implementation": attn} if attn else {}
        started = time.perf_counter()
        # The student first: with or without a teacher it draws the same random weights (same seed).
        student = VideoBertForPreTraining._from_config(self.model_config(), **extra)
        teacher = None
        if enabled:
            teacher = VideoBertForPreTraining.from_pretrained(str(self.teacher_dir()), local_files_only=True, **extra)
        if self.training_build:
            self.init_student(student, teacher)
        m = self.cfg.model
        apply_memory_levers(student, gradient_checkpointing=m.gradient_checkpointing, compile=m.compile)
        if teacher is None:
            log.info("student built in %.1f s; no teacher (distill.enabled=false)", time.perf_counter() - started)
            return GroundTruthObjective(student, self.cfg.objective)
        log.info("teacher loaded and student built in %.1f s", time.perf_counter() - started)
        # The hidden-state projection is built outside ZeRO-3's construction context: the student's precision.
        objective = DistillationObjective(student, teacher, self.cfg.objective, self.cfg.distill)
        return cast_unpartitioned(objective, student.dtype)

    def init_student(self, student: VideoBertForPreTraining, teacher: VideoBertForPreTraining | None) -> None:
        """Before deepspeed.initialize: ZeRO-3's optimizer keeps its own fp32 copy of every partition, so a
        parameter written after initialisation would be reset by the first step. A resumed run's checkpoint
        overwrites this initialisation. Without a teacher (distill.enabled=false) `auto` means random."""
        init = self.cfg.model.init
        copy = init == "teacher" or (init == "auto" and self.widths_match(self.teacher_config))
        if teacher is not None and copy:
            sources = init_from_teacher(student, teacher)
            log.info("student initialised from teacher layers %s", sources)
        elif self.cfg.visual.init_from_centroids:
            student.init_visual_embeddings(self.vocab.tree.leaves, seed=self.cfg.run.seed)

    def on_train_start(self, module: nn.Module, device: torch.device) -> None:
        """Record both models' sizes and how much of each this rank holds."""
        run_dir = Path(self.cfg.run.dir)
        names = [n for n in ("teacher", "student", "projection") if hasattr(module, n)]
        shares = {name: partition_share(getattr(module, name)) for name in names}
        (run_dir / f"distill_partition_rank{self.rank}.json").write_text(json.dumps(shares) + "\n")
        if self.rank == 0 and not self.cfg.distill.enabled:
            n_s = count_params(module.student)
            student = {"params": n_s, "layers": module.student.config.num_hidden_layers}
            student["hidden_size"] = module.student.config.hidden_size
            update_report(run_dir, {"distill": False, "student": student})
            log.info("training a %d-parameter student without a teacher (distill.enabled=false)", n_s)
        elif self.rank == 0:
            teacher, student = module.teacher, module.student
            n_t, n_s = count_params(teacher), count_params(student)
            update_report(
                run_dir,
                {
                    "teacher": {
                        "path": str(self.cfg.teacher.path),
                        "params": n_t,
                        "layers": teacher.config.num_hidden_layers,
                        "hidden_size": teacher.config.hidden_size,
                    },
                    "student": {
                        "params": n_s,
                        "layers": student.config.num_hidden_layers,
                        "hidden_size": student.config.hidden_size,
                    },
                    "param_ratio": n_s / n_t,
                    "layer_map": module.layer_map,
                },
            )
            log.info(
                "distilling a %d-parameter teacher into a %d-parameter student (%.1f%%); layer map %s",
                n_t,
                n_s,
                100 * n_s / n_t,
                module.layer_map,
            )

    def step_stats(self, inputs: dict[str, Any]) -> tuple[int, float]:
        """Student training (6 FLOPs per weight per token, + attention) plus the teacher's forward (2 + its
        attention), the teacher stage's counting rule."""
        tokens, seq_len = inputs["_num_tokens"], inputs["input_ids"].shape[1]
        m, t = self.cfg.model, self.teacher_config
        student = transformer_flops_per_token(
            m.num_hidden_layers, m.hidden_size, m.intermediate_size, seq_len, training=True
        )
        if not self.cfg.distill.enabled:
            return tokens, float(tokens * student)
        teacher = transformer_flops_per_token(
            t["num_hidden_layers"], t["hidden_size"], t["intermediate_size"], seq_len, training=False
        )
        return tokens, float(tokens * (student + teacher))

    def images(self, module: nn.Module, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """None: the text -> video grids are the teacher stage's (its config holds the prompts)."""
        return {}

    # -- export --------------------------------------------------------------------------------
    def export(self, module: nn.Module, out_dir: Path) -> None:
        """The student's self-contained model dir (weights, the teacher's tokenizer, visual vocabulary and
        clip encoder), then both models' inference throughput into the run's report."""
        save_model_dir(
            module.student,
            self.tokenizer,
            out_dir,
            vocab=self.teacher_dir() / VOCAB_FILE,
            encoder_dir=self.teacher_dir() / ENCODER_DIR,
        )
        self.record_throughput(module)

    def record_throughput(self, module: nn.Module) -> None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        seq_len = self.cfg.objective.max_seq_len
        names = ("teacher", "student") if self.cfg.distill.enabled else ("student",)
        batch = self.inference_batch
        rates = {name: inference_clips_per_s(getattr(module, name), seq_len, batch, device) for name in names}
        module.to("cpu")
        run_dir = Path(self.cfg.run.dir)
        if not self.cfg.distill.enabled:
            s = module.student
            report = update_report(
                run_dir,
                {
                    "distill": False,
                    "student": {"inference_clips_per_s": rates["student"], "params": count_params(s)},
                    "inference_device": str(device),
                    "inference_batch": self.inference_batch,
                    "inference_seq_len": seq_len,
                },
            )
            self.write_report_text(run_dir, report)
            log.info("student %.1f clips/s (%s; no teacher)", rates["student"], device)
            return
        report = update_report(
            run_dir,
            {
                "teacher": {
                    "inference_clips_per_s": rates["teacher"],
                    "params": count_params(module.teacher),
                    "layers": module.teacher.config.num_hidden_layers,
                    "hidden_size": module.teacher.config.hidden_size,
                },
                "student": {
                    "inference_clips_per_s": rates["student"],
                    "params": count_params(module.student),
                    "layers": module.student.config.num_hidden_layers,
                    "hidden_size": module.student.config.hidden_size,
                },
                "param_ratio": count_params(module.student) / count_params(module.teacher),
                "speedup": rates["student"] / rates["teacher"],
                "inference_device": str(device),
                "inference_batch": self.inference_batch,
                "inference_seq_len": seq_len,
            },
        )
        self.write_report_text(run_dir, report)
        log.info("student %.1f clips/s vs teacher %.1f clips/s (%s)", rates["student"], rates["teacher"], device)

    def write_report_text(self, run_dir: Path, report: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir / "tb")) as writer:
            writer.add_text("distill/report", report_markdown(report))

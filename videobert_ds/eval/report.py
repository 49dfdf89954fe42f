"""The demo report: stage timings and every model's evaluation in one Markdown page and one JSON file.

    python -m videobert_ds.eval.report --demo-dir runs/demo

reads   DEMO/timings.json       {STAGE: {"seconds": S, ...throughput fields}}   (the demo script's)
        DEMO/eval_teacher.json  videobert-eval reports: the teacher, the distilled student, the same student
        DEMO/eval_student.json  trained without the teacher (student_no_kd) and the teacher's architecture with
        DEMO/eval_student_no_kd.json, DEMO/eval_untrained.json      random weights (untrained): the baselines
        DEMO/eval_finetune_{teacher,student,student_no_kd}.json     the fine-tuned models' reports
writes  DEMO/report.json        {"stages": {STAGE: {"seconds": S, ...}},
                                 "models": {"teacher"|"student"|"student_no_kd"|"untrained":
                                            {"params", "clips_per_s", "metrics": {...}}},
                                 (metrics include the fine-tuned model's finetune/... entries, classification
                                 with the pretrained model's `zeroshot` value, captioning with its `before`)
                                 "captions": ..., "targets": [{"target", "met", "detail"}], "missing": [...]}
        DEMO/report.md          the same for people, with the targets checked (check_targets: each against
                                chance and against a baseline model; met is null where a model is missing)
A missing input is reported as missing; the rest of the report is still written.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The trained models and the baselines the targets compare them with: the same student trained without the
# teacher (ground-truth losses only) and the teacher's architecture with random weights.
MODELS = ("teacher", "student", "student_no_kd", "untrained")
FINETUNED = ("teacher", "student", "student_no_kd")  # the models the demo also fine-tunes
# Targets on the synthetic test split (issues 7 and 20): each against chance and against a baseline model.
TEACHER_CHANCE = {"retrieval/t2v/R@1": 5.0, "caption/CIDEr": 1.0}  # teacher >= factor x chance (1: > chance)
ZEROSHOT_FACTOR = 2.0  # teacher zero-shot top-1 >= 2x chance, each attribute
STUDENT_SHARE = 0.8  # student >= 80% of the teacher on every informative metric (and better than chance)
STUDENT_PARAMS = 0.25  # ... with at most a quarter of its parameters
TIE = 1e-9  # values closer than this count as tied


@dataclass
class Target:
    name: str
    met: bool | None  # None: could not be checked
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.name, "met": self.met, "detail": self.detail}


def _read(path: Path, missing: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        missing.append(path.name)
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from None


def lower_is_better(name: str, entry: dict[str, Any] | None = None) -> bool:
    return bool((entry or {}).get("lower_is_better")) or name.endswith("median_rank")


def informative(name: str, entry: dict[str, Any]) -> bool:
    """Whether a metric can tell models apart: not when chance already reaches the best value (top-5 of 4 labels
    is 1.0 for any model)."""
    return entry["chance"] > 1 if lower_is_better(name, entry) else entry["chance"] < 1


def compare(a: float, b: float, name: str, entry: dict[str, Any]) -> int:
    """1 when value `a` is better than `b`, -1 when worse, 0 when tied (within TIE)."""
    if abs(a - b) <= TIE:
        return 0
    return 1 if (a < b) == lower_is_better(name, entry) else -1


def _model_entry(report: dict[str, Any], path: str) -> dict[str, Any]:
    for key in ("params", "clips_per_s", "metrics"):
        if key not in report:
            raise ValueError(f"{path}: not a videobert-eval report (no {key!r})")
    return {"params": report["params"], "clips_per_s": report["clips_per_s"], "metrics": report["metrics"]}


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def _both(chance_ok: bool, base_ok: bool | None) -> bool | None:
    """Met only when both halves hold; not checked when the chance half holds and the baseline is missing."""
    if chance_ok is False or base_ok is False:
        return False
    return None if base_ok is None else True


def teacher_targets(tm: dict[str, Any], untrained: dict[str, Any] | None) -> list[Target]:
    """Zero-shot top-1 >= 2x chance, text -> video R@1 >= 5x chance, beam CIDEr > the constant caption's; each also
    above the untrained model (random weights) on the same metric."""
    factors = {k: ZEROSHOT_FACTOR for k in sorted(tm) if k.startswith("zeroshot/") and k.endswith("/top1")}
    factors.update(TEACHER_CHANCE)
    out = []
    for name, factor in factors.items():
        title = f"teacher {name} {'>' if factor == 1 else f'>= {factor:g}x'} chance and > untrained"
        if name not in tm:
            out.append(Target(title, None, "not in the teacher report"))
            continue
        v, c = tm[name]["value"], tm[name]["chance"]
        chance_ok = v > c if factor == 1 else v >= factor * c
        detail = f"{v:.3f} vs chance {c:.3f} ({v / c:.2f}x)" if c else f"{v:.3f}, chance 0"
        u = (untrained or {}).get(name)
        if u is None:
            base_ok, detail = None, detail + "; untrained: not evaluated"
        else:
            base_ok, detail = compare(v, u["value"], name, tm[name]) > 0, detail + f"; untrained {u['value']:.3f}"
        out.append(Target(title, _both(chance_ok, base_ok), detail))
    return out


def beats_on_most(name_a: str, a: dict[str, Any] | None, name_b: str, b: dict[str, Any] | None) -> Target:
    """Model a better than model b on more than half of the informative metrics both report (ties count against)."""
    title = f"{name_a} beats {name_b} on most metrics"
    if a is None or b is None:
        return Target(title, None, f"no {name_a if a is None else name_b} evaluation")
    wins, ties, losses = [], [], []
    for name, entry in a["metrics"].items():
        other = b["metrics"].get(name)
        if other is None or not informative(name, entry):
            continue
        {1: wins, 0: ties, -1: losses}[compare(entry["value"], other["value"], name, entry)].append(name)
    n = len(wins) + len(ties) + len(losses)
    if not n:
        return Target(title, None, "no informative metric in common")
    worse = f" (worse: {', '.join(losses)})" if losses else ""
    detail = f"better on {len(wins)}, tied on {len(ties)}, worse on {len(losses)} of {n}{worse}"
    return Target(title, len(wins) > n / 2, detail)


def student_targets(teacher: dict[str, Any], student: dict[str, Any]) -> list[Target]:
    """At most a quarter of the teacher's parameters; on every informative metric >= 80% of the teacher and > chance."""
    ratio = student["params"] / teacher["params"]
    out = [
        Target(
            f"student params <= {STUDENT_PARAMS:g}x teacher",
            ratio <= STUDENT_PARAMS,
            f"{student['params']:,} vs {teacher['params']:,} ({ratio:.3f}x)",
        )
    ]
    for name, t_entry in teacher["metrics"].items():
        if not informative(name, t_entry):
            continue
        title = f"student {name} >= {STUDENT_SHARE:.0%} of teacher and beats chance"
        s_entry = student["metrics"].get(name)
        if s_entry is None:
            out.append(Target(title, False, "missing in the student report"))
            continue
        tv, sv, c = t_entry["value"], s_entry["value"], s_entry["chance"]
        lower = lower_is_better(name, t_entry)
        if lower:  # e.g. median rank: the student may be at most 1/0.8 as high
            met = sv <= tv / STUDENT_SHARE
            share = tv / sv if sv else float("inf")
        else:
            met = sv >= STUDENT_SHARE * tv
            share = sv / tv if tv else float("inf")
        met = met and compare(sv, c, name, s_entry) > 0
        note = " (lower is better: at most teacher / 0.8)" if lower else ""
        out.append(Target(title, met, f"{sv:.3f} vs teacher {tv:.3f} ({share:.0%}), chance {c:.3f}{note}"))
    return out


def check_targets(models: dict[str, dict[str, Any]]) -> list[Target]:
    """Every target compares with chance and with a baseline model: the teacher with the untrained model and the
    no-KD student (the teacher should be the stronger model), the student with the teacher and the no-KD student
    (what distillation adds). A missing model leaves the targets that need it not checked."""
    teacher, student, no_kd = models.get("teacher"), models.get("student"), models.get("student_no_kd")
    if teacher is None:
        return [Target("teacher targets", None, "no teacher evaluation (eval_teacher.json missing)")]
    untrained = models.get("untrained")
    out = teacher_targets(teacher["metrics"], untrained["metrics"] if untrained else None)
    out.append(beats_on_most("teacher", teacher, "student_no_kd", no_kd))
    if student is None:
        out.append(Target("student targets", None, "no student evaluation (eval_student.json missing)"))
        return out
    out += student_targets(teacher, student)
    out.append(beats_on_most("student", student, "student_no_kd", no_kd))
    return out


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def finetune_entries(finetuned: dict[str, Any], pretrained: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned model's finetune/... metrics, each with the pretrained model's comparable value:
    classification beside zero-shot (`zeroshot`), captioning and retrieval after beside before (`before`)."""
    out = {}
    for key, entry in finetuned.items():
        if not key.startswith("finetune/"):
            continue
        entry = dict(entry)
        parts = key.split("/")
        if parts[1] == "classification":
            before = pretrained.get(f"zeroshot/{parts[2]}/top1")
            entry["zeroshot"] = before["value"] if before else None
        elif parts[1] in ("caption", "retrieval"):
            before = pretrained.get("/".join(parts[1:]))
            entry["before"] = before["value"] if before else None
        out[key] = entry
    return out


def assemble(demo_dir: Path) -> dict[str, Any]:
    missing: list[str] = []
    timings = _read(demo_dir / "timings.json", missing) or {}
    stages = {}
    for stage, entry in timings.items():
        if not isinstance(entry, dict) or "seconds" not in entry:
            raise ValueError(f"{demo_dir / 'timings.json'}: stage {stage!r} has no 'seconds'")
        stages[stage] = entry
    models: dict[str, dict[str, Any]] = {}
    captions: dict[str, list[dict[str, Any]]] = {}
    for name in MODELS:
        path = demo_dir / f"eval_{name}.json"
        report = _read(path, missing)
        if report is not None:
            models[name] = _model_entry(report, str(path))
            captions[name] = report.get("captions", [])
    for name in FINETUNED:
        path = demo_dir / f"eval_finetune_{name}.json"
        report = _read(path, missing)
        if report is not None and name in models:
            models[name]["metrics"].update(
                finetune_entries(_model_entry(report, str(path))["metrics"], models[name]["metrics"])
            )
    return {
        "stages": stages,
        "models": models,
        "captions": captions,
        "targets": [t.as_dict() for t in check_targets(models)],
        "missing": missing,
    }


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _num(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def _field(value: Any) -> str:
    """A throughput field for a table cell: numbers rounded, nested mappings compact."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_field(v)}" for k, v in value.items()) + "}"
    return _num(value, 1 if isinstance(value, float) and abs(value) >= 10 else 3)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any], demo_dir: Path) -> str:
    lines = [
        "# VideoBERT-DS demo report",
        "",
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from `{demo_dir}`.",
        "",
    ]
    if report["missing"]:
        lines += [
            f"**Missing inputs:** {', '.join(f'`{m}`' for m in report['missing'])} "
            "(the parts that need them are left out).",
            "",
        ]

    lines += ["## Stages", ""]
    if report["stages"]:
        lines += ["| stage | wall time (s) | throughput |", "|---|---:|---|"]
        for stage, entry in report["stages"].items():
            extra = ", ".join(f"{k} {_field(v)}" for k, v in entry.items() if k != "seconds")
            lines.append(f"| {stage} | {_num(float(entry['seconds']), 1)} | {_cell(extra) or '-'} |")
        total = sum(float(e["seconds"]) for e in report["stages"].values())
        lines += [f"| **total** | {_num(total, 1)} | |", ""]
    else:
        lines += ["No stage timings (timings.json missing).", ""]

    models = report["models"]
    names = [m for m in MODELS if m in models]
    lines += ["## Models", ""]
    if not names:
        lines += ["No model evaluations.", ""]
    else:
        if "student" not in models:
            lines += ["The student evaluation (`eval_student.json`) is missing.", ""]
        baselines = [m for m in ("student_no_kd", "untrained") if m in models]
        if baselines:
            lines += [
                "Baselines: "
                + "; ".join(
                    {
                        "student_no_kd": "`student_no_kd` is the same student (size, data, steps, seed) trained on "
                        "the ground-truth losses alone, without the teacher (`distill.enabled: false`)",
                        "untrained": "`untrained` is the teacher's architecture with random weights (its tokenizer "
                        "and visual words)",
                    }[m]
                    for m in baselines
                )
                + ".",
                "",
            ]
        head = " | ".join(names)
        lines += [f"| | {head} |", "|---|" + "---:|" * len(names)]
        lines.append("| parameters | " + " | ".join(_num(int(models[m]["params"])) for m in names) + " |")
        lines.append(
            "| inference clips/s | " + " | ".join(_num(float(models[m]["clips_per_s"]), 1) for m in names) + " |"
        )
        lines += [
            "",
            "Every metric beside its chance level or trivial baseline (zero-shot: the better of random "
            "labels and the most frequent labels of `eval.baseline_split`; retrieval: random ranking of the pool; "
            "captions: a constant caption, that split's most frequent caption; the demo takes them from its val "
            "split, whose narration is clean). Caption scores are pycocoevalcap's "
            "(BLEU/METEOR/ROUGE-L in 0-1, CIDEr-D). Median rank: lower is better.",
            "",
        ]
        metric_names = list(
            dict.fromkeys(k for m in names for k in models[m]["metrics"] if not k.startswith("finetune/"))
        )
        cols = [*names, "chance"]
        lines += ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for metric in metric_names:
            entries = [models[m]["metrics"].get(metric) for m in names]
            digits = 1 if metric.endswith("median_rank") else 3
            vals = [_num(e["value"], digits) if e else "-" for e in entries]
            # The chance level depends on the test split, not the model: one value unless the reports differ.
            chances = dict.fromkeys(_num(e["chance"], digits) for e in entries if e)
            lines.append(f"| {metric} | " + " | ".join([*vals, " / ".join(chances)]) + " |")
        lines.append("")

    lines += downstream_table(models, [m for m in names if m in FINETUNED])

    lines += ["## Generated captions", ""]
    caps = report["captions"]
    if any(caps.values()):
        by_key: dict[str, dict[str, Any]] = {}
        for m in names:
            for c in caps.get(m, []):
                by_key.setdefault(c["key"], {"reference": c.get("reference", "")})[m] = c
        cols = [f"{m} ({d})" for m in names for d in ("beam", "greedy")]
        lines += ["| clip | reference | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        for key, row in by_key.items():
            cells = [_cell(row.get(m, {}).get(d, "-")) for m in names for d in ("beam", "greedy")]
            lines.append(f"| {key} | {_cell(row['reference'])} | " + " | ".join(cells) + " |")
        constant = next((c.get("constant") for m in names for c in caps.get(m, []) if c.get("constant")), None)
        if constant:
            lines += ["", f'Constant-caption baseline: "{constant}".']
        lines.append("")
    else:
        lines += ["No generated captions.", ""]

    lines += [
        "## Targets",
        "",
        "Each against chance and against a baseline model: the teacher above chance and above the untrained model, "
        "and better than the no-KD student on most metrics (the stronger model); the student within "
        f"{STUDENT_SHARE:.0%} of the teacher and above chance on every informative metric (top-5 of 4 labels is "
        "1.0 for any model, left out), and better than the no-KD student on most metrics (what distillation adds). "
        '"Most": more than half of the informative metrics both report, ties counting against.',
        "",
    ]
    marks = {True: "met", False: "**NOT MET**", None: "not checked"}
    for t in report["targets"]:
        lines.append(f"- {marks[t['met']]}: {t['target']} — {t['detail']}")
    unmet = [t for t in report["targets"] if t["met"] is False]
    lines += ["", f"{len(unmet)} target(s) not met." if unmet else "All checked targets are met.", ""]
    nmi = report["stages"].get("build_vocab", {}).get("nmi") or {}
    if unmet and nmi:  # what the visual words carry bounds what any model can read from them
        carried = ", ".join(f"{a} {v['nmi']:.2f} (shuffled {v['nmi_shuffled']:.2f})" for a, v in sorted(nmi.items()))
        lines += [
            f"What the visual vocabulary carries, NMI(visual word; attribute) over the training clips: {carried}. "
            "An attribute the words barely carry bounds its zero-shot accuracy and the retrieval ranks "
            'that depend on it (docs/benchmarks.md, "Clip encoder: reconstruction alone vs + narration MIL-NCE").',
            "",
        ]

    lines += [
        "## TensorBoard",
        "",
        "```",
        f"tensorboard --logdir {demo_dir} --host 127.0.0.1",
        "```",
        "",
        "or `make tensorboard`, then open http://127.0.0.1:6006/.",
        "",
    ]
    return "\n".join(lines)


def downstream_table(models: dict[str, Any], names: list[str]) -> list[str]:
    """Fine-tuned metrics beside the pretrained model's (zero-shot / before fine-tuning) and chance."""
    keys = list(dict.fromkeys(k for m in names for k in models[m]["metrics"] if k.startswith("finetune/")))
    lines = ["## Downstream (fine-tuned)", ""]
    if not keys:
        return lines + ["No fine-tuned evaluations (eval_finetune_*.json missing).", ""]
    cols = [c for m in names for c in (f"{m} fine-tuned", f"{m} before")] + ["chance"]
    lines += [
        "Classification: the label head after fine-tuning beside zero-shot template filling of the pretrained "
        "model; QA: the fine-tuned masked-word head choosing among the candidates; captioning and retrieval: the "
        "fine-tuned model beside the pretrained one (median rank: lower is better). Chance: the most frequent "
        "label or uniform, 1 / choices, a constant caption, random ranking.",
        "",
        "| task | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for key in keys:
        cells, chance = [], "-"
        for m in names:
            e = models[m]["metrics"].get(key)
            before = None if e is None else e.get("zeroshot", e.get("before"))
            cells += [_num(e["value"]) if e else "-", _num(before) if before is not None else "-"]
            chance = _num(e["chance"]) if e else chance
        lines.append(f"| {key.removeprefix('finetune/')} | " + " | ".join(cells + [chance]) + " |")
    return lines + [""]


def write(demo_dir: Path) -> dict[str, Any]:
    report = assemble(demo_dir)
    for name, text in (("report.json", json.dumps(report, indent=2) + "\n"), ("report.md", markdown(report, demo_dir))):
        tmp = demo_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(demo_dir / name)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videobert_ds.eval.report", description="Assemble the demo report.")
    p.add_argument("--demo-dir", default="runs/demo", help="the demo's run dir (default: %(default)s)")
    args = p.parse_args(argv)
    demo_dir = Path(args.demo_dir)
    if not demo_dir.is_dir():
        print(f"report: error: no demo dir at {demo_dir}", file=sys.stderr)
        return 2
    try:
        report = write(demo_dir)
    except ValueError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 1
    unmet = sum(t["met"] is False for t in report["targets"])
    print(
        f"wrote {demo_dir / 'report.md'} and {demo_dir / 'report.json'}"
        + (f"; missing: {', '.join(report['missing'])}" if report["missing"] else "")
        + (f"; {unmet} target(s) not met" if unmet else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

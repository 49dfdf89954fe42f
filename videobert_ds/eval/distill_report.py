"""The distillation report, RUN_DIR/distill_report.json: both models' sizes, the layer map and, at export, their
inference throughput on the exporting host; also shown as TensorBoard text `distill/report`. A student trained
without a teacher (distill.enabled=false) has `"distill": false` and no teacher entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from videobert_ds.core.atomic import write_json

REPORT = "distill_report.json"


def update_report(run_dir: Path, values: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / REPORT
    report = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in values.items():
        report[key] = {**report.get(key, {}), **value} if isinstance(value, dict) else value
    write_json(path, report)
    return report


def report_markdown(report: dict[str, Any]) -> str:
    rows = ["| model | layers x hidden | parameters | inference clips/s |", "|---|---|---|---|"]
    for name in ("teacher", "student"):
        if name not in report:  # no teacher: a student trained without distillation (distill.enabled=false)
            continue
        r = report[name]
        rate = r.get("inference_clips_per_s")
        rows.append(
            f"| {name} | {r.get('layers')} x {r.get('hidden_size')} | {r.get('params', 0):,} | "
            f"{'-' if rate is None else f'{rate:.1f}'} |"
        )
    if report.get("distill") is False:
        rows.append("\nno teacher: ground-truth losses only (distill.enabled=false)")
    if "param_ratio" in report:
        rows.append(f"\nstudent / teacher parameters: {report['param_ratio']:.3f}")
    if "speedup" in report:
        rows.append(
            f"student speed-up: {report['speedup']:.2f}x ({report.get('inference_device')}, batch "
            f"{report.get('inference_batch')}, {report.get('inference_seq_len')} tokens)"
        )
    return "\n".join(rows)

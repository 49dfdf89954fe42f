"""`make bench-gpu` (videobert_ds.bench.gpu): one line and exit 0 without a GPU; its pre-made teacher batches
are the stage's layout at teacher.yaml's sizes (built here on the CPU, no model)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from videobert_ds.bench.gpu import REPO, premade_batches, report_lines, teacher_setup


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the command runs the real benchmark")
def test_bench_gpu_without_a_gpu_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "videobert_ds.bench.gpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench-gpu: no CUDA device here"), proc.stdout


def test_bench_gpu_batches_are_teacher_sized_stage_inputs():
    config, objective, sp, clips = teacher_setup()
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (24, 1024, 16)
    assert clips == 4 and objective.max_seq_len == 128
    (batch,) = premade_batches(1, 3, objective, sp, clips, torch.device("cpu"))
    ids = batch["input_ids"]
    assert ids.shape[0] <= 3 and ids.shape[1] <= objective.max_seq_len
    assert int(ids.max()) < config.vocab_size and batch["_num_tokens"] > 0
    for key in ("token_type_ids", "attention_mask", "mlm_labels", "mvm_labels", "caption_labels", "align_labels"):
        assert key in batch


def test_bench_gpu_report_names_the_peak_and_says_when_zero3_was_not_used():
    teacher = {
        "model": "teacher.yaml: 24 x 1024, 16 heads, seq <= 128",
        "setup": "bf16 autocast + torch fused AdamW, plain torch (DeepSpeed not installed: ZeRO-3 not used)",
        "micro_batch": 32,
        "steps": 50,
        "seconds": 10.0,
        "tokens_per_s": 123456.0,
        "tflops": 400.0,
        "mfu": 400 / 989.5,
        "peak": "MFU against 989.5 TFLOP/s (dense bf16) for NVIDIA H100 80GB HBM3",
        "peak_memory_gib": 20.0,
        "host_syncs_per_step": 0.0,
    }
    decode = [{"skipped": "DALI is not installed (pip install nvidia-dali-cuda120): decode check not run"}]
    lines = report_lines("NVIDIA H100 80GB HBM3", teacher, decode)
    assert "MFU 40.4% (goal >= 40%)" in lines[1] and "989.5 TFLOP/s (dense bf16)" in lines[1]
    assert "ZeRO-3 not used" in lines[1] and "123,456 tokens/s" in lines[1]
    assert lines[2].startswith("decode: skipped: DALI is not installed")

"""`make bench-gpu`: every GPU check in one call of at most 8 minutes.

    python -m videobert_ds.bench.gpu [--steps 50] [--micro-batch 32] [--json out.json]

1. The cluster teacher (teacher.yaml: BERT-large, 24 x 1024, 16 heads, sequences of objective.max_seq_len) trains
   on pre-made batches built by the stage's own layout code (objectives/layout.py), in bf16 under DeepSpeed
   ZeRO-3 on one GPU with ds_configs/zero3.json (torch's fused AdamW). Where DeepSpeed is not installed, the
   plain torch model trains instead under bf16 autocast with torch's fused AdamW, and the line says ZeRO-3 was
   not used. Reports tokens/s, achieved TFLOP/s, MFU against the card's dense bf16 peak (training/timing.py;
   the line names the peak; goal >= 40 %), peak memory, and the host syncs per step that
   torch.cuda.set_sync_debug_mode("warn") reports over a few extra steps (timed steps run without it).
2. Decoding NVDEC-sized clips (VP9 and H.264 at 128 x 128) with DALI's "mixed" decoder, and 112-px VP9 through
   the CPU fallback the loader picks for it, after the start-up probe; skipped with a line without DALI.

Without a GPU it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
TEACHER_YAML = Path(__file__).resolve().parents[1] / "configs" / "teacher.yaml"
DS_CONFIG = REPO / "ds_configs" / "zero3.json"
VISUAL_WORDS = 12**4  # vocab.yaml: branching 12, depth 4
FEATURE_DIM = 1024  # video_encoder.yaml: feature_dim
FRAMES_PER_CLIP = 16  # video_encoder.yaml: frames_per_clip
BUDGET_S = 8 * 60
MFU_GOAL = 0.40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def teacher_setup() -> tuple[Any, Any, Any, int]:
    """(model config, objective config, special tokens, clips per sample) of teacher.yaml at cluster size."""
    import yaml

    from videobert_ds.model.specials import Specials
    from videobert_ds.model.videobert import videobert_config
    from videobert_ds.objectives.layout import ObjectiveConfig

    cfg = yaml.safe_load(TEACHER_YAML.read_text())
    objective = ObjectiveConfig(**cfg.get("objective", {}))
    text_vocab = int(cfg["text"]["vocab_size"])
    sp = Specials(cls=2, sep=3, mask=4, pad=0, video_sep=5, text_vocab_size=text_vocab, visual_vocab_size=VISUAL_WORDS)
    m = cfg["model"]
    config = videobert_config(
        text_vocab_size=text_vocab,
        visual_vocab_size=VISUAL_WORDS,
        visual_feature_dim=FEATURE_DIM,
        special_token_ids=sp.token_ids(),
        hidden_size=m["hidden_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        intermediate_size=m["intermediate_size"],
        max_position_embeddings=m["max_position_embeddings"],
        video_position_offset=objective.max_text_tokens + 2,
    )
    return config, objective, sp, int(cfg["data"]["num_frames"]) // FRAMES_PER_CLIP


def premade_batches(
    n: int, micro_batch: int, objective: Any, sp: Any, clips: int, device: torch.device, seed: int = 0
) -> list[dict[str, Any]]:
    """``n`` micro-batches laid out by the stage's code from random captions and visual words, on the device."""
    from videobert_ds.objectives.layout import ClipSample, build_batch, host_to_device, to_device

    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n):
        samples = []
        for i in range(micro_batch):
            length = int(torch.randint(8, objective.max_text_tokens + 1, (1,), generator=g))
            text = torch.randint(6, sp.text_vocab_size, (length,), generator=g).tolist()
            samples.append(ClipSample(text_ids=text, num_clips=clips, video_id=f"v{b}_{i // 2}", segment=i % 2))
        host = build_batch(samples, clips, sp, objective, train=True, generator=g)
        ids = torch.randint(0, sp.visual_vocab_size, (micro_batch, clips), generator=g)
        feats = torch.randn(micro_batch, clips, FEATURE_DIM, generator=g)
        stats = (torch.zeros(FEATURE_DIM, device=device), torch.ones(FEATURE_DIM, device=device))
        inputs = to_device(host, host_to_device(ids, device), host_to_device(feats, device), sp, device, stats)
        inputs["skipped_samples"] = torch.zeros((), device=device)
        inputs["_num_tokens"] = host.counts["num_tokens"]
        out.append(inputs)
    return out


def _init_single_process_dist() -> None:
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def build_trainer(config: Any, objective: Any, micro_batch: int, device: torch.device, use_deepspeed: bool):
    """(step function, description, keep-alive): one optimizer step on a batch per call."""
    from videobert_ds.model.videobert import VideoBertForPreTraining
    from videobert_ds.objectives.pretraining import PretrainingObjective

    if use_deepspeed:
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        _init_single_process_dist()
        deepspeed.init_distributed()  # the accelerator's backend: NCCL on a GPU
        ds_config = json.loads(DS_CONFIG.read_text())
        ds_config["train_micro_batch_size_per_gpu"] = micro_batch
        keep_alive = HfDeepSpeedConfig(ds_config)  # partitions the weights at construction
        module = PretrainingObjective(VideoBertForPreTraining._from_config(config), objective)
        engine, *_ = deepspeed.initialize(
            model=module, model_parameters=[p for p in module.parameters() if p.requires_grad], config=ds_config
        )
        engine.train()

        def step(inputs: dict[str, Any]) -> None:
            out = engine(inputs)
            engine.backward(out["loss"])
            engine.step()

        return step, f"bf16, DeepSpeed ZeRO-3 on 1 GPU ({DS_CONFIG.name}, torch fused AdamW)", (keep_alive, engine)

    torch.manual_seed(0)
    module = PretrainingObjective(VideoBertForPreTraining(config), objective).to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=True)

    def step(inputs: dict[str, Any]) -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            out = module(inputs)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, "bf16 autocast + torch fused AdamW, plain torch (DeepSpeed not installed: ZeRO-3 not used)", module


def count_syncs(step, batches: list[dict[str, Any]], steps: int) -> float:
    """Host syncs per step that torch's sync debug mode reports (each one a warning)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(steps):
                step(batches[i % len(batches)])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught) / max(steps, 1)


def bench_teacher(args: argparse.Namespace, device: torch.device, deadline: float) -> dict[str, Any]:
    from videobert_ds.model.flops import transformer_flops_per_token
    from videobert_ds.training.timing import describe_peak, device_peak_flops

    try:
        import deepspeed  # noqa: F401

        use_deepspeed = not args.no_deepspeed
    except ImportError:
        use_deepspeed = False
    config, objective, sp, clips = teacher_setup()
    batches = premade_batches(4, args.micro_batch, objective, sp, clips, device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step, how, _keep = build_trainer(config, objective, args.micro_batch, device, use_deepspeed)
    except Exception as e:  # DeepSpeed installed but not working here: still measure the plain model, and say so
        if not use_deepspeed:
            raise
        use_deepspeed = False
        step, how, _keep = build_trainer(config, objective, args.micro_batch, device, False)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        how = how.replace("DeepSpeed not installed", f"DeepSpeed failed: {reason}")
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    torch.cuda.synchronize(device)

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    tokens = flops = done = 0
    start.record()
    wall = time.perf_counter()
    for i in range(args.steps):
        inputs = batches[i % len(batches)]
        step(inputs)
        per_token = transformer_flops_per_token(
            config.num_hidden_layers,
            config.hidden_size,
            config.intermediate_size,
            inputs["input_ids"].shape[1],
            training=True,
        )
        tokens += inputs["_num_tokens"]
        flops += inputs["_num_tokens"] * per_token
        done += 1
        if time.monotonic() > deadline - 60:  # leave time for the sync count and the decode check
            break
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000
    syncs = count_syncs(step, batches, min(5, args.steps))
    peak, name = device_peak_flops(device)
    achieved = flops / seconds
    return {
        "model": f"teacher.yaml: {config.num_hidden_layers} x {config.hidden_size}, {config.num_attention_heads} "
        f"heads, seq <= {objective.max_seq_len}",
        "setup": how,
        "zero3": use_deepspeed,
        "micro_batch": args.micro_batch,
        "steps": done,
        "seconds": seconds,
        "host_seconds": time.perf_counter() - wall,
        "tokens_per_s": tokens / seconds,
        "tflops": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "peak": describe_peak(name, peak),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "host_syncs_per_step": syncs,
    }


def synthetic_frames(size: int, frames: int = 32) -> Any:
    """A moving gradient: compresses like video, not like noise."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    clip = [
        np.stack([(x + 3 * t) % 256, (y + 2 * t) % 256, (x + y + t) % 256], -1).astype(np.uint8) for t in range(frames)
    ]
    return np.stack(clip)


def bench_decode(device: torch.device, clips: int = 64, batch: int = 16, frames: int = 32) -> list[dict[str, Any]]:
    """clips/s for NVDEC-sized VP9 and H.264 and for 112-px VP9 (the CPU fallback), as the loader picks them."""
    from itertools import repeat

    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return [{"skipped": "DALI is not installed (pip install nvidia-dali-cuda120): decode check not run"}]
    try:  # the loader's own choice and decoders; they need webdataset and PyAV too
        from videobert_ds.data.decoders.dali import probe_gpu_decode
        from videobert_ds.data.loader import choose_decoder, open_decoder
        from videobert_ds.data.video_io import encode_clip
    except ImportError as e:
        return [{"skipped": f"{e.name} is not installed: decode check not run"}]

    results = []
    for codec, size in (("vp9", 128), ("h264", 128), ("vp9", 112)):
        data = encode_clip(synthetic_frames(size, frames), 8.0, codec)
        choice = choose_decoder("auto", codec, device, (size, size))
        row: dict[str, Any] = {"codec": codec, "size": size, "backend": choice.backend, "on": choice.dali_device}
        try:
            if choice.dali_device == "mixed":
                probe_gpu_decode(data, device)
            decoder = open_decoder(
                choice, repeat(([data] * batch, None)), batch_size=batch, num_frames=frames, device=device, prefetch=2
            )
            next(decoder)  # warm-up: pipeline start, decoder creation
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(clips // batch):
                out, _ = next(decoder)
            torch.cuda.synchronize(device)
            row["clips_per_s"] = clips // batch * batch / (time.perf_counter() - started)
            row["frames_device"] = str(out.device)
            decoder.close()
        except Exception as e:  # report and go on: one codec failing says something about that codec
            row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        results.append(row)
    return results


def report_lines(device_name: str, teacher: dict[str, Any] | None, decode: list[dict[str, Any]]) -> list[str]:
    lines = [f"bench-gpu on {device_name} (torch {torch.__version__}, CUDA {torch.version.cuda})"]
    if teacher is not None:
        t = teacher
        mfu = f"MFU {t['mfu']:.1%} (goal >= {MFU_GOAL:.0%})" if t["mfu"] is not None else "MFU n/a"
        lines.append(
            f"teacher ({t['model']}, micro-batch {t['micro_batch']}, {t['setup']}): {t['steps']} steps in "
            f"{t['seconds']:.1f} s, {t['tokens_per_s']:,.0f} tokens/s, {t['tflops']:.1f} TFLOP/s, {mfu}; {t['peak']}; "
            f"peak memory {t['peak_memory_gib']:.1f} GiB; host syncs/step {t['host_syncs_per_step']:.1f}"
        )
    for row in decode:
        if "skipped" in row:
            lines.append(f"decode: skipped: {row['skipped']}")
        elif "error" in row:
            where = f"{row['backend']} {row['on']}"
            lines.append(f"decode {row['codec']} {row['size']}px ({where}): FAILED: {row['error']}")
        else:
            lines.append(
                f"decode {row['codec']} {row['size']}px ({row['backend']} {row['on']} -> {row['frames_device']}): "
                f"{row['clips_per_s']:.0f} clips/s"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--micro-batch", type=int, default=32, help="sequences per step (zero3.json's micro-batch)")
    p.add_argument("--no-deepspeed", action="store_true", help="plain torch even where DeepSpeed is installed")
    p.add_argument("--skip-decode", action="store_true", help="leave out the decode check")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1:
        p.error("need --steps >= 1, --warmup >= 0, --micro-batch >= 1")
    if not torch.cuda.is_available():
        print(f"bench-gpu: no CUDA device here (torch {torch.__version__}); nothing measured")
        return 0
    deadline = time.monotonic() + BUDGET_S
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    teacher = None
    try:
        teacher = bench_teacher(args, device, deadline)
    except torch.cuda.OutOfMemoryError as e:
        print(f"teacher: out of GPU memory at micro-batch {args.micro_batch} ({str(e).splitlines()[0]})")
    decode = [] if args.skip_decode else bench_decode(device)
    lines = report_lines(torch.cuda.get_device_name(device), teacher, decode)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"teacher": teacher, "decode": decode, "lines": lines}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

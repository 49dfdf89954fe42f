"""The slurm/ scripts on a real SLURM cluster: munge, slurmctld and two slurmd "nodes" n1 and n2 on this
host (launcher/local_cluster.sh). Jobs run ZeRO-3 with one rank per node, exactly as on a GPU cluster
with one task per GPU, only smaller: the #SBATCH GPU defaults are overridden on the command line.

Skipped, with the reason, only where SLURM cannot be installed (no root, no apt): CI runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.distributed import assert_trained_in_bf16, write_ds_config
from videobert_ds.core.config import PACKAGE_CONFIGS

pytestmark = pytest.mark.multiproc

CLUSTER = REPO / "launcher" / "local_cluster.sh"

# The script and tiny config the teacher tests submit (the issue's `sbatch slurm/pretrain_teacher.sh`).
TEACHER_SCRIPT = "pretrain_teacher.sh"
TEACHER_CONFIG = "teacher_tiny"

# One rank on each node; --gpus-per-node=0 cancels the scripts' GPU request on this CPU cluster.
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30"]
ONE_RANK = ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30"]
SHORT = {"schedule.warmup_steps": 2, "schedule.log_every": 1, "schedule.val_batches": 1, "data.num_threads": 1}
# The teacher runs that are compared with each other: checkpoints every 6 of 24 steps.
TEACHER_RUN = {**SHORT, "schedule.max_steps": 24, "schedule.checkpoint_every": 6, "schedule.val_every": 1000}
JOB_TIMEOUT = 1200  # seconds; a job start (imports, DeepSpeed set-up) takes tens of seconds on 2 cores

# pipeline stage -> (stage registry name, tiny config); a stage joins the pipeline test once it exists
PIPELINE_STAGES = {
    "video_encoder": ("pretrain_video_encoder", "video_encoder_tiny"),
    "vocab": ("build_vocab", "vocab_tiny"),
    "teacher": ("pretrain_teacher", "teacher_tiny"),
    "student": ("distill_student", "student_tiny"),
    "finetune": ("finetune", "finetune_tiny"),
    "evaluate": ("evaluate", "eval_tiny"),
}


def available_stages() -> list[str]:
    from videobert_ds.stages import STAGES

    return ["prepare"] + [
        s
        for s, (name, cfg) in PIPELINE_STAGES.items()
        if name in STAGES and (PACKAGE_CONFIGS / f"{cfg}.yaml").is_file()
    ]


def words(d: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())


def teacher_env(runs: Path, ds_config: Path, run_dir: Path, **extra: str) -> dict[str, str]:
    """The teacher runs share the pipeline's encoder, vocabulary and text tokenizer (training a WordPiece
    tokenizer is not bit-reproducible, so runs that each trained their own would not be comparable)."""
    overrides = {**TEACHER_RUN, "text.tokenizer": runs / "teacher" / "tokenizer"}
    return job_env(
        CONFIG=TEACHER_CONFIG, DS_CONFIG=ds_config, RUNS=runs, RUN_DIR=run_dir, OVERRIDES=words(overrides), **extra
    )


# ---------------------------------------------------------------------------------------------
# Cluster and job helpers
# ---------------------------------------------------------------------------------------------


def job_env(**extra: str) -> dict[str, str]:
    """The submitting shell: no SLURM_* of an outer job, the repo found through VIDEOBERT_REPO."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "VIDEOBERT_REPO": str(REPO)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def cluster():
    """Start the local cluster (installing SLURM if needed); stop it afterwards if this test started it."""
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed and cannot be installed here (no apt-get)")
    running = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, text=True)
    was_up = "slurmctld: running" in running.stdout
    r = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if r.returncode == 3:  # the script's code for "SLURM cannot be installed / run here"
        pytest.skip(f"local SLURM cluster unavailable: {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    yield
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


def submit(script: str, env: dict[str, str], opts: list[str], *, wait: bool) -> tuple[int, str]:
    """sbatch a slurm/ script; returns (exit code, job id). wait=True blocks until the job ends."""
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *opts, str(REPO / "slurm" / script)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    job = proc.stdout.strip().split(";")[0].splitlines()[0] if proc.stdout.strip() else ""
    assert job.isdigit(), f"sbatch failed: {proc.stdout} {proc.stderr}"
    return proc.returncode, job


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_until(what: str, predicate, timeout: float = JOB_TIMEOUT, poll: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}")


def wait_job_end(job: str) -> dict[str, str]:
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
    return wait_until(f"job {job} to end", lambda: (i := job_info(job)).get("JobState") in ended and i, poll=0.5)


def train_losses(run_dir: Path, repeats: bool = False) -> dict[int, float]:
    """train/loss by step. A run stopped by a signal resumes exactly where it checkpointed, so no step is
    logged twice; after a crash the steps since the last checkpoint are trained (and logged) again."""
    steps: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/loss" in row:
            assert repeats or row["step"] not in steps, f"step {row['step']} logged twice"
            steps[row["step"]] = row["train/loss"]  # the last time counts
    return steps


def last_step(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return -1
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return max((row["step"] for row in lines), default=-1)


def resumed_steps(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]


# ---------------------------------------------------------------------------------------------
# Fixtures: the pipeline on the tiny corpus, then a reference teacher run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ds_config(tmp_path_factory) -> Path:
    return write_ds_config(tmp_path_factory.mktemp("slurm_ds") / "zero3_cpu_test.json", micro_batch=2)


@pytest.fixture(scope="module")
def pipeline(cluster, synth_corpus, tmp_path_factory):
    """slurm/pipeline.sh --wait over every stage that exists, on 2 nodes, tiny configs, in bf16 (the precision
    of the GPU configs, ds_configs/zero3.json, that the pipeline runs on a cluster)."""
    ds_config = write_ds_config(tmp_path_factory.mktemp("slurm_ds") / "zero3_cpu_bf16.json", micro_batch=2, bf16=True)
    runs = tmp_path_factory.mktemp("slurm_runs")
    stages = available_stages()
    env = job_env(
        MANIFEST=synth_corpus,
        RUNS=runs,
        CONFIG_SUFFIX="_tiny",
        DS_CONFIG=ds_config,
        PREPARE_ARGS="--fps 8 --size 32 --samples-per-shard 8 --decode-threads 1",
        OVERRIDES=words({**SHORT, "schedule.max_steps": 6, "schedule.checkpoint_every": 3, "schedule.val_every": 3}),
        VOCAB_OVERRIDES="encode_batch_size=4",
        SBATCH_ARGS=" ".join(TWO_NODES),
        PIPELINE_POLL=1,
    )
    started = time.time()
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "pipeline.sh"), "--stages", " ".join(stages), "--wait"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=len(stages) * JOB_TIMEOUT,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((runs / "logs").glob("*.out")))
    print(f"pipeline ({' '.join(stages)}): {time.time() - started:.0f} s")
    return runs, stages, proc, logs


@pytest.fixture(scope="module")
def teacher_ref(pipeline, ds_config, tmp_path_factory):
    """`sbatch --wait slurm/pretrain_teacher.sh`, uninterrupted, on the pipeline's encoder and vocabulary."""
    runs = pipeline[0]
    tmp = tmp_path_factory.mktemp("slurm_teacher")
    run_dir, log = tmp / "run", tmp / "job.out"
    env = teacher_env(runs, ds_config, run_dir)
    started = time.time()
    rc, job = submit(TEACHER_SCRIPT, env, [*TWO_NODES, f"--output={log}"], wait=True)
    print(f"teacher reference job: {time.time() - started:.0f} s")
    return run_dir, log, rc, job


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_srun_tasks_get_the_torch_distributed_env(cluster):
    r = subprocess.run(
        ["srun", "--label", *TWO_NODES, sys.executable, "-m", "videobert_ds.cli.launch", "env"],
        cwd=REPO,
        env=job_env(MASTER_ADDR="stale"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    by_task: dict[str, dict[str, str]] = {}
    for task, key, value in re.findall(r"^\s*(\d+): export (\w+)=(\S+)$", r.stdout, re.M):
        by_task.setdefault(task, {})[key] = value
    assert {t: v["RANK"] for t, v in by_task.items()} == {"0": "0", "1": "1"}
    for b in by_task.values():
        assert (b["WORLD_SIZE"], b["LOCAL_RANK"], b["MASTER_ADDR"]) == ("2", "0", "n1")
        assert 10000 <= int(b["MASTER_PORT"]) < 30000
    # scontrol's hostlist expansion and the pure-Python one (for containers without scontrol) agree
    from videobert_ds.cli.launch import expand_hostlist

    expr = "n[1-2],gpu[001-003,010],r[1-2]x[7-8]"
    scontrol = subprocess.run(["scontrol", "show", "hostnames", expr], capture_output=True, text=True).stdout.split()
    assert scontrol == expand_hostlist(expr)


def test_hostfile_from_the_allocation(cluster, tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile

    hostfile = tmp_path / "hostfile"
    r = subprocess.run(
        [
            "sbatch",
            "--wait",
            *TWO_NODES,
            f"--output={tmp_path / 'out'}",
            f"--wrap={sys.executable} -m videobert_ds.cli.launch hostfile --out {hostfile}",
        ],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (tmp_path / "out").read_text()
    assert hostfile.read_text() == "n1 slots=1\nn2 slots=1\n"
    assert dict(fetch_hostfile(str(hostfile))) == {"n1": 1, "n2": 1}


def test_pipeline_completes_with_every_stage_output(pipeline):
    runs, stages, proc, logs = pipeline
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    for stage in stages:
        assert re.search(rf"^pipeline.sh: {stage}: job \d+ COMPLETED$", proc.stdout, re.M), proc.stdout
    # prepare ran as 2 MPI ranks (srun --mpi=pmix), one per node
    report = json.loads((runs / "shards" / "report.json").read_text())
    assert report["ranks"] == 2 and report["samples_written"] > 0
    assert (runs / "shards" / "manifest.json").is_file()
    for stage in ("video_encoder", "teacher", "student"):
        if stage in stages:
            run = runs / stage
            assert (run / "final" / "config.json").is_file() and (run / "final" / "model.safetensors").is_file()
            assert (run / "checkpoints" / "latest").read_text() == "step00000006"
            assert any((run / "tb").iterdir())
            assert json.loads((run / "partition_rank1.json").read_text())["world_size"] == 2
            assert_trained_in_bf16(run)
    if "vocab" in stages:
        assert (runs / "vocab" / "vocab.safetensors").is_file()
    if "finetune" in stages:  # the student fine-tuned on every task, its label heads in the exported config
        tuned = runs / "finetune" / "finetune_tiny" / "student"
        config = json.loads((tuned / "final" / "config.json").read_text())
        assert set(config["finetune_label_sets"]) == {"colour", "shape", "motion"}
        assert (tuned / "checkpoints" / "latest").read_text() == "step00000006"
        assert_trained_in_bf16(tuned)  # the one bf16 fine-tuning run (test_finetune's 150 steps stay fp32)
    if "evaluate" in stages:  # every exported model, evaluated on 2 ranks
        for model in {"teacher", "student"} & set(stages):
            report = json.loads((runs / "eval" / model / "eval.json").read_text())
            assert report["world_size"] == 2 and report["metrics"] and report["model"] == str(runs / model / "final")
    assert (runs / "logs" / "pipeline.jobs").read_text().split()[0].startswith("prepare:")


def test_teacher_job_runs_zero3_across_two_nodes(teacher_ref):
    run_dir, log, rc, job = teacher_ref
    text = log.read_text()
    assert rc == 0, text[-6000:]
    # one rank on each node, world size 2: from the launcher, the engine and the partition reports
    assert re.search(r"\[launch\] slurm: rank 0/2 local_rank 0 on n1 \(slurm job \d+ step 0\), master n1:", text)
    assert re.search(r"\[launch\] slurm: rank 1/2 local_rank 0 on n2 \(slurm job \d+ step 0\), master n1:", text)
    assert "micro-batch 2 x 2 ranks" in text
    for rank in (0, 1):
        part = json.loads((run_dir / f"partition_rank{rank}.json").read_text())
        assert part["world_size"] == 2 and abs(part["params_local"] / part["params_total"] - 0.5) < 0.02
    # checkpoints (complete, `latest` naming the last) and TensorBoard logs
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000024"
    assert (ckpts / "step00000024" / "COMPLETE").is_file()
    assert sorted(train_losses(run_dir)) == list(range(1, 25))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and len(acc.Scalars("train/loss")) == 24
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_preempted_job_checkpoints_requeues_and_finishes(teacher_ref, pipeline, ds_config, tmp_path):
    """The warning before the time limit (--signal=B:USR1@..., sent here with scancel --batch, the same
    delivery) and then an `scontrol requeue` (SIGTERM, as preemption): each time the job saves a
    checkpoint, goes back to the queue, resumes from it, and in the end has trained exactly the steps of
    the uninterrupted job, with the same losses."""
    ref_dir = teacher_ref[0]
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    env = teacher_env(pipeline[0], ds_config, run_dir)
    _, job = submit(TEACHER_SCRIPT, env, [*TWO_NODES, f"--output={log}"], wait=False)

    wait_until("training to start", lambda: last_step(run_dir) >= 2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_until("the requeued run to resume", lambda: log.is_file() and resumed_steps(log.read_text()))
    first_stop = resumed_steps(log.read_text())[0]
    assert 2 <= first_stop < 24
    wait_until(
        "a step after the resume", lambda: last_step(run_dir) > first_stop or job_info(job)["JobState"] == "COMPLETED"
    )
    assert job_info(job)["JobState"] != "COMPLETED", "the job finished before the second interruption"
    subprocess.run(["scontrol", "requeue", job], check=True)

    info = wait_job_end(job)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-6000:]
    assert info["Restarts"] == "2"
    assert "received SIGUSR1" in text and "requeueing job" in text and "received SIGTERM" in text
    assert text.count("stopped by signal") == 2
    stops = resumed_steps(text)
    assert len(stops) == 2 and stops[0] < stops[1] < 24
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000024"
    losses, ref = train_losses(run_dir), train_losses(ref_dir)
    assert sorted(losses) == sorted(ref) == list(range(1, 25))
    assert losses == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_killed_rank_fails_fast_and_resubmission_resumes(teacher_ref, pipeline, ds_config, tmp_path):
    """Rank 1 (on n2) is SIGKILLed in the middle of writing the step-12 checkpoint while rank 0 waits for it
    at the checkpoint barrier: the job fails at once instead of hanging, the half-written checkpoint never
    becomes the resume point, and resubmitting the same script resumes from step 6 and finishes."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    fault = tmp_path / "kill_rank1_in_checkpoint.sh"
    fault.write_text(
        '#!/bin/bash\n[ "$SLURM_PROCID" = 1 ] && export VIDEOBERT_FAULT_KILL_IN_CHECKPOINT_STEP=12\nexec "$@"\n'
    )
    fault.chmod(0o755)
    env = teacher_env(pipeline[0], ds_config, run_dir)
    faulty = {**env, "TASK_PREFIX": str(fault)}
    rc, job = submit(TEACHER_SCRIPT, faulty, [*TWO_NODES, f"--output={log}"], wait=True)
    info = job_info(job)
    assert rc != 0 and info["JobState"] == "FAILED", log.read_text()[-4000:]
    killed_at = (run_dir / "checkpoints" / "step00000012" / "rng_rank1.pt").stat().st_mtime
    ended = time.mktime(time.strptime(info["EndTime"], "%Y-%m-%dT%H:%M:%S"))
    assert ended - killed_at < 60, f"job took {ended - killed_at:.0f} s to fail after the kill"
    assert not (run_dir / "checkpoints" / "step00000012" / "COMPLETE").exists()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000006"

    rc, job = submit(TEACHER_SCRIPT, env, [*TWO_NODES, f"--output={log}"], wait=True)
    text = log.read_text()
    assert rc == 0, text[-6000:]
    assert resumed_steps(text) == [6]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000024"
    assert train_losses(run_dir, repeats=True) == pytest.approx(train_losses(teacher_ref[0]), rel=1e-4, abs=1e-5)


def test_universal_checkpoint_resumes_two_ranks_on_one(pipeline, ds_config, tmp_path):
    """The 2-rank video-encoder checkpoint, converted with ds_to_universal, resumes in a 1-rank job with
    the ordinary DeepSpeed config and trains on: after its two steps the weights are the 2-rank ones
    moved by at most two Adam steps, nowhere near a fresh start. A second job in the same run dir (a
    requeue) then resumes from the ordinary checkpoint the first one wrote."""
    from safetensors.torch import load_file

    source = pipeline[0] / "video_encoder"
    universal = tmp_path / "universal" / "step00000006_universal"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(source / "checkpoints" / "step00000006"),
            "--output_folder",
            str(universal),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ],
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = json.loads(ds_config.read_text())

    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    env = job_env(
        CONFIG="video_encoder_tiny",
        DS_CONFIG=ds_config,
        RUNS=pipeline[0],
        RUN_DIR=run_dir,
        RESUME=universal,
        OVERRIDES=words(
            {**SHORT, "schedule.max_steps": 8, "schedule.val_every": 1000, "schedule.checkpoint_every": 1000}
        ),
    )
    rc, _ = submit("pretrain_video_encoder.sh", env, [*ONE_RANK, f"--output={log}"], wait=True)
    text = log.read_text()
    assert rc == 0, text[-6000:]
    assert resumed_steps(text) == [6] and "rank 0/1" in text
    assert json.loads((run_dir / "partition_rank0.json").read_text())["world_size"] == 1
    assert sorted(train_losses(run_dir)) == [7, 8]
    two_ranks = load_file(source / "final" / "model.safetensors")  # the step-6 weights
    one_rank = load_file(run_dir / "final" / "model.safetensors")  # step 8, trained on one rank
    assert two_ranks.keys() == one_rank.keys()
    # An Adam step moves each weight by about lr at most (a few lr in the worst case).
    bound = 4 * 2 * cfg["optimizer"]["params"]["lr"]
    moved = max((one_rank[k] - v).abs().max().item() for k, v in two_ranks.items())
    assert 0 < moved <= bound, (moved, bound)
    import torch

    from videobert_ds.visual.autoencoder import ClipAutoencoder

    fresh = ClipAutoencoder.from_pretrained(source / "final")
    torch.manual_seed(0)
    fresh = ClipAutoencoder(fresh.config).state_dict()
    assert max((fresh[k] - v).abs().max().item() for k, v in two_ranks.items() if k in fresh) > 10 * bound

    # The requeue: same run dir, `--resume auto`, ordinary config -> the step-8 checkpoint it wrote itself.
    env = job_env(
        CONFIG="video_encoder_tiny",
        DS_CONFIG=ds_config,
        RUNS=pipeline[0],
        RUN_DIR=run_dir,
        OVERRIDES=words(
            {**SHORT, "schedule.max_steps": 9, "schedule.val_every": 1000, "schedule.checkpoint_every": 1000}
        ),
    )
    log = tmp_path / "requeued.out"
    rc, _ = submit("pretrain_video_encoder.sh", env, [*ONE_RANK, f"--output={log}"], wait=True)
    text = log.read_text()
    assert rc == 0, text[-6000:]
    assert resumed_steps(text) == [8]
    assert max(train_losses(run_dir, repeats=True)) == 9

"""The launcher without a cluster: SLURM/MPI -> torch.distributed mapping, hostfiles, the batch-script
logic of launcher/slurm_env.sh (signal forwarding, requeue) and slurm/pipeline.sh's job chain, driven
through fake `srun` / `sbatch` / `scontrol` on PATH (the real 2-rank mpirun rendezvous is in
tests/integration/test_launch.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.distributed import clean_env
from videobert_ds.cli.launch import (
    LaunchError,
    dist_env,
    expand_counts,
    expand_hostlist,
    hostfile_lines,
    master_port,
    write_hostfile,
)

PY = sys.executable
SCRIPTS = sorted((REPO / "slurm").glob("*.sh")) + [
    REPO / "launcher" / "slurm_env.sh",
    REPO / "launcher" / "local_cluster.sh",
]

SRUN_TASK = {  # what srun gives task 3 of 4 (2 per node) in job 4242
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_NTASKS": "4",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
}


# ---------------------------------------------------------------------------------------------
# Hostlists, counts, ports
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, hosts",
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
        ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
        ("a-[9-11].ib", ["a-9.ib", "a-10.ib", "a-11.ib"]),
    ],
)
def test_expand_hostlist(expr, hosts):
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]"])
def test_bad_hostlist_is_one_line_error(bad):
    with pytest.raises(LaunchError, match="bad hostlist"):
        expand_hostlist(bad)


def test_expand_counts_and_port():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("8") == [8]
    with pytest.raises(LaunchError):
        expand_counts("2(x)")
    assert master_port(4242) == master_port("4242") == 10000 + 4242
    assert 10000 <= master_port(10**9 + 7) < 30000  # below the ephemeral range


# ---------------------------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------------------------


def test_srun_task_maps_to_torch_distributed():
    env = dict(SRUN_TASK, MASTER_ADDR="stale-host", MASTER_PORT="1")  # left over in the submitting shell
    source, v = dist_env(env)
    assert source == "slurm"
    assert v == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(10000 + 4242),
        "LOCAL_WORLD_SIZE": "2",
        "NODE_RANK": "1",
    }


def test_explicit_master_and_single_visible_gpu():
    env = dict(SRUN_TASK, VIDEOBERT_MASTER_ADDR="10.0.0.1", VIDEOBERT_MASTER_PORT="2345", CUDA_VISIBLE_DEVICES="5")
    _, v = dist_env(env)
    assert (v["MASTER_ADDR"], v["MASTER_PORT"]) == ("10.0.0.1", "2345")
    assert v["LOCAL_RANK"] == "0"  # --gpus-per-task=1: the task's one GPU is cuda:0


def test_step_world_size_wins_over_job_tasks():
    env = dict(SRUN_TASK, SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1", SLURM_NTASKS="16")
    assert dist_env(env)[1]["WORLD_SIZE"] == "2"
    with pytest.raises(LaunchError, match="outside"):
        dist_env(dict(SRUN_TASK, SLURM_PROCID="4"))
    with pytest.raises(LaunchError, match="not an integer"):
        dist_env(dict(SRUN_TASK, SLURM_LOCALID="x"))


def test_batch_script_without_srun_is_one_process():
    env = {k: v for k, v in SRUN_TASK.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")}
    source, v = dist_env(env)
    assert source == "single" and v["WORLD_SIZE"] == "1" and v["RANK"] == "0"


def test_mpirun_maps_with_master_addr_else_defers_to_deepspeed():
    ompi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert dist_env(ompi) == ("mpi-discovery", {})
    source, v = dist_env(dict(ompi, MASTER_ADDR="127.0.0.1"))
    assert source == "mpi"
    assert v == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    # mpirun inside an allocation: orted was started by srun, so its SLURM_PROCID is a node index.
    inside = dict(SRUN_TASK, SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", **ompi, MASTER_ADDR="n1")
    source, v = dist_env(inside)
    assert (source, v["RANK"], v["MASTER_PORT"]) == ("mpi", "1", str(10000 + 4242))


def test_srun_pmi2_is_slurm_and_hydra_proxies_are_mpi():
    pmi2 = dict(SRUN_TASK, PMI_RANK="3", PMI_SIZE="4")
    assert dist_env(pmi2)[0] == "slurm"
    hydra = dict(
        SRUN_TASK,
        SLURM_PROCID="1",
        SLURM_STEP_NUM_TASKS="2",
        PMI_RANK="7",
        PMI_SIZE="16",
        MPI_LOCALRANKID="3",
        MASTER_ADDR="gpu07",
    )
    source, v = dist_env(hydra)
    assert (source, v["RANK"], v["WORLD_SIZE"], v["LOCAL_RANK"]) == ("mpi", "7", "16", "3")


# ---------------------------------------------------------------------------------------------
# Hostfiles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, slots, expected",
    [
        ({"SLURM_GPUS_PER_NODE": "gpu:a100:8"}, None, [8, 8, 8]),
        ({"SLURM_GPUS_ON_NODE": "4"}, None, [4, 4, 4]),
        ({"SLURM_GPUS_PER_NODE": "0", "SLURM_TASKS_PER_NODE": "2(x2),1"}, None, [2, 2, 1]),
        ({}, None, [1, 1, 1]),
        ({"SLURM_GPUS_PER_NODE": "8"}, 2, [2, 2, 2]),
    ],
)
def test_hostfile_lines(extra, slots, expected):
    env = {"SLURM_JOB_NODELIST": "gpu[01-02],big", **extra}
    assert hostfile_lines(env, slots) == [f"{h} slots={n}" for h, n in zip(["gpu01", "gpu02", "big"], expected)]


def test_hostfile_is_read_by_deepspeed(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile

    path = write_hostfile(tmp_path / "hf" / "hostfile", {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_PER_NODE": "8"})
    assert dict(fetch_hostfile(str(path))) == {"n1": 8, "n2": 8}
    with pytest.raises(LaunchError, match="not inside a SLURM allocation"):
        hostfile_lines({})


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------


def test_cli_exec_runs_command_with_mapping():
    code = (
        "import os; "
        "print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'])"
    )
    r = subprocess.run(
        [PY, "-m", "videobert_ds.cli.launch", "exec", "--", PY, "-c", code],
        cwd=REPO,
        env=clean_env(**SRUN_TASK, PATH="/nonexistent:" + os.environ["PATH"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "4", "gpu07", str(10000 + 4242)]
    assert "[launch] slurm: rank 3/4 local_rank 1" in r.stderr


def test_cli_errors_are_one_line():
    r = subprocess.run(
        [PY, "-m", "videobert_ds.cli.launch", "exec", "--", "/no/such/binary"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("videobert-launch: error: cannot run")
    r = subprocess.run(
        [PY, "-m", "videobert_ds.cli.launch", "hostfile"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip() == (
        "videobert-launch: error: not inside a SLURM allocation (no SLURM_JOB_NODELIST); run it under sbatch or salloc"
    )


# ---------------------------------------------------------------------------------------------
# The scripts, with fake SLURM commands
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_stage_script_outside_slurm_says_so():
    r = subprocess.run(
        ["bash", str(REPO / "slurm" / "pretrain_teacher.sh")],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == "pretrain_teacher.sh: error: not inside a SLURM job: submit it with sbatch (see docs/cluster.md)"
    )
    r = subprocess.run(
        ["bash", str(REPO / "slurm" / "pretrain_teacher.sh")],
        cwd="/",
        env=clean_env(SLURM_JOB_ID="1", VIDEOBERT_REPO="/nonexistent"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no VideoBERT-DS checkout at /nonexistent" in r.stderr


FAKE_SRUN = r"""#!/bin/bash
# fake srun: records its arguments, behaves like tasks that stop cleanly on USR1/TERM
printf '%s\n' "$@" > "$FAKE/srun.args"
trap 'echo USR1 >> "$FAKE/srun.signals"; exit 0' USR1
trap 'echo TERM >> "$FAKE/srun.signals"; exit 0' TERM
touch "$FAKE/srun.started"
for i in $(seq 600); do sleep 0.1; done
exit 7
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE/scontrol.calls"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return tmp_path


def _batch(fake: Path, run_dir: Path, script_args: str = "", **extra: str) -> subprocess.Popen:
    """A stage script's body (as sbatch would run it), with the fake srun/scontrol first on PATH."""
    env = clean_env(
        FAKE=str(fake),
        PATH=f"{fake / 'bin'}:{os.environ['PATH']}",
        SLURM_JOB_ID="77",
        SLURM_CPUS_PER_TASK="3",
        SLURM_SUBMIT_DIR=str(REPO),
        CONFIG="teacher_tiny",
        DS_CONFIG="ds_configs/zero3_cpu.json",
        RUN_DIR=str(run_dir),
        SHARDS="/data/shards",
        OVERRIDES="schedule.max_steps=5 data.num_threads=1",
        LINK_OVERRIDES="",
        **extra,
    )
    script = f"source {REPO}/launcher/slurm_env.sh; vb_setup; vb_train {script_args}"
    return subprocess.Popen(
        ["bash", "-c", script], cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_train_step_command_line(fake_slurm, tmp_path):
    proc = _batch(fake_slurm, tmp_path / "run", script_args="schedule.max_steps=9")  # sbatch x.sh ARGS
    _wait_for(fake_slurm / "srun.started")
    proc.send_signal(signal.SIGTERM)  # as Slurm does on scancel / time limit / scontrol requeue
    out, _ = proc.communicate(timeout=30)
    args = (fake_slurm / "srun.args").read_text().splitlines()
    assert args[:2] == ["--cpus-per-task=3", "--kill-on-bad-exit=1"]  # CPUs passed on explicitly
    assert Path(args[2]).name.startswith("python") and args[3:7] == ["-m", "videobert_ds.cli.launch", "exec", "--"]
    train = args[args.index("videobert_ds/train.py") :]
    assert train == [
        "videobert_ds/train.py",
        "--deepspeed",
        "ds_configs/zero3_cpu.json",
        "--config",
        "teacher_tiny",
        "--resume",
        "auto",
        f"run.dir={tmp_path / 'run'}",
        "data.shards=/data/shards",
        "schedule.max_steps=5",
        "data.num_threads=1",
        "schedule.max_steps=9",
    ]  # the script's args win
    # TERM reaches the tasks as USR1 (srun would SIGKILL them on TERM); Slurm itself decides about
    # requeueing after a TERM, so no scontrol call.
    assert (fake_slurm / "srun.signals").read_text().split() == ["USR1"]
    assert not (fake_slurm / "scontrol.calls").exists()
    assert proc.returncode == 0, out


def test_usr1_warning_checkpoints_then_requeues(fake_slurm, tmp_path):
    proc = _batch(fake_slurm, tmp_path / "run")
    _wait_for(fake_slurm / "srun.started")
    proc.send_signal(signal.SIGUSR1)  # --signal=B:USR1@600 reaches only the batch shell
    out, _ = proc.communicate(timeout=30)
    assert (fake_slurm / "srun.signals").read_text().split() == ["USR1"]
    assert (fake_slurm / "scontrol.calls").read_text().split() == ["requeue", "77"]
    assert proc.returncode == 0 and "requeueing job 77" in out


def test_usr1_after_the_stage_finished_does_not_requeue(fake_slurm, tmp_path):
    run_dir = tmp_path / "run"
    proc = _batch(fake_slurm, run_dir)
    _wait_for(fake_slurm / "srun.started")
    (run_dir / "final").mkdir(parents=True)  # the export landed before the warning took effect
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert not (fake_slurm / "scontrol.calls").exists()
    assert "not requeueing" in out and proc.returncode == 0


def test_resume_path_only_seeds_a_fresh_run(fake_slurm, tmp_path):
    run_dir = tmp_path / "run"
    proc = _batch(fake_slurm, run_dir, RESUME="/ckpt/step00000006_universal")
    _wait_for(fake_slurm / "srun.started")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert "/ckpt/step00000006_universal" in (fake_slurm / "srun.args").read_text().splitlines()

    (fake_slurm / "srun.started").unlink()
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step00000008")  # the run has its own now (requeued)
    proc = _batch(fake_slurm, run_dir, RESUME="/ckpt/step00000006_universal")
    _wait_for(fake_slurm / "srun.started")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    args = (fake_slurm / "srun.args").read_text().splitlines()
    assert args[args.index("--resume") + 1] == "auto" and "not from /ckpt/step00000006_universal" in out


FAKE_SBATCH = r"""#!/bin/bash
# fake sbatch: one line per submission (arguments and the per-stage environment), prints a job id
n=$(( $(cat "$FAKE/n" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE/n"
echo "$n|CONFIG=${CONFIG:-}|RUN_DIR=${RUN_DIR:-}|OVERRIDES=${OVERRIDES:-}|$*" >> "$FAKE/sbatch.calls"
echo "$n;cluster"
"""


def _pipeline(fake: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    (fake / "bin" / "sbatch").write_text(FAKE_SBATCH)
    (fake / "bin" / "sbatch").chmod(0o755)
    e = clean_env(FAKE=str(fake), PATH=f"{fake / 'bin'}:{os.environ['PATH']}", **env)
    return subprocess.run(
        ["bash", str(REPO / "slurm" / "pipeline.sh"), *args],
        cwd=fake,
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pipeline_chains_stages_with_afterok(fake_slurm, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("{}\n")
    r = _pipeline(
        fake_slurm,
        "--stages",
        "teacher prepare vocab video_encoder",
        MANIFEST=str(manifest),
        RUNS="runs",
        CONFIG_SUFFIX="_tiny",
        TEACHER_CONFIG="my_teacher.yaml",
        RUN_DIR="/leak",
        CONFIG="leak",
        OVERRIDES="schedule.max_steps=6",
        VOCAB_OVERRIDES="encode_batch_size=4",
        SBATCH_ARGS="--nodes=2 --gpus-per-node=0",
        TEACHER_SBATCH_ARGS="--time=5",
        DEPENDENCY="afterok:99",
    )
    assert r.returncode == 0, r.stderr
    calls = [line.split("|") for line in (fake_slurm / "sbatch.calls").read_text().splitlines()]
    runs = (fake_slurm / "runs").resolve()
    assert [c[0] for c in calls] == ["101", "102", "103", "104"]
    assert [c[1] for c in calls] == [
        "CONFIG=",
        "CONFIG=video_encoder_tiny",
        "CONFIG=vocab_tiny",
        "CONFIG=my_teacher.yaml",
    ]
    assert all(c[2] == "RUN_DIR=" for c in calls)  # the caller's RUN_DIR must not leak into every stage
    assert calls[2][3].split() == ["OVERRIDES=schedule.max_steps=6", "encode_batch_size=4"]
    deps = [next((a for a in c[4].split() if a.startswith("--dependency=")), None) for c in calls]
    assert deps == [
        "--dependency=afterok:99",
        "--dependency=afterok:101",
        "--dependency=afterok:102",
        "--dependency=afterok:103",
    ]
    assert all("--kill-on-invalid-dep=yes" in c[4] for c in calls)
    assert all(f"--output={runs}/logs/%x-%j.out" in c[4] and "--nodes=2" in c[4] for c in calls)
    assert "--time=5" in calls[3][4] and "--time=5" not in calls[2][4]
    assert [c[4].split()[-1] for c in calls] == [
        str(REPO / "slurm" / s)
        for s in ("prepare_shards.sh", "pretrain_video_encoder.sh", "build_vocab.sh", "pretrain_teacher.sh")
    ]
    assert (runs / "logs" / "pipeline.jobs").read_text().split() == [
        "prepare:101",
        "video_encoder:102",
        "vocab:103",
        "teacher:104",
    ]


def test_pipeline_skips_finished_stages_and_checks_inputs(fake_slurm):
    runs = fake_slurm / "runs"
    (runs / "shards").mkdir(parents=True)
    (runs / "shards" / "manifest.json").write_text("{}")
    (runs / "video_encoder" / "final").mkdir(parents=True)
    (runs / "video_encoder" / "final" / "config.json").write_text("{}")
    r = _pipeline(fake_slurm, "--stages", "prepare video_encoder vocab", RUNS=str(runs))
    assert r.returncode == 0, r.stderr
    assert "prepare: already done" in r.stdout and "video_encoder: already done" in r.stdout
    calls = (fake_slurm / "sbatch.calls").read_text().splitlines()
    assert len(calls) == 1 and "--dependency" not in calls[0] and "build_vocab.sh" in calls[0]

    r = _pipeline(fake_slurm, "--stages", "prepare", RUNS=str(fake_slurm / "empty"))
    assert (
        r.returncode == 2
        and r.stderr.strip() == "pipeline.sh: error: set MANIFEST (input manifest.jsonl) for the prepare stage"
    )
    r = _pipeline(fake_slurm, "--stages", "teacher bogus")
    assert r.returncode == 2 and "unknown stage 'bogus'" in r.stderr

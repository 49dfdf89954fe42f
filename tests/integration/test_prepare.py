"""videobert-prepare under a real MPI: two mpirun ranks, killed part-way (SIGKILL to mpirun and every rank) and
resumed with --resume, write the same samples as one process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import VENV_BIN
from tests.helpers.shards import only_published_files, read_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


@pytest.mark.multiproc
def test_mpirun_two_ranks_killed_and_resumed_gives_same_samples(
    synth_corpus: Path, prepared_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mpi"
    work = out / ".prepare.work"
    prepare = [
        str(VENV_BIN / "videobert-prepare"),
        "--manifest",
        str(synth_corpus),
        "--out",
        str(out),
        "--fps",
        "8",
        "--size",
        "32",
        "--samples-per-shard",
        "2",
        "--decode-threads",
        "1",
        "--no-progress",
    ]
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", "-x", "OMP_NUM_THREADS"]
    proc = subprocess.Popen([*mpirun, *prepare], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journals = [work / "r00000.journal", work / "r00001.journal"]
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if all(j.is_file() and j.stat().st_size > 0 for j in journals):  # each rank has finished a shard
            break
        time.sleep(0.005)
    for pid in _descendants(proc.pid):  # the job is lost at once: mpirun and both ranks
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "manifest.json").exists()

    # one process cannot resume a 2-rank run: each rank resumes its own share
    r = subprocess.run([*prepare, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "started with 2 rank(s), this run has 1" in r.stderr.strip().splitlines()[-1], r.stderr

    r = subprocess.run([*mpirun, *prepare, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[videobert-prepare r0] resuming:" in r.stderr and "[videobert-prepare r1] resuming:" in r.stderr
    only_published_files(out)
    report = json.loads((out / "report.json").read_text())
    assert report["ranks"] == 2
    mpi, single = read_shards(out), read_shards(prepared_shards)
    assert {k: v["meta"] for k, v in mpi.items()} == {k: v["meta"] for k, v in single.items()}
    want = json.loads((prepared_shards / "report.json").read_text())
    for k in ("inputs_skipped", "inputs_degraded", "samples_per_split", "reasons", "labels"):
        assert report[k] == want[k], k
    names = sorted(p.name for p in out.glob("shard-*.tar"))
    assert names == [f"shard-{i:06d}.tar" for i in range(len(names))]


def test_youcook2_annotations_end_to_end(tmp_path: Path) -> None:
    """videobert-prepare --format youcook2 over the published layout (raw_videos/<subset>/<recipe>/<id>.mp4): one
    sample per sentence with its split, times and id; a missing video is named in report.json, not fatal. Then an
    MSR-VTT video's captions: one encoded clip, one sample per caption."""
    from tests.helpers.media import make_video
    from videobert_ds.data.annotations import read_annotations
    from videobert_ds.data.prepare import PrepareOptions, process_video

    raw = tmp_path / "raw_videos"
    for rel in ("training/113/trainvid001.mp4", "validation/201/valvid00001.mp4"):
        (raw / rel).parent.mkdir(parents=True)
        make_video(raw / rel, width=32, height=32, fps=8, seconds=3.0)
    db = {
        "trainvid001": {
            "subset": "training",
            "recipe_type": "113",
            "duration": 3.0,
            "annotations": [
                {"segment": [0, 1.5], "sentence": "crack two eggs, whisk"},
                {"segment": [1, 5], "sentence": "pour into the pan"},  # past the end: cut at 3 s
            ],
        },
        "valvid00001": {
            "subset": "validation",
            "recipe_type": "201",
            "duration": 3.0,
            "annotations": [{"segment": [0.5, 2.5], "sentence": "serve"}],
        },
        "absentvid01": {"subset": "training", "recipe_type": "113", "duration": 9.0, "annotations": []},
    }
    ann = tmp_path / "youcookii_annotations_trainval.json"
    ann.write_text(json.dumps({"database": db}))
    out = tmp_path / "shards"
    cmd = [str(VENV_BIN / "videobert-prepare"), "--format", "youcook2", "--annotations", str(ann)]
    cmd += ["--videos", str(raw), "--out", str(out), "--fps", "4", "--size", "16", "--decode-threads", "1"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    only_published_files(out)
    got = {k: v["meta"] for k, v in read_shards(out).items()}
    brief = {k: (m["text"], m["split"], m["start"], m["end"], m["video_id"]) for k, m in got.items()}
    assert brief == {
        "trainvid001_00000": ("crack two eggs, whisk", "train", 0.0, 1.5, "trainvid001"),
        "trainvid001_00001": ("pour into the pan", "train", 1.0, 3.0, "trainvid001"),
        "valvid00001_00000": ("serve", "val", 0.5, 2.5, "valvid00001"),
    }
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "youcook2" and report["annotations"] == str(ann) and report["videos"] == str(raw)
    assert report["inputs_seen"] == 3 and report["inputs_written"] == 2
    assert [(s["id"], s["reason"]) for s in report["inputs_skipped"]] == [("absentvid01", "video_missing")]
    assert report["reasons"]["cue_clipped"] == 1 and report["samples_per_split"] == {"train": 2, "val": 1}

    msrvtt = tmp_path / "train_val_videodatainfo.json"
    sentences = [{"video_id": "valvid00001", "caption": f"caption {i}"} for i in range(20)]
    videos = [{"video_id": "valvid00001", "split": "validate"}]
    msrvtt.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    (entry,) = read_annotations("msrvtt", msrvtt, raw).entries
    res = process_video(entry, PrepareOptions(fps=4, size=16, decode_threads=1))
    assert [key for _, key, _, _ in res.samples] == [f"valvid00001_{i:05d}" for i in range(20)]
    metas = [json.loads(files["json"]) for _, _, files, _ in res.samples]
    assert [m["text"] for m in metas] == [f"caption {i}" for i in range(20)]
    assert {(m["split"], m["start"], m["end"]) for m in metas} == {("val", 0.0, 3.0)}
    assert len({files["webm"] for _, _, files, _ in res.samples}) == 1  # the clip is cut and encoded once

"""videobert-prepare when the user or the machine gets in the way: two runs into one --out, left-over partial dirs,
FIFOs and other non-files listed as videos, an output dir that cannot be written (read-only, full, not a directory,
no permission), a run that writes no sample, and clips too small for NVDEC. Every case runs for real."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import VENV_BIN
from tests.helpers.media import make_video
from tests.helpers.shards import only_published_files, read_shards
from videobert_ds.data.prepare import PrepareOptions, prepare_corpus

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PREPARE = str(VENV_BIN / "videobert-prepare")
TINY = ["--fps", "4", "--size", "16", "--decode-threads", "1", "--no-progress"]


def write_manifest(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PREPARE, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str) -> str:
    """The run's error: exactly one 'videobert-prepare: error:' line and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("videobert-prepare: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A one-video manifest (2 s, captioned: one sample)."""
    make_video(tmp_path / "v.mp4", seconds=2.0)
    return write_manifest(tmp_path / "m.jsonl", [{"video": "v.mp4", "caption": "a clip"}])


# ----------------------------------------------------------------------------- two runs, one --out


def test_second_run_into_the_same_out_is_refused_and_the_first_finishes(synth_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    args = ["--manifest", str(synth_corpus), "--out", str(out), "--fps", "8", "--size", "32"]
    args += ["--samples-per-shard", "1", "--decode-threads", "1", "--no-progress"]
    first = subprocess.Popen([PREPARE, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list(out.glob(".prepare.work/*.tar")) and first.poll() is None:
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # the first run is mid-way, its work in its partial dir
        assert list(out.glob(".prepare.work/*.tar")), "the first run wrote no shard"
        second = cli(*args)
        assert second.returncode == 2
        line = one_error_line(second.stderr)
        assert f"pid {first.pid}" in line and "in use" in line, line
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-2000:]  # its partial work survived the second run
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
    only_published_files(out)  # the lock file is gone too
    assert len(read_shards(out)) == json.loads((out / "manifest.json").read_text())["total"] > 0


def _writer(partial: Path, stay: bool) -> subprocess.Popen:
    """A process that marks ``partial`` as its own (as a prepare run does), then stays alive or exits."""
    code = (
        "import sys, time; from pathlib import Path; from videobert_ds.data.prepare.lock import mark_partial; "
        "mark_partial(Path(sys.argv[1])); print('ready', flush=True); "
        f"time.sleep(600 if {stay} else 0)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(partial)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_partial_dirs_are_removed_only_when_their_writer_is_gone(tiny: Path, tmp_path: Path, caplog) -> None:
    from videobert_ds.data.prepare.lock import OWNER_NAME, mark_partial

    out = tmp_path / "shards"
    live, dead, legacy, foreign = (out / f".partial-{n}" for n in ("live", "dead", "legacy", "foreign"))
    alive = _writer(live, stay=True)
    try:
        (live / "r00000-000000.tar").write_bytes(b"work in progress")
        gone = _writer(dead, stay=False)
        gone.wait()
        (dead / "r00000-000000.tar").write_bytes(b"left by a killed run")
        legacy.mkdir()  # made before partial dirs recorded their writer
        mark_partial(foreign)
        owner = json.loads((foreign / OWNER_NAME).read_text())
        (foreign / OWNER_NAME).write_text(json.dumps({**owner, "host": owner["host"] + "-elsewhere"}))

        with caplog.at_level(logging.WARNING, logger="videobert_ds.data.prepare"):
            prepare_corpus(tiny, out, fps=4, size=16, decode_threads=1, progress=False)
        assert (live / "r00000-000000.tar").read_bytes() == b"work in progress"
        assert not dead.exists() and not legacy.exists()
        assert foreign.is_dir()  # another host's process: cannot tell if it is gone, so kept (and said so)
        assert any(foreign.name in r.getMessage() for r in caplog.records)
        # 16-px VP9 cannot be decoded by NVDEC: one warning says so
        nvdec = [r.getMessage() for r in caplog.records if "NVDEC" in r.getMessage()]
        assert nvdec == [
            "videobert-prepare: warning: clips of 16x16 vp9 cannot be decoded by NVDEC on a GPU (needs >= 128x128); "
            "training on GPUs will decode them on the CPU"
        ]
        assert len(read_shards(out)) == 1
    finally:
        alive.kill()
        alive.wait()
    prepare_corpus(tiny, out, fps=4, size=16, decode_threads=1, progress=False, overwrite=True)
    assert not live.exists()  # its writer is gone now


# ----------------------------------------------------------------------------- inputs that are not files


def test_fifo_and_other_non_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    make_video(tmp_path / "v.mp4", seconds=2.0)
    os.mkfifo(tmp_path / "fifo.mp4")  # nobody ever writes to it: opening it for reading blocks
    os.mkfifo(tmp_path / "fifo.srt")
    (tmp_path / "dir.mp4").mkdir()
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {"video": "v.mp4", "caption": "good", "id": "good"},
            {"video": "fifo.mp4", "id": "fifo"},
            {"video": "dir.mp4", "id": "dir"},
            {"video": "/dev/zero", "id": "device"},
            {"video": "v.mp4", "transcript": "fifo.srt", "caption": "falls back to its caption", "id": "fifo_srt"},
        ],
    )
    out = tmp_path / "shards"
    r = cli("--manifest", str(manifest), "--out", str(out), *TINY, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    skipped = {s["id"]: s["reason"] for s in report["inputs_skipped"]}
    assert skipped == {"fifo": "video_not_a_file", "dir": "video_not_a_file", "device": "video_not_a_file"}
    assert report["reasons"]["video_not_a_file"] == 3 and report["reasons"]["transcript_not_a_file"] == 1
    assert {s["meta"]["video_id"] for s in read_shards(out).values()} == {"good", "fifo_srt"}


# ----------------------------------------------------------------------------- output dirs that cannot be written


def _can_mount() -> bool:
    try:
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _in_mount_ns(mount_opts: str, mountpoint: Path, *args: str) -> subprocess.CompletedProcess:
    """Run videobert-prepare with a fresh tmpfs (``mount_opts``) at ``mountpoint``, in a private mount namespace
    (the mount vanishes with it); afterwards list what the run left on that tmpfs on stdout."""
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 2; "$@"; rc=$?; find "$MNT" -mindepth 1; exit $rc'
    env = {**ENV, "MNT": str(mountpoint)}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", mount_opts, str(mountpoint), PREPARE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root)")


@needs_mount
def test_full_output_dir_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    make_video(tmp_path / "v.mp4", seconds=4.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [{"video": "v.mp4"}])  # 8 windows of 0.5 s
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # 16 KiB: room for the lock and the partial dir's owner file, not for the shards (10 KiB each)
    r = _in_mount_ns("size=16k", mnt, "--manifest", str(manifest), "--out", str(mnt / "shards"), "--window", "0.5",
                     "--samples-per-shard", "1", *TINY)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_error_line(r.stderr)
    assert f"cannot write to {mnt / 'shards'}: No space left on device" in line, line
    assert r.stdout.split() == [str(mnt / "shards")]  # no partial dir, no shard, no lock left behind


@needs_mount
def test_read_only_output_dir_is_one_line(tmp_path: Path, tiny: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for out in (mnt, mnt / "shards"):  # the dir itself, or a new dir inside it
        r = _in_mount_ns("ro,size=16k", mnt, "--manifest", str(tiny), "--out", str(out), *TINY)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"cannot write to {out}: Read-only file system" in one_error_line(r.stderr)


def test_out_under_a_regular_file_is_one_line(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "file").write_text("not a dir")
    out = tmp_path / "file" / "shards"
    r = cli("--manifest", str(tiny), "--out", str(out), *TINY)
    assert r.returncode == 2
    assert f"cannot write to {out}: Not a directory" in one_error_line(r.stderr)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_output_dir_without_permission_is_one_line(tmp_path: Path, tiny: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    # root ignores file modes: drop the capabilities that let it (the files it reads are its own)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    for out in (locked, locked / "shards"):
        r = subprocess.run(
            [*drop, PREPARE, "--manifest", str(tiny), "--out", str(out), *TINY],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"cannot write to {out}: Permission denied" in one_error_line(r.stderr)
    assert list(locked.iterdir()) == []


# ----------------------------------------------------------------------------- nothing to publish


def test_run_with_no_sample_publishes_nothing(tmp_path: Path, tiny: Path) -> None:
    manifest = write_manifest(tmp_path / "none.jsonl", [{"video": "missing.mp4", "id": "missing"}])
    out = tmp_path / "shards"
    r = cli("--manifest", str(manifest), "--out", str(out), *TINY)
    assert r.returncode == 1
    failed = out / "report.failed.json"
    assert one_error_line(r.stderr) == (
        f"videobert-prepare: error: no samples written, nothing published (reasons in {failed})"
    )
    assert sorted(p.name for p in out.iterdir()) == ["report.failed.json"]  # no manifest.json: not a corpus
    report = json.loads(failed.read_text())
    assert report["samples_written"] == 0 and report["reasons"] == {"video_missing": 1}

    # over a complete corpus, even with --overwrite, the old corpus stays whole
    prepare_corpus(tiny, out, fps=4, size=16, decode_threads=1, progress=False)
    only_published_files(out)  # the failed report of before is gone with a published corpus
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    report = prepare_corpus(manifest, out, fps=4, size=16, decode_threads=1, progress=False, overwrite=True)
    assert report["samples_written"] == 0
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(after.pop("report.failed.json"))["reasons"] == {"video_missing": 1}
    assert after == before


# ----------------------------------------------------------------------------- NVDEC


def test_default_size_is_gpu_decodable() -> None:
    from videobert_ds.cli.prepare import build_parser
    from videobert_ds.data.decoders.nvdec import gpu_decodable
    from videobert_ds.data.prepare.corpus import nvdec_warning

    opts = PrepareOptions()
    assert (opts.codec, opts.size) == ("vp9", 128) and gpu_decodable(opts.codec, opts.size, opts.size)
    args = build_parser().parse_args(["--manifest", "m", "--out", "o"])
    assert (args.codec, args.size) == (opts.codec, opts.size)
    assert nvdec_warning(opts) is None
    assert nvdec_warning(PrepareOptions(size=112)) == (
        "videobert-prepare: warning: clips of 112x112 vp9 cannot be decoded by NVDEC on a GPU (needs >= 128x128); "
        "training on GPUs will decode them on the CPU"
    )
    assert nvdec_warning(PrepareOptions(codec="h264", size=48)) is None
    assert "(needs >= 48x16)" in nvdec_warning(PrepareOptions(codec="h264", size=32))

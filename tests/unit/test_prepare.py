"""videobert-prepare, for real: shards from the synthetic corpus, real-world source formats,
bad inputs, interrupted runs and command-line errors (MPI ranks: tests/integration/test_prepare.py)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.helpers import VENV_BIN
from tests.helpers.media import LEVELS, frame_index, make_video, write_srt
from tests.helpers.shards import only_published_files, read_shards
from videobert_ds.data.prepare import PrepareError, prepare_corpus
from videobert_ds.data.video_io import DecodeStats, Segment, stream_segments

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
X265_QUIET = {"x265-params": "log-level=error"}


# ----------------------------------------------------------------------------- helpers


def decode(clip: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def expected_indices(start: float, n: int, fps: float, src_rate: Fraction) -> list[int]:
    """The rule: output frame k shows the last source frame with pts <= start + k/fps."""
    return [math.floor((start + k / fps) * src_rate + 1e-9) % LEVELS for k in range(n)]


def write_manifest(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- synthetic corpus


def test_synth_round_trip(prepared_shards: Path) -> None:
    out = prepared_shards
    only_published_files(out)
    man = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    samples = read_shards(out)
    assert man["codec"] == "vp9" and man["ext"] == "webm" and man["fps"] == 8 and man["size"] == 32
    assert len(samples) == man["total"] == report["samples_written"] > 0
    per_split: dict[str, int] = {}
    for s in samples.values():
        per_split[s["meta"]["split"]] = per_split.get(s["meta"]["split"], 0) + 1
    assert per_split == man["splits"] == report["samples_per_split"]
    # every label value of every split, recorded for fine-tuning's heads (the synthetic corpus: 3 label sets)
    seen: dict[str, dict[str, set]] = {}
    for s in samples.values():
        for name, value in s["meta"].get("labels", {}).items():
            seen.setdefault(s["meta"]["split"], {}).setdefault(name, set()).add(value)
    assert {split: {k: sorted(v) for k, v in sets.items()} for split, sets in seen.items()} == man["labels"]
    assert set(man["labels"]["train"]) == {"colour", "shape", "motion"}
    assert all(sh["num_samples"] <= 8 for sh in man["shards"])
    assert report["inputs_seen"] == 8 and not report["inputs_skipped"]
    for key, s in samples.items():
        meta = s["meta"]
        assert key == f"{meta['video_id']}_{meta['segment']:05d}"
        assert meta["text"] and meta["fps"] == 8 and meta["end"] > meta["start"]
        frames = decode(s["clip"])
        assert len(frames) == meta["num_frames"] == math.ceil((meta["end"] - meta["start"]) * 8 - 1e-6)
        assert all(f.shape == (32, 32, 3) for f in frames)
        assert set(meta["labels"]) == {"colour", "shape", "motion"}
        assert meta["qa"]["choices"][meta["qa"]["answer"]]


def test_plain_run_never_initialises_mpi(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=1.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [{"video": video.name, "caption": "c"}])
    code = (
        "import sys; from videobert_ds.data.prepare import prepare_corpus; "
        f"prepare_corpus({str(manifest)!r}, {str(tmp_path / 'out')!r}, fps=4, size=16, progress=False); "
        "assert 'mpi4py.MPI' not in sys.modules, 'MPI initialised'"
    )
    env = {k: v for k, v in ENV.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    r = subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ----------------------------------------------------------------------------- real-world sources

CUES = [(0.25, 1.25, "first — ça va"), (1.5, 2.6, "second 日本語 ✓")]


def _transcript(path: Path, kind: str) -> Path:
    if kind == "srt":
        return write_srt(path.with_suffix(".srt"), CUES)
    if kind == "vtt":
        body = "".join(f"00:{a:06.3f} --> 00:{b:06.3f}\n{t}\n\n" for a, b, t in CUES)
        p = path.with_suffix(".vtt")
        p.write_text("WEBVTT\n\n" + body, encoding="utf-8")
        return p
    p = path.with_suffix(".json")
    p.write_text(json.dumps([{"start": a, "end": b, "text": t} for a, b, t in CUES], ensure_ascii=False), "utf-8")
    return p


# name, make_video kwargs, transcript kind
SOURCES = [
    ("h264_ntsc_audio.mp4", dict(fps=Fraction(24000, 1001), audio=True), "srt"),
    ("hevc_portrait.mkv", dict(encoder="libx265", width=50, height=90, options=X265_QUIET), "vtt"),
    ("vp9_wide_audio.webm", dict(encoder="libvpx-vp9", width=96, height=36, audio=True), "json"),
    ("av1.mp4", dict(encoder="libsvtav1", width=64, height=64), "srt"),
    ("odd_size.mkv", dict(width=63, height=47, pix_fmt="yuv444p"), "vtt"),
    ("rotated.mp4", dict(width=64, height=32, rotation=90), "json"),
]


@pytest.fixture(scope="module")
def realworld(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("realworld")
    recs, rates = [], {}
    for name, kw, kind in SOURCES:
        video = make_video(d / name, seconds=3.0, **kw)
        tr = _transcript(d / f"{Path(name).stem}_tr", kind)
        recs.append({"video": video.name, "transcript": tr.name, "split": "train"})
        rates[Path(name).stem] = Fraction(kw.get("fps", 10))
    manifest = write_manifest(d / "manifest.jsonl", recs)
    out = d / "shards"
    prepare_corpus(manifest, out, fps=8, size=32, samples_per_shard=4, progress=False)
    return out, rates


def test_realworld_sources_resampled_exactly(realworld) -> None:
    out, rates = realworld
    report = json.loads((out / "report.json").read_text())
    assert report["reasons"] == {} and not report["inputs_skipped"], report
    samples = read_shards(out)
    assert len(samples) == 2 * len(SOURCES)
    for stem, rate in rates.items():
        for seg, (a, b, text) in enumerate(CUES):
            s = samples[f"{stem}_{seg:05d}"]
            meta = s["meta"]
            assert meta["text"] == text and (meta["start"], meta["end"]) == (a, b)
            frames = decode(s["clip"])
            assert len(frames) == meta["num_frames"] == math.ceil((b - a) * 8)
            assert all(f.shape == (32, 32, 3) for f in frames)
            got = [frame_index(f.mean()) for f in frames]
            assert got == expected_indices(a, len(frames), 8, rate), stem


def test_h264_output_codec(realworld, tmp_path: Path) -> None:
    src = realworld[0].parent
    recs = [json.loads(ln) for ln in (src / "manifest.jsonl").read_text().splitlines()[:2]]
    for r in recs:
        r["video"], r["transcript"] = str(src / r["video"]), str(src / r["transcript"])  # absolute paths
    manifest = write_manifest(tmp_path / "m.jsonl", recs)
    out = tmp_path / "h264"
    prepare_corpus(manifest, out, codec="h264", fps=8, size=32, progress=False)
    man = json.loads((out / "manifest.json").read_text())
    assert man["codec"] == "h264" and man["ext"] == "mp4"
    samples = read_shards(out)
    assert len(samples) == 4
    for s in samples.values():
        with av.open(io.BytesIO(s["clip"])) as c:
            assert c.streams.video[0].codec_context.name == "h264"
        frames = decode(s["clip"])
        assert len(frames) == s["meta"]["num_frames"] and frames[0].shape == (32, 32, 3)


def test_streaming_yields_clips_before_the_end(tmp_path: Path) -> None:
    video = make_video(tmp_path / "long.mkv", seconds=6.0)
    stats = DecodeStats()
    gen = stream_segments(video, [Segment(0, 0.0, 1.0), Segment(1, 5.0, 6.0)], 4, 16, stats)
    first = next(gen)
    assert first.segment.index == 0 and stats.frames_decoded < 20  # of 60: nothing held past the cue
    rest = list(gen)
    assert [c.segment.index for c in rest] == [1] and stats.frames_decoded == 60


# ----------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def badrun(tmp_path_factory) -> tuple[Path, dict, dict]:
    d = tmp_path_factory.mktemp("bad")
    good = make_video(d / "good.mp4", seconds=3.0)
    make_video(d / "other.mkv", seconds=3.0)
    write_srt(
        d / "good.srt",
        [
            (0.0, 1.0, "mix"),
            (1.2, 2.0, "fold"),
            (2.5, 4.0, "partly out"),
            (2.1, 2.2, "too short"),
            (10.0, 11.0, "outside"),
        ],
    )
    with (d / "good.srt").open("a", encoding="utf-8") as f:
        f.write("\n9\n00:00:bad --> 00:00:01,000\nmalformed block\n")
    write_srt(d / "outside.srt", [(20.0, 21.0, "nothing here")])
    (d / "garbage.srt").write_text("no timings in here\n\nat all\n", encoding="utf-8")
    (d / "latin.srt").write_bytes("1\n00:00:00,000 --> 00:00:01,500\nCrème brûlée\n".encode("cp1252"))
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    noisy = make_video(d / "noisy.mkv", seconds=4.0, noise=True)
    (d / "truncated.mkv").write_bytes(noisy.read_bytes()[: noisy.stat().st_size * 6 // 10])
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: unreadable
    good_qa = {"question": "what?", "choices": ["a", "b"], "answer": 1}
    recs = [
        {
            "video": "good.mp4",
            "transcript": "good.srt",
            "id": "good",
            "labels": {"domain": "cooking"},
            "annotations": [
                {"start": 0.0, "end": 1.1, "labels": {"step": "mix"}, "qa": good_qa},
                {"start": 1.1, "end": 2.3, "qa": {"question": "q", "choices": ["only one"], "answer": 0}},
                {"start": "x", "end": 1},
            ],
        },
        {"video": "missing.mp4", "id": "missing"},
        {"video": "empty.mp4"},
        {"video": "random.mp4"},
        {"video": "truncated.mp4", "id": "truncated_mp4"},
        {"video": "truncated.mkv"},
        {"video": "other.mkv", "transcript": "nope.srt", "id": "no_transcript"},
        {"video": "other.mkv", "transcript": "garbage.srt", "id": "garbage_transcript", "split": "val"},
        {"video": "other.mkv", "transcript": "latin.srt", "id": "latin"},
        {"video": "other.mkv", "caption": "a whole video", "id": "caption.only video", "labels": [1, 2]},
        {"video": "other.mkv", "transcript": "outside.srt", "id": "all_outside"},
        "{not json",
        {"transcript": "good.srt"},
        {"video": "good.mp4", "id": "good"},
        {"video": "good.mp4", "id": "bad_split", "split": "tr/ain"},
        {"video": "other.mkv", "id": "bad_annotations", "caption": "x", "annotations": "oops"},
    ]
    manifest = write_manifest(d / "manifest.jsonl", recs)
    out = d / "shards"
    report = prepare_corpus(
        manifest, out, fps=8, size=16, window=1.0, max_clip_seconds=2.0, samples_per_shard=3, progress=False
    )
    return out, report, read_shards(out)


def test_bad_inputs_skipped_with_reasons(badrun) -> None:
    out, report, samples = badrun
    only_published_files(out)
    assert report == json.loads((out / "report.json").read_text())
    skipped = {s["line"]: s["reason"] for s in report["inputs_skipped"]}
    assert skipped == {
        2: "video_missing",
        3: "video_empty",
        4: "video_unreadable",
        5: "video_unreadable",
        11: "no_samples",
        12: "manifest_line_malformed",
        13: "manifest_line_malformed",
        14: "duplicate_id",
        15: "split_invalid",
    }
    assert report["inputs_seen"] == 16 and report["inputs_written"] == 7
    assert report["samples_written"] == len(samples) == json.loads((out / "manifest.json").read_text())["total"]
    reasons = report["reasons"]
    for reason, n in {
        "cue_outside_video": 2,
        "cue_clipped": 1,
        "cue_too_short": 1,
        "cue_malformed": 1,
        "annotation_malformed": 1,
        "qa_malformed": 1,
        "transcript_missing": 1,
        "transcript_malformed": 1,
        "transcript_non_utf8": 1,
        "video_truncated": 1,
        "labels_malformed": 1,
        "annotations_malformed": 1,
    }.items():
        assert reasons.get(reason) == n, (reason, reasons)


def test_cues_clipped_capped_and_annotated(badrun) -> None:
    samples = badrun[2]
    good = {k: v["meta"] for k, v in samples.items() if v["meta"]["video_id"] == "good"}
    # time-sorted cues: 0 mix, 1 fold, 2 too short, 3 partly out, 4 outside
    assert sorted(good) == ["good_00000", "good_00001", "good_00003"]
    assert good["good_00000"]["labels"] == {"domain": "cooking", "step": "mix"}
    assert good["good_00000"]["qa"] == {"question": "what?", "choices": ["a", "b"], "answer": 1}
    assert "qa" not in good["good_00001"] and good["good_00001"]["labels"] == {"domain": "cooking"}
    clipped = good["good_00003"]
    assert (clipped["start"], clipped["end"], clipped["num_frames"]) == (2.5, 3.0, 4)


def test_degraded_inputs_still_give_samples(badrun) -> None:
    samples = {k: v["meta"] for k, v in badrun[2].items()}
    windows = sorted(k for k in samples if k.startswith("no_transcript_"))
    assert windows == ["no_transcript_00000", "no_transcript_00001", "no_transcript_00002"]
    assert all(samples[k]["text"] == "" and samples[k]["num_frames"] == 8 for k in windows)
    assert sorted(k for k in samples if k.startswith("garbage_transcript_")) == [
        "garbage_transcript_00000",
        "garbage_transcript_00001",
        "garbage_transcript_00002",
    ]
    assert samples["garbage_transcript_00000"]["split"] == "val"
    assert samples["latin_00000"]["text"] == "Crème brûlée"
    cap_keys = [k for k in samples if k.startswith("caption_only_video_")]  # dots, spaces made key-safe
    assert len(cap_keys) == 1 and cap_keys[0].endswith("_00000") and "." not in cap_keys[0]
    cap = samples[cap_keys[0]]
    assert cap["video_id"] == "caption.only video" and cap["text"] == "a whole video"
    assert (cap["start"], cap["end"], cap["num_frames"]) == (0.0, 2.0, 16)  # capped at max clip
    trunc = sorted(k for k in samples if k.startswith("truncated_"))
    assert trunc and all(samples[k]["end"] < 4.0 for k in trunc)
    for s in badrun[2].values():
        assert len(decode(s["clip"])) == s["meta"]["num_frames"]


def test_existing_output_refused_unless_overwrite(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", seconds=2.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [{"video": video.name}])
    out = tmp_path / "out"
    prepare_corpus(manifest, out, fps=4, size=16, window=0.5, samples_per_shard=1, progress=False)
    assert len(list(out.glob("shard-*.tar"))) == 4
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(PrepareError, match="--overwrite"):
        prepare_corpus(manifest, out, fps=4, size=16, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    prepare_corpus(manifest, out, fps=4, size=16, window=1.0, samples_per_shard=8, overwrite=True, progress=False)
    only_published_files(out)
    assert [p.name for p in out.glob("shard-*.tar")] == ["shard-000000.tar"]
    assert len(read_shards(out)) == 2


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--manifest", "{missing}", "--out", "{out}"], "manifest not found"),
        (["--manifest", "{manifest}", "--out", "{out}", "--codec", "av1"], "invalid choice"),
        (["--manifest", "{manifest}", "--out", "{out}", "--fps", "ten"], "not a number"),
        (["--manifest", "{manifest}", "--out", "{out}", "--size", "-4"], "must be > 0"),
        (["--manifest", "{manifest}", "--out", "{out}", "--size", "33"], "even integer"),
        (["--manifest", "{manifest}", "--out", "{out}", "--samples-per-shard", "1.5"], "not a number"),
        (["--manifest", "{manifest}"], "required: --out"),
        (["--manifest", "{manifest}", "--out", "{out}", "--bogus"], "unrecognized arguments"),
        (["--manifest", "{manifest}", "--out", "{done}"], "--overwrite"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "v.mp4"}\n')
    done = tmp_path / "done"
    done.mkdir()
    (done / "manifest.json").write_text("{}")
    paths = {"missing": tmp_path / "nope.jsonl", "manifest": manifest, "out": tmp_path / "o", "done": done}
    argv = [a.format(**paths) for a in args]
    r = subprocess.run(
        [str(VENV_BIN / "videobert-prepare"), *argv], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videobert-prepare: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_srun_without_mpi_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "v.mp4"}\n')
    env = {**ENV, "SLURM_STEP_NUM_TASKS": "2"}
    r = subprocess.run(
        [str(VENV_BIN / "videobert-prepare"), "--manifest", str(manifest), "--out", str(tmp_path / "o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.strip() == (
        "videobert-prepare: error: srun started several tasks without MPI: use srun --mpi=pmix (or pmi2)"
    )


def test_sample_keys_are_safe_and_distinct() -> None:
    from videobert_ds.data.prepare import sample_key_prefix

    assert sample_key_prefix("vid_01-a") == "vid_01-a"
    ids = ["日本", "中文", "a.b", "a b", "x" * 200, "x" * 201]
    keys = [sample_key_prefix(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert all(len(k) <= 80 and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) for k in keys)

"""videobert-synth: the synthetic corpus is well-formed, deterministic, and its pixels carry the narration."""

from __future__ import annotations

import json
import os
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.helpers import REPO
from videobert_ds.cli.synth import main
from videobert_ds.data.synth import (
    ATTRIBUTES,
    COLOUR_RGB,
    COLOURS,
    MOTIONS,
    SHAPES,
    assign_splits,
    plan_video,
    synthesize,
)

SEED = 0  # the conftest corpus is seed 0, 8 videos
_SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
_SRT_CUE = re.compile(rf"(\d+)\n{_SRT_TIME} --> {_SRT_TIME}\n(.+?)(?:\n\n|\n?$)", re.S)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Minimal SRT reader for the test: (start, end, text) per cue; every block must parse."""
    cues = []
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    for block in blocks:
        m = _SRT_CUE.fullmatch(block.strip())
        assert m, f"unparseable SRT cue: {block!r}"
        g = [int(x) for x in m.groups()[1:9]]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append((start, end, m.group(10).strip()))
    return cues


def load_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode(path: Path) -> tuple[av.video.stream.VideoStream, list[np.ndarray], dict]:
    """RGB frames plus stream facts of one video."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        info = {
            "codec": v.codec_context.name,
            "rate": v.average_rate,
            "size": (v.codec_context.width, v.codec_context.height),
            "pix_fmt": v.codec_context.pix_fmt,
            "audio": [(a.codec_context.name, float(a.duration * a.time_base)) for a in c.streams.audio],
        }
    return v, frames, info


@pytest.fixture(scope="module")
def corpus(synth_corpus) -> tuple[Path, list[dict]]:
    return synth_corpus.parent, load_manifest(synth_corpus)


def test_manifest_contract(corpus):
    root, rows = corpus
    assert [r["id"] for r in rows] == [f"synth_{i:05d}" for i in range(8)]
    for r in rows:
        assert set(r) == {"video", "transcript", "id", "split", "annotations"}
        assert r["video"] == f"videos/{r['id']}.mp4" and (root / r["video"]).is_file()
        assert r["transcript"] == f"transcripts/{r['id']}.srt" and (root / r["transcript"]).is_file()
        assert 3 <= len(r["annotations"]) <= 6
        prev_end = 0.0
        for a in r["annotations"]:
            assert a["start"] == pytest.approx(prev_end) and 1.5 <= a["end"] - a["start"] <= 3.0 + 1e-9
            prev_end = a["end"]
            labels = a["labels"]
            assert {k: labels[k] in v for k, v in ATTRIBUTES.items()} == {"colour": True, "shape": True, "motion": True}
            qa = a["qa"]
            assert len(qa["choices"]) == 4 and qa["question"].endswith("?")
            kind = next(k for k, vals in ATTRIBUTES.items() if sorted(qa["choices"]) == sorted(vals))
            assert qa["choices"][qa["answer"]] == labels[kind]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    kinds = {
        next(k for k, v in ATTRIBUTES.items() if sorted(a["qa"]["choices"]) == sorted(v))
        for r in rows
        for a in r["annotations"]
    }
    assert kinds == {"colour", "shape", "motion"}
    assert not list(root.rglob(".*.part")), "temp files left behind"


def test_videos_decode_as_declared(corpus):
    root, rows = corpus
    sizes, rates, with_audio = set(), set(), 0
    for i, r in enumerate(rows):
        plan = plan_video(SEED, i)
        _, frames, info = decode(root / r["video"])
        assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
        assert info["size"] == (plan.width, plan.height) and frames[0].shape == (plan.height, plan.width, 3)
        assert info["rate"] == plan.fps
        assert len(frames) == plan.num_frames
        # The video lasts as long as its events, to within one frame.
        assert abs(len(frames) / plan.fps - r["annotations"][-1]["end"]) <= 1 / plan.fps
        assert bool(info["audio"]) == plan.has_audio
        for codec, duration in info["audio"]:
            assert codec == "aac" and abs(duration - r["annotations"][-1]["end"]) < 0.2
            with_audio += 1
        sizes.add(info["size"])
        rates.add(info["rate"])
    assert 0 < with_audio < len(rows)
    assert Fraction(24000, 1001) in rates and {25, 30, 15} <= rates
    assert any(w % 16 or h % 16 for w, h in sizes)
    assert any(h > w for w, h in sizes) and any(w / h > 1.7 for w, h in sizes)


def test_transcripts_align_and_name_the_attributes(corpus):
    root, rows = corpus
    sentences = set()
    for r in rows:
        text = (root / r["transcript"]).read_text(encoding="utf-8")
        cues = parse_srt(text)
        assert len(cues) == len(r["annotations"])
        prev_end = 0.0
        for (start, end, sentence), a in zip(cues, r["annotations"]):
            assert prev_end <= start < end
            assert abs(start - a["start"]) <= 0.15 and abs(end - a["end"]) <= 0.15
            words = set(sentence.split())
            labels = a["labels"]
            assert {labels["colour"], labels["shape"], labels["motion"]} <= words, sentence
            # Only the narrated values: no other attribute word may appear.
            others = (set(COLOURS) | set(SHAPES) | set(MOTIONS)) - set(labels.values())
            assert not words & others, sentence
            prev_end = end
            sentences.add(sentence.replace(labels["colour"], "C").replace(labels["shape"], "S"))
    assert len(sentences) > 10, "narration should vary its framing and verbs"


def _colour_centroid(frame: np.ndarray, colour: str) -> tuple[float, float, int]:
    target = np.array(COLOUR_RGB[colour], dtype=np.int16)
    mask = np.abs(frame.astype(np.int16) - target).max(axis=-1) < 50
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()) if xs.size else -1.0), (float(ys.mean()) if ys.size else -1.0), int(mask.sum())


def test_pixels_show_the_narrated_colour_and_motion(corpus):
    root, rows = corpus
    for i, r in enumerate(rows):
        plan = plan_video(SEED, i)
        _, frames, _ = decode(root / r["video"])
        h, w = frames[0].shape[:2]
        for a in r["annotations"]:
            colour, motion = a["labels"]["colour"], a["labels"]["motion"]
            span = a["end"] - a["start"]
            early, late = (frames[int((a["start"] + q * span) * plan.fps)] for q in (0.25, 0.75))
            x0, y0, n0 = _colour_centroid(early, colour)
            x1, y1, n1 = _colour_centroid(late, colour)
            # Big enough to survive a 32x32 downscale (a triangle covers half its square, a cross 5/9).
            min_area = 0.05 * min(h, w) ** 2
            assert n0 > min_area and n1 > min_area, (r["id"], a)
            dx, dy = x1 - x0, y1 - y0
            axis_move, cross_move = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[motion]
            extent = w if motion in ("left", "right") else h
            assert axis_move > 0.1 * extent and abs(cross_move) < 2, (r["id"], a, dx, dy)


def test_deterministic_per_seed_and_independent_of_corpus_size_and_workers(tmp_path, corpus):
    root, _ = corpus
    a = synthesize(tmp_path / "a", num_videos=3, seed=SEED)
    b = synthesize(tmp_path / "b", num_videos=3, seed=SEED, workers=2)  # parallel encoding: the same bytes
    assert a.read_bytes() == b.read_bytes()
    for r in load_manifest(a):
        for key in ("transcript", "video"):
            assert (a.parent / r[key]).read_bytes() == (b.parent / r[key]).read_bytes()
        # A video's content does not depend on how many others were made.
        assert (a.parent / r["transcript"]).read_bytes() == (root / r["transcript"]).read_bytes()
        fa, fr = decode(a.parent / r["video"])[1], decode(root / r["video"])[1]
        assert len(fa) == len(fr) and all(np.array_equal(x, y) for x, y in zip(fa, fr))
    assert plan_video(SEED, 0) != plan_video(SEED + 1, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 20, 100])
def test_splits(n):
    splits = assign_splits(n, seed=5)
    assert splits == assign_splits(n, seed=5) and len(splits) == n
    if n >= 3:
        assert {"train", "val", "test"} <= set(splits)
    if n >= 20:
        for name, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert abs(splits.count(name) / n - frac) <= 0.06
    assert splits.count("train") >= splits.count("val")


@pytest.mark.parametrize(
    "argv", [["--num-videos", "0"], ["--num-videos", "x"], ["--num-videos", "2", "--seed", "q"], []]
)
def test_cli_rejects_bad_args(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "o"), *argv] if argv else [])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("videobert-synth: error: ")


def test_cli_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "videobert-synth"), "--out", str(out), "--num-videos", "1", "--seed", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "manifest.jsonl")
    (row,) = load_manifest(out / "manifest.jsonl")
    assert row["split"] == "train" and (out / row["video"]).is_file()

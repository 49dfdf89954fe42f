"""videobert-synth's realism options (narration noise, offset, a second object, distractor motion): each does what it
says, the labels stay the narrated object's, and with every option off the corpus is byte-for-byte what it was."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tests.unit.test_synth import decode, load_manifest
from videobert_ds.cli.synth import main
from videobert_ds.data.synth import (
    CHATTER,
    COLOUR_RGB,
    COLOURS,
    MOTIONS,
    SHAPES,
    Realism,
    assign_splits,
    distractor_centre,
    event_centre,
    manifest_record,
    plan_video,
    render_frames,
    srt_text,
    still_centre,
)
from videobert_ds.data.transcripts import parse_srt

SEED = 0
N_PLANS = 400  # plans only (no rendering): ~1800 cues in well under a second

# sha256 of the seed-0 corpus's manifest records and SRTs (40 videos) and of videos 0-1's raw frames, taken before
# the realism options existed: with them off, nothing may change.
GOLDEN_TEXT = "53a3abdfdc6788edc56833e5fccda512e60ee03349c2da01d3198ba6c414f197"
GOLDEN_FRAMES = "27cd207108a77483ccff979b7b7328ea2d396ffced396ac951e40f8670392e00"
ATTRIBUTE_WORDS = set(COLOURS) | set(SHAPES) | set(MOTIONS)


def text_digest(realism: Realism | None) -> str:
    h, splits = hashlib.sha256(), assign_splits(40, SEED)
    for i in range(40):
        plan = plan_video(SEED, i, realism, splits[i])
        h.update(json.dumps(manifest_record(plan, splits[i])).encode())
        h.update(srt_text(plan).encode())
    return h.hexdigest()


def frames_digest(realism: Realism | None) -> str:
    h = hashlib.sha256()
    for i in (0, 1):
        for frame in render_frames(plan_video(SEED, i, realism), SEED, i):
            h.update(frame.tobytes())
    return h.hexdigest()


def events(realism: Realism | None, split: str = "train", n: int = N_PLANS) -> list:
    return [e for i in range(n) for e in plan_video(SEED, i, realism, split).events]


def test_defaults_leave_the_corpus_unchanged():
    assert text_digest(None) == text_digest(Realism()) == GOLDEN_TEXT
    assert frames_digest(None) == frames_digest(Realism()) == GOLDEN_FRAMES
    assert Realism(narration_noise=0.3) != Realism()  # the real options do count as set


def test_narration_noise_share_and_labels():
    clean = events(None)
    for share in (0.3, 0.6):
        noisy = events(Realism(narration_noise=share))
        off = [n for n in noisy if not n.narrated]
        assert abs(len(off) / len(noisy) - share) < 0.035, (share, len(off), len(noisy))
        for c, n in zip(clean, noisy):
            # The labels and QA are the event's, whatever its cue says; only the sentence changes.
            same = ("colour", "shape", "motion", "qa", "start", "end")
            assert [getattr(n, k) for k in same] == [getattr(c, k) for k in same]
            assert (n.cue_start, n.cue_end) == (c.cue_start, c.cue_end)
            assert n.sentence == c.sentence if n.narrated else n.sentence in CHATTER
    # Nested: a higher share keeps the lower share's off-topic cues (and their text).
    low, high = events(Realism(narration_noise=0.3)), events(Realism(narration_noise=0.6))
    assert all(h.sentence == lo.sentence for lo, h in zip(low, high) if not lo.narrated)
    assert all(not n.narrated for n in events(Realism(narration_noise=1.0), n=20))
    # Seeded: the same plan twice; another seed draws other cues.
    assert events(Realism(narration_noise=0.3), n=20) == events(Realism(narration_noise=0.3), n=20)
    # Off-topic talk names no colour, shape or direction, so it says nothing, right or wrong, about a clip.
    for sentence in CHATTER:
        assert not set(sentence.split()) & ATTRIBUTE_WORDS, sentence
    # Evaluation references stay clean: val/test narration is untouched unless asked for.
    assert events(Realism(narration_noise=0.6), "test", 50) == events(None, "test", 50)
    noisy_test = events(Realism(narration_noise=0.6, noisy_splits=("train", "test")), "test", 50)
    assert sum(not e.narrated for e in noisy_test) > 0.4 * len(noisy_test)
    # The manifest marks the off-topic cues' annotations, and keeps their labels.
    plan = plan_video(SEED, 0, Realism(narration_noise=1.0))
    rec = manifest_record(plan, "train")
    assert all(a["narrated"] is False for a in rec["annotations"])
    clean_rec = manifest_record(plan_video(SEED, 0), "train")
    assert [a["labels"] for a in rec["annotations"]] == [a["labels"] for a in clean_rec["annotations"]]


def test_narration_offset_within_bounds_and_the_video():
    max_shift = 1.0
    clean = [plan_video(SEED, i) for i in range(N_PLANS)]
    shifted = [plan_video(SEED, i, Realism(narration_offset=max_shift)) for i in range(N_PLANS)]
    shifts = []
    for c, s in zip(clean, shifted):
        assert s.duration == c.duration and s.num_frames == c.num_frames
        for ce, se in zip(c.events, s.events):
            shift = se.cue_start - ce.cue_start
            assert abs(shift) <= max_shift + 1e-6
            assert se.cue_end - se.cue_start == pytest.approx(ce.cue_end - ce.cue_start, abs=2e-3)  # length kept
            assert 0.0 <= se.cue_start < se.cue_end <= s.duration + 1e-9  # clipped to the video
            assert (se.start, se.end, se.sentence, se.colour) == (ce.start, ce.end, ce.sentence, ce.colour)
            shifts.append(shift)
        # The transcript lists the shifted cues, in time order, and the project's SRT reader reads them all.
        cues = parse_srt(srt_text(s)).cues
        expected = sorted((e.cue_start, e.cue_end) for e in s.events)
        assert np.allclose([(q.start, q.end) for q in cues], expected, atol=1e-6)
    shifts = np.abs(np.array(shifts))
    assert shifts.max() > 0.9 and 0.35 < shifts.mean() < 0.55  # uniform in [-1, 1], a few clipped
    assert (shifts > 0.5).mean() > 0.3


def test_two_objects_and_distractor_are_drawn_and_never_narrated():
    realism = Realism(two_objects=True, distractor_motion=True)
    clean = events(None, n=60)
    both = events(realism, n=60)
    for c, e in zip(clean, both):
        assert (e.colour, e.shape, e.motion, e.sentence, e.qa) == (c.colour, c.shape, c.motion, c.sentence, c.qa)
        assert e.still is not None and e.still.colour != e.colour and e.still.shape != e.shape
        assert e.still.size_frac < e.size_frac
        assert e.distractor is not None and e.distractor.motion != e.motion
        assert e.distractor.size_frac < e.still.size_frac
    assert len({e.still.colour for e in both}) == 4 and len({e.distractor.motion for e in both}) == 4
    # Independent streams: the second object does not move the distractor's draws, nor does noise move either.
    assert [e.distractor for e in both] == [
        e.distractor for e in events(Realism(distractor_motion=True, narration_noise=0.5), n=60)
    ]

    # Pixels: the still object's colour sits at its centre; the grey distractor crosses its way; the narrated
    # shape is on top, where it always was.
    index = 2
    plan = plan_video(SEED, index, realism)
    frames = list(render_frames(plan, SEED, index))
    base = list(render_frames(plan_video(SEED, index), SEED, index))
    for e in plan.events:
        t0, t1 = e.start + 0.2 * (e.end - e.start), e.start + 0.8 * (e.end - e.start)
        f0, f1 = (int(t * plan.fps) for t in (t0, t1))
        cx, cy = event_centre(plan, e, f0 / plan.fps)
        assert tuple(frames[f0][round(cy), round(cx)]) == COLOUR_RGB[e.colour]
        sx, sy = still_centre(plan, e)
        still_px = frames[f0][round(sy), round(sx)]
        # Unless the narrated shape or the distractor passes over it, the still object's colour shows at its centre.
        assert tuple(still_px) in (COLOUR_RGB[e.still.colour], COLOUR_RGB[e.colour], (e.distractor.grey,) * 3)
        (dx0, dy0), (dx1, dy1) = distractor_centre(plan, e, f0 / plan.fps), distractor_centre(plan, e, f1 / plan.fps)
        move = {"left": dx0 - dx1, "right": dx1 - dx0, "up": dy0 - dy1, "down": dy1 - dy0}[e.distractor.motion]
        assert move > 0.3 * (plan.width if e.distractor.motion in ("left", "right") else plan.height)
        px = frames[f1][round(dy1), round(dx1)]
        assert tuple(px) in ((e.distractor.grey,) * 3, COLOUR_RGB[e.colour], COLOUR_RGB[e.still.colour])
    changed = [not np.array_equal(a, b) for a, b in zip(frames, base)]
    assert all(changed)  # every frame shows something the clean video did not


@pytest.mark.parametrize(
    "argv",
    [
        ["--narration-noise", "1.5"],
        ["--narration-noise", "x"],
        ["--narration-offset", "-1"],
        ["--narration-offset", "nan"],
        ["--noisy-splits", "train,dev"],
    ],
)
def test_cli_rejects_bad_realism_args(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "o"), "--num-videos", "1", *argv])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("videobert-synth: error: ")


def test_cli_writes_a_realistic_corpus(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["--out", str(out), "--num-videos", "1", "--seed", "3"]
    argv += ["--narration-noise", "0.5", "--narration-offset", "0.8", "--two-objects", "--distractor-motion"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "manifest.jsonl")
    (row,) = load_manifest(out / "manifest.jsonl")
    realism = Realism(0.5, 0.8, True, True)
    plan = plan_video(3, 0, realism, row["split"])
    assert row == manifest_record(plan, row["split"])
    assert (out / row["transcript"]).read_text() == srt_text(plan)
    # The encoded video shows the still object's colour, which the clean video never does in that event.
    _, frames, _ = decode(out / row["video"])
    e = plan.events[0]
    f = frames[int((e.start + 0.5 * (e.end - e.start)) * plan.fps)]
    target = np.array(COLOUR_RGB[e.still.colour], dtype=np.int16)
    assert (np.abs(f.astype(np.int16) - target).max(axis=-1) < 50).sum() > 20


def test_noise_bench_rejects_bad_levels_and_tabulates(capsys):
    from videobert_ds.bench.noise import main as bench_main
    from videobert_ds.bench.noise import table

    for bad in (["--levels", "0,1.5"], ["--levels", "x"], ["--teacher-steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            bench_main(bad)
        assert exc.value.code == 2
    capsys.readouterr()
    rows = [
        {"level": lv, "metrics": {"retrieval/t2v/R@1": r, "zeroshot/colour/top1": z}}
        | {"chance": {"zeroshot/colour/top1": 0.25}, "off_topic_share": lv, "teacher_val_loss": None}
        for lv, r, z in ((0.0, 0.5, 1.0), (0.6, 0.2, 0.9))
    ]
    lines = table(rows).splitlines()
    assert lines[0].split() == ["metric", "chance", "noise", "0", "noise", "0.6"]
    assert lines[2].split() == ["zeroshot/colour/top1", "0.250", "1.000", "0.900"]  # headline metrics first
    assert lines[3].split() == ["retrieval/t2v/R@1", "-", "0.500", "0.200"]


def test_noise_bench_narration_only_matches_videobert_synth(tmp_path):
    """The bench's shortcut for levels after the first (hard-linked videos, new transcripts) writes exactly the corpus
    videobert-synth writes with the same narration options."""
    from videobert_ds.bench.noise import narration_only
    from videobert_ds.data.synth import synthesize

    realism = Realism(narration_noise=0.5, narration_offset=0.8)
    clean = synthesize(tmp_path / "clean", num_videos=2, seed=3).parent
    direct = synthesize(tmp_path / "direct", num_videos=2, seed=3, realism=realism).parent
    narration_only(clean, tmp_path / "linked", 2, 3, realism)
    linked = tmp_path / "linked"
    assert (linked / "manifest.jsonl").read_bytes() == (direct / "manifest.jsonl").read_bytes()
    for row in load_manifest(direct / "manifest.jsonl"):
        for key in ("video", "transcript"):
            assert (linked / row[key]).read_bytes() == (direct / row[key]).read_bytes()
        assert (linked / row["video"]).stat().st_ino == (clean / row["video"]).stat().st_ino  # linked, not encoded
    assert any(not a.get("narrated", True) for r in load_manifest(linked / "manifest.jsonl") for a in r["annotations"])

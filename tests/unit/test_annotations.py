"""Published annotation formats -> prepare's Entries (data/annotations), without decoding any video: each test
writes a tiny annotation file in the published layout, awkward cases included, and empty stand-in video files
(the finder only looks at names)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from videobert_ds.cli.prepare import main as prepare_main
from videobert_ds.data.annotations import AnnotationSource, VideoIndex, read_annotations
from videobert_ds.data.prepare import PrepareError, PrepareOptions
from videobert_ds.data.prepare.video import _plan
from videobert_ds.data.transcripts import Cue


def touch(root: Path, *rel: str) -> None:
    for r in rel:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        (root / r).write_bytes(b"stand-in")


def by_id(inputs) -> dict:
    return {e.id: e for e in inputs.entries}


def skipped(inputs) -> dict[str, str]:
    return {s.id: s.reason for s in inputs.skips}


# ----------------------------------------------------------------------------- HowTo100M


def test_howto100m_asr_cues(tmp_path: Path) -> None:
    caption = {
        "vidA": {  # rolling ASR: overlapping cues, an empty and a blank one, one reversed, markup
            "start": [0.0, 1.5, 3.0, 4.0, 5.0, 900.0],
            "end": [2.5, 4.0, 3.5, 4.5, 4.0, 905.0],
            "text": ["first cue", "second <i>cue</i>", "", "   ", "reversed", "after the end"],
        },
        "vidB": {"start": [0.0, 2.0], "end": [1.0], "text": ["one", "two"]},  # lists of different lengths
        "vidC": {"start": [0.0], "end": [1.0], "text": [""]},  # nothing usable: video-only windows
        "gone": {"start": [0.0], "end": [1.0], "text": ["no file"]},
        "bad": ["not", "a", "record"],
    }
    ann = tmp_path / "caption.json"
    ann.write_text(json.dumps(caption))
    touch(tmp_path / "v", "vidA.mp4", "a/b/vidB.webm", "vidC.MKV")
    got = read_annotations("howto100m", ann, tmp_path / "v")

    assert got.seen == 5 and [e.id for e in got.entries] == ["vidA", "vidB", "vidC"]
    assert skipped(got) == {"gone": "video_missing", "bad": "annotation_malformed"}
    gone = next(s for s in got.skips if s.id == "gone")
    assert gone.line == 4 and "'gone'" in gone.detail
    a, b, c = (by_id(got)[k] for k in ("vidA", "vidB", "vidC"))
    # Overlaps are kept (each cue a sample, as with transcript files); the cue after the end is left to the cutter.
    assert a.cues == [
        Cue(0.0, 2.5, "first cue"),
        Cue(1.5, 4.0, "second cue"),
        Cue(900.0, 905.0, "after the end"),
    ]
    assert a.issues == {"cue_empty": 2, "cue_malformed": 1}
    assert a.split == "train" and a.transcript is None and a.video == tmp_path / "v" / "vidA.mp4"
    assert b.cues == [Cue(0.0, 1.0, "one")] and b.issues == {"cue_malformed": 1}
    assert b.video.name == "vidB.webm"
    assert c.cues == [] and c.issues == {"cue_empty": 1}
    opts = PrepareOptions()
    reasons: Counter = Counter()
    mode, _, _ = _plan(c, opts, reasons)  # no usable cue: video-only windows, as an empty transcript gives
    assert mode == "windows" and reasons == {"cue_empty": 1, "cues_empty": 1}
    reasons = Counter()
    mode, segments, texts = _plan(a, opts, reasons)
    assert mode == "cues" and [t for _, t in sorted(texts.items())] == ["first cue", "second cue", "after the end"]
    assert reasons["cue_empty"] == 2  # what reading the file dropped reaches the report through the video


# ----------------------------------------------------------------------------- YouCook2


def youcook2_file(tmp_path: Path) -> Path:
    db = {
        "GLd3aX16zBg": {
            "subset": "training",
            "recipe_type": "113",
            "duration": 10.0,
            "annotations": [
                {"segment": [1, 4], "sentence": "spread margarine on two slices of white bread", "id": 0},
                {"segment": [3, 12], "sentence": "place a slice of cheese, on the bread", "id": 1},  # past the end
                {"segment": [11, 14], "sentence": "after the video", "id": 2},
                {"segment": [5], "sentence": "one number", "id": 3},
            ],
        },
        "xHr8X2Wpmno": {
            "subset": "validation",
            "recipe_type": "201",
            "duration": 6.5,
            "annotations": [{"segment": [0, 2], "sentence": "add salt"}],
        },
        "tst00000001": {  # the test set's segments-only file: no sentences
            "subset": "testing",
            "recipe_type": "113",
            "duration": 8.0,
            "annotations": [{"segment": [2, 5], "id": 0}],
        },
        "missing0001": {"subset": "training", "recipe_type": "113", "duration": 5, "annotations": []},
        "weird000001": {"subset": "extra data", "recipe_type": "1", "duration": 5, "annotations": []},
    }
    path = tmp_path / "youcookii_annotations_trainval.json"
    path.write_text(json.dumps({"database": db}))
    return path


def test_youcook2_segments_splits_and_nested_layout(tmp_path: Path) -> None:
    ann = youcook2_file(tmp_path)
    raw = tmp_path / "raw_videos"
    touch(
        raw,
        "training/113/GLd3aX16zBg.mp4",
        "validation/113/GLd3aX16zBg.mp4",  # same id elsewhere: the subset/recipe folder wins
        "validation/201/xHr8X2Wpmno.webm",
        "testing/113/tst00000001.mkv",
        "training/201/weird000001.mp4",
        "training/113/notes.txt",
    )
    got = AnnotationSource("youcook2", ann, raw).read()

    assert got.seen == 5
    assert skipped(got) == {"missing0001": "video_missing", "weird000001": "split_invalid"}
    e = by_id(got)
    train, val, test = e["GLd3aX16zBg"], e["xHr8X2Wpmno"], e["tst00000001"]
    assert (train.split, val.split, test.split) == ("train", "val", "test")
    assert train.video == raw / "training/113/GLd3aX16zBg.mp4"
    assert train.cues == [
        Cue(1.0, 4.0, "spread margarine on two slices of white bread"),
        Cue(3.0, 10.0, "place a slice of cheese, on the bread"),  # cut at the stated duration
    ]
    assert train.issues == {"cue_clipped": 1, "cue_outside_video": 1, "cue_malformed": 1}
    assert test.cues == [Cue(2.0, 5.0, "")]  # a segment without a sentence: a video-only sample
    assert got.info["format"] == "youcook2" and got.info["annotations"] == str(ann)
    assert got.info["videos_found"] == 5 and got.info["video_ids_with_several_files"] == 1


# ----------------------------------------------------------------------------- WebVid


WEBVID_CSV = (
    "videoid,contentUrl,duration,page_dir,name\r\n"
    '1001,https://x/1001.mp4,PT00H00M11S,001001_001050,"Aerial view, sunset over the sea"\r\n'
    '1002,https://x/1002.mp4,PT00H00M07S,001001_001050,"She said ""hello, world"" twice"\r\n'
    "1003,https://x/1003.mp4,PT00H00M05S,001001_001050,Plain caption\r\n"
    '1004,https://x/1004.mp4,PT00H00M05S,001001_001050,"   "\r\n'
    "1005,https://x/1005.mp4,PT00H00M05S,001001_001050\r\n"
    '1006,https://x/1006.mp4,PT00H00M05S,002000_002050,"A caption\nover two lines"\r\n'
)


def test_webvid_csv_quoting_layouts_and_split(tmp_path: Path) -> None:
    ann = tmp_path / "results_2M_val.csv"
    ann.write_bytes(WEBVID_CSV.encode())
    vids = tmp_path / "videos"
    touch(vids, "001001_001050/1001.mp4", "1002.mp4", "001001_001050/1004.mp4", "002000_002050/1006.mp4")
    got = read_annotations("webvid", ann, vids)

    assert got.seen == 6
    assert skipped(got) == {"1003": "video_missing", None: "annotation_malformed"}
    e = by_id(got)
    assert e["1001"].caption == "Aerial view, sunset over the sea"
    assert e["1001"].video == vids / "001001_001050/1001.mp4"  # page_dir layout
    assert e["1002"].caption == 'She said "hello, world" twice' and e["1002"].video == vids / "1002.mp4"  # flat
    assert e["1004"].caption is None and e["1004"].issues == {"caption_empty": 1}
    assert e["1006"].caption == "A caption over two lines"
    assert {x.split for x in got.entries} == {"val"}
    ann2 = tmp_path / "results_10M_train.csv"
    ann2.write_bytes(WEBVID_CSV.encode())
    assert {x.split for x in read_annotations("webvid", ann2, vids).entries} == {"train"}


# ----------------------------------------------------------------------------- MSR-VTT


def test_msrvtt_keeps_every_caption(tmp_path: Path) -> None:
    videos = [
        {"video_id": "video0", "split": "train", "category": 9},
        {"video_id": "video1", "split": "validate"},
        {"video_id": "video2", "split": "test"},
        {"video_id": "video3", "split": "train"},  # no file
        {"video_id": "video4", "split": "train"},  # no caption: video-only windows
    ]
    sentences = [{"video_id": "video0", "caption": f"a man is cooking {i}", "sen_id": i} for i in range(20)]
    sentences += [
        {"video_id": "video1", "caption": "a  dog\truns", "sen_id": 20},
        {"video_id": "video1", "caption": "", "sen_id": 21},
        {"video_id": "video2", "caption": "cars race", "sen_id": 22},
        {"video_id": "video9", "caption": "no such video", "sen_id": 23},
    ]
    ann = tmp_path / "train_val_videodatainfo.json"
    ann.write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    vids = tmp_path / "TrainValVideo"
    touch(vids, "video0.mp4", "video1.mp4", "video2.avi", "video4.mov")
    got = read_annotations("msrvtt", ann, vids)

    assert got.seen == 5 and skipped(got) == {"video3": "video_missing"}
    assert got.reasons == {"caption_unknown_video": 1}
    e = by_id(got)
    assert e["video0"].captions == [f"a man is cooking {i}" for i in range(20)]
    assert [e[k].split for k in ("video0", "video1", "video2")] == ["train", "val", "test"]
    assert e["video1"].captions == ["a dog runs"] and e["video1"].issues == {"caption_empty": 1}
    assert e["video4"].captions is None and e["video4"].issues == {"captions_missing": 1}
    # 20 captions -> one whole-clip segment, each caption its own sample (keyed by its index).
    mode, segments, texts = _plan(e["video0"], PrepareOptions(max_clip_seconds=6.0), Counter())
    assert mode == "caption" and [(s.index, s.start, s.end) for s in segments] == [(0, 0.0, 6.0)]
    assert texts == {i: f"a man is cooking {i}" for i in range(20)}


# ----------------------------------------------------------------------------- finding videos


def test_video_index_by_id(tmp_path: Path) -> None:
    root = tmp_path / "v"
    touch(root, "a.mp4", "x/b.M4V", "x/y/c.flv", ".hidden/d.mp4", "e.mp4.part", ".f.mp4", "g.srt", "x/a.webm")
    (root / "x" / "loop").symlink_to(root, target_is_directory=True)  # a link loop is walked once
    index = VideoIndex(root)
    assert sorted(index.paths) == ["a", "b", "c"]
    assert index.find("a") == root / "a.mp4" and index.find("a", ["x"]) == root / "x/a.webm"
    assert index.find("b") == root / "x/b.M4V" and index.find("zzz") is None
    with pytest.raises(PrepareError, match="videos folder not found"):
        VideoIndex(tmp_path / "nope").find("a")


# ----------------------------------------------------------------------------- bad files: one line


@pytest.mark.parametrize(
    "fmt, content, message",
    [
        ("howto100m", "youcook2", "is not a HowTo100M annotation file: expected a JSON object {video_id: "),
        ("howto100m", "youcook2", "(it looks like --format youcook2)"),
        ("youcook2", "msrvtt", 'expected a JSON object {"database": '),
        ("youcook2", "msrvtt", "(it looks like --format msrvtt)"),
        ("msrvtt", "webvid", "(it looks like --format webvid)"),
        ("webvid", "howto100m", "expected a CSV with a header row holding the columns videoid and name"),
        ("webvid", "howto100m", "(it looks like --format howto100m)"),
        ("msrvtt", "jsonl", "(it looks like --format jsonl)"),
        ("youcook2", "truncated", "invalid JSON at line 1"),
        ("howto100m", "binary", "binary data"),
    ],
)
def test_wrong_or_bad_file_is_one_line(fmt: str, content: str, message: str, tmp_path: Path) -> None:
    texts = {
        "youcook2": json.dumps({"database": {}}),
        "msrvtt": json.dumps({"videos": [], "sentences": []}),
        "webvid": WEBVID_CSV,
        "howto100m": json.dumps({"v": {"start": [0], "end": [1], "text": ["x"]}}),
        "jsonl": '{"video": "a.mp4"}\n{"video": "b.mp4"}\n',
        "truncated": '{"database": {"a": ',
        "binary": "\x00\x01\x02",
    }
    ann = tmp_path / "ann"
    ann.write_text(texts[content])
    (tmp_path / "v").mkdir()
    with pytest.raises(PrepareError) as e:
        read_annotations(fmt, ann, tmp_path / "v")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--annotations", "{ann}"], "--annotations needs --format (howto100m, youcook2, webvid, msrvtt)"),
        (["--format", "youcook2", "--annotations", "{ann}"], "--format youcook2 needs --videos"),
        (["--format", "msrvtt"], "--format msrvtt needs --annotations and --videos"),
        (["--format", "webvid", "--manifest", "{ann}"], "--format webvid reads --annotations and --videos, not"),
        (["--manifest", "{ann}", "--videos", "{dir}"], "--annotations and --videos go with --format"),
        ([], "the following arguments are required: --manifest (or --format NAME"),
        (["--format", "howto100m", "--annotations", "{dir}/nope.json", "--videos", "{dir}"], "annotations not found"),
        (["--format", "howto100m", "--annotations", "{ann}", "--videos", "{dir}/nope"], "videos folder not found"),
        (["--format", "howto100m", "--annotations", "{ann}", "--videos", "{dir}"], "it looks like --format youcook2"),
        (["--format", "vtt", "--annotations", "{ann}", "--videos", "{dir}"], "invalid choice: 'vtt'"),
    ],
)
def test_cli_input_errors(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    ann = tmp_path / "youcookii_annotations_trainval.json"
    ann.write_text(json.dumps({"database": {}}))
    argv = [a.format(ann=ann, dir=tmp_path) for a in args] + ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        prepare_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    out = tmp_path / "o"  # nothing written (a malformed file is found once the run holds the output dir)
    assert not out.exists() or not any(out.iterdir())

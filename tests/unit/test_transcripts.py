"""Transcript parsers: SRT, WebVTT, JSON ASR segments, malformed files, encodings, non-ASCII text."""

from __future__ import annotations

import json

import pytest

from videobert_ds.data.transcripts import (
    Cue,
    TranscriptError,
    decode_text,
    load_transcript,
    parse_json_segments,
    parse_srt,
    parse_vtt,
)

SRT = """1
00:00:01,000 --> 00:00:03,500
Mix the <i>flour</i>
and the eggs.

2
00:00:04,000 --> 00:00:06,250
Fold gently, café style — 日本語 ✓

3
01:02:03,045 --> 01:02:04,000
{\\an8}Top text
"""


def test_srt_basic_multiline_tags_non_ascii() -> None:
    tr = parse_srt(SRT)
    assert tr.cues == [
        Cue(1.0, 3.5, "Mix the flour and the eggs."),
        Cue(4.0, 6.25, "Fold gently, café style — 日本語 ✓"),
        Cue(3723.045, 3724.0, "Top text"),
    ]
    assert not tr.issues


def test_srt_crlf_bom_dot_millis_and_no_hours() -> None:
    text = "\ufeff1\r\n00:01.5 --> 00:02.25\r\nhello\r\n\r\n2\r\n00:00:03.000 --> 00:00:04.000\r\nworld\r\n"
    assert parse_srt(text).cues == [Cue(1.5, 2.25, "hello"), Cue(3.0, 4.0, "world")]


def test_srt_malformed_blocks_are_counted_and_skipped() -> None:
    text = (
        "1\n00:00:01,000 --> 00:00:02,000\ngood\n\n"
        "2\n00:00:xx,000 --> 00:00:03,000\nbad timing\n\n"
        "3\n00:00:05,000 --> 00:00:04,000\nend before start\n\n"
        "just some text without timing\n\n"
        "5\n00:00:75,000 --> 00:00:76,000\nseconds out of range\n"
    )
    tr = parse_srt(text)
    assert tr.cues == [Cue(1.0, 2.0, "good")]
    assert tr.issues["cue_malformed"] == 4


def test_srt_with_no_valid_cue_raises() -> None:
    with pytest.raises(TranscriptError) as e:
        parse_srt("this is not\na subtitle file\n\nat all\n")
    assert e.value.reason == "transcript_malformed"


def test_empty_srt_is_empty_not_malformed() -> None:
    assert parse_srt("\n\n").cues == []


def test_vtt_header_notes_styles_ids_settings_and_markup() -> None:
    text = (
        "WEBVTT - cooking show\n\n"
        "NOTE this is a comment\nspanning lines\n\n"
        "STYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.500 align:start position:10%\n<v Chef>Salt &amp; pepper</v>\n\n"
        "01:00:00.000 --> 01:00:01.000\n<c.yellow>Señor</c> <00:00:01.500>niño\n"
    )
    tr = parse_vtt(text)
    assert tr.cues == [Cue(1.0, 2.5, "Salt & pepper"), Cue(3600.0, 3601.0, "Señor niño")]
    assert not tr.issues


def test_vtt_without_header_still_parses_and_counts() -> None:
    tr = parse_vtt("00:00:01.000 --> 00:00:02.000\nhi\n")
    assert tr.cues == [Cue(1.0, 2.0, "hi")]
    assert tr.issues["vtt_header_missing"] == 1


def test_vtt_malformed_raises() -> None:
    with pytest.raises(TranscriptError):
        parse_vtt("WEBVTT\n\n00:00:01.000 -> 00:00:02.000\nwrong arrow\n")


def test_json_list_and_whisper_dict() -> None:
    segs = [{"start": 0.5, "end": 2.0, "text": " Ünïcödé  text "}, {"start": "2.0", "end": 3, "text": "b"}]
    assert parse_json_segments(json.dumps(segs)).cues == [Cue(0.5, 2.0, "Ünïcödé text"), Cue(2.0, 3.0, "b")]
    whisper = {"text": "all", "segments": segs, "language": "en"}
    assert len(parse_json_segments(json.dumps(whisper)).cues) == 2


def test_json_malformed_segments_counted() -> None:
    segs = [
        {"start": 0, "end": 1, "text": "ok"},
        {"start": 2, "text": "no end"},
        {"start": 3, "end": 2, "text": "backwards"},
        {"start": True, "end": 4, "text": "bool"},
        {"start": 0, "end": float("inf"), "text": "inf"},
        {"start": 1, "end": 2, "text": 5},
        "not an object",
    ]
    tr = parse_json_segments(json.dumps(segs))
    assert tr.cues == [Cue(0.0, 1.0, "ok")]
    assert tr.issues["cue_malformed"] == 6


@pytest.mark.parametrize("text", ["{not json", '{"a": 1}', '"string"', '[{"start": "x", "end": 1, "text": ""}]'])
def test_json_unusable_raises(text: str) -> None:
    with pytest.raises(TranscriptError) as e:
        parse_json_segments(text)
    assert e.value.reason == "transcript_malformed"


def test_decode_text_fallbacks() -> None:
    assert decode_text("naïve".encode()) == ("naïve", False)
    assert decode_text("\ufeffnaïve".encode()) == ("naïve", False)
    assert decode_text("naïve".encode("utf-16")) == ("naïve", False)
    assert decode_text("café €5".encode("cp1252")) == ("café €5", True)
    assert decode_text(b"\x81\x8d")[1] is True  # bytes undefined in cp1252 still decode (latin-1)


def test_load_transcript_by_extension_and_sniffing(tmp_path) -> None:
    (tmp_path / "a.srt").write_text(SRT, encoding="utf-8")
    (tmp_path / "b.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nhi\n", encoding="utf-8")
    (tmp_path / "c.json").write_text('[{"start": 0, "end": 1, "text": "x"}]', encoding="utf-8")
    (tmp_path / "d.txt").write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nsniffed\n", encoding="utf-8")
    assert len(load_transcript(tmp_path / "a.srt").cues) == 3
    assert load_transcript(tmp_path / "b.vtt").cues == [Cue(1.0, 2.0, "hi")]
    assert load_transcript(tmp_path / "c.json").cues == [Cue(0.0, 1.0, "x")]
    assert load_transcript(tmp_path / "d.txt").cues == [Cue(1.0, 2.0, "sniffed")]


def test_load_transcript_non_utf8_is_decoded_and_counted(tmp_path) -> None:
    p = tmp_path / "latin.srt"
    p.write_bytes("1\n00:00:01,000 --> 00:00:02,000\nCrème brûlée à la française\n".encode("cp1252"))
    tr = load_transcript(p)
    assert tr.cues == [Cue(1.0, 2.0, "Crème brûlée à la française")]
    assert tr.issues["transcript_non_utf8"] == 1


def test_load_transcript_errors(tmp_path) -> None:
    with pytest.raises(TranscriptError) as e:
        load_transcript(tmp_path / "missing.srt")
    assert e.value.reason == "transcript_missing"
    (tmp_path / "bin.srt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(TranscriptError) as e:
        load_transcript(tmp_path / "bin.srt")
    assert e.value.reason == "transcript_malformed"

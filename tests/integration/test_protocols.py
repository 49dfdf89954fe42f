"""The standard protocols end to end: YouCook2 and MSR-VTT annotation files made here over the tiny pipeline's own
videos -> videobert-prepare --format -> shards -> videobert-eval --protocol with the session's tiny trained teacher."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from videobert_ds.cli.eval import main as eval_main
from videobert_ds.cli.prepare import main as prepare_main

VERBS = ("slide", "move", "push")
PREPARE = ["--fps", "8", "--size", "32", "--decode-threads", "1", "--no-progress"]  # the tiny teacher's corpus settings


def _segments(corpus: Path) -> dict[str, tuple[str, list[dict]]]:
    """video id -> (split, its annotated segments with labels), from the synthetic corpus's manifest."""
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: (r["split"], r["annotations"]) for r in rows}


def make_youcook2(corpus: Path, path: Path) -> dict[str, list[str]]:
    """youcookii_annotations_trainval.json over four synthetic videos (2 training, 2 validation): one imperative
    sentence per segment ("slide the red cross to the left"); two validation sentences the rule cannot label.
    Returns the validation sentences in key order."""
    segs = _segments(corpus)
    db, val = {}, []
    for vid, subset in (("synth_00000", "training"), ("synth_00001", "training")) + tuple(
        (v, "validation") for v in ("synth_00020", "synth_00023")
    ):
        anns = []
        for i, a in enumerate(segs[vid][1]):
            lab = a["labels"]
            sentence = f"{VERBS[i % 3]} the {lab['colour']} {lab['shape']} to the {lab['motion']}"
            if (vid, i) == ("synth_00020", 1):
                sentence = "Stir well."  # a verb, no object
            if (vid, i) == ("synth_00020", 2):
                sentence = "the pan is hot"  # not imperative: no verb
            anns.append({"segment": [a["start"], a["end"]], "sentence": sentence})
            if subset == "validation":
                val.append(sentence)
        db[vid] = {"subset": subset, "recipe_type": "113", "duration": anns[-1]["segment"][1], "annotations": anns}
    path.write_text(json.dumps({"database": db}))
    return {"val": val}


def make_msrvtt(corpus: Path, path: Path, split_csv: Path) -> None:
    """test_videodatainfo.json with three test videos (two captions each, a validate one beside them) and the
    1k-A-style csv naming those three, one video that is not prepared, and one duplicate row."""
    segs = _segments(corpus)
    test = ("synth_00003", "synth_00008", "synth_00018")
    videos = [{"video_id": v, "split": "test"} for v in test] + [{"video_id": "synth_00019", "split": "validate"}]
    sentences = []
    for v in (*test, "synth_00019"):
        for a in segs[v][1][:2]:
            lab = a["labels"]
            sentences.append({"video_id": v, "caption": f"a {lab['colour']} {lab['shape']} moves {lab['motion']}"})
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    rows = ["key,vid_key,video_id,sentence"]
    rows += [f"ret{i},msr{i},{v},a {segs[v][1][1]['labels']['shape']} is moving" for i, v in enumerate(test)]
    rows += ['ret7,msr7,video9999,"a man, talking"', f"ret8,msr8,{test[0]},another sentence"]
    split_csv.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def protocol_shards(pipeline_shards, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("protocols")
    corpus = pipeline_shards.parent / "corpus"
    make_youcook2(corpus, root / "youcookii_annotations_trainval.json")
    make_msrvtt(corpus, root / "test_videodatainfo.json", root / "MSRVTT_JSFUSION_test.csv")
    for fmt, ann, extra in (
        ("youcook2", "youcookii_annotations_trainval.json", []),
        ("msrvtt", "test_videodatainfo.json", ["--max-clip-seconds", "4"]),
    ):
        args = ["--format", fmt, "--annotations", str(root / ann), "--videos", str(corpus / "videos")]
        assert prepare_main([*args, "--out", str(root / fmt), *PREPARE, *extra]) == 0
    return {"root": root, "youcook2": root / "youcook2", "msrvtt": root / "msrvtt"}


def _eval(model: Path, shards: Path, out: Path, *args: str) -> dict:
    rc = eval_main(["--config", "eval_tiny", "--model", str(model), "--shards", str(shards), "--out", str(out), *args])
    assert rc == 0
    return json.loads(out.read_text())


def _has_java(folder: str) -> bool:
    return (Path(folder) / "java").exists()


def test_protocols_end_to_end(tiny_teacher, protocol_shards, monkeypatch):
    model, root = tiny_teacher / "final", protocol_shards["root"]

    zs = _eval(model, protocol_shards["youcook2"], root / "zs.json", "--protocol", "youcook2-zeroshot")
    assert zs["protocol"] == "youcook2-zeroshot" and zs["split"] == "val" and zs["baseline_split"] == "train"
    assert zs["template"] == "now let me show you how to [MASK] the [MASK]"
    assert zs["num_items"] == 10  # the validation segments with video and text
    assert zs["skipped"] == {"verb": {"no_verb": 1}, "object": {"no_object": 1, "no_verb": 1}}
    assert set(zs["labels"]["verb"]) == {"slide", "move", "push", "stir"}
    assert set(zs["labels"]["object"]) <= {"circle", "square", "triangle", "cross"}
    for attr, n in (("verb", 9), ("object", 8)):
        for k in (1, 5):
            m = zs["metrics"][f"zeroshot/{attr}/top{k}"]
            assert (
                m["n"] == n
                and 0 <= m["value"] <= 1
                and m["chance"] >= min(k, len(zs["labels"][attr])) / len(zs["labels"][attr])
            )
    assert zs["metrics"]["zeroshot/verb/top5"]["value"] == 1.0  # 4 verbs: the truth is always in the top 5
    assert {"reference", "verb", "predicted_verb"} <= set(zs["examples"][0])

    # Without Java on PATH: METEOR's JVM start costs ~20 s on these machines (test_eval.py scores METEOR).
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not _has_java(d)))
    cap = _eval(model, protocol_shards["youcook2"], root / "cap.json", "--protocol", "youcook2-caption")
    monkeypatch.undo()
    assert cap["split"] == "val" and cap["num_items"] == 10 and cap["skipped"] == {}
    for name in ("BLEU-4", "ROUGE-L", "CIDEr"):
        m = cap["metrics"][f"caption/{name}"]
        assert m["value"] >= 0 and m["chance"] >= 0 and m["decoder"] == "beam", name
    assert cap["captions"] and cap["captions"][0]["reference"]

    csv = root / "MSRVTT_JSFUSION_test.csv"
    ret = _eval(
        model, protocol_shards["msrvtt"], root / "ret.json", "--protocol", "msrvtt-1ka", "--split-file", str(csv)
    )
    assert ret["split"] == "test" and ret["num_items"] == ret["pool"] == 3
    assert ret["skipped"] == {"duplicate_video_row": 1, "video_not_in_split": 1}
    assert ret["metrics"]["retrieval/t2v/R@1"]["chance"] == pytest.approx(1 / 3)
    assert ret["metrics"]["retrieval/t2v/R@5"]["value"] == 1.0  # a pool of 3
    assert ret["metrics"]["retrieval/t2v/median_rank"]["chance"] == 2.0

    own = _eval(model, protocol_shards["msrvtt"], root / "own.json", "--protocol", "msrvtt-1ka")
    assert own["num_items"] == 3 and own["split_source"] == "the test split's videos, first caption each"
    assert set(own["metrics"]) == set(ret["metrics"])

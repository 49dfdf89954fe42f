"""The standard protocols' parts that need no model: YouCook2's verb/object rule, the label sets, MSR-VTT's 1k-A split
csv, and videobert-eval's --protocol / --split-file errors (the end-to-end runs are in
tests/integration/test_protocols.py)."""

from __future__ import annotations

import pytest

from videobert_ds.cli.eval import main as eval_main
from videobert_ds.core.config import ConfigError
from videobert_ds.eval.protocols import PROTOCOLS, check_protocol
from videobert_ds.eval.protocols.split_file import SplitFileError, read_split_file
from videobert_ds.eval.protocols.verb_object import verb_object
from videobert_ds.eval.protocols.youcook2_zeroshot import label_set, sentence_labels

# Sentences as YouCook2's validation annotations write them (lower case, few commas, often no article).
SENTENCES = [
    ("melt butter in a pan", "melt", "butter"),
    ("add chopped onions and garlic to the pan", "add", "onions"),
    ("cut the chicken into pieces", "cut", "chicken"),
    ("Spread mayonnaise on the bread.", "spread", "mayonnaise"),
    ("add salt and pepper to taste", "add", "salt"),
    ("heat some oil in a pan", "heat", "oil"),
    ("mix the flour, salt and water", "mix", "flour"),
    ("put 2 tbsp of oil in a pan", "put", "oil"),
    ("add 1/2 cup of sugar", "add", "sugar"),
    ("add a pinch of salt", "add", "salt"),
    ("add 2 cloves of garlic", "add", "garlic"),
    ("add olive oil to a pan", "add", "oil"),  # the head of the noun phrase is its last word
    ("then add the rice", "add", "rice"),  # leading filler skipped
    ("finely chop the onion", "chop", "onion"),
    ("in a bowl, whisk the eggs", "whisk", "eggs"),  # a fronted clause, to its comma
    ("After that, add the remaining sauce", "add", "sauce"),
    ("stir in the flour", "stir", "flour"),  # particle
    ("season with salt and pepper", "season", "salt"),
    ("take out the chicken and let it cool", "take", "chicken"),
    ("add half of the dough", "add", "dough"),
    ("cut into slices", "cut", "slices"),  # a measure word without "of" is the object
    ("remove the shrimp from the pan", "remove", "shrimp"),
    ("place the bacon slices on a baking sheet", "place", "slices"),
]


@pytest.mark.parametrize(("sentence", "verb", "obj"), SENTENCES)
def test_verb_and_object_of_youcook2_sentences(sentence, verb, obj):
    assert verb_object(sentence)[:2] == (verb, obj)


@pytest.mark.parametrize(
    ("sentence", "verb", "verb_reason", "object_reason"),
    [
        ("stir", "stir", None, "no_object"),
        ("Mix well.", "mix", None, "no_object"),
        ("add it to the pan", "add", None, "no_object"),  # a pronoun is not an object
        ("fry until golden brown", "fry", None, "no_object"),
        ("the chicken is done", None, "no_verb", "no_verb"),  # not imperative
        ("2 eggs", None, "no_verb", "no_verb"),
        ("in the pan", None, "no_verb", "no_verb"),  # a fronted clause with nothing after it
        ("", None, "no_verb", "no_verb"),
    ],
)
def test_sentences_without_verb_or_object_say_why(sentence, verb, verb_reason, object_reason):
    got = verb_object(sentence)
    assert (got.verb, got.object, got.verb_reason, got.object_reason) == (verb, None, verb_reason, object_reason)


def test_sentence_labels_and_label_sets():
    assert sentence_labels("add the rice") == ({"verb": "add", "object": "rice"}, {})
    assert sentence_labels("stir") == ({"verb": "stir"}, {"object": "no_object"})
    assert sentence_labels("the end") == ({}, {"verb": "no_verb", "object": "no_verb"})
    # most frequent first, ties alphabetical, cut at top_n
    assert label_set(["mix", "add", "cut", "add", "mix", "add", "boil"], top_n=3) == ["add", "mix", "boil"]


def test_split_csv_reader(tmp_path):
    path = tmp_path / "MSRVTT_JSFUSION_test.csv"
    path.write_text(
        "\ufeffkey,vid_key,video_id,sentence\n"
        "ret0,msr9770,video9770,a person is connecting something to system\n"
        'ret1,msr7606,video7606,"a man, in a suit, talks"\n'
        "ret2,msr9770,video9770,a second sentence of the same video\n"
        "ret3,msr1,,no video\n"
        "ret4,msr2,video2,\n"
    )
    split = read_split_file(path)
    assert [(r.video_id, r.sentence) for r in split.rows] == [
        ("video9770", "a person is connecting something to system"),
        ("video7606", "a man, in a suit, talks"),
    ]
    assert (split.duplicates, split.empty) == (1, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("video,caption\nvideo1,a dog\n", "no video_id, sentence column (expected a header key,vid_key,video_id,"),
        ("key,vid_key,video_id,sentence\n", "lists no video with a sentence"),
        ("", "no video_id, sentence column"),
    ],
)
def test_bad_split_csv_is_one_line(tmp_path, text, message):
    path = tmp_path / "split.csv"
    path.write_text(text)
    with pytest.raises(SplitFileError) as err:
        read_split_file(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SplitFileError, match="not found"):
        read_split_file(tmp_path / "absent.csv")


def test_protocol_registry_and_checks(tmp_path):
    assert {n: p.split for n, p in PROTOCOLS.items()} == {
        "youcook2-zeroshot": "val",
        "youcook2-caption": "val",
        "msrvtt-1ka": "test",
    }
    check_protocol("msrvtt-1ka", None)
    with pytest.raises(ConfigError, match="unknown protocol 'kinetics'"):
        check_protocol("kinetics", None)
    with pytest.raises(ConfigError, match="youcook2-caption takes no split file"):
        check_protocol("youcook2-caption", str(tmp_path / "x.csv"))
    with pytest.raises(ConfigError, match="^--split-file: .*absent.csv not found$"):
        check_protocol("msrvtt-1ka", str(tmp_path / "absent.csv"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split-file", "x.csv"], "--split-file needs --protocol msrvtt-1ka"),
        (["--protocol", "youcook2-zeroshot", "--split-file", "x.csv"], "takes no split file"),
        (["--protocol", "msrvtt-1ka", "--split-file", "absent.csv"], "absent.csv not found"),
    ],
)
def test_eval_cli_protocol_errors_are_one_line(args, message, capsys):
    assert eval_main(["--model", "no/such/model", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videobert-eval: error: --split-file") and message in err and "\n" not in err


def test_eval_cli_rejects_an_unknown_protocol(capsys):
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--protocol", "kinetics"])
    assert exit_.value.code == 2
    assert "invalid choice: 'kinetics'" in capsys.readouterr().err


def test_rank_samples_keep_filters_before_the_ranks_split(prepared_shards):
    """A json filter (msrvtt-1ka's first caption per video) picks samples before they are dealt to ranks, so the
    ranks together read exactly the kept samples, evenly."""
    from videobert_ds.data.splits import rank_samples, split_meta

    def first(meta):
        return meta["segment"] == 0

    want = [m["video_id"] for m in split_meta(prepared_shards, "train") if first(m)]
    parts = [[s["__key__"] for s in rank_samples(prepared_shards, "train", r, 2, keep=first)] for r in (0, 1)]
    assert sorted(k for p in parts for k in p) == sorted(f"{v}_00000" for v in want)
    assert abs(len(parts[0]) - len(parts[1])) <= 1

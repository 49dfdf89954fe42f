"""Metrics, chance levels and caption decoding on hand-made inputs with known answers."""

from __future__ import annotations

import shutil

import pytest
import torch

from videobert_ds.eval.metrics import (
    caption_scores,
    caption_scores_many,
    majority_topk_accuracy,
    median_rank,
    median_rank_chance,
    most_frequent,
    recall_at_k,
    recall_chance,
    topk_accuracy,
    topk_chance,
)
from videobert_ds.inference.decoding import beam_decode, greedy_decode

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's METEOR needs java")


# -- classification -------------------------------------------------------------------------------


def test_topk_accuracy_known_answers():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 2, 2, 2])
    assert topk_accuracy(scores, labels, 1) == 0.5  # rows 0 and 2
    assert topk_accuracy(scores, labels, 2) == 0.75  # row 1's label is second
    assert topk_accuracy(scores, labels, 3) == 1.0


def test_topk_accuracy_ties_count_against_the_label():
    scores = torch.zeros(4, 4)  # a constant scorer is never right by luck
    assert topk_accuracy(scores, torch.tensor([0, 1, 2, 3]), 1) == 0.0
    with pytest.raises(ValueError, match="scores"):
        topk_accuracy(scores, torch.tensor([0, 1]), 1)


def test_topk_chance_and_majority_baseline():
    assert topk_chance(4, 1) == 0.25 and topk_chance(4, 5) == 1.0
    classes = ["red", "green", "blue"]
    train = ["red"] * 5 + ["blue"] * 3 + ["green"]
    test = ["red", "red", "blue", "green"]
    assert majority_topk_accuracy(train, test, classes, 1) == 0.5
    assert majority_topk_accuracy(train, test, classes, 2) == 0.75  # red and blue
    assert majority_topk_accuracy(train, test, classes, 3) == 1.0


# -- retrieval ----------------------------------------------------------------------------------------


def test_perfect_retrieval():
    scores = torch.eye(20) * 5
    positive = torch.arange(20)
    assert recall_at_k(scores, positive, 1) == 1.0
    assert median_rank(scores, positive) == 1.0


def test_worst_and_partial_retrieval():
    n = 10
    scores = -torch.eye(n)  # the true candidate is always last
    positive = torch.arange(n)
    assert recall_at_k(scores, positive, 1) == 0.0
    assert recall_at_k(scores, positive, 5) == 0.0
    assert recall_at_k(scores, positive, 10) == 1.0
    assert median_rank(scores, positive) == n
    # Query q's true candidate is beaten by exactly q others: ranks 1..n.
    ranked = torch.tensor([[1.0 if j < q else (0.5 if j == q else 0.0) for j in range(n)] for q in range(n)])
    assert recall_at_k(ranked, positive, 1) == pytest.approx(0.1)
    assert recall_at_k(ranked, positive, 5) == pytest.approx(0.5)
    assert median_rank(ranked, positive) == pytest.approx(5.5)


def test_constant_scores_get_exactly_chance():
    n = 8
    scores, positive = torch.zeros(n, n), torch.arange(n)
    for k in (1, 5, 10):
        assert recall_at_k(scores, positive, k) == pytest.approx(recall_chance(n, k))
    assert median_rank(scores, positive) == pytest.approx(median_rank_chance(n))
    assert recall_chance(8, 10) == 1.0 and median_rank_chance(8) == 4.5


# -- captioning (pycocoevalcap) ------------------------------------------------------------------------

REFS = {
    "a": ["a red circle moves left"],
    "b": ["the blue square goes up the screen"],
    "c": ["we see a green cross moving down"],
    "d": ["now the yellow triangle slides to the right"],
}


@pytest.fixture(scope="module")
def caption_systems() -> dict[str, dict[str, float]]:
    """Several systems scored in one pycocoevalcap run (each JVM start costs seconds)."""
    return caption_scores_many(
        REFS,
        {
            "exact": {k: v[0] for k, v in REFS.items()},
            "shouted": {k: v[0].upper() + "." for k, v in REFS.items()},
            "unrelated": {k: "zebra xylophone quartz" for k in REFS},
            "partial": {
                "a": "a red circle moves right",
                "b": "the blue square goes up",
                "c": "a green cross",
                "d": "now the yellow triangle slides to the right",
            },
        },
    )


@needs_java
def test_identical_captions_score_perfectly(caption_systems):
    s = caption_systems["exact"]
    assert s["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert s["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert s["ROUGE-L"] == pytest.approx(1.0, abs=1e-6)
    assert s["CIDEr"] == pytest.approx(10.0, abs=1e-4)  # coco-caption's CIDEr-D is scaled by 10
    # Case and punctuation are normalised by the COCO pipeline (PTB tokenizer, lower-casing).
    assert caption_systems["shouted"] == pytest.approx(s)


@needs_java
def test_unrelated_and_partial_captions(caption_systems):
    unrelated, partial, exact = (caption_systems[k] for k in ("unrelated", "partial", "exact"))
    assert unrelated == pytest.approx({"BLEU-4": 0.0, "METEOR": 0.0, "ROUGE-L": 0.0, "CIDEr": 0.0}, abs=1e-6)
    for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert unrelated[m] < partial[m] < exact[m]


@needs_java
def test_single_system_matches_many(caption_systems):
    hyps = {k: v[0] for k, v in REFS.items()}
    hyps["a"] = "a red circle moves right"
    single = caption_scores(REFS, hyps)
    assert 0 < single["BLEU-4"] < caption_systems["exact"]["BLEU-4"]


@needs_java
def test_without_java_meteor_is_left_out_and_the_rest_agree(caption_systems, monkeypatch, caplog):
    import videobert_ds.eval.metrics as metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    systems = {
        "exact": {k: v[0] for k, v in REFS.items()},
        "shouted": {k: v[0].upper() + "." for k, v in REFS.items()},
        "partial": {
            "a": "a red circle moves right",
            "b": "the blue square goes up",
            "c": "a green cross",
            "d": "now the yellow triangle slides to the right",
        },
    }
    with caplog.at_level("WARNING"):
        no_java = caption_scores_many(REFS, systems)
    assert "no java" in caplog.text
    for name in systems:
        assert set(no_java[name]) == {"BLEU-4", "ROUGE-L", "CIDEr"}
        for m, v in no_java[name].items():
            assert v == pytest.approx(caption_systems[name][m], abs=1e-9), (name, m)


def test_caption_score_input_errors():
    with pytest.raises(ValueError, match="same ids"):
        caption_scores(REFS, {"a": "x"})
    with pytest.raises(ValueError, match="no captions"):
        caption_scores({}, {})


def test_most_frequent_caption():
    assert most_frequent(["b", "a", "", "a", "b", "a"]) == "a"
    assert most_frequent(["x", "y"]) == "x"
    with pytest.raises(ValueError):
        most_frequent(["", " "])


# -- decoding -------------------------------------------------------------------------------------------

END = 0


class ToyLM:
    """Next-token distributions over {0: end, 1: a, 2: b, 3: c} by prefix; counts its calls.

    Greedy takes "a" (0.5 > 0.4) and then faces a flat distribution; the best whole caption is "b"
    (0.4 x 0.9 = 0.36 against at most 0.5 x 0.4 = 0.2 after "a")."""

    table = {
        (): [0.05, 0.5, 0.4, 0.05],
        (1,): [0.3, 0.1, 0.2, 0.4],
        (2,): [0.9, 0.04, 0.03, 0.03],
    }

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prefix: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        rows = []
        for row in prefix.tolist():
            key = tuple(row[: row.index(END) + 1] if END in row else row)
            probs = self.table.get(key, [0.7, 0.1, 0.1, 0.1])
            rows.append(torch.tensor(probs).log())
        return torch.stack(rows)


def test_greedy_and_beam_fixed_steps_and_known_answers():
    lm = ToyLM()
    assert greedy_decode(lm, 2, max_len=6, end_id=END) == [[1, 3], [1, 3]]
    assert lm.calls == 6  # every step runs, even after all captions ended
    lm = ToyLM()
    assert beam_decode(lm, 3, max_len=7, end_id=END, beam_size=2, length_penalty=0.0) == [[2], [2], [2]]
    assert lm.calls == 7


def test_banned_tokens_and_unfinished_captions():
    lm = ToyLM()
    # With "a" banned, greedy takes "b" then ends.
    assert greedy_decode(lm, 1, max_len=4, end_id=END, banned=[1]) == [[2]]
    # One step cannot finish: the caption is what was generated so far.
    assert greedy_decode(ToyLM(), 1, max_len=1, end_id=END) == [[1]]
    assert beam_decode(ToyLM(), 1, max_len=1, end_id=END, beam_size=3) == [[1]]


def test_beam_of_one_is_greedy():
    assert beam_decode(ToyLM(), 2, max_len=5, end_id=END, beam_size=1) == greedy_decode(
        ToyLM(), 2, max_len=5, end_id=END
    )


def test_length_penalty_prefers_longer_captions():
    class Lengthy(ToyLM):
        table = {(): [0.5, 0.5, 0.0, 0.0], (1,): [0.0, 0.0, 0.0, 1.0], (1, 3): [0.45, 0.55, 0.0, 0.0]}

    # raw: "" = log 0.5 beats "a c" = log(0.5 * 0.45); normalised by length the longer one wins
    assert beam_decode(Lengthy(), 1, max_len=4, end_id=END, beam_size=3, length_penalty=0.0) == [[]]
    assert beam_decode(Lengthy(), 1, max_len=4, end_id=END, beam_size=3, length_penalty=1.0)[0][:2] == [1, 3]

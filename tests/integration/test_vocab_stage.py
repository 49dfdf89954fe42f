"""Stage 2 on the synthetic corpus: the visual words carry the narrated attributes."""

from __future__ import annotations

import json

import pytest

from videobert_ds.visual.vocab import VisualVocabulary

pytestmark = pytest.mark.multiproc


def test_build_vocab_stage_writes_vocabulary_and_words_carry_attributes(tiny_vocab, tiny_encoder):
    from videobert_ds.visual.autoencoder import AutoencoderClipEncoder

    vocab = VisualVocabulary.load(tiny_vocab / "vocab.safetensors")
    assert vocab.size == 64 and vocab.depth == 3 and vocab.branching == 4
    vocab.check_encoder(AutoencoderClipEncoder.from_pretrained(str(tiny_encoder)))  # fit on this very encoder

    report = json.loads((tiny_vocab / "vocab_report.json").read_text())
    assert report["clips"] > 100 and report["words_used"] > 16
    for attr in ("colour", "shape", "motion"):
        v = report["nmi"][attr]
        print(f"NMI(words; {attr}) = {v['nmi']:.3f}   shuffled labels: {v['nmi_shuffled']:.3f}")
    # Colour is what a small autoencoder captures first: clearly above the shuffled-label level (which is
    # itself well above 0 here: 64 words over a few hundred clips).
    assert report["nmi"]["colour"]["nmi"] > report["nmi"]["colour"]["nmi_shuffled"] + 0.1
    assert sum(v["nmi"] for v in report["nmi"].values()) > sum(v["nmi_shuffled"] for v in report["nmi"].values())

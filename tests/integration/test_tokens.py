"""The tokenize stage as a real 2-rank run (conftest's tiny_tokens) with the trained tiny encoder and vocabulary, and
the tiny teacher trained from its token shards."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from videobert_ds.data.loader import build_clip_loader
from videobert_ds.data.tokens import build_token_loader, read_token_manifest

pytestmark = pytest.mark.multiproc


def test_two_ranks_tokenize_every_shard_once(tiny_tokens, pipeline_shards, tmp_path):
    source = json.loads((pipeline_shards / "manifest.json").read_text())
    report = json.loads((tiny_tokens / "tokenize_report.json").read_text())
    assert report["ranks"] == 2 and report["samples"] == source["total"]
    assert (report["written"], report["skipped"]) == (len(source["shards"]), 0) and report["clips_per_s"] > 0
    m = read_token_manifest(tiny_tokens / "tokens")
    assert m["splits"] == source["splits"]
    assert sorted(e["file"] for e in m["shards"]) == sorted(e["file"] for e in source["shards"])

    # Run again (one rank, in this process, on a copy): every shard is kept, none decoded again.
    from videobert_ds.core.config import from_dict
    from videobert_ds.stages.tokenize import TokenizeStage, TokenizeStageConfig

    run = shutil.copytree(tiny_tokens, tmp_path / "again")
    cfg = from_dict(TokenizeStageConfig, yaml.safe_load((tiny_tokens / "config.yaml").read_text()))
    again = TokenizeStage(cfg).run(run, 0, 1, torch.device("cpu"))
    assert (again["written"], again["skipped"], again["samples"]) == (0, len(source["shards"]), 0)


def test_trained_words_equal_the_frames_path(tiny_tokens, tiny_encoder, tiny_vocab, pipeline_shards):
    from videobert_ds.visual.loading import load_visual_tokenizer

    tok, _ = load_visual_tokenizer(tiny_encoder, tiny_vocab / "vocab.safetensors", torch.device("cpu"))
    clips = build_clip_loader(pipeline_shards, "val", 8, 16, shuffle=False, device="cpu", num_threads=1)
    words = build_token_loader(tiny_tokens / "tokens", "val", 8, 16, shuffle=False)
    for c, w in zip(clips, words, strict=True):
        ids, valid, feats = tok(c.frames, c.num_frames, return_features=True)
        assert [m["__key__"] for m in c.meta] == [m["__key__"] for m in w.meta]
        assert torch.equal(w.ids, ids) and torch.equal(w.valid, valid)
        torch.testing.assert_close(w.features[valid].float(), feats[valid], rtol=2e-3, atol=2e-3)


def test_teacher_trained_from_the_token_shards(tiny_teacher, tiny_tokens):
    cfg = yaml.safe_load((tiny_teacher / "config.yaml").read_text())
    assert cfg["data"]["tokens"] == str(tiny_tokens / "tokens")

"""Visual vocabulary file, S3D encoder weights handling, and the frames -> visual-word tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from videobert_ds.bench.s3d_weights import random_s3d_state
from videobert_ds.visual.s3d import S3DEncoder, s3d_features
from videobert_ds.visual.tokenizer import VisualTokenizer
from videobert_ds.visual.vocab import VisualVocabulary

FPC = 8  # frames per clip: S3D's minimum (temporal stride 8), keeps the CPU cost small
# sha256 of the sorted "key:[shape]" lines of torchvision 0.28's S3D state dict without the classifier
# (462 tensors; computed once with torchvision installed, where its features also matched ours to 0.0).
TORCHVISION_S3D_MANIFEST = "cb9fb73fbc60c3dd2c48db6109548a4a606a797065fc7d7b6a47384a9c071c92"


def _trunk_state(seed: int) -> dict[str, torch.Tensor]:
    """A random S3D with calibrated BatchNorm statistics (features vary), without torchvision's classifier."""
    return {k: v for k, v in random_s3d_state(seed, frames=FPC).items() if k.startswith("features.")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("s3d")
    a, b = out / "s3d_a.pt", out / "s3d_b.safetensors"
    torch.save(_trunk_state(0), a)
    save_file(random_s3d_state(1, frames=FPC), str(b))  # classifier included
    return {"a": a, "b": b}


def _videos(n: int, seed: int, clips: int = 2) -> torch.Tensor:
    """uint8 (n, clips*FPC, 32, 32, 3): each clip one of 4 coloured patterns plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 230]], dtype=torch.float)
    which = torch.randint(4, (n, clips), generator=g)
    base = patterns[which][:, :, None, None, None, :].expand(n, clips, FPC, 32, 32, 3)
    noisy = base + torch.randn(base.shape, generator=g) * 8
    return noisy.clamp(0, 255).to(torch.uint8).reshape(n, clips * FPC, 32, 32, 3)


@pytest.fixture(scope="module")
def encoder(weights) -> S3DEncoder:
    return S3DEncoder(weights["a"], frames_per_clip=FPC)


@pytest.fixture(scope="module")
def vocab(encoder) -> VisualVocabulary:
    with torch.no_grad():
        feats = encoder(_videos(12, seed=0)).reshape(-1, encoder.feature_dim)
    return VisualVocabulary.fit(feats, encoder, depth=2, branching=2, seed=0, progress=False)


def test_s3d_matches_torchvision_state_dict_layout():
    lines = sorted(f"features.{k}:{list(v.shape)}" for k, v in s3d_features().state_dict().items())
    assert len(lines) == 462
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == TORCHVISION_S3D_MANIFEST


def test_s3d_features_shape_and_both_file_formats(weights, encoder):
    frames = _videos(2, seed=1)
    with torch.no_grad():
        out = encoder(frames)
        from_st = S3DEncoder(weights["b"], frames_per_clip=FPC)(frames)
    assert out.shape == (2, 2, 1024) and from_st.shape == (2, 2, 1024)
    assert out.std() > 1e-3  # calibrated random weights give informative features
    assert (
        encoder.identity()["weights_sha256"]
        != S3DEncoder(weights["b"], frames_per_clip=FPC).identity()["weights_sha256"]
    )
    # A whole torchvision-style state dict (classifier included) is accepted too.
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training


def test_s3d_weights_errors(tmp_path, weights):
    with pytest.raises(FileNotFoundError, match="S3D weights file not found"):
        S3DEncoder(tmp_path / "nope.pt")
    state = torch.load(weights["a"], weights_only=True)
    broken = dict(state)
    broken.pop("features.0.0.0.weight")
    broken["features.2.0.weight"] = torch.zeros(3, 3, 1, 1, 1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"does not match torchvision's S3D: 1 missing .*1 wrong shape") as e:
        S3DEncoder(tmp_path / "broken.pt")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read S3D weights file"):
        S3DEncoder(tmp_path / "junk.pt")
    whole = dict(state, **{"classifier.1.weight": torch.zeros(400, 1024, 1, 1, 1)})
    torch.save(whole, tmp_path / "whole.pt")
    S3DEncoder(tmp_path / "whole.pt", frames_per_clip=FPC)


def test_vocab_save_load_round_trip(tmp_path, vocab, encoder):
    path = vocab.save(tmp_path / "sub" / "vocab.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["vocab.safetensors"]  # no temp file left behind
    back = VisualVocabulary.load(path)
    assert (back.size, back.depth, back.branching, back.feature_dim) == (4, 2, 2, 1024)
    assert back.frames_per_clip == FPC and back.seed == 0 and back.encoder == encoder.identity()
    assert all(torch.equal(a, b) for a, b in zip(vocab.tree.levels, back.tree.levels))
    back.check_encoder(encoder)


def test_vocab_refuses_other_encoder_and_bad_files(tmp_path, vocab, weights):
    other = S3DEncoder(weights["b"], frames_per_clip=FPC)
    with pytest.raises(ValueError, match="different clip encoder: weights_sha256"):
        vocab.check_encoder(other)
    longer = S3DEncoder(weights["a"], frames_per_clip=16)
    with pytest.raises(ValueError, match="frames_per_clip 8 != 16"):
        vocab.check_encoder(longer)
    with pytest.raises(ValueError, match="different clip encoder"):
        VisualTokenizer(other, vocab)
    with pytest.raises(FileNotFoundError):
        VisualVocabulary.load(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="is not a visual vocabulary"):
        VisualVocabulary.load(tmp_path / "foreign.safetensors")


def test_tokenizer_ids_are_deterministic_and_batch_independent(vocab, encoder):
    tok = VisualTokenizer(encoder, vocab)
    assert tok.method == "exact"  # 4 words: below the descent crossover
    frames = _videos(3, seed=2)
    ids, valid = tok(frames)
    assert ids.dtype == torch.int64 and ids.shape == (3, 2) and valid.all()
    assert ((ids >= 0) & (ids < vocab.size)).all()
    again, _ = tok(frames)
    alone, _ = tok(frames[1:2])
    assert torch.equal(ids, again) and torch.equal(ids[1:2], alone)
    # Same pattern -> same word: the vocabulary separates the 4 colours (seeded, so stable).
    assert len(set(tok(_videos(8, seed=3, clips=4))[0].flatten().tolist())) >= 3
    # The tokenizer's ids are the vocabulary's own assignment of the encoder's features.
    with torch.no_grad():
        feats = encoder(frames).reshape(-1, 1024)
    assert torch.equal(ids.flatten(), vocab.assign(feats))
    ids3, valid3, feats3 = tok(frames, return_features=True)
    assert torch.equal(ids3, ids) and valid3.all() and torch.allclose(feats3, feats.reshape(3, 2, 1024))
    descent = VisualTokenizer(encoder, vocab, method="descent", clips_per_batch=1)
    assert descent.method == "descent"
    assert torch.equal(descent(frames)[0].flatten(), vocab.assign(feats, method="descent"))
    with pytest.raises(ValueError, match="assignment method"):
        VisualTokenizer(encoder, vocab, method="nearest")


def test_tokenizer_valid_mask_and_padding(vocab, encoder):
    tok = VisualTokenizer(encoder, vocab)
    frames = _videos(2, seed=4)  # 16 frames = 2 clips of 8
    ids, valid = tok(frames, num_frames=torch.tensor([16, 11]))
    assert valid.tolist() == [[True, True], [True, False]]
    assert ids[1, 1] == 0
    padded = frames.clone()
    padded[1, 11:] = 0  # the padding's content must not matter
    ids2, _ = tok(padded, num_frames=torch.tensor([16, 11]))
    assert torch.equal(ids, ids2)
    with pytest.raises(ValueError, match="num_frames must have shape"):
        tok(frames, num_frames=torch.tensor([16]))
    with pytest.raises(ValueError, match="uint8"):
        tok(frames.float())
    tok.train()
    assert not tok.training and not tok.encoder.training

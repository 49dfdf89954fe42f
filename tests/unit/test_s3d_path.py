"""The S3D path end to end, without training: S3D weights (torchvision's state-dict layout) -> encoder by kind ->
vocabulary -> the visual tokenizer every stage loads -> an exported model dir's clip_encoder/ -> loaded back with
the same words; and the one-line errors when encoder and vocabulary do not belong together."""

from __future__ import annotations

import json

import pytest
import torch

from videobert_ds.bench.s3d_weights import random_s3d_state
from videobert_ds.core.config import ConfigError
from videobert_ds.model.model_dir import ENCODER_DIR, check_model_dir
from videobert_ds.visual.loading import (
    encoder_kind,
    encoder_problem,
    load_encoder,
    load_visual_tokenizer,
    save_encoder_dir,
)
from videobert_ds.visual.s3d import S3DEncoder
from videobert_ds.visual.vocab import VisualVocabulary, vocab_metadata

FPC, SIZE = 8, 32  # the smallest S3D input: 8 frames (temporal stride 8), 32 pixels


def frames(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 2 * FPC, 40, 48, 3), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def s3d(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("s3d_path")
    weights = root / "s3d.pth"
    torch.save(random_s3d_state(0), weights)
    encoder = load_encoder("s3d", weights, frames_per_clip=FPC, resize=[SIZE, SIZE])
    with torch.no_grad():
        feats = encoder(frames(6, 0)).reshape(-1, encoder.feature_dim)
    vocab = VisualVocabulary.fit(feats, encoder, depth=1, branching=4, seed=0, progress=False)
    vocab.save(root / "vocab.safetensors")
    return {"root": root, "weights": weights, "encoder": encoder, "vocab": root / "vocab.safetensors"}


def test_encoder_by_kind_and_identity(s3d, tmp_path):
    enc = s3d["encoder"]
    assert isinstance(enc, S3DEncoder) and enc.frames_per_clip == FPC and enc.resize == (SIZE, SIZE)
    ident = enc.identity()
    assert ident["name"] == "s3d" and ident["resize"] == [SIZE, SIZE] and ident["feature_dim"] == 1024
    assert "resize" not in load_encoder("s3d", s3d["weights"], frames_per_clip=FPC).identity()  # as before
    assert encoder_kind(s3d["weights"]) == "s3d" and encoder_kind(tmp_path) == "autoencoder"
    assert isinstance(load_encoder("auto", s3d["weights"], frames_per_clip=FPC), S3DEncoder)
    with pytest.raises(ValueError, match="not one of autoencoder, s3d"):
        load_encoder("i3d", s3d["weights"])
    with pytest.raises(ValueError, match="each >= 32 pixels"):
        load_encoder("s3d", s3d["weights"], frames_per_clip=FPC, resize=[16, 16])
    with pytest.raises(FileNotFoundError, match="not an S3D encoder dir"):
        load_encoder("s3d", tmp_path)


def test_encoder_dir_round_trip_gives_the_same_words(s3d, tmp_path):
    """A model dir's clip_encoder/ written from the weights file (the teacher's export) is a checkable dir
    (config.json + model.safetensors) that the autodetecting loader reads back as the same encoder."""
    out = save_encoder_dir(s3d["weights"], s3d["vocab"], tmp_path / ENCODER_DIR)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == {"encoder_type": "s3d", "frames_per_clip": FPC, "feature_dim": 1024, "resize": [SIZE, SIZE]}
    assert encoder_kind(out) == "s3d"
    video = frames(3, 1)
    from_file, _ = load_visual_tokenizer(s3d["weights"], s3d["vocab"], torch.device("cpu"), encoder_type="s3d")
    from_dir, vocab = load_visual_tokenizer(out, s3d["vocab"], torch.device("cpu"))  # the default: auto
    assert from_dir.encoder.identity() == vocab.encoder == from_file.encoder.identity()
    ids_file, _, f_file = from_file(video, return_features=True)
    ids_dir, _, f_dir = from_dir(video, return_features=True)
    assert torch.equal(ids_file, ids_dir) and torch.equal(f_file, f_dir)
    # An autoencoder dir is copied as it is: a dir source is never re-encoded.
    again = save_encoder_dir(out, s3d["vocab"], tmp_path / "copy")
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    # The exported dir passes the model-dir check's encoder part (config.json + readable weights).
    model = tmp_path / "model"
    (model / ENCODER_DIR).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (model / ENCODER_DIR / name).write_bytes((out / name).read_bytes())
        (model / name).write_bytes((out / name).read_bytes())  # stands in for the VideoBERT weights
    check_model_dir(model)


def test_mismatches_are_one_line(s3d, tmp_path):
    meta = vocab_metadata(s3d["vocab"])["encoder"]
    assert encoder_problem("s3d", s3d["weights"], meta) is None
    assert encoder_problem("auto", s3d["weights"], meta) is None
    problem = encoder_problem("autoencoder", tmp_path, meta)
    assert "fit on s3d" in problem and "set the encoder type (s3d" in problem
    assert "no clip encoder at" in encoder_problem("s3d", tmp_path / "missing.pth", meta)
    auto_meta = {"name": "clip-autoencoder", "feature_dim": 64, "frames_per_clip": 4}
    assert "fit on clip-autoencoder" in encoder_problem("s3d", s3d["weights"], auto_meta)
    from videobert_ds.visual.autoencoder import ClipAutoencoder, ClipAutoencoderConfig

    ClipAutoencoder(ClipAutoencoderConfig(feature_dim=32)).save_pretrained(tmp_path / "ae")
    assert "different clip encoder: feature_dim 64 != 32" in encoder_problem("autoencoder", tmp_path / "ae", auto_meta)
    features_meta = {"name": "features", "source": "howto_s3d", "feature_dim": 1024, "frames_per_clip": 8}
    assert "pre-extracted features (howto_s3d)" in encoder_problem("s3d", s3d["weights"], features_meta)
    # Other weights, or another clip length, than the vocabulary was fit on: refused when loaded.
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({k: v for k, v in random_s3d_state(1).items() if k.startswith("features.")}, str(other))
    with pytest.raises(ValueError, match="different clip encoder: weights_sha256") as err:
        load_visual_tokenizer(other, s3d["vocab"], torch.device("cpu"), encoder_type="s3d")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="holds an S3D encoder, not a clip autoencoder"):
        load_visual_tokenizer(s3d["weights"], s3d["vocab"], torch.device("cpu"), encoder_type="autoencoder")


def _stage_check(stage_cls, overrides: dict) -> None:
    from videobert_ds.core.config import from_dict

    stage_cls(from_dict(stage_cls.config_cls, overrides)).check()


def test_build_vocab_and_teacher_checks(s3d, tmp_path):
    from videobert_ds.stages.build_vocab import BuildVocabStage
    from videobert_ds.stages.pretrain_teacher import TeacherStage

    enc = {"type": "s3d", "path": str(s3d["weights"]), "frames_per_clip": FPC, "resize": [SIZE, SIZE]}
    _stage_check(BuildVocabStage, {"encoder": enc})
    for bad, msg in (
        ({"frames_per_clip": 4}, "S3D needs >= 8 frames"),
        ({"resize": [8, 8]}, "encoder.resize: must be"),
        ({"rate": 1.0}, "apply to encoder.type features only"),
        ({"path": str(tmp_path / "none.pth")}, "S3D weights file not found"),
        ({"type": "i3d"}, "not one of autoencoder, s3d, features"),
    ):
        with pytest.raises(ConfigError, match=msg):
            _stage_check(BuildVocabStage, {"encoder": {**enc, **bad}})
    with pytest.raises(ConfigError, match="resize and encoder.frames_per_clip apply to S3D"):
        _stage_check(BuildVocabStage, {"encoder": {"type": "autoencoder", "path": str(tmp_path), "resize": [32, 32]}})

    visual = {"encoder_type": "s3d", "encoder": str(s3d["weights"]), "vocab": str(s3d["vocab"])}
    _stage_check(TeacherStage, {"visual": visual})
    with pytest.raises(ConfigError, match="visual.encoder: the visual vocabulary was fit on s3d"):
        _stage_check(TeacherStage, {"visual": {**visual, "encoder_type": "autoencoder", "encoder": str(tmp_path)}})


def test_packaged_configs_default_to_the_autoencoder():
    from videobert_ds.stages.build_vocab import EncoderConfig
    from videobert_ds.stages.pretrain_teacher import VisualConfig

    assert EncoderConfig().type == "autoencoder" and VisualConfig().encoder_type == "autoencoder"

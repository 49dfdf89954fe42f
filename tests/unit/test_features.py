"""Pre-extracted features as the visual input (visual/features.py): a dir of <video_id>.npy/.npz arrays cut into
clip features by the samples' times, and build_vocab on such a dir instead of decoded video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from videobert_ds.visual.features import FeaturesDir, iter_clip_features, shard_samples


def rows_dir(tmp_path: Path, rate: float | None = 2.0, n: int = 20, dim: int = 3) -> Path:
    """v1.npy: row i is (i, i, ...); features.json with the rate."""
    np.save(tmp_path / "v1.npy", np.repeat(np.arange(n, dtype=np.float32)[:, None], dim, 1))
    if rate is not None:
        (tmp_path / "features.json").write_text(json.dumps({"rate": rate}))
    return tmp_path


def sample(start: float, end: float, vid: str = "v1") -> dict:
    return {"video_id": vid, "start": start, "end": end}


def test_cut_by_sample_times(tmp_path):
    d = FeaturesDir(rows_dir(tmp_path))  # 2 rows a second; clips of one row by default
    assert d.rate == 2.0 and d.clip_seconds == 0.5 and d.feature_dim == 3
    assert d.clip_features(sample(1.0, 3.2))[:, 0].tolist() == [2, 3, 4, 5]  # 4 whole clips in 2.2 s
    # 1.5 s clips: the mean of the 3 rows whose centres lie inside each; capped; past the end dropped.
    d = FeaturesDir(tmp_path, clip_seconds=1.5)
    assert d.clip_features(sample(1.0, 10.0))[:, 0].tolist() == [3, 6, 9, 12, 15, 18]
    assert d.clip_features(sample(1.0, 10.0), max_clips=2)[:, 0].tolist() == [3, 6]
    assert d.clip_features(sample(8.5, 12.0))[:, 0].tolist() == [18]  # [10, 11.5) needs rows 20-22: dropped
    assert d.stats["dropped_clips"] == 1 and d.stats["clips"] == 9
    # Features sparser than clips: the row under each clip's midpoint.
    d = FeaturesDir(tmp_path, clip_seconds=0.2)
    assert d.clip_features(sample(0.0, 1.0))[:, 0].tolist() == [0, 0, 1, 1, 1]
    assert d.clip_features(sample(0.0, 0.1)).shape == (0, 3)  # shorter than one clip
    assert d.frames_per_clip(fps=10) == 2
    ident = d.identity(fps=10)
    assert ident == {
        "name": "features",
        "source": tmp_path.name,
        "rate": 2.0,
        "clip_seconds": 0.2,
        "feature_dim": 3,
        "frames_per_clip": 2,
    }


def test_missing_ids_are_counted(tmp_path):
    d = FeaturesDir(rows_dir(tmp_path))
    for vid in ("nope", "../v1", "sub/v1", ""):
        assert d.clip_features(sample(0, 1, vid)) is None
    assert d.clip_features(sample(0, 1)) is not None
    assert d.stats["samples"] == 5 and d.stats["missing"] == 4 and d.stats["missing_ids"][0] == "nope"


def test_rate_and_file_formats(tmp_path):
    rows_dir(tmp_path, rate=None)
    with pytest.raises(ValueError, match="no feature rate .* set encoder.rate"):
        FeaturesDir(tmp_path)
    assert FeaturesDir(tmp_path, rate=4.0).clip_seconds == 0.25  # the config key gives it
    (tmp_path / "features.json").write_text(json.dumps({"rate": 1.0}))
    assert FeaturesDir(tmp_path, rate=4.0).rate == 4.0  # and wins over features.json
    np.savez(tmp_path / "v2.npz", feats=np.ones((4, 3), np.float32))
    assert FeaturesDir(tmp_path).clip_features(sample(0, 2, "v2")).tolist() == [[1, 1, 1], [1, 1, 1]]
    np.savez(tmp_path / "v3.npz", a=np.ones((4, 3)), b=np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"v3.npz: 2 arrays \(a, b\): set 'key'"):
        FeaturesDir(tmp_path).load("v3")
    (tmp_path / "v2.npz").unlink()  # every .npz of a dir holds the named array
    (tmp_path / "features.json").write_text(json.dumps({"rate": 1.0, "key": "b"}))
    assert FeaturesDir(tmp_path).load("v3").shape == (4, 3)
    mixed = tmp_path / "mixed"  # arrays of two widths: whichever is read second is refused
    mixed.mkdir()
    np.save(mixed / "a.npy", np.ones((4, 3), np.float32))
    np.save(mixed / "b.npy", np.ones((4, 5), np.float32))
    d = FeaturesDir(mixed, rate=1.0)
    with pytest.raises(ValueError, match="-d rows, the dir's others"):
        d.load("a"), d.load("b")
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "a.npy", np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"holds a \(4,\) array"):
        FeaturesDir(flat, rate=1.0)
    with pytest.raises(FileNotFoundError, match="features dir not found"):
        FeaturesDir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no \.npy or \.npz file"):
        FeaturesDir(tmp_path / "empty", rate=1.0)


def labelled_features(shards: Path, out: Path, rate: float = 4.0, dim: int = 16) -> Path:
    """Per video, rows that carry the colour narrated at their time (one-hot, scaled) plus noise: what a good
    pre-extracted feature would hold. One video is left without a file."""
    rng = np.random.default_rng(0)
    colours: dict[str, int] = {}
    by_video: dict[str, list[dict]] = {}
    for split in ("train", "val", "test"):
        for meta in shard_samples(shards, split):
            by_video.setdefault(meta["video_id"], []).append(meta)
    out.mkdir()
    for vid, metas in sorted(by_video.items())[1:]:  # the first video has no features file
        rows = rng.normal(0, 0.3, (int(max(m["end"] for m in metas) * rate) + 2, dim)).astype(np.float32)
        for m in metas:
            c = colours.setdefault(m["labels"]["colour"], len(colours))
            lo, hi = int(np.ceil(m["start"] * rate - 0.5)), int(np.ceil(m["end"] * rate - 0.5))
            rows[lo:hi, c] += 10
        np.save(out / f"{vid}.npy", rows)
    (out / "features.json").write_text(json.dumps({"rate": rate}))
    return out


def test_rank_split_covers_every_sample_once(prepared_shards, tmp_path):
    feats = labelled_features(prepared_shards, tmp_path / "feats")
    every = [m["__key__"] for m in shard_samples(prepared_shards, "train")]
    seen = []
    for rank in (0, 1):
        d = FeaturesDir(feats, clip_seconds=1.0)
        got = list(iter_clip_features(prepared_shards, "train", d, rank=rank, world_size=2, max_clips=2))
        seen += [m["__key__"] for m, _ in got] + [None] * d.stats["missing"]
        assert all(f.shape[1] == 16 and f.shape[0] <= 2 for _, f in got)
    assert len(seen) == len(every) and set(every) >= {k for k in seen if k}
    with pytest.raises(ValueError, match="outside world size"):
        next(iter_clip_features(prepared_shards, "train", d, rank=2, world_size=2))


@pytest.fixture(scope="module")
def features_vocab(prepared_shards, tmp_path_factory) -> dict[str, Path]:
    """build_vocab with encoder.type=features on the session shards, as one plain rank: the features dir, the run
    dir and the vocabulary file (shared by the vocabulary, tokenize and teacher tests below)."""
    from tests.helpers.one_rank import run_one_rank

    root = tmp_path_factory.mktemp("features_vocab")
    feats = labelled_features(prepared_shards, root / "howto_feats")
    run = root / "vocab"
    run_one_rank(
        "vocab_tiny",
        {
            "run.dir": run,
            "data.shards": prepared_shards,
            "encoder.type": "features",
            "encoder.path": feats,
            "encoder.clip_seconds": 0.5,
            "kmeans.depth": 1,
            "kmeans.branching": 4,
        },
    )
    return {"features": feats, "run": run, "vocab": run / "vocab.safetensors"}


def test_build_vocab_on_a_features_dir(prepared_shards, features_vocab, tmp_path):
    """build_vocab with encoder.type=features: no video decoded, the vocabulary records the features dir, and
    its words follow what the features carry; the video without a file is counted, not fatal."""
    from videobert_ds.visual.vocab import VisualVocabulary

    run = features_vocab["run"]
    vocab = VisualVocabulary.load(features_vocab["vocab"])
    fps = json.loads((prepared_shards / "manifest.json").read_text())["fps"]
    assert vocab.encoder == {
        "name": "features",
        "source": "howto_feats",
        "rate": 4.0,
        "clip_seconds": 0.5,
        "feature_dim": 16,
        "frames_per_clip": round(0.5 * fps),
    }
    report = json.loads((run / "vocab_report.json").read_text())
    assert report["features"]["missing"] >= 1 and report["features"]["missing_ids"]
    assert report["clips"] == report["features"]["clips"] > 20
    assert report["nmi"]["colour"]["nmi"] > report["nmi"]["colour"]["nmi_shuffled"] + 0.3
    assert not (run / "vocab_keyframes.safetensors").exists()  # no frames to show
    # Frames cannot reach a features vocabulary: a one-line error, not a wrong tokenizer.
    from videobert_ds.visual.loading import load_visual_tokenizer

    with pytest.raises(ValueError, match="built from pre-extracted features \\(howto_feats\\)"):
        load_visual_tokenizer(tmp_path, features_vocab["vocab"], torch.device("cpu"))


T_TOKENS = 16  # frames per sample tokenized (4 clips of 0.5 s at the shards' 8 fps)


def tokenize_features(shards: Path, features: Path, vocab: Path, run_dir: Path) -> dict:
    """The tokenize stage in this process (one rank, no process group) with a features vocabulary."""
    from videobert_ds.core.config import from_dict
    from videobert_ds.stages.tokenize import TokenizeStage, TokenizeStageConfig

    data = {
        "stage": "tokenize",
        "run": {"dir": str(run_dir)},
        "data": {"shards": str(shards), "num_frames": T_TOKENS, "num_threads": 1},
        "visual": {"encoder": str(features), "vocab": str(vocab)},
        "encode_batch_size": 4,
    }
    stage = TokenizeStage(from_dict(TokenizeStageConfig, data))
    stage.check()
    return stage.run(run_dir, 0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def features_tokens(prepared_shards, features_vocab, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("features_tokenize") / "run"
    tokenize_features(prepared_shards, features_vocab["features"], features_vocab["vocab"], run)
    return run


def test_tokenize_a_features_dir(prepared_shards, features_vocab, features_tokens, tmp_path):
    """tokenize with a features vocabulary reads no video: each token-shard sample holds vocab.assign of its cut
    features (and those features in fp16); a sample whose video has no file is written with no clips and counted,
    so the sample counts equal the source shards'. A features dir other than the vocabulary's is one line."""
    from videobert_ds.core.config import ConfigError
    from videobert_ds.data.sampling import read_shards
    from videobert_ds.data.tokens import (
        FEATS,
        IDS,
        build_token_loader,
        read_npy,
        read_token_manifest,
        token_split_shards,
    )
    from videobert_ds.visual.vocab import VisualVocabulary

    vocab = VisualVocabulary.load(features_vocab["vocab"])
    fpc = vocab.frames_per_clip
    source = json.loads((prepared_shards / "manifest.json").read_text())
    tokens = features_tokens / "tokens"
    made = read_token_manifest(tokens)
    assert {k: v for k, v in made["encoder"].items() if k != "path"} == vocab.encoder
    assert made["splits"] == source["splits"] and made["total"] == source["total"]  # every sample, missing or not
    expect = FeaturesDir(features_vocab["features"], rate=4.0, clip_seconds=0.5)
    missing, words = 0, set()
    for split in made["splits"]:
        samples = list(read_shards(token_split_shards(tokens, made, split)))
        metas = list(shard_samples(prepared_shards, split))
        assert [s["__key__"] for s in samples] == [m["__key__"] for m in metas]
        for s, meta in zip(samples, metas):
            ids = read_npy(s[IDS], "<i4")
            feats = read_npy(s[FEATS], "<f2").reshape(len(ids), 16)
            want = expect.clip_features(meta, T_TOKENS // fpc)
            if want is None:  # no features file: no clips
                missing += 1
                assert ids.size == 0
                continue
            want = want[: min(int(meta["num_frames"]), T_TOKENS) // fpc]
            assert ids.tolist() == vocab.assign(want).tolist(), s["__key__"]
            np.testing.assert_allclose(feats.astype(np.float32), want.numpy(), rtol=1e-3, atol=1e-2)
            words.update(ids.tolist())
    assert missing == expect.stats["missing"] > 0 and len(words) > 1
    report = json.loads((features_tokens / "tokenize_report.json").read_text())
    assert report["features"]["missing"] == made["features"]["missing"] == missing
    assert report["features"]["missing_ids"] == made["features"]["missing_ids"]
    assert report["samples"] == made["total"]
    # A rerun keeps every shard, and the counts of the kept shards stay in the manifest.
    again = tokenize_features(prepared_shards, features_vocab["features"], features_vocab["vocab"], features_tokens)
    assert again["skipped"] == len(made["shards"]) and again["written"] == 0
    assert read_token_manifest(tokens)["features"] == made["features"] == again["features"]
    # The token loader gives the missing video's samples no valid clip (their json says they have frames).
    loader = build_token_loader(tokens, "train", 4, T_TOKENS, shuffle=False)
    for batch in loader:
        for i, m in enumerate(batch.meta):
            if m["video_id"] in expect.stats["missing_ids"]:
                assert not batch.valid[i].any() and int(batch.num_frames[i]) == 0
    # Another features dir than the vocabulary's: one line before any work.
    other = tmp_path / "other_feats"
    other.mkdir()
    np.save(other / "v.npy", np.zeros((4, 8), np.float32))
    with pytest.raises(ConfigError, match=r"^visual.encoder: .*feature_dim 16 != 8[^\n]*$"):
        tokenize_features(prepared_shards, other, features_vocab["vocab"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^data.shards: a features vocabulary needs a local shard dir"):
        tokenize_features("http://127.0.0.1:9/shards", features_vocab["features"], features_vocab["vocab"], tmp_path)


def test_teacher_trains_on_features_tokens(prepared_shards, features_vocab, features_tokens):
    """A features vocabulary reaches training through token shards: a 2-step tiny teacher with data.tokens (one
    plain rank) trains and exports a model dir whose clip_encoder/ records the features identity (no weights),
    which check_model_dir accepts and text-only loading reads; anything that needs frames (the teacher without
    data.tokens, fine-tuning or evaluating from frames) stops with one line."""
    from tests.helpers.one_rank import run_one_rank
    from videobert_ds.core.config import ConfigError, load_stage_config, resolve_config_path
    from videobert_ds.eval.config import EvalStageConfig, check_eval_config
    from videobert_ds.eval.run import load_model
    from videobert_ds.inference.text_to_video import GeneratorError, load_generator
    from videobert_ds.model.model_dir import ENCODER_DIR, check_model_dir
    from videobert_ds.stages.distill_student import StudentStage, StudentStageConfig
    from videobert_ds.stages.finetune import FinetuneStage, FinetuneStageConfig
    from videobert_ds.stages.pretrain_teacher import TeacherStage, TeacherStageConfig
    from videobert_ds.visual.vocab import VisualVocabulary

    vocab = VisualVocabulary.load(features_vocab["vocab"])
    teacher = features_tokens.parent / "teacher"
    overrides = {
        "run.dir": teacher,
        "data.shards": prepared_shards,
        "data.tokens": features_tokens / "tokens",
        "visual.vocab": features_vocab["vocab"],
        "text.vocab_size": 200,
        "model.hidden_size": 32,
        "model.num_hidden_layers": 1,
        "model.num_attention_heads": 2,
        "model.intermediate_size": 64,
        "schedule.max_steps": 2,
        "schedule.warmup_steps": 1,
        "schedule.log_every": 1,
        "schedule.val_every": 2,
        "schedule.val_batches": 1,
        "schedule.checkpoint_every": 2,
    }
    # Without token shards a features vocabulary cannot train: one line, before any rank starts.
    frames_only = {**overrides, "data.tokens": ""}
    cfg = load_stage_config(
        TeacherStageConfig, resolve_config_path("teacher_tiny"), [f"{k}={v}" for k, v in frames_only.items()]
    )
    with pytest.raises(ConfigError, match=r"^visual.encoder: .*pre-extracted features \(howto_feats\).*tokenize"):
        TeacherStage(cfg).check()

    run_one_rank("teacher_tiny", overrides)
    rows = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    losses = torch.tensor([r["train/loss"] for r in rows if "train/loss" in r])
    assert losses.shape == (2,) and torch.isfinite(losses).all(), losses
    final = teacher / "final"
    check_model_dir(final)
    enc_cfg = json.loads((final / ENCODER_DIR / "config.json").read_text())
    assert enc_cfg == {"encoder_type": "features", **vocab.encoder}
    assert not (final / ENCODER_DIR / "model.safetensors").exists()
    _, params, config, _ = load_model(final, torch.device("cpu"), zero3=False)  # text-only loading works
    assert params > 0 and config.visual_vocab_size == vocab.size
    # The student and fine-tuning from the export: with the token shards they need no frame encoder; from frames,
    # one line naming the features.
    tokens = f"data.tokens={features_tokens / 'tokens'}"
    for cls, config, stage_cls, init, where in (
        (FinetuneStageConfig, "finetune_tiny", FinetuneStage, "model.init", "model.init"),
        (StudentStageConfig, "student_tiny", StudentStage, "teacher.path", "teacher.path"),
    ):
        common = [f"{init}={final}", f"data.shards={prepared_shards}", f"run.dir={teacher.parent / config}"]
        stage = stage_cls(load_stage_config(cls, resolve_config_path(config), common))
        with pytest.raises(ConfigError, match=rf"^{where}: .*pre-extracted features \(howto_feats\).*data.tokens"):
            stage.check()
        stage_cls(load_stage_config(cls, resolve_config_path(config), [*common, tokens])).check()
    ft_run = teacher.parent / "finetune_tiny"
    ft_args = [f"model.init={final}", f"data.shards={prepared_shards}", f"run.dir={ft_run}", tokens]
    ft = FinetuneStage(load_stage_config(FinetuneStageConfig, resolve_config_path("finetune_tiny"), ft_args))
    ft.check()
    ft_run.mkdir()
    ft.setup(ft_run, 0, torch.device("cpu"))
    assert ft.visual_tokenizer.frames_per_clip == vocab.frames_per_clip
    with pytest.raises(ValueError, match=r"\(howto_feats\): its words come from token shards, not from frames"):
        ft.visual_tokenizer(torch.zeros(1, 4, 32, 32, 3, dtype=torch.uint8), torch.tensor([4]))
    ev = load_stage_config(
        EvalStageConfig, resolve_config_path("eval_tiny"), [f"model.dir={final}", f"data.shards={prepared_shards}"]
    )
    with pytest.raises(ConfigError, match=r"^model.dir: this model's visual words come from pre-extracted features"):
        check_eval_config(ev)
    with pytest.raises(GeneratorError, match=r"pre-extracted features \(howto_feats\): there are no key frames"):
        load_generator(final, torch.device("cpu"))

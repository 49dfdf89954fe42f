"""Token shards (stage 2b, `tokenize`; data/tokens.py): the stage run in-process on the session's prepared shards with
a small clip encoder and a vocabulary fit on its features. What is checked: the token loader gives, batch for batch,
the samples, visual-word ids and clip features the frames path computes (ClipLoader + VisualTokenizer), at the
tokenized length and a shorter one, on every rank and after a resume; the manifest records what the shards were
made from; a rerun keeps finished shards and starts over when its inputs changed; a run reading token shards of
another vocabulary, encoder or length stops with one line."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from videobert_ds.core.config import ConfigError, from_dict
from videobert_ds.data.loader import build_clip_loader
from videobert_ds.data.sampling import ShardInfo, read_shards
from videobert_ds.data.tokens import (
    IDENTITY,
    build_token_loader,
    check_tokens,
    frames_span,
    read_npy,
    read_token_manifest,
)
from videobert_ds.objectives.layout import text_ids_and_clip_counts
from videobert_ds.objectives.pretraining import batch_visual_words
from videobert_ds.stages.tokenize import TokenizeStage, TokenizeStageConfig
from videobert_ds.visual.autoencoder import AutoencoderClipEncoder, ClipAutoencoder, ClipAutoencoderConfig
from videobert_ds.visual.loading import load_visual_tokenizer
from videobert_ds.visual.vocab import VisualVocabulary, vocab_metadata

T_TOKENS = 16  # frames per sample the tokenize run reads
CPU = torch.device("cpu")


def fit_vocab(encoder: AutoencoderClipEncoder, shards: Path, path: Path, seed: int) -> Path:
    """A 4^2-word vocabulary fit on the encoder's features of the train split's clips."""
    feats = []
    for batch in build_clip_loader(shards, "train", 8, T_TOKENS, shuffle=False, device="cpu"):
        f = encoder(batch.frames)
        valid = (torch.arange(f.shape[1]) + 1) * encoder.frames_per_clip <= batch.num_frames[:, None]
        feats.append(f[valid])
    vocab = VisualVocabulary.fit(torch.cat(feats), encoder, depth=2, branching=4, seed=seed, progress=False)
    vocab.save(path)
    return path


@pytest.fixture(scope="module")
def visual(prepared_shards, tmp_path_factory) -> dict[str, Path]:
    """An (untrained, seeded) clip encoder dir at the shards' 32 px, two vocabularies fit on its features, and a
    second encoder with other weights."""
    root = tmp_path_factory.mktemp("tokens_visual")
    config = ClipAutoencoderConfig(frames_per_clip=4, image_size=32, channels=[4, 8], feature_dim=8)
    dirs = {}
    for name, seed in (("encoder", 0), ("other_encoder", 1)):
        torch.manual_seed(seed)
        ClipAutoencoder(config).save_pretrained(root / name)
        dirs[name] = root / name
    encoder = AutoencoderClipEncoder.from_pretrained(str(dirs["encoder"]))
    dirs["vocab"] = fit_vocab(encoder, prepared_shards, root / "vocab.safetensors", seed=0)
    dirs["other_vocab"] = fit_vocab(encoder, prepared_shards, root / "other_vocab.safetensors", seed=5)
    other = AutoencoderClipEncoder.from_pretrained(str(dirs["other_encoder"]))
    dirs["other_encoder_vocab"] = fit_vocab(other, prepared_shards, root / "other_encoder_vocab.safetensors", seed=0)
    return dirs


def tokenize(shards: Path, encoder: Path, vocab: Path, run_dir: Path, **extra) -> dict:
    """The tokenize stage in this process (one rank, no process group)."""
    data = {
        "stage": "tokenize",
        "run": {"dir": str(run_dir)},
        "data": {"shards": str(shards), "num_frames": T_TOKENS, "num_threads": 1},
        "visual": {"encoder": str(encoder), "vocab": str(vocab), "clips_per_batch": 16},
        "encode_batch_size": 4,
        **extra,
    }
    stage = TokenizeStage(from_dict(TokenizeStageConfig, data))
    stage.check()
    return stage.run(run_dir, 0, 1, CPU)


@pytest.fixture(scope="module")
def tokens(prepared_shards, visual, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tokenize") / "run"
    report = tokenize(prepared_shards, visual["encoder"], visual["vocab"], run)
    assert report["written"] == len(json.loads((prepared_shards / "manifest.json").read_text())["shards"])
    return run / "tokens"


class WordCount:
    """A text tokenizer for the layout's call: one id per word (the test needs the call, not WordPieces)."""

    def __call__(self, texts, add_special_tokens, truncation, max_length):
        return {"input_ids": [list(range(len(t.split())))[:max_length] for t in texts]}


@pytest.mark.parametrize("num_frames", [T_TOKENS, 8])
def test_token_batches_equal_the_frames_path(prepared_shards, visual, tokens, num_frames):
    """Both ranks, shuffled, one epoch and into the next: same keys, ids, valid clips, frame counts and clip counts;
    features equal to fp16 rounding."""
    tok, _ = load_visual_tokenizer(visual["encoder"], visual["vocab"], CPU, 16)
    for rank in (0, 1):
        opts = dict(rank=rank, world_size=2, seed=3, shuffle=True, shuffle_buffer=4, device="cpu")
        clips = build_clip_loader(prepared_shards, "train", 3, num_frames, num_threads=1, **opts)
        words = build_token_loader(tokens, "train", 3, num_frames, **opts)
        assert words.steps_per_epoch == clips.steps_per_epoch
        n = clips.steps_per_epoch + 2
        for step, (c, w) in enumerate(zip(_endless(clips, n), _endless(words, n), strict=True)):
            assert [m["__key__"] for m in c.meta] == [m["__key__"] for m in w.meta], step
            assert c.meta == w.meta  # the json travels byte for byte
            ids, valid, feats = tok(c.frames, c.num_frames, return_features=True)
            assert torch.equal(w.ids, ids) and torch.equal(w.valid, valid) and torch.equal(w.num_frames, c.num_frames)
            assert ids[valid].unique().numel() > 1  # the words are informative, not one id everywhere
            torch.testing.assert_close(w.features[valid].float(), feats[valid], rtol=2e-3, atol=2e-3)
            assert frames_span(w) == frames_span(c) == num_frames
            assert text_ids_and_clip_counts(w, WordCount(), 4, 8) == text_ids_and_clip_counts(c, WordCount(), 4, 8)
            got, got_feats = batch_visual_words(w, tok, features=True)
            assert got is w.ids and got_feats is w.features  # the stages take them as they are
            assert torch.equal(batch_visual_words(c, tok)[0], ids)


def _endless(loader, n: int):
    out = []
    while len(out) < n:
        out += list(loader)
    return out[:n]


def test_resume_continues_the_same_stream(tokens):
    whole = build_token_loader(tokens, "train", 2, 8, seed=1)
    keys = [[m["__key__"] for m in b.meta] for b in _endless(whole, whole.steps_per_epoch + 3)]
    first = build_token_loader(tokens, "train", 2, 8, seed=1)
    it = iter(first)
    for _ in range(3):
        next(it)
    resumed = build_token_loader(tokens, "train", 2, 8, seed=1)
    resumed.load_state_dict(first.state_dict())
    rest = [[m["__key__"] for m in b.meta] for b in _endless(resumed, len(keys) - 3)]
    assert rest == keys[3:]
    with pytest.raises(ValueError, match="split 'nope' is not in"):
        build_token_loader(tokens, "nope", 2, 8)


def test_manifest_records_identity_and_mirrors_the_shards(prepared_shards, visual, tokens):
    source = json.loads((prepared_shards / "manifest.json").read_text())
    m = read_token_manifest(tokens)

    def rows(entries):
        return [(e["file"], e["split"], e["num_samples"]) for e in entries]

    by_split = [e for split in sorted(source["splits"]) for e in source["shards"] if e["split"] == split]
    assert rows(m["shards"]) == rows(by_split)  # one token shard per source shard: the same sample plan
    assert m["splits"] == source["splits"] and m["total"] == source["total"]
    encoder = AutoencoderClipEncoder.from_pretrained(str(visual["encoder"]))
    assert {k: m["encoder"][k] for k in encoder.identity()} == encoder.identity()
    assert m["vocab"]["size"] == 16 and m["vocab"]["bytes"] == visual["vocab"].stat().st_size
    assert (m["num_frames"], m["frames_per_clip"], m["feature_dim"]) == (T_TOKENS, 4, 8)
    sample = next(read_shards([ShardInfo(tokens / m["shards"][0]["file"], m["shards"][0]["num_samples"])]))
    assert {"json", "ids.npy", "feat.npy"} <= set(sample)
    ids, feats = (np.load(io.BytesIO(sample[k])) for k in ("ids.npy", "feat.npy"))
    n = min(json.loads(sample["json"])["num_frames"], T_TOKENS) // 4
    assert ids.dtype == np.int32 and ids.shape == (n,) and feats.dtype == np.float16 and feats.shape == (n, 8)
    assert np.array_equal(read_npy(sample["ids.npy"], "<i4"), ids)  # the loader's fast path
    assert np.array_equal(read_npy(sample["feat.npy"], "<f2"), feats.reshape(-1))
    other = io.BytesIO()
    np.save(other, ids.astype(np.int64).reshape(1, -1))  # another dtype and shape: np.load, cast, flattened
    cast = read_npy(other.getvalue(), "<i4")
    assert np.array_equal(cast, ids) and cast.dtype == np.int32


def test_rerun_keeps_finished_shards_and_redoes_the_rest(prepared_shards, visual, tmp_path):
    run = tmp_path / "run"
    tokenize(prepared_shards, visual["encoder"], visual["vocab"], run)
    out = run / "tokens"
    names = sorted(p.name for p in out.glob("shard-*.tar"))
    lost, kept = names[1], [n for n in names if n != names[1]]
    original = (out / lost).read_bytes()
    stamps = {n: (out / n).stat().st_mtime_ns for n in kept}
    (out / lost).unlink()  # what a run killed before that shard's rename leaves: no shard, a temporary file
    (out / f".{lost}.abc.tmp").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    report = tokenize(prepared_shards, visual["encoder"], visual["vocab"], run)
    assert (report["written"], report["skipped"]) == (1, len(kept))
    assert (out / lost).read_bytes() == original  # deterministic: the same shard again
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == stamps
    assert not list(out.glob(".*.tmp")) and (out / "manifest.json").is_file()
    # Another vocabulary: nothing of the old run is kept.
    report = tokenize(prepared_shards, visual["encoder"], visual["other_vocab"], run)
    assert (report["written"], report["skipped"]) == (len(names), 0)
    ident = json.loads((out / IDENTITY).read_text())
    assert ident["vocab"]["sha256"] == read_token_manifest(out)["vocab"]["sha256"] != ""
    assert ident["vocab"]["path"] == str(visual["other_vocab"].resolve())
    # Only the val split.
    report = tokenize(prepared_shards, visual["encoder"], visual["vocab"], tmp_path / "val", splits=["val"])
    assert read_token_manifest(tmp_path / "val" / "tokens")["splits"] == {"val": report["samples"]}
    with pytest.raises(ConfigError, match=r"splits: nope not in"):
        tokenize(prepared_shards, visual["encoder"], visual["vocab"], tmp_path / "bad", splits=["nope"])


def test_mismatches_are_one_line_errors(prepared_shards, visual, tokens, tmp_path, capsys):
    enc = vocab_metadata(visual["vocab"])["encoder"]
    with pytest.raises(ConfigError, match=r"another visual vocabulary .* than visual.vocab .*; run tokenize with it"):
        check_tokens(tokens, visual["other_vocab"], enc, 16)
    other = vocab_metadata(visual["other_encoder_vocab"])["encoder"]
    with pytest.raises(ConfigError, match=r"another clip encoder: weights_sha256"):
        check_tokens(tokens, visual["vocab"], other, 16)
    with pytest.raises(ConfigError, match=r"data.num_frames \(32\) exceeds the 16 frames"):
        check_tokens(tokens, visual["vocab"], enc, 32)
    with pytest.raises(ConfigError, match=r"no token shards at .* \(missing manifest.json\)"):
        check_tokens(tmp_path, visual["vocab"], enc, 16)
    assert check_tokens(tokens, visual["vocab"], enc, 16)["num_frames"] == T_TOKENS

    # The teacher's check, through the training entry point: exit 2, one line, before any rank starts.
    from tests.helpers import REPO
    from videobert_ds.train import main as train_main

    code = train_main(
        [
            "--deepspeed",
            str(REPO / "ds_configs" / "zero3_cpu.json"),
            "--config",
            "teacher_tiny",
            f"data.shards={prepared_shards}",
            f"data.tokens={tokens}",
            f"visual.encoder={visual['encoder']}",
            f"visual.vocab={visual['other_vocab']}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("videobert-train: error: data.tokens:") and "another visual vocabulary" in err
    assert os.path.isdir(tokens)


def test_pipeline_trains_from_the_token_shards_when_tokenize_runs(tmp_path):
    """slurm/pipeline.sh puts tokenize between vocab and teacher; teacher, student and finetune get data.tokens
    (first, so the caller's OVERRIDES win) when tokenize is submitted or its shards exist, not otherwise."""
    import subprocess

    from tests.helpers import REPO
    from tests.helpers.distributed import clean_env

    def dry_run(stages: str) -> dict[str, str]:
        r = subprocess.run(
            ["bash", str(REPO / "slurm" / "pipeline.sh"), "--dry-run", "--stages", stages],
            cwd=tmp_path,
            env=clean_env(RUNS=str(tmp_path / "runs")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        jobs = [line for line in r.stdout.splitlines() if line.startswith("env ")]
        return {line.split()[-1].rsplit("/", 1)[-1]: line for line in jobs}

    tokens = tmp_path / "runs" / "tokenize" / "tokens"
    jobs = dry_run("finetune teacher tokenize student")
    assert list(jobs) == ["tokenize.sh", "pretrain_teacher.sh", "distill_student.sh", "finetune.sh"]
    assert "CONFIG=tokenize " in jobs["tokenize.sh"] and "data.tokens" not in jobs["tokenize.sh"]
    for script in ("pretrain_teacher.sh", "distill_student.sh", "finetune.sh"):
        assert f"OVERRIDES=data.tokens={tokens}\\ " in jobs[script], jobs[script]
    assert "data.tokens" not in dry_run("teacher")["pretrain_teacher.sh"]
    tokens.mkdir(parents=True)
    (tokens / "manifest.json").write_text("{}")  # an earlier tokenize run: done, and the teacher reads it
    jobs = dry_run("tokenize teacher")
    assert list(jobs) == ["pretrain_teacher.sh"] and f"data.tokens={tokens}" in jobs["pretrain_teacher.sh"]


def _prepare_with_pid(batch, generator: torch.Generator):
    """A host-side builder as a stage's (draws only from its generator), recording where it ran."""
    return {"draw": torch.rand(3, generator=generator), "pid": os.getpid()}


def test_prefetch_in_a_worker_process_hands_out_the_threads_batches(tokens):
    """data.prefetch_worker=process (the default for token shards): the same batches, draws and resume positions
    as the thread, built in another process, moved to the device as handed out; a failure there is raised here;
    torch's global RNG (dropout's) is not drawn from by starting the worker; SIGTERM leaves it reading."""
    from videobert_ds.training.loaders import HostPrefetch

    def prefetch(process: bool) -> HostPrefetch:
        loader = build_token_loader(tokens, "train", 2, 8, seed=1)
        return HostPrefetch(loader, _prepare_with_pid, 2, 7, 0, device=CPU, process=process)

    steps = build_token_loader(tokens, "train", 2, 8, seed=1).steps_per_epoch
    n, k = steps + 2, steps // 2 + 1  # into the second epoch; a resume half way through the first
    threaded = prefetch(process=False)
    expected = [next(threaded) for _ in range(n)]
    threaded.close()

    rng = torch.get_rng_state()
    first = prefetch(process=True)
    taken = [next(first) for _ in range(k)]
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.state_dict() == {"epoch": 0, "batches_in_epoch": k}  # read-ahead not counted
    first.close()
    resumed = prefetch(process=True)
    resumed.load_state_dict({"epoch": 0, "batches_in_epoch": k})
    got = taken + [next(resumed) for _ in range(n - k)]
    resumed.close()
    for a, b in zip(got, expected, strict=True):
        assert [m["__key__"] for m in a.meta] == [m["__key__"] for m in b.meta]
        assert torch.equal(a.ids, b.ids) and torch.equal(a.features, b.features) and torch.equal(a.valid, b.valid)
        assert torch.equal(a.host["draw"], b.host["draw"])
        assert a.host["pid"] != os.getpid() and b.host["pid"] == os.getpid()

    def broken(batch, generator):
        raise ValueError("bad sample")

    failing = HostPrefetch(build_token_loader(tokens, "train", 2, 8), broken, 2, 0, 0, process=True)
    with pytest.raises(ValueError, match="bad sample"):
        next(failing)

    # A SLURM signal to every process leaves the reader to the rank; a reader that dies is a one-line error.
    reading = prefetch(process=True)
    next(reading)
    os.kill(reading._worker.pid, signal.SIGTERM)
    next(reading)
    os.kill(reading._worker.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"^the host-prefetch worker process \(pid \d+\) exited with code -9"):
        for _ in range(4):  # past what it sent before it died
            next(reading)

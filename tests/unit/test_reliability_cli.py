"""Bad inputs to videobert-eval and videobert-generate are one-line errors (exit 2) found before anything heavy is
loaded; a prompt cut to the model's text length says so; any temperature > 0 samples (a tiny one is greedy)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.cli import eval_cli
from tests.helpers.tiny import SP, tiny_model
from videobert_ds.inference.text_to_video import check_sampling, prompt_ids, sample_visual_words

PY = sys.executable


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory) -> Path:
    """A real, tiny exported generator dir (weights, config, tokenizer, key frames), made in-process."""
    from videobert_ds.data.text import load_tokenizer, train_wordpiece
    from videobert_ds.model.specials import specials_from_tokenizer
    from videobert_ds.model.videobert import VideoBertForPreTraining, videobert_config
    from videobert_ds.visual.keyframes import KeyFrames

    out = tmp_path_factory.mktemp("gen") / "final"
    train_wordpiece(iter(["now the red circle moves left", "a blue square goes up"] * 20), 100, out)
    sp = specials_from_tokenizer(load_tokenizer(out), 16)
    ids = {"cls": sp.cls, "sep": sp.sep, "mask": sp.mask, "pad": sp.pad, "video_sep": sp.video_sep}
    config = videobert_config(
        text_vocab_size=sp.text_vocab_size,
        visual_vocab_size=16,
        visual_feature_dim=8,
        special_token_ids=ids,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        video_position_offset=12,  # 10 text tokens before the video
    )
    torch.manual_seed(0)
    VideoBertForPreTraining(config).save_pretrained(out)
    frames = torch.arange(16, dtype=torch.uint8).view(16, 1, 1, 1).expand(16, 4, 4, 3).contiguous()
    KeyFrames(frames, torch.zeros(16, dtype=torch.float64), [("v", i) for i in range(16)]).save(
        out / "visual_vocab_keyframes.safetensors"
    )
    return out


def _in_fresh_python(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `module.main(argv)` in a new interpreter and report whether torch got imported on the way."""
    code = (
        f"import sys; from {module} import main; rc = main({argv!r}); "
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED'); sys.exit(rc)"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([PY, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# videobert-eval: model dirs without (readable) weights
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def eval_dirs(tmp_path, generator_dir) -> tuple[Path, Path]:
    """(a model dir complete except for what each case removes, a shard dir that passes the config check)."""
    model = tmp_path / "model"
    shutil.copytree(generator_dir, model)
    shutil.copytree(generator_dir, model / "clip_encoder")  # any config.json + weights: only files are checked
    (model / "visual_vocab.safetensors").write_bytes(b"")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"shards": []}))
    return model, shards


def test_eval_without_weights_is_one_line_before_torch(eval_dirs):
    model, shards = eval_dirs
    (model / "model.safetensors").unlink()
    proc = _in_fresh_python(
        "videobert_ds.cli.eval", ["--model", str(model), "--shards", str(shards), "--config", "eval_tiny"]
    )
    assert "TORCH_NOT_IMPORTED" in proc.stdout  # nothing heavy was loaded to find this out
    line = _one_error_line(proc, "videobert-eval")
    assert line == f"videobert-eval: error: model.dir: {model} has no weights (no model.safetensors); " + (
        "export the run again with videobert-export"
    )


def test_eval_truncated_or_missing_weights_and_run_dirs(eval_dirs, tmp_path):
    model, shards = eval_dirs

    def error(model_dir: Path) -> str:
        proc = eval_cli("--model", str(model_dir), "--shards", str(shards), "--config", "eval_tiny")
        return _one_error_line(proc, "videobert-eval")

    weights = model / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # an export cut short
    assert "model.safetensors is unreadable" in error(model)
    weights.write_bytes(b"")
    assert "model.safetensors is unreadable" in error(model)
    weights.write_bytes(good)
    (model / "clip_encoder" / "model.safetensors").unlink()
    assert f"{model / 'clip_encoder'} has no weights" in error(model)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not an exported VideoBERT model dir (no config.json)" in error(empty)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("stage: evaluate\n")
    assert "is a training run dir without final/" in error(run) and f"videobert-export {run}" in error(run)
    shutil.copytree(model, run / "final")
    assert f"its exported model dir is {run / 'final'}" in error(run)


# ---------------------------------------------------------------------------------------------
# videobert-generate: flags that cannot sample, model dirs that cannot load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
        (["--temperature", "inf"], "--temperature must be a finite number >= 0 (0 = greedy), got inf"),
        (["--temperature", "-0.5"], "--temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
        (["--seed", str(2**64)], f"--seed must be in [0, 2**64), got {2**64}"),
        (["--seed", "-1"], "--seed must be in [0, 2**64), got -1"),
        (["--top-k", "-1"], "--top-k must be >= 0 (0 = the whole vocabulary), got -1"),
        (["--num-words", "0"], "--num-words must be >= 1, got 0"),
    ],
)
def test_generate_bad_flags_are_one_line(flags, message, tmp_path, capsys):
    from videobert_ds.cli.generate import main

    # The model dir does not exist: the flags are checked first, before anything is loaded.
    argv = ["--model", str(tmp_path / "missing"), "--text", "a red circle", "--out", str(tmp_path / "g.png"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"videobert-generate: error: {message}\n"
    assert not (tmp_path / "g.png").exists()


def test_generate_bad_flag_imports_no_torch(tmp_path):
    argv = ["--model", str(tmp_path), "--text", "x", "--out", str(tmp_path / "g.png"), "--temperature", "nan"]
    proc = _in_fresh_python("videobert_ds.cli.generate", argv)
    assert "TORCH_NOT_IMPORTED" in proc.stdout
    assert "got nan" in _one_error_line(proc, "videobert-generate")


def test_generate_model_dirs_without_weights(generator_dir, tmp_path, capsys):
    from videobert_ds.cli.generate import main

    def error(model_dir: Path) -> str:
        assert main(["--model", str(model_dir), "--text", "x", "--out", str(tmp_path / "g.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("videobert-generate: error: --model: "), err
        return err

    model = tmp_path / "model"
    shutil.copytree(generator_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "model.safetensors is unreadable" in error(model)
    weights.unlink()
    assert f"{model} has no weights (no model.safetensors)" in error(model)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert "is a training run dir without final/" in error(run)
    shutil.copytree(generator_dir, run / "final")
    assert f"its exported model dir is {run / 'final'}" in error(run)


def test_generate_cuts_a_long_prompt_with_one_warning(generator_dir, tmp_path, capsys, caplog):
    from videobert_ds.cli.generate import main

    long_text = " ".join(["the red circle moves left"] * 4)  # 20 tokens; the model takes 10 before the video
    out = tmp_path / "g.png"
    assert main(["--model", str(generator_dir), "--text", long_text, "--out", str(out), "--num-words", "4"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "prompt" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "is 20 text tokens, longer than the 10 the model takes before the video: using the first 10" in warnings[0]
    assert out.is_file() and len(capsys.readouterr().out.split()) == 4
    caplog.clear()
    assert main(["--model", str(generator_dir), "--text", "a red circle", "--out", str(out), "--num-words", "4"]) == 0
    assert not [r for r in caplog.records if "prompt" in r.getMessage()]  # a prompt that fits: no warning


# ---------------------------------------------------------------------------------------------
# The library under the CLI
# ---------------------------------------------------------------------------------------------


def test_prompt_ids_cut_as_before_and_warn_once(generator_dir, caplog):
    from videobert_ds.data.text import load_tokenizer

    tok = load_tokenizer(generator_dir)
    texts = ["now the red circle moves left " * 3, "a blue square"]
    want = tok(texts, add_special_tokens=False, truncation=True, max_length=7)["input_ids"]
    with caplog.at_level(logging.WARNING):
        assert prompt_ids(tok, texts, 7) == want
        assert prompt_ids(tok, texts, 7) == want  # the teacher's validation asks again with the same prompts
    cut = [r.getMessage() for r in caplog.records if "prompt" in r.getMessage()]
    assert len(cut) == 1 and "is 18 text tokens, longer than the 7" in cut[0], cut
    assert prompt_ids(tok, texts, 0) == [[], []]


def test_any_positive_temperature_samples_and_a_tiny_one_is_greedy():
    model = tiny_model()
    text = [[10, 11, 12], [20]]
    greedy = sample_visual_words(model, SP, text, num_words=5, temperature=0.0)
    for t in (1e-45, 5e-324, 1e-30):  # 1e-45 / 5e-324 used to give inf / inf = nan probabilities
        assert torch.equal(sample_visual_words(model, SP, text, num_words=5, temperature=t, seed=2**64 - 1), greedy)
    hot = sample_visual_words(model, SP, text, num_words=5, temperature=1e6, seed=1)
    assert hot.shape == (2, 5) and int(hot.max()) < SP.visual_vocab_size


@pytest.mark.parametrize(
    "temperature, top_k, seed, message",
    [
        (float("nan"), 0, 0, "temperature must be a finite number"),
        (float("inf"), 0, 0, "temperature must be a finite number"),
        (-1.0, 0, 0, "temperature must be a finite number"),
        (1.0, -2, 0, "top_k must be >= 0"),
        (1.0, 0, 2**64, "seed must fit in 64 bits"),
        (1.0, 0, -(2**63) - 1, "seed must fit in 64 bits"),
    ],
)
def test_check_sampling_rejects(temperature, top_k, seed, message):
    with pytest.raises(ValueError, match=message):
        check_sampling(temperature, top_k, seed)


def test_weights_index_names_missing_shards(tmp_path):
    from videobert_ds.model.model_dir import weights_problem

    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001.safetensors", "b": "model-00002.safetensors"}})
    )
    assert "lacks weight files named in model.safetensors.index.json" in weights_problem(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{")
    assert "is not a readable weights index" in weights_problem(tmp_path)

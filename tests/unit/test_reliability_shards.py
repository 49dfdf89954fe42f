"""A shard dir damaged after it was prepared (a truncated or missing tar, a garbled index or manifest) is a one-line
"corrupt shard" error before training or evaluation starts, found from the .idx files without reading the tars; and
files the project publishes honour the umask."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from videobert_ds.core.atomic import atomic_dir, save_safetensors, write_json
from videobert_ds.core.config import ConfigError, StageConfig, check_paths
from videobert_ds.eval.config import EvalStageConfig, check_eval_config

CPU_DS = str(Path(__file__).resolve().parents[2] / "ds_configs" / "zero3_cpu.json")


def _truncate(d: Path) -> None:
    tar = d / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # a copy cut short


def _swap(d: Path) -> None:
    shutil.copy(d / "shard-000001.tar", d / "shard-000000.tar")  # the tar no longer matches its index


def _count(d: Path) -> None:
    idx = d / "shard-000000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([f"v1.2 {len(lines) - 2}", *lines[1:-1]]) + "\n")  # one sample fewer than the manifest


def _manifest_drop(d: Path) -> None:
    (d / "manifest.json").write_text((d / "manifest.json").read_text()[:40])


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated tar": (_truncate, "corrupt shard {d}/shard-000000.tar: truncated"),
    "tar swapped": (_swap, "corrupt shard {d}/shard-000000.tar: does not match its index"),
    "tar missing": (lambda d: (d / "shard-000001.tar").unlink(), "corrupt shard {d}/shard-000001.tar: missing"),
    "idx missing": (lambda d: (d / "shard-000001.idx").unlink(), "corrupt shard {d}/shard-000001.tar: index"),
    "idx garbled": (
        lambda d: (d / "shard-000000.idx").write_bytes(b"\x00garbage\n"),
        "corrupt shard {d}/shard-000000.tar: index",
    ),
    "idx count": (_count, "corrupt shard {d}/shard-000000.tar: index"),
    "manifest garbled": (_manifest_drop, "corrupt shard directory {d}: manifest.json"),
}


@pytest.fixture()
def shard_copy(prepared_shards: Path, tmp_path: Path) -> Path:
    d = tmp_path / "shards"
    shutil.copytree(prepared_shards, d)
    return d


def _stage(d: Path) -> StageConfig:
    cfg = StageConfig()
    cfg.data.shards = str(d)
    return cfg


def _eval_stage(d: Path, tmp_path: Path) -> EvalStageConfig:
    cfg = EvalStageConfig()
    cfg.data.shards = str(d)
    model = tmp_path / "model"  # check_eval_config looks at the model dir's files first: only their names matter here
    for name in ("config.json", "visual_vocab.safetensors", "clip_encoder/config.json"):
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text("{}")
    cfg.model.dir = str(model)
    return cfg


def test_intact_shard_dir_passes(shard_copy: Path, tmp_path: Path) -> None:
    check_paths(_stage(shard_copy))
    check_eval_config(_eval_stage(shard_copy, tmp_path))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_shard_dir_is_a_one_line_error(damage: str, shard_copy: Path, tmp_path: Path) -> None:
    fn, message = DAMAGE[damage]
    fn(shard_copy)
    expected = "data.shards: " + message.format(d=shard_copy)
    for check in (
        lambda: check_paths(_stage(shard_copy)),
        lambda: check_eval_config(_eval_stage(shard_copy, tmp_path)),
    ):
        with pytest.raises(ConfigError) as err:
            check()
        assert str(err.value).startswith(expected), str(err.value)
        assert "\n" not in str(err.value)


def test_training_refuses_a_truncated_shard_with_exit_2(shard_copy: Path, capsys) -> None:
    from videobert_ds.train import main as train_main

    _truncate(shard_copy)
    code = train_main(["--deepspeed", CPU_DS, "--config", "video_encoder_tiny", f"data.shards={shard_copy}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    tar = shard_copy / "shard-000000.tar"
    assert err.startswith(f"videobert-train: error: data.shards: corrupt shard {tar}: truncated ("), err
    assert err.endswith("prepare it again") and "\n" not in err, err


# ----------------------------------------------------------------------------- umask


UMASKS = [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)]


@pytest.mark.parametrize("umask, file_mode, dir_mode", UMASKS)
def test_published_files_honour_the_umask(umask: int, file_mode: int, dir_mode: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        js = write_json(tmp_path / "report.json", {"a": 1})
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert js.stat().st_mode & 0o777 == file_mode and json.loads(js.read_text()) == {"a": 1}
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "model" / "config.json").stat().st_mode & 0o777 == file_mode


@pytest.mark.parametrize("umask, file_mode, dir_mode", UMASKS)
def test_safetensors_honour_the_umask(umask: int, file_mode: int, dir_mode: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        st = save_safetensors({"w": torch.zeros(2)}, tmp_path / "vocab.safetensors", {"k": "v"})
    finally:
        os.umask(old)
    assert st.stat().st_mode & 0o777 == file_mode

"""Nothing a user does loses data (issue 21): videobert-export's --out, atomic folder replacement, the demo's
--force. Uses the tiny 1-rank run of tests/helpers/checkpoints.py (shared with test_reliability_checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.checkpoints import copy_run, optim_file, tiny_run, truncate
from videobert_ds.cli.export import main as export
from videobert_ds.core.atomic import atomic_dir


@pytest.fixture(scope="module")
def run(prepared_shards, tmp_path_factory) -> Path:
    return tiny_run(prepared_shards, tmp_path_factory)


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("videobert-export: error: ") and "\n" not in err, err
    return err


def test_export_never_replaces_the_run_or_what_holds_it(run, tmp_path, capsys):
    """--out RUN (or a folder above it, or its checkpoints/ or tb/) is refused even with --force, and the run
    is untouched. Before: shutil.rmtree(--out) deleted the checkpoints, TensorBoard logs and metrics."""
    run_dir = copy_run(run, tmp_path / "runs" / "run")
    before = snapshot(tmp_path)
    for out, why in [
        (run_dir, "is the run dir"),
        (tmp_path / "runs", "a folder above it"),
        (run_dir / "checkpoints", "inside the run's checkpoints/"),
        (run_dir / "checkpoints" / "step00000002", "inside the run's checkpoints/"),
        (run_dir / "tb", "inside the run's tb/"),
    ]:
        assert export([str(run_dir), "--out", str(out), "--force"]) == 2
        assert why in error_line(capsys)
        assert snapshot(tmp_path) == before


def test_export_replaces_only_an_earlier_export_unless_forced(run, tmp_path, capsys):
    foreign = tmp_path / "models"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert export([str(run), "--out", str(foreign)]) == 2
    err = error_line(capsys)
    assert "not empty and not an earlier export" in err and "--force" in err
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "export"
    out.mkdir()  # an empty folder is fine
    assert export([str(run), "--out", str(out)]) == 0
    marker = json.loads((out / "export.json").read_text())
    assert marker["tag"] == "step00000004" and marker["run"] == str(run.resolve())
    assert export([str(run), "--out", str(out), "--tag", "step00000002"]) == 0  # an earlier export: replaced
    assert json.loads((out / "export.json").read_text())["tag"] == "step00000002"

    assert export([str(run), "--out", str(foreign), "--force"]) == 0
    assert not (foreign / "notes.txt").exists() and (foreign / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "models"]  # no temporary folders left


def test_export_of_a_damaged_newest_checkpoint(run, tmp_path, capsys, caplog):
    run_dir = copy_run(run, tmp_path / "run")
    truncate(optim_file(run_dir / "checkpoints" / "step00000004"))
    assert export([str(run_dir), "--out", str(tmp_path / "a")]) == 0  # the newest sound one, with a warning
    assert json.loads((tmp_path / "a" / "export.json").read_text())["tag"] == "step00000002"
    assert "step00000004 is damaged" in caplog.text
    capsys.readouterr()  # DeepSpeed's progress bars
    assert export([str(run_dir), "--out", str(tmp_path / "b"), "--tag", "step00000004"]) == 2
    assert "--tag " in error_line(capsys) and not (tmp_path / "b").exists()


def test_atomic_dir_keeps_the_old_folder_until_the_new_one_is_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old").read_text() == "old"
    with atomic_dir(out) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["new"]

    # A link to a folder is replaced as a link: what it pointed to stays.
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("k")
    (tmp_path / "link").symlink_to(target)
    with atomic_dir(tmp_path / "link") as tmp:
        (tmp / "new").write_text("new")
    assert (target / "keep").read_text() == "k" and not (tmp_path / "link").is_symlink()
    (tmp_path / "file").write_text("f")
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "file"):
        pass
    assert (tmp_path / "file").read_text() == "f"


def test_demo_force_deletes_only_a_demo_dir(tmp_path, monkeypatch, capsys):
    from videobert_ds.cli.demo import main as demo

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit) as exit_info:
        demo(["--root", str(foreign), "--force"])
    assert exit_info.value.code == 2 and "not a demo dir" in capsys.readouterr().err
    assert (foreign / "thesis.tex").is_file()

    demo_root = tmp_path / "demo"
    (demo_root / "logs").mkdir(parents=True)
    (demo_root / "work").mkdir()
    monkeypatch.chdir(demo_root / "work")
    with pytest.raises(SystemExit):
        demo(["--root", str(demo_root), "--force"])
    assert "holds the current folder" in capsys.readouterr().err and (demo_root / "logs").is_dir()

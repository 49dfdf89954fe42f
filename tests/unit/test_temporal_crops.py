"""Temporal crops (data/crops.py): which num_frames of a longer clip a sample gives, on a tiny real shard dir whose
frames encode their index as brightness, so every test reads back which frames it got."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.media import frame_index, make_video
from videobert_ds.core.config import ConfigError, DataConfig, StageConfig, from_dict
from videobert_ds.core.distributed import DistEnv
from videobert_ds.data.crops import crop_start, crop_starts
from videobert_ds.data.decoders.pyav import PyAVClipDecoder
from videobert_ds.data.loader import build_clip_loader
from videobert_ds.data.sampling import read_shards
from videobert_ds.training.loaders import build_split_loader

T = 8
SECONDS = {"long": 3.0, "mid": 2.5, "short": 0.75}  # 24, 20 and 6 frames at 8 fps: two crop, one pads


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three clips, one per video (captioned: one sample each), source frame i = brightness level(i)."""
    from videobert_ds.data.prepare import prepare_corpus

    root = tmp_path_factory.mktemp("crops")
    lines = []
    for name, seconds in SECONDS.items():
        make_video(root / f"{name}.mp4", fps=8, seconds=seconds)
        lines.append(json.dumps({"video": f"{name}.mp4", "caption": name, "id": name, "split": "train"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    prepare_corpus(root / "manifest.jsonl", root / "shards", codec="vp9", fps=8, size=32, samples_per_shard=8)
    return root / "shards"


def loader(shards: Path, **kw):
    kw = {"batch_size": 3, "shuffle": False, "device": "cpu", "backend": "pyav", **kw}
    return build_clip_loader(shards, "train", kw.pop("batch_size"), kw.pop("num_frames", T), **kw)


def indices(batch) -> dict[str, list[int]]:
    """Per sample key, the source frame index of each frame delivered (-1 for a zero-padded frame)."""
    return {
        m["__key__"]: [frame_index(f.float().mean().item()) if f.any() else -1 for f in clip]
        for m, clip in zip(batch.meta, batch.frames)
    }


def expect(meta: dict, start: int) -> list[int]:
    """num_frames consecutive frames from ``start``, zero-padded past the clip's end."""
    return [i if i < meta["num_frames"] else -1 for i in range(start, start + T)]


def epochs(ld, n: int) -> list:
    """The single batch of each of the next ``n`` epochs (3 samples, batch size 3)."""
    out = []
    for _ in range(n):
        (batch,) = list(ld)
        out.append(batch)
    return out


def test_crop_start_is_a_pure_function_of_seed_epoch_and_key():
    assert crop_start("center", 24, 8) == 8 and crop_start("center", 21, 8) == 6
    assert crop_start("start", 24, 8, seed=5, epoch=3, key="a") == 0
    for mode in ("random", "center", "start"):  # not longer than num_frames: from frame 0, padded
        assert crop_start(mode, 8, 8, seed=1, epoch=2, key="a") == crop_start(mode, 3, 8, key="b") == 0
    draws = [crop_start("random", 24, 8, seed=1, epoch=e, key="vid_00000") for e in range(20)]
    assert all(0 <= s <= 16 for s in draws) and len(set(draws)) > 5  # anew each epoch, inside the clip
    assert draws == [crop_start("random", 24, 8, seed=1, epoch=e, key="vid_00000") for e in range(20)]
    other_seed = [crop_start("random", 24, 8, seed=2, epoch=e, key="vid_00000") for e in range(20)]
    other_key = [crop_start("random", 24, 8, seed=1, epoch=e, key="vid_00001") for e in range(20)]
    assert draws != other_seed and draws != other_key
    metas = [{"__key__": "vid_00000", "num_frames": 24}, {"__key__": "x", "num_frames": 4}]
    assert crop_starts("random", metas, 8, seed=1, epoch=3) == [draws[3], 0]
    with pytest.raises(ValueError, match="temporal crop must be one of"):
        crop_start("middle", 24, 8)


def test_random_crops_change_per_epoch_replay_per_seed_and_on_resume(shards):
    """Random crops move from epoch to epoch, are the draws crop_start names, keep the true frame counts, are the
    same for the same (seed, epoch) in another loader, and a resumed loader replays them; DALI decodes the same
    frames as PyAV."""
    ld = loader(shards, temporal_crop="random", seed=3)
    got = epochs(ld, 4)
    starts: dict[str, set[int]] = {}
    for epoch, batch in enumerate(got):
        assert batch.frames.shape[:2] == (3, T)
        for meta, n, (key, idx) in zip(batch.meta, batch.num_frames.tolist(), indices(batch).items()):
            start = crop_start("random", meta["num_frames"], T, seed=3, epoch=epoch, key=key)
            assert idx == expect(meta, start), (epoch, key)
            assert n == min(meta["num_frames"], T)  # batch.num_frames: true frames, crop or not
            starts.setdefault(meta["text"], set()).add(start)
    assert len(starts["long"]) > 1 and len(starts["mid"]) > 1 and starts["short"] == {0}

    again = epochs(loader(shards, temporal_crop="random", seed=3), 2)
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(again, got))
    resumed = loader(shards, temporal_crop="random", seed=3)
    resumed.load_state_dict({"epoch": 2, "batches_in_epoch": 0})
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(epochs(resumed, 2), got[2:]))
    other = epochs(loader(shards, temporal_crop="random", seed=4), 2)
    assert any(not torch.equal(a.frames, b.frames) for a, b in zip(other, got))

    dali = loader(shards, temporal_crop="random", seed=3, backend="dali")
    assert dali.backend == "dali"
    for d, p in zip(epochs(dali, 2), got):
        assert [m["__key__"] for m in d.meta] == [m["__key__"] for m in p.meta]
        assert torch.equal(d.frames, p.frames) and torch.equal(d.num_frames, p.num_frames)


@pytest.mark.parametrize("backend", ["dali", "pyav"])
def test_center_crop_is_the_middle_and_start_is_todays_output(shards, backend):
    (center,) = list(loader(shards, temporal_crop="center", backend=backend, pad_mode="edge"))
    for meta, idx in zip(center.meta, indices(center).values()):
        n = meta["num_frames"]
        start = max(0, (n - T) // 2)
        assert idx == [min(i, n - 1) for i in range(start, start + T)]  # edge padding for the short clip
    assert sorted(idx[0] for idx in indices(center).values()) == [0, 6, 8]  # short, 20 and 24 frames

    # "start" is the first frames, the same as a decoder fed without any crop (the behaviour before crops).
    (first,) = list(loader(shards, temporal_crop="start", backend=backend))
    assert all(idx == expect(m, 0) for m, idx in zip(first.meta, indices(first).values()))
    ld = loader(shards, temporal_crop="start")
    plain = ((c, m) for c, m, _ in ld._encoded_batches())  # (clips, payload) pairs: no starts at all
    frames, _ = next(PyAVClipDecoder(plain, batch_size=3, num_frames=T, device=torch.device("cpu")))
    assert torch.equal(frames, first.frames)


def test_training_loader_crops_as_configured_validation_takes_the_centre(shards):
    cfg = StageConfig(data=DataConfig(shards=str(shards), num_frames=T, backend="pyav"))
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert cfg.data.temporal_crop == "random"
    assert build_split_loader(cfg, "train", 3, env, shuffle=True).temporal_crop == "random"
    assert build_split_loader(cfg, "train", 3, env, shuffle=False).temporal_crop == "center"
    cfg.data.temporal_crop = "start"
    assert build_split_loader(cfg, "train", 3, env, shuffle=True).temporal_crop == "start"
    with pytest.raises(ConfigError, match="temporal_crop"):
        from_dict(DataConfig, {"temporal_crop": "middle"}, "data")
    with pytest.raises(ValueError, match="temporal_crop must be one of"):
        loader(shards, temporal_crop="middle")


def test_evaluation_decodes_the_centre_crop(shards):
    """videobert-eval's items: the frames handed to the visual tokenizer are each clip's centre num_frames."""
    from videobert_ds.eval.items import encode_items

    seen: dict[str, list[int]] = {}

    def visual_words(frames: torch.Tensor, counts: torch.Tensor):  # records what it is given
        for clip, n in zip(frames, counts.tolist()):
            seen[len(seen)] = ([frame_index(f.float().mean().item()) for f in clip[:n]], n)
        return torch.zeros(len(frames), 1, dtype=torch.long), torch.ones(len(frames), 1, dtype=torch.bool)

    def text_ids(texts, **_):
        return {"input_ids": [[1] for _ in texts]}

    items, _ = encode_items(
        shards, "train", rank=0, world_size=1, text_tokenizer=text_ids, visual_tokenizer=visual_words,
        num_frames=T, max_text_tokens=4, batch_size=3, device=torch.device("cpu"), backend="dali",
    )  # fmt: skip
    lengths = {json.loads(s["json"])["text"]: json.loads(s["json"])["num_frames"] for s in _samples(shards)}
    got = {item.text: seen[i] for i, item in enumerate(items)}
    for name, n in lengths.items():
        start = max(0, (n - T) // 2)
        assert got[name] == (list(range(start, min(start + T, n))), min(n, T)), name


def _samples(shards: Path):
    from videobert_ds.data.loader import read_shard_manifest, split_shards

    return read_shards(split_shards(shards, read_shard_manifest(shards), "train"))

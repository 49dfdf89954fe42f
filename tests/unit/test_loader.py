"""The training-side clip loader on real prepared shards: rank split, order, resume, backends, frames."""

from __future__ import annotations

import json
import logging
from itertools import islice
from pathlib import Path

import pytest
import torch

from videobert_ds.data.loader import build_clip_loader, read_shard_manifest, split_shards
from videobert_ds.data.sampling import batch_stream, read_shards, steps_per_epoch

SPLIT = "train"
T = 8


def loader(shards: Path, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("num_frames", T)
    kw.setdefault("device", "cpu")
    return build_clip_loader(shards, kw.pop("split", SPLIT), kw.pop("batch_size"), kw.pop("num_frames"), **kw)


def epoch_keys(ld) -> list[list[str]]:
    """Keys of each batch the loader delivers for the rest of its current epoch."""
    return [[m["__key__"] for m in b.meta] for b in ld]


def split_info(shards: Path, split: str = SPLIT):
    infos = split_shards(shards, read_shard_manifest(shards), split)
    keys = [s["__key__"] for s in read_shards(infos)]
    return infos, keys


def flat(batches: list[list[str]]) -> list[str]:
    return [k for b in batches for k in b]


def test_manifest_counts_match_tars(prepared_shards):
    infos, keys = split_info(prepared_shards)
    assert len(keys) == sum(s.num_samples for s in infos) == len(set(keys))


def test_two_ranks_disjoint_cover_equal_steps(prepared_shards):
    infos, all_keys = split_info(prepared_shards)
    lds = [loader(prepared_shards, rank=r, world_size=2, batch_size=2) for r in (0, 1)]
    assert lds[0].steps_per_epoch == lds[1].steps_per_epoch > 0
    steps = lds[0].steps_per_epoch
    per_rank = [flat(epoch_keys(ld)) for ld in lds]
    for keys in per_rank:
        assert len(keys) == steps * 2 == len(set(keys))
    union = set(per_rank[0]) | set(per_rank[1])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert union <= set(all_keys)
    assert len(union) == 2 * steps * 2  # all but the dropped tail
    assert steps == steps_per_epoch([s.num_samples for s in infos], 2, 2)


def test_more_ranks_than_shards_stride_samples(prepared_shards):
    """With more ranks than shards every rank reads all shards and keeps every world-th sample."""
    infos, all_keys = split_info(prepared_shards)
    world = len(infos) + 1
    assert len(all_keys) >= world, "fixture too small for this test"
    steps = steps_per_epoch([s.num_samples for s in infos], world, 1)
    assert steps == len(all_keys) // world
    seen: list[str] = []
    for rank in range(world):
        stream = batch_stream(infos, seed=3, rank=rank, world_size=world, batch_size=1, shuffle=True, buffer_size=4)
        seen += [s["__key__"] for batch in islice(stream, steps) for s in batch]
    assert len(seen) == len(set(seen)) == world * steps
    assert set(seen) <= set(all_keys)


def test_order_is_seeded_and_changes_per_epoch(prepared_shards):
    a = loader(prepared_shards, seed=7, backend="pyav", num_frames=1)
    b = loader(prepared_shards, seed=7, backend="pyav", num_frames=1)
    a0, b0 = epoch_keys(a), epoch_keys(b)
    assert a0 == b0
    a1 = epoch_keys(a)
    assert a.epoch == 2
    assert a1 != a0 and len(flat(a1)) == len(flat(a0))
    c0 = epoch_keys(loader(prepared_shards, seed=8, backend="pyav", num_frames=1))
    assert c0 != a0


def test_unshuffled_order_is_manifest_order(prepared_shards):
    _, all_keys = split_info(prepared_shards)
    ld = loader(prepared_shards, shuffle=False, batch_size=1, backend="pyav", num_frames=1)
    assert flat(epoch_keys(ld)) == all_keys


@pytest.mark.parametrize("backend", ["dali", "pyav"])
def test_resume_continues_exactly(prepared_shards, backend):
    kw = dict(seed=1, rank=1, world_size=2, batch_size=2, backend=backend, shuffle_buffer=5)
    ref = loader(prepared_shards, **kw)
    steps = ref.steps_per_epoch
    assert steps >= 2, "fixture too small for this test"
    expected = epoch_keys(ref) + epoch_keys(ref)  # two uninterrupted epochs

    first = loader(prepared_shards, **kw)
    k = steps // 2  # mid-epoch
    taken = [[m["__key__"] for m in b.meta] for b in islice(first, k)]
    state = first.state_dict()
    assert state == {"epoch": 0, "batches_in_epoch": k}  # prefetched batches do not count
    first.close()

    resumed = loader(prepared_shards, **kw)
    resumed.load_state_dict(state)
    rest = epoch_keys(resumed)
    assert resumed.state_dict() == {"epoch": 1, "batches_in_epoch": 0}
    got = taken + rest + epoch_keys(resumed)
    assert got == expected
    assert len(set(flat(taken + rest))) == steps * 2  # no repeats or skips within the epoch


def test_resume_gives_identical_frames(prepared_shards):
    ref = loader(prepared_shards, seed=2, batch_size=2)
    batches = list(islice(ref, 3))
    resumed = loader(prepared_shards, seed=2, batch_size=2)
    resumed.load_state_dict({"epoch": 0, "batches_in_epoch": 2})
    b = next(iter(resumed))
    assert [m["__key__"] for m in b.meta] == [m["__key__"] for m in batches[2].meta]
    assert torch.equal(b.frames, batches[2].frames)


def test_dali_and_pyav_decode_the_same_frames(prepared_shards):
    kw = dict(shuffle=False, batch_size=4)
    dali, pyav = loader(prepared_shards, backend="dali", **kw), loader(prepared_shards, backend="pyav", **kw)
    assert (dali.backend, pyav.backend) == ("dali", "pyav")
    for bd, bp in zip(dali, pyav):
        assert [m["__key__"] for m in bd.meta] == [m["__key__"] for m in bp.meta]
        assert torch.equal(bd.num_frames, bp.num_frames)
        diff = (bd.frames.float() - bp.frames.float()).abs().mean().item()
        assert diff < 1.0, f"mean absolute pixel difference {diff:.2f}"  # identical on this stack


@pytest.mark.parametrize("backend", ["dali", "pyav"])
@pytest.mark.parametrize("pad_mode", ["constant", "edge"])
def test_frames_shape_padding_and_true_counts(prepared_shards, backend, pad_mode):
    size = read_shard_manifest(prepared_shards)["size"]
    h, w = (size, size) if isinstance(size, int) else size
    _, all_keys = split_info(prepared_shards)
    longest = max(json.loads(s["json"])["num_frames"] for s in read_shards(split_info(prepared_shards)[0]))
    t = longest + 3  # every clip is padded
    ld = loader(prepared_shards, num_frames=t, batch_size=3, backend=backend, pad_mode=pad_mode)
    b = next(iter(ld))
    assert b.frames.dtype == torch.uint8 and b.frames.shape == (3, t, h, w, 3)
    assert b.frames.device.type == "cpu"
    assert b.num_frames.dtype == torch.int64
    assert b.num_frames.tolist() == [m["num_frames"] for m in b.meta]
    for clip, n in zip(b.frames, b.num_frames.tolist()):
        assert 0 < n < t
        assert clip[:n].float().mean() > 0
        if pad_mode == "constant":
            assert not clip[n:].any()
        else:
            assert torch.equal(clip[n:], clip[n - 1].expand_as(clip[n:]))
    short = next(iter(loader(prepared_shards, num_frames=2, batch_size=3, backend=backend)))
    assert short.frames.shape[1] == 2 and short.num_frames.tolist() == [2, 2, 2]


@pytest.fixture(scope="module")
def h264_shards(synth_corpus, tmp_path_factory) -> Path:
    from videobert_ds.data.prepare import prepare_corpus

    out = tmp_path_factory.mktemp("shards_h264")
    prepare_corpus(synth_corpus, out, codec="h264", fps=8, size=32, samples_per_shard=8)
    return out


def test_auto_backend_picks_pyav_for_h264_on_cpu(h264_shards, caplog):
    with caplog.at_level(logging.WARNING, logger="videobert_ds.data.loader"):
        ld = loader(h264_shards, backend="auto")
    assert ld.backend == "pyav"
    assert any("cannot decode h264" in r.getMessage() for r in caplog.records)
    b = next(iter(ld))
    assert b.frames.shape[:2] == (2, T) and b.frames.dtype == torch.uint8
    with pytest.raises(ValueError, match="cannot decode h264"):
        loader(h264_shards, backend="dali")


def test_auto_backend_picks_dali_for_vp9(prepared_shards):
    assert loader(prepared_shards, backend="auto").backend == "dali"


def test_clear_errors(prepared_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loader(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        loader(tmp_path)
    with pytest.raises(ValueError, match="split 'nope' is not in"):
        loader(prepared_shards, split="nope")
    manifest = read_shard_manifest(prepared_shards)
    manifest["shards"] = [{**manifest["shards"][0], "split": "empty", "num_samples": 0}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no samples"):
        loader(tmp_path, split="empty")
    _, all_keys = split_info(prepared_shards)
    with pytest.raises(ValueError, match="too few"):
        loader(prepared_shards, batch_size=len(all_keys) + 1)


def test_to_device_pins_then_copies_asynchronously_to_a_gpu(monkeypatch):
    """Host -> GPU copies go through page-locked memory with non_blocking=True (a pageable copy blocks the host).
    No CUDA here: record what to_device asks of the tensor on the way to cuda:0, and that the CPU path asks
    neither."""
    from videobert_ds.data.decoders.base import to_device

    calls: list[tuple] = []

    def pin_memory(self, *args, **kwargs):
        calls.append(("pin_memory", self.device.type))
        return self

    def to(self, *args, **kwargs):
        calls.append(("to", args, kwargs))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    counts = torch.tensor([3, 4], dtype=torch.int64)
    assert to_device(counts, torch.device("cuda", 0)) is counts
    assert calls == [("pin_memory", "cpu"), ("to", (torch.device("cuda", 0),), {"non_blocking": True})]
    calls.clear()
    to_device(counts, torch.device("cpu"))
    assert calls == [("to", (torch.device("cpu"),), {})]
    calls.clear()

    # A token batch built in the trainer's worker process goes to the GPU the same way, every tensor of it.
    from videobert_ds.data.tokens import TokenBatch

    batch = TokenBatch(
        ids=torch.zeros(2, 3, dtype=torch.int64),
        valid=torch.ones(2, 3, dtype=torch.bool),
        features=torch.zeros(2, 3, 4, dtype=torch.float16),
        num_frames=counts,
        meta=[{"__key__": "a"}, {"__key__": "b"}],
        span=12,
    )
    moved = batch.to(torch.device("cuda", 0))
    assert calls == [("pin_memory", "cpu"), ("to", (torch.device("cuda", 0),), {"non_blocking": True})] * 4
    assert (moved.meta, moved.span) == (batch.meta, batch.span)

"""Shards from anywhere, weighted sources and on_error skip, on the session's real prepared shards: a real HTTP
server on 127.0.0.1 (Python's ThreadingHTTPServer in a thread) serves the shard dir; brace patterns, pipe:, an
fsspec URL (memory://), a connection the server drops mid-shard, corrupted shards and samples."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

import pytest

from tests.helpers.http import http_server
from videobert_ds.core.config import ConfigError, DataConfig, StageConfig, check_paths, check_shard_dir, from_dict
from videobert_ds.data.loader import build_clip_loader, read_shard_manifest, split_shards
from videobert_ds.data.sampling import Source, batch_stream, plan_epoch, planned_counts, read_shards, steps_per_epoch
from videobert_ds.data.sources import ReadPolicy, ShardInfo, SkipCounts, SkippedTooMany, read_shard
from videobert_ds.data.text import shard_texts

SPLIT = "train"
FAST = ReadPolicy(retries=3, backoff_s=0.01)


@pytest.fixture
def serve() -> Iterator:
    """serve(folder, drop=(), drop_after=0) -> base URL of a real HTTP server on 127.0.0.1 serving `folder`."""
    with ExitStack() as stack:
        yield lambda *args, **kw: stack.enter_context(http_server(*args, **kw))


def keys(location, split: str = SPLIT, policy: ReadPolicy = FAST, counts: SkipCounts | None = None) -> list[str]:
    shards = split_shards(location, read_shard_manifest(location), split)
    return [s["__key__"] for s in read_shards(shards, policy, counts)]


def batch_keys(shards, n: int, **kw) -> list[list[str]]:
    kw = {"seed": 5, "rank": 0, "world_size": 1, "batch_size": 2, "shuffle": True, "buffer_size": 4, **kw}
    return [[s["__key__"] for s in b] for b in islice(batch_stream(shards, **kw), n)]


def loader_keys(ld, n: int) -> list[list[str]]:
    out: list[list[str]] = []
    while len(out) < n:
        out += [[m["__key__"] for m in b.meta] for b in islice(ld, n - len(out))]
    return out


def test_http_dir_pattern_pipe_and_fsspec_give_the_local_samples(prepared_shards, serve):
    local = keys(prepared_shards)
    url = serve(prepared_shards)
    names = [e["file"] for e in read_shard_manifest(prepared_shards)["shards"]]
    last = len(names) - 1
    assert keys(url) == local
    assert keys(url + "/") == local
    pattern = f"{url}/shard-{{000000..{last:06d}}}.tar"
    assert keys(pattern) == local
    assert keys(f"{prepared_shards}/shard-{{000000..{last:06d}}}.tar") == local
    assert keys(f"pipe:cat {prepared_shards}/shard-{{000000..{last:06d}}}.tar") == local
    assert keys(f"pipe:curl -s -f {url}/shard-{{000000..{last:06d}}}.tar") == local
    # a pattern naming one shard reads only that one
    first_split = read_shard_manifest(prepared_shards)["shards"][0]["split"]
    one = keys(f"{url}/shard-000000.tar", split=first_split)
    assert one == keys(f"pipe:cat {prepared_shards}/shard-000000.tar", split=first_split) and one
    # fsspec: an in-memory file system stands in for s3:// / gs:// (same code path, no network)
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for p in prepared_shards.iterdir():
        if p.is_file():
            fs.pipe(f"/shards_t/{p.name}", p.read_bytes())
    assert keys("memory://shards_t") == local
    # a pattern the manifest does not list, a missing location, an unknown protocol: one-line errors
    with pytest.raises(ValueError, match="shard-999999.tar is not listed"):
        keys(f"{url}/shard-999999.tar")
    with pytest.raises(OSError, match=r"^cannot read http://.*/nope/manifest.json \(curl exit 22: HTTP error"):
        read_shard_manifest(f"{url}/nope")
    with pytest.raises(ValueError, match="unknown protocol"):
        read_shard_manifest("nosuchproto://bucket/shards")
    # the teacher's tokenizer texts read over HTTP too
    assert list(shard_texts(url)) == list(shard_texts(prepared_shards))
    # the config check reads only the manifest of a remote location
    check_shard_dir(url)
    check_shard_dir(pattern)
    with pytest.raises(ConfigError, match=r"^data.shards: cannot read .*manifest.json"):
        check_shard_dir(f"{url}/nope")


def test_http_loader_equals_local_resumes_and_survives_a_dropped_connection(prepared_shards, serve, caplog):
    names = [e["file"] for e in read_shard_manifest(prepared_shards)["shards"]]
    url = serve(prepared_shards, drop=tuple(names), drop_after=3000)  # every shard's first GET drops mid-transfer
    opts = {"batch_size": 2, "num_frames": 1, "backend": "pyav", "device": "cpu", "seed": 3, "retry_backoff_s": 0.01}
    local = build_clip_loader(prepared_shards, SPLIT, **opts)
    n = local.steps_per_epoch + 2  # into the second epoch
    want = loader_keys(local, n)
    with caplog.at_level(logging.WARNING, logger="videobert_ds.data.sources"):
        remote = build_clip_loader(url, SPLIT, **opts)
        got = loader_keys(remote, n)
    assert got == want
    assert "connection dropped mid-transfer" in caplog.text and "retry 1/3" in caplog.text
    # resume: a new loader at a saved position continues exactly (read again over HTTP, not decoded)
    again = build_clip_loader(url, SPLIT, **opts)
    again.load_state_dict({"epoch": 0, "batches_in_epoch": 3})
    assert loader_keys(again, n - 3) == want[3:]
    # without retries the dropped connection is one line naming the shard and position
    fresh = serve(prepared_shards, drop=tuple(names), drop_after=3000)
    with pytest.raises(RuntimeError, match=r"cannot read http://.*\.tar at sample \d+ \(curl exit 18"):
        keys(fresh, policy=ReadPolicy(retries=0))


def test_weighted_sources_epoch_and_resampled(prepared_shards, tmp_path):
    other = tmp_path / "b"
    shutil.copytree(prepared_shards, other)
    a = split_shards(prepared_shards, read_shard_manifest(prepared_shards), SPLIT)
    b = split_shards(other, read_shard_manifest(other), SPLIT)
    sources = [Source(tuple(a), 1.0), Source(tuple(b), 2.5)]
    # epoch mode: every shard of b listed 2x plus half of them again, drawn per epoch
    plans = [plan_epoch(sources, seed=1, epoch=e, rank=0, world_size=1, batch_size=1, shuffle=True) for e in (0, 1)]
    for p in plans:
        per = Counter("b" if str(s.path).startswith(str(other)) else "a" for s in p.shards)
        assert per == {"a": len(a), "b": 2 * len(b) + round(0.5 * len(b))}
    assert steps_per_epoch(planned_counts(sources), 1, 1) <= sum(s.num_samples for s in plans[0].shards)

    for resampled in (False, True):
        kw = {"resampled": resampled, "batch_size": 1}
        stream = batch_stream(sources, seed=5, rank=0, world_size=1, shuffle=True, buffer_size=4, **kw)
        steps = steps_per_epoch(planned_counts(sources), 1, 1)
        expected = 2.5 * len(b) / (2.5 * len(b) + len(a))  # equal-sized shards (up to a split's last): weight x shards
        if resampled:  # shards drawn with replacement: the share over many epochs' draws (plans only, no reading)
            drawn = [
                s
                for e in range(300)
                for s in plan_epoch(sources, **kw, seed=5, epoch=e, rank=0, world_size=1, shuffle=True).shards
            ]
            share = sum(s.num_samples for s in drawn if str(s.path).startswith(str(other))) / sum(
                s.num_samples for s in drawn
            )
        else:
            urls = [s["__url__"] for b in islice(stream, 4 * steps) for s in b]
            share = sum(u.startswith(str(other)) for u in urls) / len(urls)
        assert abs(share - expected) < 0.03, (resampled, share, expected)
        first = batch_keys(sources, 12, **kw)
        assert batch_keys(sources, 12, **kw) == first  # same seed, same stream
        assert batch_keys(sources, 12, seed=6, **kw) != first
        assert batch_keys(sources, 7, skip_batches=5, **kw) == first[5:]  # resume exact
        assert batch_keys(sources, 3, start_epoch=1, **kw) == batch_keys(sources, steps + 3, **kw)[steps:]
    # the loader takes [(location, weight), ...], every rank the same steps
    lds = [
        build_clip_loader(
            [(prepared_shards, 1.0), (other, 2.5)], SPLIT, 2, 1, backend="pyav", device="cpu", rank=r, world_size=2
        )
        for r in (0, 1)
    ]
    assert lds[0].steps_per_epoch == lds[1].steps_per_epoch == steps_per_epoch(planned_counts(sources), 2, 2)
    assert [len(loader_keys(ld, ld.steps_per_epoch)) for ld in lds] == [lds[0].steps_per_epoch] * 2


def _rewrite_first_sample(tar: Path, change) -> None:
    """Rewrite a shard with its first sample's members changed by `change(files) -> files` (count kept)."""
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    first_key = members[0][0].name.rsplit(".", 1)[0]
    files = {m.name: data for m, data in members if m.name.startswith(first_key + ".")}
    changed = change(files)
    with tarfile.open(tar, "w") as t:
        done = False
        for m, data in members:
            if m.name.startswith(first_key + "."):
                if done:
                    continue
                done = True
                for name, blob in changed.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    t.addfile(info, io.BytesIO(blob))
                continue
            t.addfile(m, io.BytesIO(data))


def test_on_error_skip_counts_bad_shards_and_samples_keeps_steps_equal(prepared_shards, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(prepared_shards, d)
    entries = [e for e in read_shard_manifest(d)["shards"] if e["split"] == SPLIT]
    assert len(entries) >= 3, "fixture too small for this test"
    # shard 0: its first sample's json garbled; shard 1: first sample without video; shard 2: cut mid-way
    _rewrite_first_sample(
        d / entries[0]["file"], lambda f: {k: b"{" if k.endswith(".json") else v for k, v in f.items()}
    )
    _rewrite_first_sample(d / entries[1]["file"], lambda f: {k: v for k, v in f.items() if k.endswith(".json")})
    cut = d / entries[2]["file"]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    opts = {"batch_size": 2, "num_frames": 1, "backend": "pyav", "device": "cpu", "seed": 2, "world_size": 2}
    with pytest.raises(RuntimeError, match=r"^cannot read .*\.tar at sample \d+ \("):
        keys(d)  # on_error raise (the default) stops at the unreadable shard
    lost = SkipCounts()
    list(read_shard(ShardInfo(str(cut), entries[2]["num_samples"]), ReadPolicy(on_error="skip"), lost))
    assert 0 < lost.skipped["read"] < entries[2]["num_samples"]
    # one rank, batch 1: the epoch needs every sample, so the skipped ones are made up by a second pass
    infos = split_shards(d, read_shard_manifest(d), SPLIT)
    total = sum(s.num_samples for s in infos)
    one = [k for b in batch_keys(infos, total, batch_size=1, policy=ReadPolicy(on_error="skip")) for k in b]
    assert len(one) == total and len(set(one)) == total - lost.skipped["read"]
    lds = [build_clip_loader(d, SPLIT, **opts, rank=r, on_error="skip", max_skip_share=0.5) for r in (0, 1)]
    steps = lds[0].steps_per_epoch
    counts = []
    for ld in lds:
        batches = [b for _, b in zip(range(steps), ld, strict=False)]
        assert len(batches) == steps and all(len(b.meta) == 2 for b in batches)  # equal steps on every rank
        counts.append(batches[-1].data_counts)
    total = Counter()
    for c in counts:
        total.update(c)
    assert total["skipped_json"] == 1 and total["skipped_video"] == 1
    assert total["skipped_read"] == lost.skipped["read"]  # a cut shard's samples past the cut
    # past the share: one line naming the counts
    tight = build_clip_loader(d, SPLIT, **opts, rank=0, on_error="skip", max_skip_share=0.0)
    with pytest.raises(SkippedTooMany) as err:
        list(tight)
    assert "\n" not in str(err.value) and "data.max_skip_share=0" in str(err.value)


def test_data_config_sources_and_checks(prepared_shards, tmp_path):
    given = {"sources": [{"shards": str(prepared_shards), "weight": 2}, {"shards": str(tmp_path / "x")}]}
    cfg = from_dict(DataConfig, given)
    assert cfg.shards == str(prepared_shards)  # data.shards defaults to the first source
    assert cfg.shard_sources() == [(str(prepared_shards), 2.0), (str(tmp_path / "x"), 1.0)]
    with pytest.raises(ConfigError, match=r"^data.sources: no shard directory at .*x \(missing manifest.json\)$"):
        check_paths(StageConfig(data=cfg))
    with pytest.raises(ConfigError, match=r"weight of a must be > 0"):
        from_dict(DataConfig, {"sources": [{"shards": "a", "weight": 0}]})
    with pytest.raises(ConfigError, match="max_skip_share"):
        from_dict(DataConfig, {"max_skip_share": 2})
    with pytest.raises(ConfigError, match="sampling: 'sometimes' is not one of epoch, resampled"):
        from_dict(DataConfig, {"sampling": "sometimes"}, "data")
    # Read-ahead in a worker process: token shards only; "auto" picks it for them, a thread for DALI's frames.
    with pytest.raises(ConfigError, match=r"^data.prefetch_worker: process reads token shards only"):
        from_dict(DataConfig, {"prefetch_worker": "process"})
    assert from_dict(DataConfig, {"tokens": "t"}).prefetch_in_process() and not cfg.prefetch_in_process()
    assert not from_dict(DataConfig, {"tokens": "t", "prefetch_worker": "thread"}).prefetch_in_process()

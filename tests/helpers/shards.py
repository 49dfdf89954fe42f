"""Checks on a prepared WebDataset shard dir (what videobert-prepare publishes)."""

from __future__ import annotations

import json
from pathlib import Path


def read_shards(out: Path) -> dict[str, dict]:
    """Every sample of a shard dir, read with the webdataset library, checked against manifest.json."""
    import webdataset as wds

    man = json.loads((out / "manifest.json").read_text())
    samples: dict[str, dict] = {}
    for sh in man["shards"]:
        n = 0
        for s in wds.WebDataset([str(out / sh["file"])], shardshuffle=False):
            meta = json.loads(s["json"])
            assert meta["split"] == sh["split"], "one split per shard"
            assert s["__key__"] not in samples
            samples[s["__key__"]] = {"meta": meta, "clip": s[man["ext"]]}
            n += 1
        assert n == sh["num_samples"]
        idx_lines = (out / sh["idx"]).read_text().splitlines()
        assert idx_lines[0] == f"v1.2 {n}" and len(idx_lines) == n + 1
    return samples


def only_published_files(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "report.json"} <= names
    assert all(n in ("manifest.json", "report.json") or n.startswith("shard-") for n in names), names

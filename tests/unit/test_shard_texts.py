"""The WordPiece tokenizer's transcripts come from the shards' json members only: the clip bytes (nearly all of a
shard) are seeked past, never read, so rank 0 does not read the whole corpus while the other ranks wait."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path

from videobert_ds.data.text import shard_texts, tar_json_members

CLIP_BYTES = 200_001  # not a multiple of the 512-byte tar block


class CountingFile(io.RawIOBase):
    """A real file whose reads are counted."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed with this object)
        self.bytes_read = 0

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        self.bytes_read += n or 0
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.f.close()
        super().close()


def write_shard(path: Path, texts: list[str], seed: int) -> None:
    rng = random.Random(seed)
    with tarfile.open(path, "w") as tar:
        for i, text in enumerate(texts):
            for ext, data in (
                ("webm", rng.randbytes(CLIP_BYTES)),
                ("json", json.dumps({"text": text, "video_id": f"v{seed}", "split": "x"}).encode()),
            ):
                info = tarfile.TarInfo(f"v{seed}_{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def shard_dir(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    texts = {
        "shard-000000.tar": ["add the onions", "", "stir well"],
        "shard-000001.tar": ["slice the bread", "toast it"],
        "shard-000002.tar": ["a held-out sentence"],
    }
    splits = {"shard-000000.tar": "train", "shard-000001.tar": "train", "shard-000002.tar": "val"}
    for i, (name, lines) in enumerate(texts.items()):
        write_shard(tmp_path / name, lines, seed=i)
    manifest = {"shards": [{"file": name, "split": split} for name, split in splits.items()]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, texts


def test_only_headers_and_json_members_are_read(tmp_path):
    root, texts = shard_dir(tmp_path)
    path = root / "shard-000000.tar"
    f = CountingFile(path)
    members = list(tar_json_members(f))
    f.close()
    assert [json.loads(data)["text"] for _, data in members] == texts["shard-000000.tar"]
    json_bytes = sum(len(data) for _, data in members)
    headers = 2 * len(members) * 512  # one header block per member (clip + json)
    # Besides headers and json, tarfile reads one byte before each header it seeks to, plus the end blocks.
    assert f.bytes_read <= headers + json_bytes + 2 * len(members) + 2 * 512
    assert f.bytes_read < len(members) * CLIP_BYTES / 100 < path.stat().st_size


def test_shard_texts_reads_the_split_as_the_webdataset_reader_does(tmp_path):
    import webdataset as wds

    root, texts = shard_dir(tmp_path)
    got = list(shard_texts(root, "train"))
    assert got == ["add the onions", "stir well", "slice the bread", "toast it"]
    urls = [str(root / name) for name in ("shard-000000.tar", "shard-000001.tar")]
    reference = [json.loads(s["json"])["text"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert got == [t for t in reference if t]
    assert list(shard_texts(root, "val")) == ["a held-out sentence"]

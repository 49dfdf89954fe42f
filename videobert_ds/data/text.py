"""The text side: a Hugging Face tokenizer named in the config, or a WordPiece one trained offline on the
training transcripts (tokenizers library) and saved with the run, so nothing is downloaded at run time.

VideoBERT's special tokens: [PAD] [UNK] [CLS] [SEP] [MASK] and [>] (the text/video separator).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from videobert_ds.core.atomic import atomic_dir

log = logging.getLogger(__name__)

VIDEO_SEP = "[>]"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", VIDEO_SEP]


def tar_json_members(fileobj: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each `.json` member of an uncompressed tar, in order. Only the 512-byte member headers
    and the json members are read: tarfile seeks past every other member (the encoded clips, nearly all of
    a shard's bytes), so `fileobj` must be seekable."""
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                yield member.name, tar.extractfile(member).read()


def shard_texts(shard_dir: str | Path, split: str = "train") -> Iterator[str]:
    """Transcript sentences of a split, read from the local shards' json members only: the video bytes are
    seeked past, never read (a WordPiece tokenizer over a large corpus must not read it whole). A remote location
    (URL, pattern, pipe:; data/sources.py) is a stream without seeks: its clips are read through too."""
    from videobert_ds.core import remote

    if not remote.is_local(str(shard_dir)) or remote.names_list(str(shard_dir)):
        from videobert_ds.data.sources import read_manifest, read_shard, split_shards

        for info in split_shards(shard_dir, read_manifest(shard_dir), split):
            for sample in read_shard(info):
                if text := json.loads(sample["json"]).get("text", ""):
                    yield text
        return
    manifest = json.loads((Path(shard_dir) / "manifest.json").read_text())
    paths = [Path(shard_dir) / s["file"] for s in manifest["shards"] if s["split"] == split]
    if not paths:
        raise ValueError(f"no {split!r} shards in {shard_dir} to train a tokenizer on")
    for path in paths:
        with open(path, "rb", buffering=0) as f:  # unbuffered: a read-ahead buffer would pull in clip bytes
            for _, data in tar_json_members(f):
                text = json.loads(data).get("text", "")
                if text:
                    yield text


def train_wordpiece(texts: Iterator[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train an uncased BERT-style WordPiece tokenizer and save it as a Hugging Face tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(texts, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        additional_special_tokens=[VIDEO_SEP],
    )
    with atomic_dir(out_dir) as tmp:  # a run killed mid-save leaves the old tokenizer dir, or none
        fast.save_pretrained(tmp)
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A local tokenizer dir; it must know VideoBERT's special tokens (the [>] separator is added if missing)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"text tokenizer dir not found: {path}")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.mask_token is None or tok.cls_token is None or tok.sep_token is None or tok.pad_token is None:
        raise ValueError(f"tokenizer at {path} lacks [CLS]/[SEP]/[MASK]/[PAD] tokens")
    if VIDEO_SEP not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [VIDEO_SEP]})
    return tok

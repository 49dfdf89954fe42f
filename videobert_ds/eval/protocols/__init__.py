"""Standard evaluation protocols: `videobert-eval --protocol NAME` on shards that `videobert-prepare --format`
made from a data set's own annotation file.

    youcook2-zeroshot  VideoBERT's zero-shot action classification on YouCook2's validation segments: the template
                       "now let me show you how to [MASK] the [MASK]", top-1 / top-5 verb and object accuracy
                       (youcook2_zeroshot.py; the verb and object of each reference by verb_object.py's rule)
    youcook2-caption   captioning of YouCook2's validation segments: BLEU-4, METEOR, ROUGE-L, CIDEr
                       (youcook2_caption.py)
    msrvtt-1ka         text -> video retrieval on MSR-VTT's 1k-A test split: R@1/5/10, median rank; the split from
                       the published csv (--split-file MSRVTT_JSFUSION_test.csv) or, without it, every test video
                       with its first caption (msrvtt_1ka.py)

This module holds the registry and the checks that need no torch (the CLI runs them before importing it); each
protocol is one module with `run(cfg, device, split_file) -> report | None` (the report on rank 0, None elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videobert_ds.core.config import ConfigError
from videobert_ds.eval.protocols.split_file import SplitFileError, read_split_file

if TYPE_CHECKING:
    import torch

    from videobert_ds.eval.config import EvalStageConfig


@dataclass(frozen=True)
class Protocol:
    name: str
    split: str  # the split it evaluates unless --split names another (the annotation file's split, as prepared)
    takes_split_file: bool
    summary: str


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("youcook2-zeroshot", "val", False, "zero-shot verb and object classification (top-1/top-5)"),
        Protocol("youcook2-caption", "val", False, "captioning: BLEU-4, METEOR, ROUGE-L, CIDEr"),
        Protocol("msrvtt-1ka", "test", True, "text -> video retrieval on the 1k-A split: R@1/5/10, median rank"),
    )
}


def check_protocol(name: str, split_file: str | None) -> None:
    """One-line ConfigErrors for an unknown protocol or a split file it cannot take or read."""
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol: unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")
    if split_file is None:
        return
    if not PROTOCOLS[name].takes_split_file:
        takers = ", ".join(p.name for p in PROTOCOLS.values() if p.takes_split_file)
        raise ConfigError(f"--split-file: protocol {name} takes no split file (only {takers})")
    try:
        read_split_file(Path(split_file))
    except SplitFileError as err:
        raise ConfigError(f"--split-file: {err}") from None


def run_protocol(
    name: str, cfg: EvalStageConfig, device: torch.device, split_file: str | None = None
) -> dict[str, Any] | None:
    """Every rank takes part (the same forward calls on each, ZeRO-3-safe); rank 0 returns the report."""
    check_protocol(name, split_file)
    if name == "youcook2-zeroshot":
        from videobert_ds.eval.protocols import youcook2_zeroshot as module
    elif name == "youcook2-caption":
        from videobert_ds.eval.protocols import youcook2_caption as module
    else:
        from videobert_ds.eval.protocols import msrvtt_1ka as module
    return module.run(cfg, device, Path(split_file) if split_file else None)

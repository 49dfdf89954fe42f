"""The special token ids of a VideoBERT model: one definition, built from a trained text tokenizer (a new
model) or from an exported model's config.json (every later user of that model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from videobert_ds.data.text import VIDEO_SEP


@dataclass
class Specials:
    cls: int
    sep: int
    mask: int
    pad: int
    video_sep: int
    text_vocab_size: int
    visual_vocab_size: int
    first_regular_text: int = 0  # random text replacements are drawn from [first_regular_text, text_vocab_size)

    def token_ids(self) -> dict[str, int]:
        """The `special_token_ids` entry of the model config."""
        return {"cls": self.cls, "sep": self.sep, "mask": self.mask, "pad": self.pad, "video_sep": self.video_sep}


def first_regular_text(tokenizer: Any) -> int:
    return max(tokenizer.all_special_ids) + 1


def specials_from_tokenizer(tokenizer: Any, visual_vocab_size: int) -> Specials:
    """A new model's ids: the WordPiece tokenizer's specials plus `[>]`."""
    return Specials(
        cls=tokenizer.cls_token_id,
        sep=tokenizer.sep_token_id,
        mask=tokenizer.mask_token_id,
        pad=tokenizer.pad_token_id,
        video_sep=tokenizer.get_vocab()[VIDEO_SEP],
        text_vocab_size=len(tokenizer),
        visual_vocab_size=visual_vocab_size,
        first_regular_text=first_regular_text(tokenizer),
    )


def specials_from_config(config: Any, tokenizer: Any = None) -> Specials:
    """An exported model's ids from its config (a transformers config object or the config.json dict); the
    tokenizer, when given, sets the first regular text id (random replacements when masking)."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key)
    ids = get("special_token_ids")
    return Specials(
        cls=ids["cls"],
        sep=ids["sep"],
        mask=ids["mask"],
        pad=ids["pad"],
        video_sep=ids["video_sep"],
        text_vocab_size=int(get("text_vocab_size")),
        visual_vocab_size=int(get("visual_vocab_size")),
        first_regular_text=first_regular_text(tokenizer) if tokenizer is not None else 0,
    )

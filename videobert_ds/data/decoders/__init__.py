"""Clip decoders behind one contract (base.ClipDecoder): DALI (dali.py) and PyAV (pyav.py)."""

from videobert_ds.data.decoders.base import PAD_MODES, ClipDecoder, EncodedBatches

__all__ = ["PAD_MODES", "ClipDecoder", "EncodedBatches"]

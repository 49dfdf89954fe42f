"""NVDEC's smallest decodable frame, per codec: below it DALI's "mixed" decoder refuses the clip.

The sizes are the minimums NVIDIA's decoder reports in its capability table (``nvdecinfo`` prints it; the
NVDEC programming guide lists the same): DALI's "mixed" video decoder fails on smaller frames with "Video
is too small in at least one dimension". Pure Python (no torch) so corpus preparation can ask too.
"""

from __future__ import annotations

# codec -> (minimum width, minimum height) in pixels.
NVDEC_MIN_SIZE: dict[str, tuple[int, int]] = {
    "h264": (48, 16),
    "hevc": (144, 144),
    "vp8": (48, 16),
    "vp9": (128, 128),
    "av1": (128, 128),
    "mpeg4": (48, 16),
}

# The names shard manifests, ffprobe/PyAV (codec_context.name) and DALI use, onto the table's keys.
CODEC_ALIASES: dict[str, str] = {
    "avc": "h264",
    "h.264": "h264",
    "libx264": "h264",
    "h265": "hevc",
    "h.265": "hevc",
    "libvpx-vp9": "vp9",
    "libvpx": "vp8",
    "libaom-av1": "av1",
    "libdav1d": "av1",
    "av01": "av1",
}


def nvdec_codec(codec: str) -> str | None:
    """The table's name for ``codec`` (case and aliases folded), or None when NVDEC has no entry for it."""
    name = codec.strip().lower()
    name = CODEC_ALIASES.get(name, name)
    return name if name in NVDEC_MIN_SIZE else None


def nvdec_min_size(codec: str) -> tuple[int, int] | None:
    """(minimum width, minimum height) NVDEC decodes for ``codec``, or None for a codec it does not list."""
    name = nvdec_codec(codec)
    return None if name is None else NVDEC_MIN_SIZE[name]


def gpu_decodable(codec: str, width: int, height: int) -> bool:
    """Whether NVDEC (DALI's "mixed" decoder) decodes ``codec`` frames of ``width`` x ``height``."""
    least = nvdec_min_size(codec)
    return least is not None and width >= least[0] and height >= least[1]

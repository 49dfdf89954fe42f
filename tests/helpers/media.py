"""Test helper: small source videos of many real-world kinds, made with PyAV.

Frame i is a flat grey of brightness ``level(i)`` so a test can tell which source frame an
output frame came from after resampling and lossy re-encoding.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LEVELS = 24  # distinct brightnesses before the pattern repeats


def level(i: int) -> int:
    """Brightness of source frame i: steps of 10 survive two rounds of lossy coding."""
    return 8 + 10 * (i % LEVELS)


def frame_index(mean: float) -> int:
    """Inverse of ``level``: source frame index modulo ``LEVELS``."""
    return int(round((mean - 8) / 10))


def make_video(
    path: Path,
    *,
    encoder: str = "libx264",
    width: int = 64,
    height: int = 48,
    fps: Fraction | int = 10,
    seconds: float = 2.0,
    audio: bool = False,
    rotation: int = 0,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    noise: bool = False,
) -> Path:
    """Write a short video; the container format follows the file extension. ``noise`` adds
    zero-mean texture (+-6) so packets are big (for cutting files part-way)."""
    rate = Fraction(fps)
    rng = np.random.default_rng(0)
    n = int(round(seconds * rate))
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream(encoder, rate=rate, options=options or {})
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if audio:
            aus = out.add_stream("aac" if path.suffix in (".mp4", ".mkv") else "libopus", rate=48000)
        for i in range(n):
            img = np.full((height, width, 3), level(i), np.int16)
            if noise:
                img = img + rng.integers(-6, 7, size=img.shape)
            img = img.clip(0, 255).astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            vf.time_base = 1 / rate
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if aus is not None:
            samples = int(seconds * 48000)
            step = 960
            for s in range(0, samples, step):
                tone = (0.1 * np.sin(np.arange(s, s + step) / 20.0)).astype(np.float32)[None, :]
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(np.repeat(tone, 2, 0)), format="fltp", layout="stereo"
                )
                af.sample_rate = 48000
                af.pts = s
                af.time_base = Fraction(1, 48000)
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))
    return path


def write_srt(path: Path, cues: list[tuple[float, float, str]], encoding: str = "utf-8") -> Path:
    """Write cues as SubRip."""

    def ts(s: float) -> str:
        ms = int(round(s * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    blocks = [f"{i + 1}\n{ts(a)} --> {ts(b)}\n{t}\n" for i, (a, b, t) in enumerate(cues)]
    path.write_bytes("\n".join(blocks).encode(encoding))
    return path

"""Synthetic raw corpus: narrated videos of coloured shapes moving across a tinted background.

`videobert-synth --out DIR --num-videos N --seed S` (command line: videobert_ds/cli/synth.py) writes
what a real raw corpus looks like (H.264 mp4 of assorted sizes and frame rates, some with audio, SRT
transcripts, a JSONL manifest), so every later stage can run on it and measure learning: each video is a
sequence of events, and each event's narration names exactly the colour, shape and motion
that the pixels show.

Everything is a pure function of (seed, video index): the same seed gives byte-identical
manifest and transcripts and the same decoded frames; a video does not depend on N.

`Realism` (all off by default, which leaves the corpus above unchanged) makes it look more like real
narrated video (HowTo100M's ASR): a share of cues that talk about something else, cues offset in time
from their action, a second, un-narrated object in each scene, and a small grey shape moving where
nothing is said about it. The ground-truth labels and QA always stay those of the narrated object.
Narration noise and offset touch only the `noisy_splits` (train by default), so the evaluation's
references stay clean; each option draws from its own random stream, so enabling one changes nothing
the others draw, and a higher noise share keeps every off-topic cue of a lower one (same text).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.video.reformatter
import numpy as np
from tqdm import tqdm

from videobert_ds.core.atomic import atomic_path, write_text

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}

# Saturated colours far from the low-saturation background, so a pixel test can find them
# after yuv420p subsampling and a downscale.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 60, 225),
    "yellow": (235, 215, 30),
}

# (width, height): not multiples of 16, one portrait, one wide; all even (yuv420p needs it).
RESOLUTIONS: tuple[tuple[int, int], ...] = ((160, 120), (176, 144), (200, 112), (120, 200), (250, 140))
FRAME_RATES: tuple[Fraction, ...] = (Fraction(24000, 1001), Fraction(25), Fraction(30), Fraction(15))
AUDIO_RATE = 16000

MIN_EVENTS, MAX_EVENTS = 3, 6
MIN_EVENT_S, MAX_EVENT_S = 1.5, 3.0
CUE_JITTER_S = 0.12
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}

# Lexical variety in the narration; the attribute words themselves stay canonical.
_VERBS: tuple[tuple[str, str, str], ...] = (  # (3rd person, base, -ing)
    ("moves", "move", "moving"),
    ("slides", "slide", "sliding"),
    ("glides", "glide", "gliding"),
    ("drifts", "drift", "drifting"),
    ("travels", "travel", "travelling"),
    ("heads", "head", "heading"),
    ("goes", "go", "going"),
)
_MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "off to the left"),
    "right": ("right", "to the right", "over to the right"),
    "up": ("up", "straight up", "up the screen"),
    "down": ("down", "straight down", "down the screen"),
}
_FRAMES: tuple[str, ...] = (
    "a {c} {s} {v3} {m}",
    "watch the {c} {s} {vb} {m}",
    "here a {c} {s} {v3} {m}",
    "look at the {c} {s} {ving} {m}",
    "we see a {c} {s} {ving} {m}",
)
_FRAMES_LATER: tuple[str, ...] = (  # connectives only make sense after the first event
    "now the {c} {s} {v3} {m}",
    "and then a {c} {s} {v3} {m}",
    "next the {c} {s} {v3} {m}",
)
# Off-screen talk for narration noise: no attribute word (colour, shape, direction), so a noisy cue says
# nothing, right or wrong, about the clip.
CHATTER: tuple[str, ...] = (
    "hi everyone and welcome back to the channel",
    "thanks for watching and see you next time",
    "sorry my phone is ringing give me a second",
    "i bought this one at the market last week",
    "let me know in the comments what you think",
    "this is my favourite part to be honest",
    "okay where was i",
    "my cat keeps walking over the table",
    "it is so hot in the kitchen today",
    "hold on let me fix the camera",
    "we filmed this on a sunday morning",
    "a friend sent me this idea a while ago",
    "i think the light is better now",
    "you can find the link in the description",
    "that was a lot of fun to make",
    "can you hear the rain outside",
    "we will talk about that another time",
    "the music in the background is by a friend",
    "i hope you are all doing well",
    "oh i almost forgot to mention something",
    "let us take a short break",
    "it always looks easier than it is",
    "remember to subscribe if you like these videos",
    "my kids love watching this with me",
)
NOISY_SPLITS: tuple[str, ...] = ("train",)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Realism:
    """Options that make the corpus harder and more like real narrated video; the defaults change nothing."""

    narration_noise: float = 0.0  # share of cues (on noisy splits) replaced by off-screen talk
    narration_offset: float = 0.0  # max shift in seconds of a cue from its action (noisy splits)
    two_objects: bool = False  # a second, smaller, still object of another colour and shape in each event
    distractor_motion: bool = False  # a small grey shape crossing the frame another way in each event
    noisy_splits: tuple[str, ...] = NOISY_SPLITS  # splits whose narration gets noise and offset

    def __post_init__(self) -> None:
        if not 0.0 <= self.narration_noise <= 1.0:
            raise ValueError(f"narration_noise must be in [0, 1], got {self.narration_noise}")
        if not self.narration_offset >= 0.0:
            raise ValueError(f"narration_offset must be >= 0 seconds, got {self.narration_offset}")
        unknown = set(self.noisy_splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)} in noisy_splits; expected some of {SPLITS}")


@dataclass(frozen=True)
class StillObject:
    """An un-narrated object that stays put for its event; position as fractions of the free range."""

    colour: str
    shape: str
    size_frac: float
    x: float
    y: float


@dataclass(frozen=True)
class Distractor:
    """A small low-saturation shape crossing the frame during its event, never narrated."""

    grey: int
    shape: str
    size_frac: float
    motion: str
    track: float


_QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("what colour is the shape that moves {m}?", "what colour is the {s}?"),
    "shape": ("what shape is the {c} object?", "which shape moves {m}?"),
    "motion": ("which way does the {c} {s} move?", "in which direction does the {s} go?"),
}


@dataclass(frozen=True)
class EventPlan:
    """One event: a shape crossing the frame; times in seconds."""

    start: float
    end: float
    colour: str
    shape: str
    motion: str
    size_frac: float  # shape side as a fraction of the frame's shorter side
    track: float  # position across the motion axis, as a fraction of the free range
    cue_start: float
    cue_end: float
    sentence: str
    qa: dict
    narrated: bool = True  # False: the cue is off-screen talk (narration noise), not this event
    still: StillObject | None = None  # two_objects
    distractor: Distractor | None = None  # distractor_motion


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video and its transcript."""

    id: str
    width: int
    height: int
    fps: Fraction
    has_audio: bool
    background: tuple[int, int, int]
    events: tuple[EventPlan, ...]

    @property
    def duration(self) -> float:
        return self.events[-1].end

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)


def _video_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _plan_qa(rng: np.random.Generator, kind: str, colour: str, shape: str, motion: str) -> dict:
    question = _pick(rng, _QUESTIONS[kind]).format(c=colour, s=shape, m=motion)
    answer = {"colour": colour, "shape": shape, "motion": motion}[kind]
    choices = [str(x) for x in rng.permutation(ATTRIBUTES[kind])]
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


def _plan_event(rng: np.random.Generator, start: float, end: float, prev: EventPlan | None) -> EventPlan:
    while True:  # never repeat the previous event exactly, so every cue describes a visible change
        colour, shape, motion = _pick(rng, COLOURS), _pick(rng, SHAPES), _pick(rng, MOTIONS)
        if prev is None or (colour, shape, motion) != (prev.colour, prev.shape, prev.motion):
            break
    v3, vb, ving = _VERBS[int(rng.integers(len(_VERBS)))]
    framings = _FRAMES if prev is None else _FRAMES + _FRAMES_LATER
    template = _pick(rng, framings)  # drawn before the motion phrase: the order fixes the seed's corpus
    sentence = template.format(c=colour, s=shape, v3=v3, vb=vb, ving=ving, m=_pick(rng, _MOTION_PHRASES[motion]))
    cue_start = round(start + float(rng.uniform(0, CUE_JITTER_S)), 3)
    cue_end = round(end - float(rng.uniform(0, CUE_JITTER_S)), 3)
    return EventPlan(
        start=start,
        end=end,
        colour=colour,
        shape=shape,
        motion=motion,
        size_frac=round(float(rng.uniform(0.36, 0.46)), 3),
        track=round(float(rng.uniform(0.2, 0.8)), 3),
        cue_start=cue_start,
        cue_end=cue_end,
        sentence=sentence,
        qa=_plan_qa(rng, _pick(rng, tuple(ATTRIBUTES)), colour, shape, motion),
    )


def _realism_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """One stream per option (2.. ; 1 is the frame noise), so options never shift each other's draws."""
    return np.random.default_rng([seed, index, stream])


def _apply_realism(
    events: list[EventPlan], realism: Realism, seed: int, index: int, split: str, background: tuple[int, ...]
) -> list[EventPlan]:
    duration = events[-1].end
    grey = sum(background) / len(background)
    noisy = split in realism.noisy_splits
    noise_rng, offset_rng = _realism_rng(seed, index, 2), _realism_rng(seed, index, 3)
    still_rng, distractor_rng = _realism_rng(seed, index, 4), _realism_rng(seed, index, 5)
    out = []
    for e in events:
        changes: dict = {}
        # Draw for every event whatever the settings, so a share of 0.6 keeps 0.3's noisy cues and their text.
        u, chatter = float(noise_rng.uniform()), _pick(noise_rng, CHATTER)
        shift = float(offset_rng.uniform(-1.0, 1.0)) * realism.narration_offset
        if noisy and u < realism.narration_noise:
            changes.update(sentence=chatter, narrated=False)
        if noisy and realism.narration_offset > 0:
            # Clipped so the cue stays whole inside the video: its length never changes.
            shift = min(max(shift, -e.cue_start), duration - e.cue_end)
            changes.update(cue_start=round(e.cue_start + shift, 3), cue_end=round(e.cue_end + shift, 3))
        if realism.two_objects:
            changes["still"] = StillObject(
                colour=_pick(still_rng, tuple(c for c in COLOURS if c != e.colour)),
                shape=_pick(still_rng, tuple(s for s in SHAPES if s != e.shape)),
                size_frac=round(e.size_frac * float(still_rng.uniform(0.55, 0.7)), 3),
                x=round(float(still_rng.uniform(0.0, 1.0)), 3),
                y=round(float(still_rng.uniform(0.0, 1.0)), 3),
            )
        if realism.distractor_motion:
            # Darker or lighter than the background, unsaturated: it moves, but has none of the four colours.
            sign = 1 if distractor_rng.integers(0, 2) else -1
            changes["distractor"] = Distractor(
                grey=int(np.clip(grey + sign * distractor_rng.integers(60, 81), 15, 240)),
                shape=_pick(distractor_rng, SHAPES),
                size_frac=round(float(distractor_rng.uniform(0.14, 0.2)), 3),
                motion=_pick(distractor_rng, tuple(m for m in MOTIONS if m != e.motion)),
                track=round(float(distractor_rng.uniform(0.1, 0.9)), 3),
            )
        out.append(dataclasses.replace(e, **changes) if changes else e)
    return out


def plan_video(seed: int, index: int, realism: Realism | None = None, split: str = "train") -> VideoPlan:
    """The full description of video `index` under `seed` (independent of the corpus size). `split` matters
    only to narration noise and offset, which touch `realism.noisy_splits` alone."""
    rng = _video_rng(seed, index)
    # Cycle sizes, rates and audio from a per-seed offset so even a small corpus covers them all.
    width, height = RESOLUTIONS[(index + seed) % len(RESOLUTIONS)]
    fps = FRAME_RATES[(index + 2 * seed) % len(FRAME_RATES)]
    has_audio = (index + seed) % 3 == 1
    grey = int(rng.integers(95, 160))
    background = tuple(int(np.clip(grey + rng.integers(-18, 19), 0, 255)) for _ in range(3))
    events: list[EventPlan] = []
    t = 0.0
    for _ in range(int(rng.integers(MIN_EVENTS, MAX_EVENTS + 1))):
        # Tenths of a second keep annotation times exact decimals.
        length = int(rng.integers(round(MIN_EVENT_S * 10), round(MAX_EVENT_S * 10) + 1)) / 10
        end = round(t + length, 1)
        events.append(_plan_event(rng, t, end, events[-1] if events else None))
        t = end
    if realism is not None and realism != Realism(noisy_splits=realism.noisy_splits):
        events = _apply_realism(events, realism, seed, index, split, background)
    return VideoPlan(
        id=f"synth_{index:05d}",
        width=width,
        height=height,
        fps=fps,
        has_audio=has_audio,
        background=background,  # type: ignore[arg-type]
        events=tuple(events),
    )


def assign_splits(num_videos: int, seed: int) -> list[str]:
    """Roughly 70/15/15 train/val/test, deterministic per seed; N >= 3 gets at least one of each."""
    n_val = max(1, round(num_videos * SPLIT_FRACTIONS["val"])) if num_videos >= 2 else 0
    n_test = max(1, round(num_videos * SPLIT_FRACTIONS["test"])) if num_videos >= 3 else 0
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (num_videos - n_val - n_test)
    order = np.random.default_rng([seed, 0x5EED]).permutation(num_videos)
    return [splits[int(i)] for i in order]


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) silhouette of `shape`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(xx - c) <= yy / 2
    if shape == "cross":
        arm = size / 6
        return (np.abs(xx - c) <= arm) | (np.abs(yy - c) <= arm)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _crossing(plan: VideoPlan, size: int, motion: str, track: float, p: float) -> tuple[float, float]:
    """Centre (x, y) of a shape of side `size` a fraction p of the way along a straight crossing."""
    lo_x, hi_x = size / 2 + 2, plan.width - size / 2 - 2
    lo_y, hi_y = size / 2 + 2, plan.height - size / 2 - 2
    if motion in ("left", "right"):
        x0, x1 = (hi_x, lo_x) if motion == "left" else (lo_x, hi_x)
        return x0 + (x1 - x0) * p, lo_y + (hi_y - lo_y) * track
    y0, y1 = (hi_y, lo_y) if motion == "up" else (lo_y, hi_y)
    return lo_x + (hi_x - lo_x) * track, y0 + (y1 - y0) * p


def _progress(event: EventPlan, t: float) -> float:
    return min(max((t - event.start) / (event.end - event.start), 0.0), 1.0)


def event_centre(plan: VideoPlan, event: EventPlan, t: float) -> tuple[float, float]:
    """Shape centre (x, y) in pixels at time t: a straight crossing over the event's span."""
    return _crossing(plan, _shape_size(plan, event), event.motion, event.track, _progress(event, t))


def distractor_centre(plan: VideoPlan, event: EventPlan, t: float) -> tuple[float, float]:
    """The event's distractor's centre (x, y) at time t (it crosses the frame over the event's span)."""
    d = event.distractor
    if d is None:
        raise ValueError("event has no distractor")
    return _crossing(plan, _side(plan, d.size_frac), d.motion, d.track, _progress(event, t))


def still_centre(plan: VideoPlan, event: EventPlan) -> tuple[float, float]:
    """The event's still object's centre (x, y)."""
    o = event.still
    if o is None:
        raise ValueError("event has no still object")
    size = _side(plan, o.size_frac)
    return size / 2 + 2 + (plan.width - size - 4) * o.x, size / 2 + 2 + (plan.height - size - 4) * o.y


def _side(plan: VideoPlan, size_frac: float, minimum: int = 8) -> int:
    return max(minimum, round(min(plan.width, plan.height) * size_frac))


def _shape_size(plan: VideoPlan, event: EventPlan) -> int:
    return _side(plan, event.size_frac)


def event_at(plan: VideoPlan, t: float) -> EventPlan:
    """The event on screen at time t (the last one for the frames past its end)."""
    for event in plan.events:
        if t < event.end:
            return event
    return plan.events[-1]


def render_frames(plan: VideoPlan, seed: int, index: int) -> Iterator[np.ndarray]:
    """Yield the video's RGB uint8 frames (H, W, 3) in order."""
    noise_rng = np.random.default_rng([seed, index, 1])
    base = np.array(plan.background, dtype=np.int16)
    masks: dict[tuple[str, int], np.ndarray] = {}
    for i in range(plan.num_frames):
        t = float(i / plan.fps)
        event = event_at(plan, t)
        # Light luma noise: real-looking texture without drowning the shape's colour.
        noise = noise_rng.integers(-4, 5, size=(plan.height, plan.width, 1), dtype=np.int16)
        frame = np.clip(base + noise, 0, 255).astype(np.uint8)
        # Un-narrated things first: the narrated shape is drawn on top and never hidden.
        if event.still is not None:
            o = event.still
            _stamp(frame, masks, o.shape, _side(plan, o.size_frac), still_centre(plan, event), COLOUR_RGB[o.colour])
        if event.distractor is not None:
            d = event.distractor
            grey = (d.grey,) * 3
            _stamp(frame, masks, d.shape, _side(plan, d.size_frac, 4), distractor_centre(plan, event, t), grey)
        _stamp(
            frame, masks, event.shape, _shape_size(plan, event), event_centre(plan, event, t), COLOUR_RGB[event.colour]
        )
        yield frame


def _stamp(
    frame: np.ndarray,
    masks: dict[tuple[str, int], np.ndarray],
    shape: str,
    size: int,
    centre: tuple[float, float],
    rgb: tuple[int, int, int],
) -> None:
    """Paint `shape` of side `size` centred at `centre` (inside the frame by construction) in `rgb`."""
    key = (shape, size)
    if key not in masks:
        masks[key] = shape_mask(*key)
    x0, y0 = int(round(centre[0] - size / 2)), int(round(centre[1] - size / 2))
    frame[y0 : y0 + size, x0 : x0 + size][masks[key]] = rgb


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_text(plan: VideoPlan) -> str:
    """The SRT transcript: one cue per event, aligned to it within a small jitter (or offset by Realism),
    in time order."""
    events = sorted(plan.events, key=lambda e: (e.cue_start, e.cue_end))  # stable: unchanged without offsets
    cues = [
        f"{n}\n{_srt_time(e.cue_start)} --> {_srt_time(e.cue_end)}\n{e.sentence}\n"
        for n, e in enumerate(events, start=1)
    ]
    return "\n".join(cues)


def manifest_record(plan: VideoPlan, split: str) -> dict:
    """One input-manifest line, with the per-event `annotations` extra."""
    return {
        "video": f"videos/{plan.id}.mp4",
        "transcript": f"transcripts/{plan.id}.srt",
        "id": plan.id,
        "split": split,
        "annotations": [
            {
                "start": e.start,
                "end": e.end,
                "labels": {"colour": e.colour, "shape": e.shape, "motion": e.motion},
                "qa": e.qa,
                **({} if e.narrated else {"narrated": False}),  # only with narration noise: its cue is off-topic
            }
            for e in plan.events
        ],
    }


def _encode_tone(container: av.container.OutputContainer, stream: av.AudioStream, duration: float, freq: float) -> None:
    """A quiet sine tone on `stream`, as long as the video."""
    total = round(duration * AUDIO_RATE)
    chunk = 1024
    for pts in range(0, total, chunk):
        n = min(chunk, total - pts)
        t = (np.arange(pts, pts + n) / AUDIO_RATE).astype(np.float32)
        samples = (0.05 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


# x264's name for each x86 feature it uses, keyed by the Linux /proc/cpuinfo flag; AVX-512 is left out.
_X264_ASM_NAMES: dict[str, str] = {
    "sse": "MMX2,SSE",
    "sse2": "SSE2",
    "pni": "SSE3",
    "ssse3": "SSSE3",
    "sse4_1": "SSE4.1",
    "sse4_2": "SSE4.2",
    "avx": "AVX",
    "fma": "FMA3",
    "bmi1": "BMI1",
    "bmi2": "BMI2",
    "avx2": "AVX2",
    "abm": "LZCNT",
}


@functools.lru_cache(maxsize=1)
def _x264_params() -> str | None:
    """x264-params that keep the bitstream a pure function of the frames, or None for x264's defaults.

    x264's AVX-512 kernels read uninitialised memory (measured: the same frames encode
    differently depending on what the process allocated before), so on an AVX-512 CPU the
    encoder gets every detected feature but that one. SIMD choice never changes x264's output.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    if "avx512f" not in flags:
        return None
    names = [name for flag, name in _X264_ASM_NAMES.items() if flag in flags]
    return "asm=" + ",".join(names + ["Cache64"]) if names else "asm=0"


def write_video(plan: VideoPlan, path: Path, seed: int, index: int) -> None:
    """Encode the video (H.264 yuv420p, plus AAC when planned) to `path`, via a temp name."""
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=plan.fps)
        video.width, video.height, video.pix_fmt = plan.width, plan.height, "yuv420p"
        video.codec_context.gop_size = round(2 * plan.fps)
        # One thread keeps the bitstream identical run to run; the frames are tiny anyway.
        video.codec_context.thread_count = 1
        # ultrafast: a third less encode time than veryfast, files about 4x larger (still ~1 MB a video).
        video.options = {"preset": "ultrafast", "crf": "20", "threads": "1"}
        if _x264_params() is not None:
            video.options = {**video.options, "x264-params": _x264_params()}
        # Every stream must exist before the first packet is muxed (that writes the header).
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono") if plan.has_audio else None
        reformatter = av.video.reformatter.VideoReformatter()  # reused: keeps one swscale context
        for i, rgb in enumerate(render_frames(plan, seed, index)):
            frame = reformatter.reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuv420p")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _encode_tone(container, audio, plan.num_frames / plan.fps, 220.0 * (1 + (seed + index) % 4))


def _write_one(out_dir: Path, seed: int, realism: Realism | None, index: int, split: str) -> dict:
    """Render, encode and write video `index` and its SRT; returns its manifest record (a worker's whole job)."""
    plan = plan_video(seed, index, realism, split)
    write_video(plan, out_dir / "videos" / f"{plan.id}.mp4", seed, index)
    write_text(out_dir / "transcripts" / f"{plan.id}.srt", srt_text(plan))
    return manifest_record(plan, split)


def synthesize(
    out_dir: Path,
    num_videos: int,
    seed: int,
    progress: bool | None = None,
    workers: int = 1,
    realism: Realism | None = None,
) -> Path:
    """Write `num_videos` narrated videos, their SRTs and `manifest.jsonl` under out_dir; return the manifest.

    `workers` > 1 encodes videos in that many processes; every video is a pure function of (seed, index),
    so the output is byte-identical to a single-process run. `realism` (None: all off) adds narration noise,
    offsets, a second object and distractor motion (see Realism)."""
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    (out_dir / "transcripts").mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    job = functools.partial(_write_one, out_dir, seed, realism)
    args = (range(num_videos), assign_splits(num_videos, seed))
    with contextlib.ExitStack() as stack:
        mapper = map
        if workers > 1:
            # spawn, not fork: the parent may hold libav / OpenMP threads that a forked child would inherit stuck.
            mapper = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(
                    min(workers, num_videos), mp_context=multiprocessing.get_context("spawn")
                )
            ).map
        # In index order either way; a worker's error is re-raised here.
        records = list(
            tqdm(mapper(job, *args), total=num_videos, desc="synth videos", unit="video", disable=not progress)
        )
    manifest = out_dir / "manifest.jsonl"
    write_text(manifest, "".join(json.dumps(r) + "\n" for r in records))
    return manifest

"""The built-in *shapes* dataset: coloured shapes moving on plain backgrounds, with OSP annotations.

Why: a newcomer with no GPU and no downloaded data needs a real dataset -- real mp4/jpg/png files and
real Open-Sora-Plan v1.3 annotation files -- small enough to train a tiny model on a CPU, and whose
content a program can check (:mod:`osctl.eval.shapes` measures whether samples follow the prompt).

Content. Every clip shows one shape (``circle``, ``square``, ``triangle``) in one colour of
:data:`COLORS` on a plain background (never the same colour as a shape), either moving
``left``/``right``/``up``/``down`` at a steady speed from one edge of the frame to the other (2 pixels
inside each) over the whole clip, along the centre line of the frame, or ``still`` in its middle, unless
``lane_spread`` lets the place vary (:data:`osctl.synth.DEFAULT_LANE_SPREAD` says why). Images (jpg and png) show still shapes on every background of
:data:`BACKGROUNDS`; clips use :data:`DEFAULT_VIDEO_BACKGROUNDS` (black) unless ``video_backgrounds``
says otherwise: on black every shape is brighter than its background, and in an in-memory test the demo's
tiny model learnt the direction words from black clips in ~1000 steps but not from black and grey ones
(where red and blue are darker than the background) within 1500. Captions name colour, shape and motion:
``"a red circle moving left on a black background"``, ``"a still blue square on a grey background"``;
some records carry a list of paraphrases instead of one string.

Layout written under ``OUT`` (all paths in ``data.txt`` are relative to ``OUT``)::

    OUT/data.txt                   two lines: videos,annotations/videos.json / images,annotations/images.pkl
    OUT/videos/NNNN-<color>-<shape>-<motion>-on-<bg>.mp4
    OUT/images/NNNN-<color>-<shape>-still-on-<bg>.{png,jpg}
    OUT/annotations/videos.json    JSON list of records (mp4 clips)
    OUT/annotations/images.pkl     pickle of a plain list of dicts (images; plain containers only)
    OUT/held_out_prompts.txt       one prompt per held-out combination (for ``osctl sample --prompts``)
    OUT/synth.json                 manifest: options, palette, held-out list, files (written last)

Records follow reference §1.2: ``path``, ``cap``, ``resolution`` (the size of the full decoded frame),
videos ``num_frames`` and ``fps``; some records add ``aesthetic``, ``tech``, ``motion`` (the motion
score is the speed in frame sides per second), ``cut`` and ``crop``:

- ``cut`` clips have a short lead-in and lead-out of empty background around the content; ``cut`` is
  ``[lead, lead + num_frames]`` and ``num_frames`` counts the usable frames from ``cut[0]`` (so
  ``cut[1] - cut[0] == num_frames``, the consistent form of the reference), while the file holds
  ``num_frames + 2 * lead`` frames.
- ``crop`` clips and images are rendered on a larger canvas with a plain margin of background;
  ``resolution`` is the full canvas (as in the reference, where the crop is applied at read time) and
  ``crop = [x0, x1, y0, y1]`` selects exactly one of the regular frame sizes, so the cropped sample
  lands in the same bucket as the uncropped ones and the shape never enters the margin.

Each record also has a ``synth`` key with the ground truth (``color``, ``shape``, ``motion``,
``background``, ``size`` in pixels, centre ``start``/``end`` in full-frame pixels); annotation readers
ignore unknown keys.

Frame sizes (height x width): 128x128 (two thirds of the clips and images), 120x200 and 200x120 (a
sixth each; cropped canvases 160x160, 152x232, 232x152). They scale to stride-aligned buckets with
nothing cropped (16x16, 12x20 and 20x12 under ``max_hxw: 256``, ``hw_stride: 4``, as in
``recipes/demo.yaml``): with sizes that do not (128x128 -> 22x22 cropped to 16x16 under ``max_hxw: 512``,
``hw_stride: 8``), the bucket crop cut a seventh off every side and with it the start or the end of the
movement. Every width is one that decord reads back (it fails on some widths, e.g. 96 and 144:
:data:`DECODE_SAFE_WIDTHS` lists the ones used and a test checks them). Frame rates 12, 24 and 30 fps,
durations 1, 1.5 and 2 s.

Held-out combinations (:func:`held_out_combinations`) are left out of training data by default so
the demo can sample them and test generalisation: every colour, shape and motion of a held-out triple
still appears in training, and with enough clips (the default) so does every pair of them.

Everything is a pure function of ``(videos, images, seed, hold_out, video_backgrounds, lane_spread)``: the same options give the same
records and the same decoded frames.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from osctl.errors import DataError, UsageError
from osctl.synth import DEFAULT_IMAGES, DEFAULT_LANE_SPREAD, DEFAULT_VIDEOS
from osctl.utils.atomic import atomic_write_bytes, atomic_write_text, ensure_inside

GENERATOR = "osctl.synth.shapes"
VERSION = 4
"""Bumped whenever the same options would give different files (a dataset of another version is rebuilt)."""
SCHEMA = "osctl.data.synth.shapes/1"
"""Schema id of ``synth.json`` and of the ``--json`` output of ``osctl data synth shapes``."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 80, 235),
    "yellow": (235, 215, 30),
    "white": (240, 240, 240),
}
"""Shape colours (RGB). Saturated and far apart so they survive H.264 4:2:0 chroma and tiny sizes."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "grey": (110, 110, 110)}
"""Plain background colours; each is at least ~130 RGB units away from every shape colour."""

DEFAULT_VIDEO_BACKGROUNDS: tuple[str, ...] = ("black",)
"""Backgrounds of the clips by default (images use every one of :data:`BACKGROUNDS`)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
FPS_CHOICES: tuple[int, ...] = (12, 24, 30)
DURATIONS_S: tuple[float, ...] = (1.0, 1.5, 2.0)
"""Clip lengths (seconds from the first to the last content frame; a clip holds ``fps * d + 1`` content
frames). Resampled at 4 fps (``recipes/demo.yaml``) a clip gives exactly 5, 7 or 9 frames spanning
all of it, so every training sample shows the whole movement from one edge to the other. When samples
showed a random part of a longer movement, the demo's tiny model did not tie the direction words to
the motion within its CPU budget."""

_DIRECTION: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_PHRASE: dict[str, str] = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}
_EDGE = 2  # pixels kept free between the shape and the frame (or crop) border
_SUPERSAMPLE = 4  # anti-aliasing: coverage measured on a 4x4 sub-pixel grid


@dataclass(frozen=True)
class FrameSize:
    """A regular frame size and the margin (pixels per side) of its cropped canvas variant."""

    height: int
    width: int
    margin_y: int
    margin_x: int

    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) of the larger canvas that cropped records are rendered on."""
        return self.height + 2 * self.margin_y, self.width + 2 * self.margin_x


SIZES: tuple[FrameSize, ...] = (
    FrameSize(128, 128, 16, 16),  # 1:1, canvas 160x160
    FrameSize(120, 200, 16, 16),  # 3:5 landscape, canvas 152x232
    FrameSize(200, 120, 16, 16),  # 5:3 portrait, canvas 232x152
)
"""Frame sizes (H x W). Margins are chosen so every canvas width also decodes with decord."""

SIZE_SHARES: tuple[int, ...] = (4, 1, 1)
"""Relative number of clips (and images) of each of :data:`SIZES`: two thirds are square, the size the demo
samples (with equal shares its tiny model had not tied the direction words to the motion after 1500
steps in an in-memory test; with four fifths square it had begun to)."""

DECODE_SAFE_WIDTHS: frozenset[int] = frozenset({128, 160, 200, 232, 120, 152})
"""Every width this generator writes; each is checked to decode with decord (96 and 144 do not)."""


@dataclass(frozen=True)
class ItemPlan:
    """Everything needed to render one media file and write its annotation record."""

    index: int
    kind: str  # "video" or "image"
    path: str  # relative to its data root
    color: str
    shape: str
    motion: str
    background: str
    height: int  # full file frame
    width: int
    crop: tuple[int, int, int, int] | None  # [x0, x1, y0, y1]
    fps: int | None
    content_frames: int  # frames showing the shape (1 for images)
    lead: int  # empty background frames before and after the content (cut clips)
    size: int  # shape side / diameter, pixels
    start: tuple[float, float]  # centre (x, y), full-frame pixels
    end: tuple[float, float]
    cap: str | list[str]
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def total_frames(self) -> int:
        """Frames in the file: the content plus the lead-in and lead-out of cut clips."""
        return self.content_frames + 2 * self.lead

    @property
    def cut(self) -> tuple[int, int] | None:
        """``[start, end)`` of the content frames, or None for clips without ``cut``."""
        return (self.lead, self.lead + self.content_frames) if self.lead else None


@dataclass
class SynthResult:
    """What :func:`synth_shapes` wrote (or found already written)."""

    out: Path
    data_txt: Path
    annotation_files: list[Path]
    videos: int
    images: int
    reused: bool
    held_out: list[tuple[str, str, str]]
    held_out_prompts: Path
    files: list[str]
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` payload (schema :data:`SCHEMA`)."""
        return {
            "schema": SCHEMA,
            "out": str(self.out),
            "data_txt": str(self.data_txt),
            "annotations": [str(p) for p in self.annotation_files],
            "held_out_prompts": str(self.held_out_prompts),
            "videos": self.videos,
            "images": self.images,
            "files": len(self.files),
            "bytes": self.bytes,
            "reused": self.reused,
            "held_out": [list(c) for c in self.held_out],
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------------------------- vocabulary


def held_out_combinations() -> tuple[tuple[str, str, str], ...]:
    """The (colour, shape, motion) triples kept out of training data by default.

    Why: the demo samples exactly these prompts after training, so good scores show composition
    (known colour + known shape + known motion in a new combination), not memorisation. Each colour,
    shape and motion appears in at least one held-out triple and in many training triples.
    """
    return (
        ("red", "circle", "left"),
        ("green", "square", "right"),
        ("blue", "triangle", "up"),
        ("yellow", "circle", "down"),
        ("white", "square", "still"),
        ("green", "triangle", "down"),
    )


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) triple, in a fixed order."""
    return [(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS]


def training_combinations(hold_out: bool = True) -> list[tuple[str, str, str]]:
    """The triples clips are drawn from: all of them, minus :func:`held_out_combinations` when ``hold_out``."""
    excluded = set(held_out_combinations()) if hold_out else set()
    return [c for c in all_combinations() if c not in excluded]


def caption(color: str, shape: str, motion: str, background: str) -> str:
    """The canonical caption, e.g. ``"a red circle moving left on a black background"``.

    Still shapes read ``"a still blue square on a grey background"``. Held-out prompts and most
    training captions use this form, so the tiny text encoder sees one consistent phrasing.
    """
    if motion == "still":
        return f"a still {color} {shape} on a {background} background"
    return f"a {color} {shape} moving {motion} on a {background} background"


def paraphrases(color: str, shape: str, motion: str, background: str) -> list[str]:
    """The canonical caption followed by two paraphrases (used as a ``cap`` list on some records)."""
    if motion == "still":
        return [caption(color, shape, motion, background),
                f"a {color} {shape} standing still on a {background} background",
                f"a motionless {color} {shape} on a plain {background} background"]
    phrase = _PHRASE[motion]
    return [caption(color, shape, motion, background),
            f"a {color} {shape} moves {phrase} across a {background} background",
            f"on a plain {background} background, a {color} {shape} slides {phrase}"]


def held_out_prompts(background: str = "black") -> list[str]:
    """One canonical prompt per held-out combination (written to ``held_out_prompts.txt``)."""
    return [caption(c, s, m, background) for c, s, m in held_out_combinations()]


# --------------------------------------------------------------------------------------------- planning


def plan_dataset(videos: int = DEFAULT_VIDEOS, images: int = DEFAULT_IMAGES, seed: int = 0,
                 hold_out: bool = True,
                 video_backgrounds: Sequence[str] = DEFAULT_VIDEO_BACKGROUNDS,
                 lane_spread: float = DEFAULT_LANE_SPREAD) -> list[ItemPlan]:
    """Decide every file of the dataset (attributes, sizes, positions, captions, optional fields).

    Pure and deterministic: one ``numpy.random.default_rng(seed)`` is consumed in a fixed order.
    Clips cycle through a seeded permutation of the training triples, so ``videos >= len(triples)``
    covers each one; frame size, fps, duration and background (clips: ``video_backgrounds``, images:
    all of :data:`BACKGROUNDS`) are balanced (each value used equally often, shuffled). Optional fields
    follow fixed index patterns so even a tiny dataset has ``cut``, ``crop``, a ``cap`` list and each
    score on some records.
    """
    if videos < 0 or images < 0:
        raise UsageError(f"--videos {videos} / --images {images}: counts must be >= 0.")
    if seed < 0:
        raise UsageError(f"--seed {seed} is negative; use a seed >= 0.")
    video_backgrounds = check_video_backgrounds(video_backgrounds)
    check_lane_spread(lane_spread)
    rng = np.random.default_rng(seed)
    plans: list[ItemPlan] = []

    combos = training_combinations(hold_out)
    order = rng.permutation(len(combos))
    backgrounds = _balanced(rng, list(video_backgrounds), videos)
    sizes = _balanced(rng, _size_choices(), videos)
    fpss = _balanced(rng, list(FPS_CHOICES), videos)
    durations = _balanced(rng, list(DURATIONS_S), videos)
    for i in range(videos):
        color, shape, motion = combos[int(order[i % len(combos)])]
        plans.append(_plan_item(
            rng, i, "video", color, shape, motion, backgrounds[i], SIZES[sizes[i]], fps=int(fpss[i]),
            content_frames=round(fpss[i] * durations[i]) + 1, cut=i % 4 == 1, crop=i % 4 == 2,
            cap_list=i % 3 == 0, ext="mp4", lane_spread=lane_spread))

    pairs = [(c, s) for c in COLORS for s in SHAPES
             if not (hold_out and (c, s, "still") in held_out_combinations())]
    order = rng.permutation(len(pairs))
    backgrounds = _balanced(rng, list(BACKGROUNDS), images)
    sizes = _balanced(rng, _size_choices(), images)
    for j in range(images):
        color, shape = pairs[int(order[j % len(pairs)])]
        plans.append(_plan_item(
            rng, j, "image", color, shape, "still", backgrounds[j], SIZES[sizes[j]], fps=None,
            content_frames=1, cut=False, crop=j % 4 == 1, cap_list=j % 3 == 2,
            ext="png" if j % 2 == 0 else "jpg"))
    return plans


def check_lane_spread(value: float) -> float:
    """``value`` after checking it is a fraction from 0 to 1 (see :data:`osctl.synth.DEFAULT_LANE_SPREAD`)."""
    if not (isinstance(value, int | float) and 0.0 <= float(value) <= 1.0):
        raise UsageError(f"--lane-spread {value!r} is not a fraction; use a number from 0 (centre line) to 1.")
    return float(value)


def check_video_backgrounds(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple without repeats, after checking each is one of :data:`BACKGROUNDS`."""
    chosen = tuple(dict.fromkeys(names))
    if not chosen:
        raise UsageError(f"--video-background: give at least one of {', '.join(BACKGROUNDS)}.")
    unknown = [n for n in chosen if n not in BACKGROUNDS]
    if unknown:
        raise UsageError(f"--video-background {unknown[0]!r} is not a background; "
                         f"use one of {', '.join(BACKGROUNDS)}.")
    return chosen


def _size_choices() -> list[int]:
    """Indices into :data:`SIZES`, each repeated as often as its share."""
    return [k for k, share in enumerate(SIZE_SHARES) for _ in range(share)]


def _balanced(rng: np.random.Generator, values: list[Any], n: int) -> list[Any]:
    """``n`` values using each of ``values`` equally often (up to one), in a seeded order."""
    repeated = (values * (n // len(values) + 1))[:n]
    return [repeated[int(k)] for k in rng.permutation(n)]


def _plan_item(rng: np.random.Generator, index: int, kind: str, color: str, shape: str, motion: str,
               background: str, size: FrameSize, *, fps: int | None, content_frames: int, cut: bool,
               crop: bool, cap_list: bool, ext: str, lane_spread: float = DEFAULT_LANE_SPREAD) -> ItemPlan:
    h, w = size.height, size.width
    oy, ox = (size.margin_y, size.margin_x) if crop else (0, 0)
    full_h, full_w = (h + 2 * oy, w + 2 * ox)
    side = round(min(h, w) * float(rng.uniform(0.26, 0.34)))
    lo_x, hi_x = _EDGE + side / 2, w - _EDGE - side / 2
    lo_y, hi_y = _EDGE + side / 2, h - _EDGE - side / 2
    x0, y0 = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
    mid_x, mid_y = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    if kind == "video":  # the path is pulled towards the middle: across the movement, or both ways if still
        x0, y0 = mid_x + lane_spread * (x0 - mid_x), mid_y + lane_spread * (y0 - mid_y)
    x1, y1 = x0, y0
    travel = 0.0
    if motion != "still":
        ux, uy = _DIRECTION[motion]
        lo, hi = (lo_x, hi_x) if ux else (lo_y, hi_y)
        travel = hi - lo  # edge to edge: from _EDGE pixels inside one side to _EDGE inside the other
        first, last = (lo, hi) if ux + uy > 0 else (hi, lo)
        if ux:
            x0, x1 = first, last
        else:
            y0, y1 = first, last
    lead = max(2, (fps or 0) // 4) if cut else 0
    scores: dict[str, float] = {}
    if index % 2 == 0:
        scores["aesthetic"] = round(float(rng.uniform(4.0, 6.5)), 2)
    if index % 3 == 1:
        scores["tech"] = round(float(rng.uniform(0.5, 1.0)), 3)
    if index % 2 == 1 or (kind == "image" and index % 3 == 0):
        seconds = (content_frames - 1) / fps if fps else 1.0
        scores["motion"] = round(travel / max(h, w) / seconds, 4)
    cap: str | list[str] = (paraphrases(color, shape, motion, background) if cap_list
                            else caption(color, shape, motion, background))
    name = f"{index:04d}-{color}-{shape}-{motion}-on-{background}.{ext}"
    return ItemPlan(
        index=index, kind=kind, path=name, color=color, shape=shape, motion=motion, background=background,
        height=full_h, width=full_w, crop=(ox, ox + w, oy, oy + h) if crop else None, fps=fps,
        content_frames=content_frames, lead=lead, size=side,
        start=(round(x0 + ox, 2), round(y0 + oy, 2)), end=(round(x1 + ox, 2), round(y1 + oy, 2)),
        cap=cap, scores=scores,
    )


def frame_sizes() -> list[tuple[int, int]]:
    """Every (height, width) a file of this generator can have (regular sizes and crop canvases)."""
    return sorted({(s.height, s.width) for s in SIZES} | {s.canvas for s in SIZES})


# --------------------------------------------------------------------------------------------- rendering


def render(plan: ItemPlan) -> np.ndarray:
    """The ``T x H x W x 3`` uint8 frames of one planned item (T = 1 for images).

    The shape's centre moves linearly from ``plan.start`` (first content frame) to ``plan.end``
    (last content frame); edges are anti-aliased from 4x4 sub-pixel coverage so motion is smooth.
    Lead-in/lead-out frames of cut clips show the empty background.
    """
    bg = np.array(BACKGROUNDS[plan.background], dtype=np.float32)
    fg = np.array(COLORS[plan.color], dtype=np.float32)
    frames = np.empty((plan.total_frames, plan.height, plan.width, 3), dtype=np.uint8)
    frames[:] = bg.astype(np.uint8)
    n = plan.content_frames
    for k in range(n):
        a = k / (n - 1) if n > 1 else 0.0
        cx = plan.start[0] + (plan.end[0] - plan.start[0]) * a
        cy = plan.start[1] + (plan.end[1] - plan.start[1]) * a
        _paint(frames[plan.lead + k], plan.shape, cx, cy, plan.size, fg, bg)
    return frames


def shape_coverage(shape: str, cx: float, cy: float, size: float, height: int,
                   width: int) -> tuple[slice, slice, np.ndarray]:
    """Fractional coverage (0..1) of ``shape`` centred at (cx, cy) over the pixels it touches.

    Returns the row and column slices of that window and the coverage array for it. Pixel ``i``
    spans ``[i, i + 1)``; the triangle points up with its base at the bottom of its box.
    """
    half = size / 2
    ya, yb = max(0, math.floor(cy - half) - 1), min(height, math.ceil(cy + half) + 1)
    xa, xb = max(0, math.floor(cx - half) - 1), min(width, math.ceil(cx + half) + 1)
    ss = _SUPERSAMPLE
    ys = ya + (np.arange((yb - ya) * ss) + 0.5) / ss - cy
    xs = xa + (np.arange((xb - xa) * ss) + 0.5) / ss - cx
    dy, dx = ys[:, None], xs[None, :]
    if shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":
        inside = (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    cover = inside.reshape(yb - ya, ss, xb - xa, ss).mean(axis=(1, 3))
    return slice(ya, yb), slice(xa, xb), cover


def _paint(frame: np.ndarray, shape: str, cx: float, cy: float, size: float, fg: np.ndarray,
           bg: np.ndarray) -> None:
    rows, cols, cover = shape_coverage(shape, cx, cy, size, frame.shape[0], frame.shape[1])
    c = cover[..., None].astype(np.float32)
    frame[rows, cols] = np.rint(bg * (1 - c) + fg * c).astype(np.uint8)


# --------------------------------------------------------------------------------------------- records


def record(plan: ItemPlan) -> dict[str, Any]:
    """The annotation record of one item: plain Python types only (JSON- and safe-pickle-ready)."""
    rec: dict[str, Any] = {
        "path": plan.path,
        "cap": list(plan.cap) if isinstance(plan.cap, list) else plan.cap,
        "resolution": {"height": plan.height, "width": plan.width},
    }
    if plan.kind == "video":
        rec["num_frames"] = plan.content_frames
        rec["fps"] = plan.fps
        if plan.cut is not None:
            rec["cut"] = list(plan.cut)
    if plan.crop is not None:
        rec["crop"] = list(plan.crop)
    for key in ("aesthetic", "tech", "motion"):
        if key in plan.scores:
            rec[key] = float(plan.scores[key])
    rec["synth"] = {
        "color": plan.color, "shape": plan.shape, "motion": plan.motion, "background": plan.background,
        "size": plan.size, "start": [float(v) for v in plan.start], "end": [float(v) for v in plan.end],
    }
    return rec


# --------------------------------------------------------------------------------------------- writing

MANIFEST = "synth.json"
DATA_TXT = "data.txt"
VIDEO_ROOT = "videos"
IMAGE_ROOT = "images"
VIDEO_ANNOTATIONS = "annotations/videos.json"
IMAGE_ANNOTATIONS = "annotations/images.pkl"
HELD_OUT_PROMPTS = "held_out_prompts.txt"


def synth_shapes(out: Path, *, videos: int = DEFAULT_VIDEOS, images: int = DEFAULT_IMAGES, seed: int = 0,
                 hold_out: bool = True, video_backgrounds: Sequence[str] = DEFAULT_VIDEO_BACKGROUNDS,
                 lane_spread: float = DEFAULT_LANE_SPREAD, force: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write the shapes dataset under ``out`` and return what was written.

    Reuses a complete dataset already in ``out`` made with the same options and generator version
    (no file is touched) unless ``force``. Refuses a non-empty ``out`` that is not a shapes dataset,
    so it never overwrites unrelated files. Every file is written atomically (temporary name, then
    rename) and only inside ``out``; ``synth.json`` is completed last, so an interrupted run is
    redone on the next call. ``progress(done, total)`` is called after each media file.
    """
    started = time.perf_counter()
    video_backgrounds = check_video_backgrounds(video_backgrounds)
    plans = plan_dataset(videos, images, seed, hold_out, video_backgrounds, lane_spread)  # validates the options
    if not plans:
        raise UsageError("--videos 0 and --images 0 would write an empty dataset; ask for at least one file.")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose a folder for the dataset.")
    options = {"videos": videos, "images": images, "seed": seed, "hold_out": hold_out,
               "video_backgrounds": list(video_backgrounds), "lane_spread": float(lane_spread)}
    previous = _read_manifest(out) if out.is_dir() else None
    if previous is None and out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no {MANIFEST}; choose an empty or new folder so "
                         "no unrelated file is overwritten.")
    files = _planned_files(plans, videos, images)
    if (previous is not None and not force and previous.get("complete") is True
            and previous.get("version") == VERSION and previous.get("options") == options
            and all((out / f).is_file() for f in files)):
        return _result(out, plans, files, reused=True, started=started)

    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    manifest = _manifest(options, files, complete=False)
    atomic_write_bytes(root / MANIFEST, _json_bytes(manifest), root=root)
    if previous is not None:  # drop files an earlier run made that this plan no longer has
        for name in set(previous.get("files") or []) - set(files):
            if isinstance(name, str):
                target = ensure_inside(root / name, root)
                if target.is_file():
                    target.unlink()

    from osctl.media.write import write_image, write_video

    for sub in ((VIDEO_ROOT,) if videos else ()) + ((IMAGE_ROOT,) if images else ()):
        (root / sub).mkdir(exist_ok=True)
    for done, plan in enumerate(plans, 1):
        frames = render(plan)
        if plan.kind == "video":
            write_video(ensure_inside(root / VIDEO_ROOT / plan.path, root), frames, plan.fps or 24)
        else:
            write_image(ensure_inside(root / IMAGE_ROOT / plan.path, root), frames[0])
        if progress is not None:
            progress(done, len(plans))

    lines = [f"# osctl data synth shapes --seed {seed}: DATA_ROOT,ANNOTATION_FILE (relative to this file)"]
    if videos:
        atomic_write_bytes(root / VIDEO_ANNOTATIONS,
                           _json_bytes([record(p) for p in plans if p.kind == "video"]), root=root)
        lines.append(f"{VIDEO_ROOT},{VIDEO_ANNOTATIONS}")
    if images:
        payload = pickle.dumps([record(p) for p in plans if p.kind == "image"], protocol=4)
        atomic_write_bytes(root / IMAGE_ANNOTATIONS, payload, root=root)
        lines.append(f"{IMAGE_ROOT},{IMAGE_ANNOTATIONS}")
    atomic_write_text(root / DATA_TXT, "\n".join(lines) + "\n", root=root)
    atomic_write_text(root / HELD_OUT_PROMPTS, "\n".join(held_out_prompts()) + "\n", root=root)
    atomic_write_bytes(root / MANIFEST, _json_bytes(_manifest(options, files, complete=True)), root=root)
    return _result(out, plans, files, reused=False, started=started)


def _planned_files(plans: list[ItemPlan], videos: int, images: int) -> list[str]:
    files = [f"{VIDEO_ROOT if p.kind == 'video' else IMAGE_ROOT}/{p.path}" for p in plans]
    files += [DATA_TXT, HELD_OUT_PROMPTS]
    files += [VIDEO_ANNOTATIONS] if videos else []
    files += [IMAGE_ANNOTATIONS] if images else []
    return sorted(files)


def _manifest(options: dict[str, Any], files: list[str], *, complete: bool) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "version": VERSION,
        "complete": complete,
        "options": options,
        "data_txt": DATA_TXT,
        "annotations": [f for f in (VIDEO_ANNOTATIONS, IMAGE_ANNOTATIONS) if f in files],
        "held_out": [list(c) for c in held_out_combinations()] if options["hold_out"] else [],
        "held_out_prompts": held_out_prompts(),
        "colors": {k: list(v) for k, v in COLORS.items()},
        "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
        "shapes": list(SHAPES),
        "motions": list(MOTIONS),
        "files": files,
    }


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete the folder or choose another OUT.") from None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        raise UsageError(f"{path} was not written by {GENERATOR}; choose an empty or new folder.")
    return data


def _result(out: Path, plans: list[ItemPlan], files: list[str], *, reused: bool, started: float) -> SynthResult:
    root = out.resolve()
    videos = sum(p.kind == "video" for p in plans)
    images = len(plans) - videos
    annotations = [root / f for f in (VIDEO_ANNOTATIONS, IMAGE_ANNOTATIONS) if f in files]
    hold = _read_manifest(out)
    held = [tuple(c) for c in (hold or {}).get("held_out", [])]
    return SynthResult(
        out=root, data_txt=root / DATA_TXT, annotation_files=annotations, videos=videos, images=images,
        reused=reused, held_out=held, held_out_prompts=root / HELD_OUT_PROMPTS, files=files,
        bytes=sum((root / f).stat().st_size for f in files), seconds=time.perf_counter() - started,
    )


def _json_bytes(payload: Any) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n"

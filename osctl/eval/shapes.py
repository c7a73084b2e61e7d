"""Prompt adherence of shapes samples: colour, shape and motion measured by image analysis.

Why: the demo must show that a model trained on :mod:`osctl.synth.shapes` follows its prompts, with a
number rather than a person's impression, and without another model. The scene is simple (one object
on a plain background), so classic image analysis is enough.

Method, per frame (at most ``max_frames`` frames spread evenly over the clip are analysed):

1. Background: the per-channel median of the 2-pixel border. If fewer than 60 % of the border pixels
   lie within 40 RGB units of it, the frame has no plain background (noise) and no object.
2. Object: pixels whose RGB distance to the background is at least half the frame's peak distance
   (the 99.8th percentile; "half maximum" keeps the edge where it is under blur and H.264 ringing);
   the connected region around the strongest pixel is the object. No object when the peak distance is
   below 60, or the region covers less than 0.3 % or more than half of the frame.
3. Colour: the median RGB of the object's core (distance >= 75 % of the peak).
4. Fill ratio: object area / bounding-box area (circle ~ pi/4, square ~ 1, triangle ~ 1/2).
5. Centroid of the object.

Per sample: the object must be found in at least half of the analysed frames (else every attribute
counts as wrong). Colour = nearest palette colour (:data:`osctl.synth.shapes.COLORS`) to the median
object colour; shape from the median fill ratio (< 0.64 triangle, < 0.89 circle, else square); motion
from a least-squares line through the centroids: the displacement over the observed frames, as a
fraction of the frame width (x) or height (y); below ``still_threshold`` (default 0.08) on both axes
it is ``still``, else the larger axis and its sign give left/right/up/down. A single image is still.

The expected attributes come from the prompt in the sample's sidecar ``<stem>.json`` (written by
``osctl sample``), else from the file name (``NNNN-KK-<slug>`` or the dataset's ``NNNN-<words>``).
Accuracy per attribute is over the samples whose prompt names that attribute; beside it, the chance level
(1 / number of classes of :data:`CLASSES`: colour 1/5, shape 1/3, motion 1/5) is what guessing scores.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osctl.errors import DataError, UsageError
from osctl.eval import STILL_THRESHOLD
from osctl.media.read import IMAGE_SUFFIXES, read_spread_frames, spread_indices
from osctl.synth.shapes import COLORS, MOTIONS, SHAPES

SCHEMA = "osctl.eval.shapes/1"
"""Schema id of the ``--json`` output of ``osctl eval shapes`` (see :meth:`EvalReport.to_json`)."""

ATTRIBUTES: tuple[str, ...] = ("color", "shape", "motion")
CLASSES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "shape": SHAPES, "motion": MOTIONS}
"""What the analysis can predict for each attribute: the shapes dataset's colours, shapes and motions."""


def chance(attribute: str) -> float:
    """The accuracy of guessing ``attribute`` uniformly at random: 1 / its number of classes."""
    return round(1 / len(CLASSES[attribute]), 4)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})

MAX_FRAMES = 16
"""Frames analysed per video, spread evenly (enough for a line fit; keeps long clips cheap)."""

_BORDER = 2
_BG_TOLERANCE = 40.0
_BG_AGREEMENT = 0.6
_MIN_CONTRAST = 60.0
_MIN_AREA = 0.003
_MAX_AREA = 0.5
_MIN_FOUND = 0.5
_TRIANGLE_BELOW = 0.64  # midway between 1/2 and pi/4
_CIRCLE_BELOW = 0.89  # midway between pi/4 and 1

_SHAPE_WORDS = {"circle": "circle", "circles": "circle", "disc": "circle", "disk": "circle", "ball": "circle",
                "dot": "circle", "square": "square", "squares": "square", "box": "square",
                "triangle": "triangle", "triangles": "triangle"}
_DIRECTION_WORDS = {"left": "left", "leftward": "left", "leftwards": "left",
                    "right": "right", "rightward": "right", "rightwards": "right",
                    "up": "up", "upward": "up", "upwards": "up",
                    "down": "down", "downward": "down", "downwards": "down"}
_STILL_WORDS = frozenset({"still", "static", "stationary", "motionless", "unmoving", "resting"})


# --------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Expected:
    """What a prompt asks for; ``None`` where it names no colour, shape or motion."""

    color: str | None = None
    shape: str | None = None
    motion: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """``{"color", "shape", "motion"}``."""
        return {"color": self.color, "shape": self.shape, "motion": self.motion}

    @property
    def empty(self) -> bool:
        """True when the prompt names none of the three attributes."""
        return self.color is None and self.shape is None and self.motion is None


def parse_prompt(text: str) -> Expected:
    """Read colour, shape and motion from a prompt or a file-name slug.

    Handles the dataset's captions and paraphrases ("a red circle moving left on a black background",
    "a blue square moves to the left", "a motionless white triangle", "from left to right"). A colour
    word directly followed by "background" names the background, not the object.
    """
    tokens = re.findall(r"[a-z]+", text.lower())
    color = next((t for i, t in enumerate(tokens) if t in COLORS
                  and (i + 1 >= len(tokens) or tokens[i + 1] != "background")), None)
    shape = next((_SHAPE_WORDS[t] for t in tokens if t in _SHAPE_WORDS), None)
    motion = None
    joined = " ".join(tokens)
    if m := re.search(r"\bfrom (?:the )?(\w+) to (?:the )?(\w+)", joined):
        motion = _DIRECTION_WORDS.get(m.group(2))
    if motion is None:
        motion = next((_DIRECTION_WORDS[t] for t in tokens if t in _DIRECTION_WORDS), None)
    if motion is None and (any(t in _STILL_WORDS for t in tokens) or "not move" in joined):
        motion = "still"
    return Expected(color, shape, motion)


def prompt_from_name(path: Path) -> str:
    """The words of a sample's file name: ``0003-01-a-red-circle-moving-left`` -> ``a red circle moving left``."""
    stem = re.sub(r"^\d+-(\d+-)?", "", path.stem)
    return stem.replace("-", " ").replace("_", " ").strip()


def read_prompt(media: Path) -> tuple[str, str]:
    """The prompt of a sample and where it came from (``"sidecar"`` or ``"filename"``).

    The sidecar is ``<stem>.json`` next to the media with a string ``prompt`` (what ``osctl sample``
    writes); a missing or unreadable sidecar falls back to the file name.
    """
    sidecar = media.with_suffix(".json")
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("prompt"), str) and data["prompt"].strip():
            return data["prompt"], "sidecar"
    return prompt_from_name(media), "filename"


# --------------------------------------------------------------------------------------------- analysis


@dataclass
class Measurement:
    """What the image analysis saw in one sample, and the predicted attributes."""

    frames: int
    frames_analysed: int = 0
    frames_with_object: int = 0
    found: bool = False
    reason: str | None = None
    background: list[int] | None = None
    object_rgb: list[int] | None = None
    fill_ratio: float | None = None
    displacement: list[float] | None = None  # [dx / width, dy / height] over the observed frames
    color: str | None = None
    shape: str | None = None
    motion: str | None = None

    def predicted(self) -> dict[str, str | None]:
        """``{"color", "shape", "motion"}`` predictions (None when no object was found)."""
        return {"color": self.color, "shape": self.shape, "motion": self.motion}


@dataclass
class _FrameObservation:
    background: np.ndarray
    rgb: np.ndarray
    fill: float
    cx: float
    cy: float


def analyse_frames(frames: np.ndarray, *, indices: np.ndarray | None = None, max_frames: int = MAX_FRAMES,
                   still_threshold: float = STILL_THRESHOLD) -> Measurement:
    """Predict colour, shape and motion of the one object in ``T x H x W x 3`` uint8 frames.

    ``indices`` are the frames' positions in the clip when ``frames`` is already a selection (as
    :func:`osctl.media.read.read_spread_frames` returns); otherwise at most ``max_frames`` evenly spread frames are analysed.
    Never raises on odd content: noise, empty frames or several blobs give ``found=False`` with a
    ``reason``, which the report counts as wrong on every attribute.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        return Measurement(frames=int(frames.shape[0]) if frames.ndim else 0,
                           reason=f"frames have shape {tuple(frames.shape)}, expected T x H x W x 3")
    t_total, height, width = frames.shape[:3]
    if indices is None:
        rows = spread_indices(t_total, max_frames)
        times = rows
    else:
        rows = np.arange(t_total)
        times = np.asarray(indices, dtype=np.int64)
        if times.shape != (t_total,):
            raise ValueError(f"indices has shape {times.shape}, expected ({t_total},)")
    result = Measurement(frames=int(t_total), frames_analysed=len(rows))
    seen: list[tuple[int, _FrameObservation]] = []
    reasons: Counter[str] = Counter()
    for row, t in zip(rows, times, strict=True):
        obs = _analyse_frame(frames[row])
        if isinstance(obs, str):
            reasons[obs] += 1
        else:
            seen.append((int(t), obs))
    result.frames_with_object = len(seen)
    if not seen or len(seen) < _MIN_FOUND * len(rows):
        common = reasons.most_common(1)[0][0] if reasons else "no object"
        result.reason = f"object found in {len(seen)} of {len(rows)} frames ({common})"
        return result
    result.found = True
    result.background = [int(v) for v in np.median([o.background for _, o in seen], axis=0).round()]
    rgb = np.median([o.rgb for _, o in seen], axis=0)
    result.object_rgb = [int(v) for v in rgb.round()]
    result.color = nearest_color(rgb)
    fill = float(np.median([o.fill for _, o in seen]))
    result.fill_ratio = round(fill, 4)
    result.shape = "triangle" if fill < _TRIANGLE_BELOW else "circle" if fill < _CIRCLE_BELOW else "square"
    if len(seen) < 2:
        result.displacement = [0.0, 0.0]
        result.motion = "still"
        return result
    ts = np.array([t for t, _ in seen], dtype=np.float64)
    span = ts[-1] - ts[0]
    dx = np.polyfit(ts, [o.cx for _, o in seen], 1)[0] * span / width
    dy = np.polyfit(ts, [o.cy for _, o in seen], 1)[0] * span / height
    result.displacement = [round(float(dx), 4), round(float(dy), 4)]
    if max(abs(dx), abs(dy)) < still_threshold:
        result.motion = "still"
    elif abs(dx) >= abs(dy):
        result.motion = "right" if dx > 0 else "left"
    else:
        result.motion = "down" if dy > 0 else "up"
    return result


def nearest_color(rgb: np.ndarray | list[float]) -> str:
    """The palette colour name closest (RGB distance) to ``rgb``."""
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(np.linalg.norm(palette - np.asarray(rgb, dtype=np.float64), axis=1)))]


def _analyse_frame(frame: np.ndarray) -> _FrameObservation | str:
    """One frame's object, or a short reason why there is none."""
    img = frame.astype(np.float32)
    h, w = img.shape[:2]
    b = _BORDER
    if h <= 2 * b + 2 or w <= 2 * b + 2:
        return "frame too small"
    border = np.concatenate([img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3),
                             img[b:-b, :b].reshape(-1, 3), img[b:-b, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    if np.mean(np.linalg.norm(border - bg, axis=1) < _BG_TOLERANCE) < _BG_AGREEMENT:
        return "no plain background"
    dist = np.sqrt(np.square(img - bg).sum(axis=2))
    peak = float(np.percentile(dist, 99.8))
    if peak < _MIN_CONTRAST:
        return "no object"
    mask = dist >= peak / 2
    seed = np.unravel_index(int(np.argmax(dist)), dist.shape)
    comp = _component(mask, seed)
    area = int(comp.sum())
    if area < _MIN_AREA * h * w:
        return "object too small"
    if area > _MAX_AREA * h * w:
        return "object covers most of the frame"
    ys, xs = np.nonzero(comp)
    box = (int(ys.max() - ys.min() + 1)) * (int(xs.max() - xs.min() + 1))
    core = comp & (dist >= 0.75 * peak)
    pixels = img[core] if core.any() else img[comp]
    return _FrameObservation(background=bg, rgb=np.median(pixels, axis=0), fill=area / box,
                             cx=float(xs.mean() + 0.5), cy=float(ys.mean() + 0.5))


def _component(mask: np.ndarray, seed: tuple[Any, ...]) -> np.ndarray:
    """The 4-connected region of ``mask`` containing ``seed`` (flood fill by repeated dilation)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sub = mask[y0:y1, x0:x1]
    comp = np.zeros_like(sub)
    comp[seed[0] - y0, seed[1] - x0] = True
    count = 1
    while True:
        grown = comp.copy()
        grown[1:] |= comp[:-1]
        grown[:-1] |= comp[1:]
        grown[:, 1:] |= comp[:, :-1]
        grown[:, :-1] |= comp[:, 1:]
        grown &= sub
        new = int(grown.sum())
        if new == count:
            break
        comp, count = grown, new
    full = np.zeros_like(mask)
    full[y0:y1, x0:x1] = comp
    return full


# --------------------------------------------------------------------------------------------- samples


@dataclass
class SampleEval:
    """One sample: its prompt, the expected and predicted attributes, and the measurements."""

    file: str
    prompt: str
    prompt_source: str
    expected: Expected
    measurement: Measurement
    error: str | None = None

    def correct(self, attribute: str) -> bool | None:
        """Whether the prediction matches the prompt; None when the prompt does not name ``attribute``."""
        want = getattr(self.expected, attribute)
        if want is None:
            return None
        return getattr(self.measurement, attribute) == want

    def to_json(self) -> dict[str, Any]:
        """This sample's entry in the ``samples`` list of the ``--json`` output."""
        m = self.measurement
        return {
            "file": self.file, "prompt": self.prompt, "prompt_source": self.prompt_source,
            "expected": self.expected.as_dict(), "predicted": m.predicted(),
            "correct": {a: self.correct(a) for a in ATTRIBUTES},
            "found": m.found, "reason": self.error or m.reason,
            "measurements": {
                "frames": m.frames, "frames_analysed": m.frames_analysed,
                "frames_with_object": m.frames_with_object, "background": m.background,
                "object_rgb": m.object_rgb, "fill_ratio": m.fill_ratio, "displacement": m.displacement,
            },
        }


@dataclass
class EvalReport:
    """Every evaluated sample of a folder, with totals and a per-prompt table."""

    samples_dir: Path
    samples: list[SampleEval] = field(default_factory=list)
    still_threshold: float = STILL_THRESHOLD
    max_frames: int = MAX_FRAMES

    def score(self, attribute: str, samples: list[SampleEval] | None = None) -> dict[str, Any]:
        """``{"correct", "total", "accuracy", "chance"}`` of one attribute (accuracy None when total is 0;
        chance is what random guessing scores, to read the accuracy against)."""
        marks = [s.correct(attribute) for s in (self.samples if samples is None else samples)]
        total = sum(m is not None for m in marks)
        correct = sum(m is True for m in marks)
        return {"correct": correct, "total": total, "accuracy": round(correct / total, 4) if total else None,
                "chance": chance(attribute)}

    def totals(self) -> dict[str, Any]:
        """Sample counts and the score of each attribute over the whole folder."""
        return {
            "samples": len(self.samples),
            "evaluated": sum(not s.expected.empty for s in self.samples),
            "found": sum(s.measurement.found for s in self.samples),
            **{a: self.score(a) for a in ATTRIBUTES},
        }

    def per_prompt(self) -> list[dict[str, Any]]:
        """One row per distinct prompt: expected attributes, sample count, scores, most common prediction."""
        groups: dict[str, list[SampleEval]] = {}
        for s in self.samples:
            groups.setdefault(s.prompt, []).append(s)
        rows = []
        for prompt, members in groups.items():
            preds = Counter(_describe(s.measurement) for s in members)
            rows.append({
                "prompt": prompt, "expected": members[0].expected.as_dict(), "samples": len(members),
                **{a: self.score(a, members) for a in ATTRIBUTES},
                "most_common_prediction": preds.most_common(1)[0][0],
            })
        return rows

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` payload, schema :data:`SCHEMA`::

            {"schema", "samples_dir", "settings": {"still_threshold", "max_frames"},
             "totals": {"samples", "evaluated", "found",
                        "color"|"shape"|"motion": {"correct", "total", "accuracy", "chance"}},
             "prompts": [{"prompt", "expected": {...}, "samples", "color", "shape", "motion",
                          "most_common_prediction"}],
             "samples": [{"file", "prompt", "prompt_source", "expected", "predicted", "correct", "found",
                          "reason", "measurements": {"frames", "frames_analysed", "frames_with_object",
                          "background", "object_rgb", "fill_ratio", "displacement"}}]}
        """
        return {
            "schema": SCHEMA,
            "samples_dir": str(self.samples_dir),
            "settings": {"still_threshold": self.still_threshold, "max_frames": self.max_frames},
            "totals": self.totals(),
            "prompts": self.per_prompt(),
            "samples": [s.to_json() for s in self.samples],
        }


def _describe(m: Measurement) -> str:
    if not m.found:
        return "no object"
    return f"{m.color} {m.shape} {m.motion}"


def find_samples(samples_dir: Path) -> list[Path]:
    """Media files directly inside ``samples_dir`` (mp4 and friends, png/jpg), sorted; grids and hidden files skipped."""
    return sorted(p for p in samples_dir.iterdir()
                  if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES
                  and not p.name.startswith((".", "grid-")))


def evaluate_file(path: Path, *, prompt: str | None = None, still_threshold: float = STILL_THRESHOLD,
                  max_frames: int = MAX_FRAMES) -> SampleEval:
    """Evaluate one media file against its prompt (given, else from the sidecar or file name).

    An unreadable file is not an exception: it becomes a sample with no object (counted wrong).
    """
    source = "argument"
    if prompt is None:
        prompt, source = read_prompt(path)
    try:
        frames, indices, total = read_spread_frames(path, max_frames)
    except Exception as exc:  # any decoder failure is a failed sample, not a crash
        return SampleEval(path.name, prompt, source, parse_prompt(prompt), Measurement(frames=0),
                          error=f"unreadable: {type(exc).__name__}: {exc}")
    measurement = analyse_frames(frames, indices=indices, max_frames=max_frames, still_threshold=still_threshold)
    measurement.frames = total
    return SampleEval(path.name, prompt, source, parse_prompt(prompt), measurement)


def evaluate_dir(samples_dir: Path, *, still_threshold: float = STILL_THRESHOLD,
                 max_frames: int = MAX_FRAMES) -> EvalReport:
    """Evaluate every sample in ``samples_dir`` (the ``--output-dir`` of ``osctl sample``).

    Raises :class:`UsageError` when the folder does not exist, and :class:`DataError` when it holds
    no media file or no sample whose prompt names a colour, shape or motion (nothing to score).
    """
    samples_dir = Path(samples_dir).expanduser()
    if not samples_dir.is_dir():
        raise UsageError(f"{samples_dir} is not a folder; pass the --output-dir of `osctl sample`.")
    if not (0 < still_threshold < 1):
        raise UsageError(f"--still-threshold {still_threshold} must lie between 0 and 1 (a fraction of the frame).")
    if max_frames < 2:
        raise UsageError(f"--max-frames {max_frames} must be at least 2 to measure motion.")
    files = find_samples(samples_dir)
    if not files:
        raise DataError(f"no samples (.mp4, .png or .jpg files) found in {samples_dir}; "
                        "write some with `osctl sample --output-dir` first.")
    report = EvalReport(samples_dir, still_threshold=still_threshold, max_frames=max_frames)
    report.samples = [evaluate_file(f, still_threshold=still_threshold, max_frames=max_frames) for f in files]
    if all(s.expected.empty for s in report.samples):
        raise DataError(f"none of the {len(files)} samples in {samples_dir} has a prompt naming a colour "
                        f"({', '.join(COLORS)}), shape ({', '.join(SHAPES)}) or motion "
                        f"({', '.join(MOTIONS)}); evaluate samples of shapes prompts.")
    return report

"""The built-in curation plugins: motion and tech scorers, the vlm captioner, the aesthetic scorer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osctl.curate.clip import clip_from_record
from osctl.errors import ConfigError
from osctl.protocols import Captioner, Scorer
from osctl_builtin.curation import aesthetic, vlm
from tests.curate_helpers import curation_registry, moving_square, write_clip
from tests.unit.data.pipeline_helpers import still_image


@pytest.fixture(scope="module")
def registry() -> Any:
    return curation_registry()


def _clip(path: Path, frames: int = 16, fps: float = 24) -> Any:
    return clip_from_record(str(path.parent), {"path": path.name, "num_frames": frames, "fps": fps})


def test_registered_kinds(registry: Any) -> None:
    assert registry.names("captioner") == ["vlm"]
    assert registry.names("scorer") == ["aesthetic", "motion", "tech"]
    assert {registry.get("scorer", n).spec.metadata["field"] for n in ("aesthetic", "motion", "tech")} == {
        "aesthetic", "motion", "tech"}


def test_motion_scores_a_moving_square_above_a_still_one(registry: Any, tmp_path: Path) -> None:
    scorer = registry.build("scorer", "motion", {"pairs": 3})
    assert isinstance(scorer, Scorer)
    moving = scorer.score(_clip(moving_square(tmp_path / "moving.mp4", speed=2)))
    still = scorer.score(_clip(moving_square(tmp_path / "still.mp4", speed=0)))
    assert still < 0.005 < moving  # frame sides per second
    assert moving == scorer.score(_clip(tmp_path / "moving.mp4"))
    assert scorer.score(clip_from_record(str(tmp_path), {"path": still_image(tmp_path / "a.png").name})) is None


def test_tech_scores_a_blurred_clip_below_a_sharp_one(registry: Any, tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(frame, (9, 9), 3) for frame in sharp])
    scorer = registry.build("scorer", "tech", {"frames": 3})
    high = scorer.score(_clip(write_clip(tmp_path / "sharp.mp4", sharp), 6))
    low = scorer.score(_clip(write_clip(tmp_path / "blurred.mp4", blurred), 6))
    assert low * 5 < high


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vlm.build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny_blip")


def test_vlm_captions_deterministically_from_a_local_folder(registry: Any, tiny_vlm: Path, tmp_path: Path) -> None:
    clip = _clip(moving_square(tmp_path / "a.mp4", speed=2))
    captioner = registry.build("captioner", "vlm", {"model": str(tiny_vlm), "max_new_tokens": 8})
    assert isinstance(captioner, Captioner)
    text = captioner.caption(clip)
    assert text and set(text.split()) <= set(vlm.TINY_WORDS)
    again = registry.build("captioner", "vlm", {"model": str(tiny_vlm), "max_new_tokens": 8})
    assert again.caption(clip) == text
    prefixed = registry.build("captioner", "vlm", {"model": str(tiny_vlm), "max_new_tokens": 4, "prompt": "a video"})
    assert prefixed.caption(clip).startswith("a video")  # a captioning model continues the prompt


def test_vlm_needs_a_local_model_folder(registry: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a local model folder \(no config.json there\).*nothing is downloaded"):
        registry.make_config("captioner", "vlm", {"model": str(tmp_path / "missing")}, where="captioner vlm")
    with pytest.raises(ConfigError, match="frames 4 needs a model that takes videos"):
        registry.build("captioner", "vlm", {"model": str(vlm.build_tiny_vlm(tmp_path / "m")), "frames": 4})


def test_aesthetic_needs_a_model_and_scores_with_one(registry: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the aesthetic scorer needs a local model: pass --set aesthetic.model=FOLDER"):
        registry.make_config("scorer", "aesthetic", {}, where="scorer aesthetic")
    folder = aesthetic.build_tiny_aesthetic(tmp_path / "clip")
    scorer = registry.build("scorer", "aesthetic", {"model": str(folder), "frames": 2})
    clip = _clip(moving_square(tmp_path / "a.mp4", speed=1))
    value = scorer.score(clip)
    assert math.isfinite(value) and value == scorer.score(clip)
    (folder / aesthetic.HEAD_FILE).unlink()
    with pytest.raises(ConfigError, match=r"the aesthetic head 'aesthetic_head\.safetensors' is not in"):
        registry.make_config("scorer", "aesthetic", {"model": str(folder)}, where="scorer aesthetic")

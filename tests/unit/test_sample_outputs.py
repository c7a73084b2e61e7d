"""What `osctl sample` shows and writes for people (#21 item 16): readable progress labels and a grid with
one captioned row per prompt whose columns are the samples of that prompt."""

from __future__ import annotations

import numpy as np
import pytest

from osctl.media.write import (
    CAPTION_LINE,
    CAPTION_LINES,
    CAPTION_MIN_WIDTH,
    GRID_BACKGROUND,
    captioned_grid,
    grid_layout,
)
from osctl.sample.prompts import PromptSpec, SampleJob
from osctl.sample.run import progress_label


def _jobs(*pairs: tuple[int, int], text: str = "a red circle moving left") -> list[SampleJob]:
    return [SampleJob(PromptSpec(i, f"{text} {i}"), k, seed=0) for i, k in pairs]


@pytest.mark.parametrize(("pairs", "label"), [
    ([(0, 0)], "prompt 1/3 · sample 1/2  a red circle moving left 0"),
    ([(0, 0), (0, 1)], "prompt 1/3 · samples 1-2/2  a red circle moving left 0"),
    ([(2, 1)], "prompt 3/3 · sample 2/2  a red circle moving left 2"),
    ([(0, 1), (1, 0)], "prompt 1/3 · sample 2/2 + prompt 2/3 · sample 1/2"),  # a batch across prompts
])
def test_progress_label_counts_from_one(pairs, label):
    assert progress_label(_jobs(*pairs), 3, {0: 2, 1: 2, 2: 2}) == label


def test_progress_label_lists_samples_another_process_split_and_cuts_long_prompts():
    jobs = _jobs((0, 0), (0, 2), text="x" * 60)
    assert progress_label(jobs, 1, {0: 4}) == f"prompt 1/1 · samples 1,3/4  {'x' * 40}..."


def _clip(colour: tuple[int, int, int], frames: int = 3, size: int = 8) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (frames, size, size, 3)).copy()


RED, GREEN, BLUE, WHITE = (200, 30, 30), (30, 190, 40), (40, 80, 235), (240, 240, 240)


def test_grid_has_a_captioned_row_per_prompt_with_samples_in_columns():
    short = _clip(GREEN, frames=1)  # an image next to clips: held for every frame
    rows = [("1. a red one", [_clip(RED), short, _clip(RED)]),
            ("2. a blue one", [_clip(BLUE), None, _clip(BLUE)]),  # a missing sample keeps the columns aligned
            ("3. a white one " + "with many more words " * 20, [_clip(WHITE)])]
    grid = captioned_grid(rows)
    layout = grid_layout(rows)
    assert grid.shape == (3, layout.height, layout.width, 3)
    assert layout.factor == 512 // (3 * 8) and layout.cell == (8 * layout.factor, 8 * layout.factor)
    h, w = layout.cell
    for (_, row), top in zip(rows, layout.row_tops, strict=True):
        for c, left in enumerate(layout.column_lefts):
            cell = grid[:, top : top + h, left : left + w]
            expected = row[c][0, 0, 0] if c < len(row) and row[c] is not None else np.array(GRID_BACKGROUND)
            assert (cell == expected).all(), (top, c)
    # captions: text pixels above each row, not over the videos; a long one wrapped and cut with "..."
    for lines, top, row_top in zip(layout.captions, layout.caption_tops, layout.row_tops, strict=True):
        band = grid[0, top:row_top]
        assert (np.abs(band.astype(int) - GRID_BACKGROUND).sum(axis=2) > 200).sum() > 20
        assert row_top - top >= len(lines) * CAPTION_LINE
    assert layout.captions[0] == ["1. a red one"]
    assert len(layout.captions[2]) == CAPTION_LINES and layout.captions[2][-1].endswith("...")


def test_grid_of_images_is_one_frame_and_big_samples_are_not_enlarged():
    rows = [("1. one", [_clip(RED, frames=1, size=300)]), ("2. two", [_clip(BLUE, frames=1, size=300)])]
    grid = captioned_grid(rows)
    layout = grid_layout(rows)
    assert grid.shape[0] == 1 and layout.factor == 1 and layout.cell == (300, 300)
    assert layout.width == CAPTION_MIN_WIDTH and layout.captions == [["1. one"], ["2. two"]]  # room for captions
    with pytest.raises(ValueError, match="at least one video"):
        captioned_grid([("1. none", [None])])

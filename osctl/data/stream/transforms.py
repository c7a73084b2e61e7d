"""Turn decoded frames into the training tensor of a sample's bucket (reference §3).

Per sample, in order:

1. ``crop`` (``[x0, x1, y0, y1]`` of the annotation): rows ``y0:y1``, columns ``x0:x1`` of every frame;
2. the resolution rule of the recipe's mode:

   - ``force``: center-crop to the target aspect ``a = max_height / max_width`` (a relatively taller
     frame keeps ``int(w * a)`` rows, otherwise ``int(h / a)`` columns), then resize (bilinear,
     ``align_corners=True``, antialias) to exactly ``max_height x max_width``;
   - ``area`` / ``absolute``: resize to the size the index rules give this frame *before* stride
     flooring (:func:`osctl.data.rules.size_area` / :func:`~osctl.data.rules.size_absolute` with a
     stride of 1: downscale only, never up), then center-crop to the bucket's ``H x W``. Because the
     same rule computed the bucket from the annotation, the result is the bucket shape exactly; a
     frame whose real size leads elsewhere raises :class:`ShapeMismatch` (bad media, reference §3.4);

3. ``x / 255 * 2 - 1`` (values in ``[-1, 1]``), layout ``C x T x H x W`` float32.

Images are 1-frame clips and go through the same steps. Crops are views and the resize runs on the
uint8 frames (torch's antialiased bilinear kernel for uint8, about 7x faster than on float32 here);
only the final, smaller tensor is converted to float. The reference converts to float first; the two
differ by at most one grey level (rounding of the resized value). DataLoader workers run torch with
one thread.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from osctl.data.rules import ResolutionRules, size_absolute, size_area


class ShapeMismatch(ValueError):
    """The decoded (and cropped) frame does not resize to the shape the sample was bucketed with."""


def apply_crop(frames: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """Frames ``T x H x W x C`` restricted to the annotation's crop box ``(x0, x1, y0, y1)`` (a view).

    Raises :class:`ShapeMismatch` when the box does not fit inside the decoded frames.
    """
    if crop is None:
        return frames
    x0, x1, y0, y1 = (int(v) for v in crop)
    height, width = frames.shape[1:3]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ShapeMismatch(f"crop [{x0}, {x1}, {y0}, {y1}] does not fit in the decoded {height}x{width} frames")
    return frames[:, y0:y1, x0:x1]


def force_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """Centered ``(top, left, h, w)`` window of a ``height x width`` frame with the target's aspect ratio.

    As the reference's ``center_crop_th_tw`` (offsets ``int(round(d / 2))``, no top crop).
    """
    aspect = target_h / target_w
    if height / width > aspect:  # relatively taller: keep the width, cut rows
        crop_h, crop_w = int(width * aspect), width
    else:
        crop_h, crop_w = height, int(height / aspect)
    crop_h, crop_w = max(1, min(crop_h, height)), max(1, min(crop_w, width))
    return round((height - crop_h) / 2.0), round((width - crop_w) / 2.0), crop_h, crop_w


def resize_size(height: int, width: int, rules: ResolutionRules) -> tuple[int, int]:
    """Area/absolute mode: the size a ``height x width`` frame is resized to before the stride crop.

    The index rules with a stride of 1 (so nothing is floored): the very functions that computed the
    bucket, applied to the real frame size.
    """
    unit = dataclasses.replace(rules, hw_stride=1)
    sizer = size_area if rules.mode == "area" else size_absolute
    h, w = sizer(np.array([height]), np.array([width]), unit)
    return int(h[0]), int(w[0])


def target_shape(height: int, width: int, rules: ResolutionRules) -> tuple[int, int]:
    """The ``H x W`` a ``height x width`` (cropped) frame ends up with under ``rules``."""
    if rules.mode == "force":
        assert rules.max_height is not None and rules.max_width is not None
        return rules.max_height, rules.max_width
    h, w = resize_size(height, width, rules)
    stride = rules.hw_stride
    return h // stride * stride, w // stride * stride


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=True, antialias=True)


def to_training_tensor(frames: np.ndarray, *, rules: ResolutionRules, shape: tuple[int, int],
                       crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Decoded uint8 frames ``T x H x W x 3`` -> float32 ``3 x T x H' x W'`` in ``[-1, 1]`` with ``(H', W') = shape``.

    ``shape`` is the sample's bucket ``(H, W)``; ``crop`` the annotation's crop box, if any. Raises
    :class:`ShapeMismatch` when the frames cannot produce ``shape`` under the mode's rule.
    """
    frames = apply_crop(frames, crop)
    height, width = int(frames.shape[1]), int(frames.shape[2])
    with warnings.catch_warnings():  # decoders hand out read-only arrays; they are only read here
        warnings.simplefilter("ignore", UserWarning)
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T C H W, channels-last strides, no copy
    if rules.mode == "force":
        top, left, ch, cw = force_crop_box(height, width, *shape)
        clip = _resize(clip[:, :, top:top + ch, left:left + cw], shape)
    else:
        resized = resize_size(height, width, rules)
        stride = rules.hw_stride
        floored = (resized[0] // stride * stride, resized[1] // stride * stride)
        if floored != tuple(shape):
            raise ShapeMismatch(
                f"a {height}x{width} frame resizes to {resized[0]}x{resized[1]} and crops to {floored[0]}x{floored[1]}, "
                f"not to the bucket's {shape[0]}x{shape[1]} (the annotation resolution or crop disagrees with the file)")
        clip = _resize(clip, resized)
        top, left = (resized[0] - shape[0]) // 2, (resized[1] - shape[1]) // 2
        clip = clip[:, :, top:top + shape[0], left:left + shape[1]]
    out = torch.empty((clip.shape[1], clip.shape[0], clip.shape[2], clip.shape[3]), dtype=torch.float32)
    out.copy_(clip.permute(1, 0, 2, 3))
    return out.mul_(2.0 / 255.0).sub_(1.0)

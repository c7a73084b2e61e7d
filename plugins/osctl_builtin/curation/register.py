"""Registers the built-in captioner (``vlm``) and scorers (``motion``, ``tech``, ``aesthetic``).

Kept light: the heavy libraries are imported only inside the factories, which run in worker processes.
"""

from __future__ import annotations

from typing import Any

import osctl
from osctl_builtin.curation import aesthetic, scorers, vlm


@osctl.hookimpl
def register_captioners(register: Any) -> None:
    """Register the local vision-language-model captioner."""
    register(osctl.ComponentSpec(
        name="vlm",
        summary="a local vision-language model (transformers, given by a folder; never downloaded) captions a frame",
        factory=vlm.build_vlm_captioner, config=vlm.VLMCaptionerConfig,
        metadata={"requires": {"transformers": "pip install transformers", "torch": "pip install torch"}},
    ))


@osctl.hookimpl
def register_scorers(register: Any) -> None:
    """Register the motion, technical-quality and aesthetic scorers."""
    register(osctl.ComponentSpec(
        name="motion",
        summary="mean optical-flow speed (OpenCV Farneback) in frame sides per second; writes `motion`",
        factory=scorers.build_motion_scorer, config=scorers.MotionConfig,
        metadata={"field": "motion", "requires": {"cv2": "pip install opencv-python"}},
    ))
    register(osctl.ComponentSpec(
        name="tech",
        summary="sharpness: variance of the Laplacian of grey frames (blur scores low); writes `tech`",
        factory=scorers.build_tech_scorer, config=scorers.TechConfig,
        metadata={"field": "tech", "requires": {"cv2": "pip install opencv-python"}},
    ))
    register(osctl.ComponentSpec(
        name="aesthetic",
        summary="CLIP image embedding + linear head (e.g. the LAION aesthetic predictor) from a local folder; "
                "writes `aesthetic`",
        factory=aesthetic.build_aesthetic_scorer, config=aesthetic.AestheticConfig,
        metadata={"field": "aesthetic", "requires": {"transformers": "pip install transformers",
                                                     "safetensors": "pip install safetensors"}},
    ))

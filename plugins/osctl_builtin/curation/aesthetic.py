"""The ``aesthetic`` scorer: a CLIP image embedding fed through a linear head, both from a local folder.

This is the shape of the LAION "improved aesthetic predictor" Open-Sora-Plan filtered with: the
L2-normalised image embedding of a CLIP model, then a stack of linear layers (its dropouts do nothing
at inference and it has no activations), giving a score of about 1-10. osctl ships no weights and
downloads none: ``model`` is a folder holding a CLIP model saved with ``save_pretrained`` plus the
head as ``aesthetic_head.safetensors`` (``head`` names another file). Convert the predictor's
``.pth`` once with ``safetensors.torch.save_file(torch.load(path, weights_only=True), ...)``.

The head file holds ``<prefix>.<n>.weight`` (``out x in``) and ``.bias`` tensors; they are applied in
order of ``n``. The score of a clip is the mean over ``frames`` evenly spread frames (the middle frame
when ``frames`` is 1).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from osctl import ConfigError
from osctl.registry import ComponentConfig

HEAD_FILE = "aesthetic_head.safetensors"
NEEDS_MODEL = ("the aesthetic scorer needs a local model: pass --set aesthetic.model=FOLDER, a CLIP model saved with "
               f"save_pretrained plus {HEAD_FILE} (e.g. the LAION aesthetic predictor's layers); nothing is downloaded")


class AestheticConfig(ComponentConfig):
    """Options of the ``aesthetic`` scorer (``--set aesthetic.KEY=VALUE``)."""

    model: str | None = Field(None, description="local folder: a CLIP model (save_pretrained) and the head file")
    head: str = Field(HEAD_FILE, description="the linear head: a file name in `model`, or a path")
    frames: int = Field(1, ge=1, le=64, description="frames scored and averaged (1: the middle frame)")
    device: str = Field("cpu", description="torch device")
    threads: int = Field(1, ge=1, le=256, description="torch threads per worker process")

    @model_validator(mode="after")
    def _local_files(self) -> AestheticConfig:
        if self.model is None:
            raise ValueError(NEEDS_MODEL)
        folder = Path(os.path.expanduser(self.model))
        if not (folder / "config.json").is_file():
            raise ValueError(f"{self.model!r} is not a local model folder (no config.json there); {NEEDS_MODEL}")
        if not self.head_path().is_file():
            raise ValueError(f"the aesthetic head {self.head!r} is not in {self.model}; {NEEDS_MODEL}")
        return self

    def head_path(self) -> Path:
        """The head file: ``head`` itself when it is a path to a file, else ``model/head``."""
        given = Path(os.path.expanduser(self.head))
        return given if given.is_file() else Path(os.path.expanduser(str(self.model))) / self.head


def _layer_order(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def load_head(path: Path) -> list[tuple[Any, Any]]:
    """The ``(weight, bias)`` pairs of a linear head file, in layer order; ``ConfigError`` when they do not chain."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    prefixes = sorted({key.rsplit(".", 1)[0] for key in tensors if key.endswith(".weight")}, key=_layer_order)
    layers = []
    for prefix in prefixes:
        weight = tensors[f"{prefix}.weight"].float()
        bias = tensors.get(f"{prefix}.bias")
        if weight.ndim != 2:
            raise ConfigError(f"{path}: {prefix}.weight has shape {tuple(weight.shape)}, expected out x in.")
        if layers and layers[-1][0].shape[0] != weight.shape[1]:
            raise ConfigError(f"{path}: {prefix} takes {weight.shape[1]} inputs but the layer before gives "
                              f"{layers[-1][0].shape[0]}.")
        layers.append((weight, None if bias is None else bias.float()))
    if not layers or layers[-1][0].shape[0] != 1:
        raise ConfigError(f"{path} holds no linear layers ending in one output; it is not an aesthetic head.")
    return layers


class AestheticScorer:
    """CLIP embedding + linear head (see the module docstring)."""

    def __init__(self, config: AestheticConfig) -> None:
        import torch
        import transformers

        torch.set_num_threads(config.threads)
        self.config = config
        folder = os.path.expanduser(str(config.model))
        try:
            self.model = transformers.CLIPModel.from_pretrained(folder, local_files_only=True).to(config.device).eval()
            self.processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"scorer aesthetic: cannot load a CLIP model from {folder} ({type(exc).__name__}: "
                              f"{exc}); {NEEDS_MODEL}.") from None
        self.head = [(w.to(config.device), None if b is None else b.to(config.device))
                     for w, b in load_head(config.head_path())]
        width = int(self.model.config.projection_dim)
        if self.head[0][0].shape[1] != width:
            raise ConfigError(f"scorer aesthetic: the head takes {self.head[0][0].shape[1]} inputs but the CLIP model "
                              f"gives {width}; use the head made for this CLIP model.")

    def score(self, clip: Any) -> float:
        import torch
        from PIL import Image

        if self.config.frames == 1:
            frames = clip.frames(indices=np.array([clip.start + clip.num_frames // 2]))
        else:
            frames = clip.frames(self.config.frames)
        inputs = self.processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.config.device))
            if not torch.is_tensor(features):  # some versions return a model output
                features = features.pooler_output
            x = features.float() / features.float().norm(dim=-1, keepdim=True)
            for weight, bias in self.head:
                x = x @ weight.T if bias is None else x @ weight.T + bias
        return float(x.mean())


def build_aesthetic_scorer(config: AestheticConfig, **runtime: Any) -> AestheticScorer:
    """Factory of ``aesthetic``."""
    return AestheticScorer(config)


def build_tiny_aesthetic(folder: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a deterministic random tiny CLIP model, its image processor and a two-layer head (tests, examples)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    target = Path(folder).expanduser()
    layers = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64}
    config = transformers.CLIPConfig(text_config={**layers, "vocab_size": 64, "max_position_embeddings": 16},
                                     vision_config={**layers, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(target)
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(target)
    generator = torch.Generator().manual_seed(seed)
    head = {"layers.0.weight": torch.randn(8, 16, generator=generator), "layers.0.bias": torch.zeros(8),
            "layers.1.weight": torch.randn(1, 8, generator=generator), "layers.1.bias": torch.full((1,), 5.0)}
    save_file(head, str(target / HEAD_FILE))
    return target

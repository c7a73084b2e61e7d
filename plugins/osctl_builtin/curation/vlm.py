"""The ``vlm`` captioner: a local vision-language model through transformers, plus a tiny one built for tests.

Any model that ``transformers.AutoModelForImageTextToText`` and ``AutoProcessor`` load from a folder
works (BLIP, BLIP-2, LLaVA, Qwen2-VL, SmolVLM, ...); the folder is read with ``local_files_only``, so
nothing is ever downloaded. The model sees the middle frame of the clip's usable span as an image
(``frames: 1``), or ``frames`` evenly spread frames as a video when its processor takes videos.
Models with a chat template get ``prompt`` as the user's instruction; captioning models without one
(BLIP) get it as the start of the caption (none by default). Decoding is greedy, so the same clip
and model always give the same caption.

:func:`build_tiny_vlm` writes a deterministic random tiny BLIP (a few hundred kB, word-level
vocabulary) and its processor to a folder: tests and examples caption with it offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from osctl import ConfigError
from osctl.registry import ComponentConfig
from osctl.utils.dtypes import torch_dtype

DEFAULT_PROMPT = "Describe this video in one sentence."


def check_model_folder(value: str, what: str) -> str:
    """``value`` expanded, after checking it is a folder holding a saved model (``config.json``)."""
    folder = Path(os.path.expanduser(str(value)))
    if not (folder / "config.json").is_file():
        raise ValueError(f"{value!r} is not a local model folder (no config.json there); pass the folder {what} was "
                         "saved to with save_pretrained (nothing is downloaded)")
    return str(folder)


class VLMCaptionerConfig(ComponentConfig):
    """Options of the ``vlm`` captioner (``osctl data caption --captioner vlm --set KEY=VALUE``)."""

    model: str = Field(..., description="local folder of a transformers vision-language model and its processor")
    prompt: str | None = Field(None, description=f"chat models: the instruction (default {DEFAULT_PROMPT!r}); "
                                                 "captioning models: the text the caption starts with (default none)")
    frames: int = Field(1, ge=1, le=64, description="1: the middle frame as an image; more: spread frames as a video")
    max_new_tokens: int = Field(60, ge=1, le=2048, description="longest caption, in tokens")
    min_new_tokens: int = Field(1, ge=0, le=2048, description="shortest caption, in tokens")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="weights dtype")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda")
    threads: int = Field(1, ge=1, le=256, description="torch threads per worker process (workers x threads <= cores)")

    @field_validator("model")
    @classmethod
    def _local_folder(cls, value: str) -> str:
        return check_model_folder(value, "the model")


class VLMCaptioner:
    """Captions clips with a local vision-language model (see the module docstring)."""

    def __init__(self, config: VLMCaptionerConfig) -> None:
        import torch
        import transformers

        torch.set_num_threads(config.threads)
        self.config = config
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(config.model, local_files_only=True)
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(
                config.model, local_files_only=True, dtype=torch_dtype(config.dtype)).to(config.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"captioner vlm: cannot load the model in {config.model} ({type(exc).__name__}: {exc}); "
                              "pass a folder holding a vision-language model and its processor.") from None
        self.chat = bool(getattr(self.processor, "chat_template", None))
        if config.frames > 1 and getattr(self.processor, "video_processor", None) is None:
            raise ConfigError(f"captioner vlm: frames {config.frames} needs a model that takes videos, and the processor "
                              f"in {config.model} takes images only; use frames: 1.")

    def _inputs(self, clip: Any) -> dict[str, Any]:
        from PIL import Image

        if self.config.frames == 1:
            frames = clip.frames(indices=np.array([clip.start + clip.num_frames // 2]))
            visual: dict[str, Any] = {"images": [Image.fromarray(frames[0])]}
            kind = "image"
        else:
            visual = {"videos": [list(clip.frames(self.config.frames))]}
            kind = "video"
        if self.chat:
            messages = [{"role": "user", "content": [{"type": kind},
                                                     {"type": "text", "text": self.config.prompt or DEFAULT_PROMPT}]}]
            text: str | None = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = self.config.prompt
        if text:
            visual["text"] = text
        return self.processor(**visual, return_tensors="pt")

    def caption(self, clip: Any) -> str:
        import torch

        inputs = self._inputs(clip).to(self.config.device)
        dtype = torch_dtype(self.config.dtype)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens,
                                      min_new_tokens=self.config.min_new_tokens, do_sample=False)
        prompt = inputs.get("input_ids")
        if prompt is not None and ids.shape[1] >= prompt.shape[1] and torch.equal(ids[0, :prompt.shape[1]], prompt[0]):
            ids = ids[:, prompt.shape[1]:]
        return str(self.processor.batch_decode(ids, skip_special_tokens=True)[0]).strip()


def build_vlm_captioner(config: VLMCaptionerConfig, **runtime: Any) -> VLMCaptioner:
    """Factory of ``vlm``."""
    return VLMCaptioner(config)


TINY_WORDS: tuple[str, ...] = (
    "a", "the", "video", "of", "shows", "red", "green", "blue", "yellow", "white", "black", "grey", "circle",
    "square", "triangle", "shape", "moving", "left", "right", "up", "down", "still", "on", "background", "slowly",
)
"""Vocabulary of the tiny test model: its random captions are made of these words."""


def build_tiny_vlm(folder: str | os.PathLike[str], *, seed: int = 0, image_size: int = 32) -> Path:
    """Write a deterministic random tiny BLIP captioning model and its processor into ``folder``; return it.

    Same seed, same weights (within one torch and transformers version). The folder is written
    atomically; an existing complete one is kept.
    """
    target = Path(folder).expanduser()
    if (target / "config.json").is_file():
        return target
    import torch
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    layers = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64}
    config = transformers.BlipConfig(
        text_config={**layers, "vocab_size": len(vocab), "max_position_embeddings": 64, "pad_token_id": 0,
                     "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3},
        vision_config={**layers, "image_size": image_size, "patch_size": 8}, projection_dim=32)
    torch.manual_seed(seed)
    model = transformers.BlipForConditionalGeneration(config).eval()
    image_processor = transformers.BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target

"""T5-family text encoders (T5, mT5, UMT5) with their tokenizers, plus a tiny locally built mT5.

The reference encodes prompts with the encoder half of ``google/mt5-xxl`` (4096-d, 512 tokens):
the tokenizer pads to ``max_length``, truncates, appends ``</s>`` and returns an attention mask; the
encoder's last hidden state, computed with that mask, is the text condition (reference §1.4, §6.4).
:class:`T5TextEncoder` does exactly that and follows ``osctl.protocols.TextEncoder``.

Loading goes through ``transformers``' ``from_pretrained``. osctl runs offline unless asked
(``osctl --online``; see :mod:`osctl.hub`): a hub id that is not in the local Hugging Face cache raises
``osctl.ConfigError`` at once, naming the cache folder searched and the download command, before
transformers is even imported — no retries, no hang. ``T5Config.missing_weights()`` makes the same
check for plans and for the commands that refuse to start without weights.

With ``meta=True`` (a plan) the factories build the encoder on the meta device from its configuration
alone — a local ``config.json``, the cached one, or the released configuration shipped in
:mod:`~osctl_builtin.text_encoders.presets` — with no tokenizer and no weights, so its parameters can be
counted without downloading 20 GB.

``tiny_t5`` builds a deterministic tiny mT5 encoder from a seed, with a ``ByT5Tokenizer`` (which needs
no vocabulary file) or, given a ``vocabulary`` list, a word-level tokenizer over those words; it saves
both to a cache folder and loads them through the same path, so the demo and the tests run with no
download. Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from osctl import ConfigError
from osctl.availability import MissingWeights
from osctl.hub import cached_snapshot, hub_offline, missing_from_cache
from osctl.registry import ComponentConfig
from osctl.utils.dtypes import component_dtype, torch_dtype
from osctl_builtin.text_encoders.presets import released_config

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]

#: Hidden sizes of well-known encoders whose full configuration is not shipped (those in
#: ``presets.RELEASED_CONFIGS`` give theirs), so recipes can be checked without loading 50 GB.
KNOWN_HIDDEN_SIZES: dict[str, int] = {
    "google/mt5-xl": 2048,
    "google/mt5-large": 1024,
    "google/mt5-base": 768,
    "google/mt5-small": 512,
    "DeepFloyd/t5-v1_1-xxl": 4096,
    "google/t5-v1_1-xxl": 4096,
}

_ENCODER_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
#: files of which one must be present for a folder to hold weights (transformers' names, sharded or not)
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------


class T5Config(ComponentConfig):
    """Options of the ``t5`` text encoder (recipe section ``text_encoder``)."""

    name_or_path: str = Field(
        "google/mt5-xxl",
        description="Hugging Face id or local folder of a T5/mT5/UMT5 model (the reference's --text_encoder_name_1)",
    )
    max_length: int = Field(512, gt=0, description="tokens per prompt: pad and truncate to this (with </s>)")
    name_or_path_2: str | None = Field(
        None, description="optional second T5-family encoder; its states are returned separately (text_encoder_2)"
    )
    dtype: Precision | None = Field(None, description="weights dtype; default: the command's dtype, else fp32")
    cache_dir: str | None = Field(None, description="download cache (the reference's --cache_dir); default HF's")
    subfolder: str | None = Field(
        None, description="folder inside name_or_path holding the encoder (a diffusers pipeline: text_encoder); "
                          "pipeline_path fills it")
    tokenizer_subfolder: str | None = Field(
        None, description="folder inside name_or_path holding the tokenizer (a diffusers pipeline: tokenizer); "
                          "default: the encoder's folder")
    prompt_clean: Literal["none", "wan"] = Field(
        "none", description="wan: fix text with ftfy, unescape HTML and collapse whitespace before tokenizing, as "
                            "WanPipeline does")
    attend_padding: bool = Field(
        False, description="encode without the attention mask, so every token (padding too) attends to all: "
                           "CogVideoXPipeline and LTXPipeline encode prompts so (the mask is still returned)")

    @classmethod
    def pipeline_options(cls, pipeline_path: str) -> dict[str, Any]:
        """The options a recipe's ``pipeline_path`` fills in (explicit keys win): the pipeline's encoder and
        tokenizer folders."""
        return {"name_or_path": pipeline_path, "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer"}

    def pipeline_root(self) -> Path | None:
        """The local folder of ``name_or_path`` when it holds subfolders (``subfolder`` set), else None."""
        if self.subfolder is None:
            return None
        from osctl.families.sources import resolve_root

        return resolve_root(self.name_or_path, self.cache_dir)

    def encoder_source(self) -> str:
        """Where the encoder is: ``name_or_path``, or its ``subfolder`` on this machine."""
        root = self.pipeline_root()
        if self.subfolder is None:
            return self.name_or_path
        return str(root / self.subfolder) if root is not None else f"{self.name_or_path}/{self.subfolder}"

    def tokenizer_source(self) -> str:
        """Where the tokenizer is: ``tokenizer_subfolder`` of ``name_or_path``, else the encoder's folder."""
        root = self.pipeline_root() if self.tokenizer_subfolder is not None else None
        if root is not None and self.tokenizer_subfolder is not None:
            return str(root / self.tokenizer_subfolder)
        return self.encoder_source()

    def diffusers_components(self) -> dict[str, Path] | None:
        """``{"text_encoder": folder, "tokenizer": folder}`` when both are local folders (``ckpt convert --to
        diffusers-pipeline`` copies them), else None (the exporter saves the built encoder and tokenizer)."""
        encoder, tokenizer = Path(self.encoder_source()).expanduser(), Path(self.tokenizer_source()).expanduser()
        if encoder.is_dir() and tokenizer.is_dir():
            return {"text_encoder": encoder, "tokenizer": tokenizer}
        return None

    def hidden_size(self) -> int | None:
        """The encoder's output width when it can be known without loading weights (for recipe checks)."""
        if self.subfolder is not None and self.pipeline_root() is None:
            values = released_config(self.encoder_source())
            return int(values["d_model"]) if values else None
        return _peek_hidden_size(self.encoder_source(), self.cache_dir)

    def missing_weights(self) -> list[MissingWeights]:
        """The configured encoders whose weights are not on this machine (file-system checks only)."""
        if self.subfolder is not None and self.pipeline_root() is None:
            from osctl.families.sources import missing_source

            missing: list[MissingWeights | None] = [
                missing_source(self.name_or_path, "text_encoder.name_or_path", what="pipeline",
                               cache_dir=self.cache_dir)]
        else:
            missing = [missing_pretrained(self.encoder_source(), "text_encoder.name_or_path", self.cache_dir)]
        if self.name_or_path_2:
            missing.append(missing_pretrained(self.name_or_path_2, "text_encoder.name_or_path_2", self.cache_dir))
        return [item for item in missing if item is not None]


class TinyT5Config(ComponentConfig):
    """Options of ``tiny_t5``: a deterministic random tiny mT5 encoder built locally (demo, tests)."""

    seed: int = Field(0, description="seed of the weights; same seed and sizes give identical weights")
    d_model: int = Field(32, gt=0, description="hidden size; set it to the model's caption_channels")
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0, description="attention heads; must divide d_model")
    max_length: int = Field(32, gt=0, description="tokens per prompt (ByT5: one token per UTF-8 byte, plus </s>)")
    vocabulary: list[str] | None = Field(
        None,
        description="word-level tokenizer over these lower-case words (others map to <unk>) instead of "
                    "ByT5 bytes: one token per word, so a tiny model trained briefly tells words apart",
    )
    cache_dir: str | None = Field(
        None, description="parent folder of the built model; default $XDG_CACHE_HOME/osctl or ~/.cache/osctl"
    )
    dtype: Precision | None = Field(None, description="weights dtype; default: the command's dtype, else fp32")

    @field_validator("vocabulary", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any) -> Any:
        if isinstance(value, list):
            for entry in value:
                if isinstance(entry, bool):
                    raise ValueError(f"an entry was read as {entry}: YAML reads on/off/yes/no as booleans; "
                                     'quote the words, e.g. ["on", "off"]')
        return value

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyT5Config:
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")
        if self.vocabulary is not None:
            check_vocabulary(self.vocabulary)
        return self

    def hidden_size(self) -> int:
        """The encoder's output width (``d_model``)."""
        return self.d_model


# ----------------------------------------------------------------------------------------------
# the encoder object
# ----------------------------------------------------------------------------------------------


class T5TextEncoder:
    """A frozen T5-family encoder with its tokenizer (``osctl.protocols.TextEncoder``).

    ``tokenize`` pads to ``max_length``, truncates and appends ``</s>`` exactly as the reference
    pipeline does; ``encode`` returns the last hidden state computed with the mask, under no_grad.
    ``text_encoder_2`` is the optional second encoder (another ``T5TextEncoder`` or None): a caller
    that wants its states tokenizes and encodes with it separately, e.g.
    ``enc.text_encoder_2.encode(**enc.text_encoder_2.tokenize(prompts))``.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int, source: str,
                 text_encoder_2: T5TextEncoder | None = None, prompt_clean: str = "none",
                 attend_padding: bool = False) -> None:
        # ``tokenizer`` is None for an encoder built on the meta device for a plan (shapes only)
        self.prompt_clean = prompt_clean
        self.attend_padding = attend_padding
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.source = source
        self.text_encoder_2 = text_encoder_2
        config = model.config
        self.hidden_size = int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights live; ``encode`` moves its inputs there."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the encoder's weights (and of its outputs)."""
        return next(self.model.parameters()).dtype

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters of the encoder and of the second one, if any (a plan counts them)."""
        yield from self.model.parameters()
        if self.text_encoder_2 is not None:
            yield from self.text_encoder_2.parameters()

    def to(self, device: Any = None, dtype: Any = None) -> T5TextEncoder:
        """Move (and optionally cast) the encoder, and the second one if any; returns ``self``."""
        self.model.to(device=device, dtype=_torch_dtype(dtype) if dtype is not None else None)
        if self.text_encoder_2 is not None:
            self.text_encoder_2.to(device, dtype)
        return self

    def tokenize(self, texts: Sequence[str] | str, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (``B x L`` int64), padded/truncated to ``max_length``."""
        import torch

        batch = [texts] if isinstance(texts, str) else list(texts)
        if self.prompt_clean == "wan":
            batch = [wan_prompt_clean(text) for text in batch]
        encoded = self.tokenizer(
            batch,
            padding="max_length",
            max_length=int(max_length or self.max_length),
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {
            "input_ids": encoded["input_ids"].to(torch.int64),
            "attention_mask": encoded["attention_mask"].to(torch.int64),
        }

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``B x L x hidden_size`` computed with ``attention_mask`` (with none under
        ``attend_padding``), without gradients."""
        import torch

        device = self.device
        mask = None if self.attend_padding else attention_mask.to(device)
        with torch.no_grad():
            out = self.model(input_ids=input_ids.to(device), attention_mask=mask)
        return out.last_hidden_state

    def encode_texts(self, texts: Sequence[str] | str, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and encode in one call: ``(states B x L x D, attention_mask B x L)``."""
        tokens = self.tokenize(texts, max_length)
        return self.encode(tokens["input_ids"], tokens["attention_mask"]), tokens["attention_mask"]

    def diffusers_modules(self) -> dict[str, Any]:
        """The pipeline components this encoder is (``ckpt convert --to diffusers-pipeline`` saves them)."""
        return {"text_encoder": self.model, "tokenizer": self.tokenizer}

    def __repr__(self) -> str:
        return (f"T5TextEncoder(source={self.source!r}, hidden_size={self.hidden_size}, "
                f"max_length={self.max_length}, second={self.text_encoder_2 is not None})")


def wan_prompt_clean(text: str) -> str:
    """``WanPipeline``'s ``prompt_clean``: ftfy's ``fix_text``, HTML unescaped twice, whitespace collapsed and stripped."""
    import html
    import re

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for local files only."""
    return hub_offline()


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name`` or ``name``)."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_pretrained(name_or_path: str, *, key: str, cache_dir: str | None = None) -> tuple[str, bool]:
    """``(source, local_files_only)`` for ``from_pretrained``; a missing local folder is a ``ConfigError``.

    Offline, a hub id that is not in the local cache (``cache_dir``, else the default hub cache) is a
    ``ConfigError`` at once, naming the cache folder searched and the download command. ``key`` is the
    recipe key the value came from, used in the messages.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    if _looks_like_path(name_or_path) or path.exists():
        raise ConfigError(
            f"{key}: {name_or_path!r} is not a folder; point {key} to a folder holding config.json and the "
            "weights, or to a Hugging Face id."
        )
    offline = offline_mode()
    if offline and cached_snapshot(name_or_path, cache_dir) is None:
        raise ConfigError(missing_from_cache(key, name_or_path, cache_dir).describe() + ".",
                          hint=f"if the model is elsewhere on this machine, set {key} to its folder.")
    return name_or_path, offline


def _has_weights(folder: Path) -> bool:
    """True when ``folder`` holds a transformers weights file (sharded or not)."""
    return any(next(folder.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def missing_pretrained(name_or_path: str, key: str, cache_dir: str | None = None, *,
                       kind: str = "T5-family model") -> MissingWeights | None:
    """What is missing for the transformers model ``name_or_path`` (recipe key ``key``), or None when it can be
    loaded. A hub id counts as missing only offline (online, transformers downloads it at run time)."""
    path = Path(name_or_path).expanduser()
    fetch = f"save a {kind} there with save_pretrained (config.json, weights, tokenizer), or name a hub id"
    if path.is_dir():
        if not (path / "config.json").is_file():
            return MissingWeights(key, f"the folder {name_or_path!r} has no config.json", str(path), fetch)
        if not _has_weights(path):
            return MissingWeights(key, f"the folder {name_or_path!r} holds no weights", str(path), fetch)
        return None
    if _looks_like_path(name_or_path) or path.exists():
        return MissingWeights(key, f"{name_or_path!r} is not a folder", str(path), fetch)
    if not offline_mode():
        return None
    snapshot = cached_snapshot(name_or_path, cache_dir)
    if snapshot is not None and _has_weights(snapshot):
        return None
    return missing_from_cache(key, name_or_path, cache_dir, partial=snapshot is not None)


def plan_config(name_or_path: str, cache_dir: str | None = None) -> dict[str, Any] | None:
    """The ``config.json`` values of an encoder without its weights: the local folder's, the cached
    snapshot's, else the released configuration shipped with osctl; None when none is known."""
    path = Path(name_or_path).expanduser()
    candidates = [path] if path.is_dir() or _looks_like_path(name_or_path) else []
    if not candidates:
        snapshot = cached_snapshot(name_or_path, cache_dir)
        candidates = [snapshot] if snapshot is not None else []
    for folder in candidates:
        try:
            data = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None if _looks_like_path(name_or_path) else released_config(name_or_path)


def unavailable(name_or_path: str, *, key: str, local_only: bool, exc: BaseException) -> ConfigError:
    """The one-sentence ``ConfigError`` for weights that could not be loaded from ``name_or_path``."""
    if Path(name_or_path).expanduser().is_dir():
        return ConfigError(
            f"{key}: the folder {name_or_path!r} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); it must hold a transformers model "
            "saved with save_pretrained (config.json, weights, tokenizer files)."
        )
    how = ("it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if local_only
           else "it could not be downloaded")
    return ConfigError(
        f"{key}: {name_or_path!r} is not available ({how}); download it first "
        f"(`hf download {name_or_path}`, online) or set {key} to a local folder holding the model."
    )


def _torch_dtype(value: Any) -> Any:
    """A ``torch.dtype`` from a precision name (fp32/bf16/fp16), a dtype name, or a dtype."""
    return torch_dtype(value, "text_encoder dtype")


def _pick_dtype(configured: str | None, runtime: Any) -> Any:
    """The configured dtype, else the command's runtime dtype, else float32."""
    return component_dtype(configured, runtime, "text_encoder dtype")


def load_t5_encoder(name_or_path: str, *, max_length: int, dtype: Any = None, device: Any = None,
                    cache_dir: str | None = None, key: str = "text_encoder.name_or_path",
                    tokenizer_path: str | None = None, prompt_clean: str = "none",
                    attend_padding: bool = False) -> T5TextEncoder:
    """Load a frozen T5/mT5/UMT5 encoder and its tokenizer from a hub id or a local folder.

    The encoder class follows the checkpoint's ``model_type`` (``t5`` -> ``T5EncoderModel``, ``mt5`` ->
    ``MT5EncoderModel``, ``umt5`` -> ``UMT5EncoderModel``; anything else through
    ``AutoModelForTextEncoding``), rather than the reference's "path contains mt5" test. Weights that
    are not available raise ``ConfigError`` naming ``key``.
    """
    source, local_only = resolve_pretrained(name_or_path, key=key, cache_dir=cache_dir)
    import transformers  # after the offline check: a missing model costs no import

    common: dict[str, Any] = {"local_files_only": local_only}
    if cache_dir is not None:
        common["cache_dir"] = cache_dir
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as exc:
        raise unavailable(name_or_path, key=key, local_only=local_only, exc=exc) from None
    model_type = getattr(config, "model_type", "")
    if not hasattr(config, "d_model") and model_type not in _ENCODER_CLASSES:
        raise ConfigError(
            f"{key}: {name_or_path!r} is a {model_type or 'unknown'} model, not a T5-family encoder; "
            "use a T5, mT5 or UMT5 checkpoint (e.g. google/mt5-xxl)."
        )
    cls = getattr(transformers, _ENCODER_CLASSES.get(model_type, "AutoModelForTextEncoding"))
    try:
        model = cls.from_pretrained(source, dtype=_pick_dtype(None, dtype), **common)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path or source, **common)
    except (OSError, ValueError) as exc:
        raise unavailable(name_or_path, key=key, local_only=local_only, exc=exc) from None
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model.to(device)
    return T5TextEncoder(model, tokenizer, max_length=max_length, source=source, prompt_clean=prompt_clean,
                         attend_padding=attend_padding)


def meta_t5_encoder(values: dict[str, Any], *, max_length: int, dtype: Any, source: str) -> T5TextEncoder:
    """An encoder built on the meta device from ``config.json`` values: shapes only, no tokenizer, no memory."""
    import torch
    import transformers

    fields = {k: v for k, v in values.items() if not k.startswith("_") and k not in ("architectures",)}
    model_type = str(fields.pop("model_type", "t5"))
    fields.update(is_encoder_decoder=False, use_cache=False)
    config = transformers.AutoConfig.for_model(model_type, **fields)
    cls = getattr(transformers, _ENCODER_CLASSES.get(model_type, "AutoModelForTextEncoding"))
    with torch.device("meta"):
        model = cls(config) if cls is not transformers.AutoModelForTextEncoding else cls.from_config(config)
    model.to(dtype=dtype)
    model.requires_grad_(False)
    return T5TextEncoder(model, None, max_length=max_length, source=source)


def _plan_encoder(name_or_path: str, *, key: str, max_length: int, dtype: Any, cache_dir: str | None) -> T5TextEncoder:
    """The encoder ``name_or_path`` on the meta device; ``ConfigError`` when its configuration is unknown."""
    values = plan_config(name_or_path, cache_dir)
    if values is None:
        raise ConfigError(f"{key}: no configuration is known for {name_or_path!r} without its files; put the model "
                          "there (or name a hub id osctl ships the configuration of, e.g. google/mt5-xxl).")
    return meta_t5_encoder(values, max_length=max_length, dtype=dtype, source=name_or_path)


def build_t5(config: T5Config, **runtime: Any) -> T5TextEncoder:
    """Factory of ``t5``: the configured encoder (and the optional second one), frozen, on ``device``.

    ``meta=True`` builds both on the meta device from their configurations alone (see :func:`plan_config`).
    """
    dtype = _pick_dtype(config.dtype, runtime.get("dtype"))
    device = runtime.get("device")
    if runtime.get("meta"):
        if config.subfolder is not None and config.pipeline_root() is None and released_config(config.encoder_source()):
            encoder = meta_t5_encoder(released_config(config.encoder_source()) or {}, max_length=config.max_length,
                                      dtype=dtype, source=config.encoder_source())
        else:
            encoder = _plan_encoder(config.encoder_source(), key="text_encoder.name_or_path",
                                    max_length=config.max_length, dtype=dtype, cache_dir=config.cache_dir)
        if config.name_or_path_2:
            encoder.text_encoder_2 = _plan_encoder(config.name_or_path_2, key="text_encoder.name_or_path_2",
                                                   max_length=config.max_length, dtype=dtype,
                                                   cache_dir=config.cache_dir)
        return encoder
    if config.subfolder is not None and config.pipeline_root() is None:
        from osctl.families.sources import missing_source

        raise ConfigError(missing_source(config.name_or_path, "text_encoder.name_or_path", what="pipeline",
                                         cache_dir=config.cache_dir).describe() + ".")
    encoder = load_t5_encoder(config.encoder_source(), max_length=config.max_length, dtype=dtype, device=device,
                              cache_dir=config.cache_dir, key="text_encoder.name_or_path",
                              tokenizer_path=None if config.tokenizer_subfolder is None else config.tokenizer_source(),
                              prompt_clean=config.prompt_clean, attend_padding=config.attend_padding)
    if config.name_or_path_2:
        encoder.text_encoder_2 = load_t5_encoder(
            config.name_or_path_2, max_length=config.max_length, dtype=dtype, device=device,
            cache_dir=config.cache_dir, key="text_encoder.name_or_path_2",
        )
    return encoder


def _peek_hidden_size(name_or_path: str, cache_dir: str | None = None) -> int | None:
    """``d_model`` from the encoder's configuration (:func:`plan_config`) or the table of known ids; None when unknown."""
    data = plan_config(name_or_path, cache_dir)
    if data is not None:
        value = data.get("d_model", data.get("hidden_size"))
        return int(value) if isinstance(value, int) else None
    return KNOWN_HIDDEN_SIZES.get(name_or_path)


# ----------------------------------------------------------------------------------------------
# tiny_t5
# ----------------------------------------------------------------------------------------------

#: Bumped whenever the tiny model's construction changes, so old cache folders are not reused.
TINY_T5_FORMAT = 1
_BYT5_VOCAB = 384  # 3 special tokens + 256 byte values + 125 <extra_id_N>, as ByT5Tokenizer has
_WORD_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5 (pad_token_id 0, eos_token_id 1)


def check_vocabulary(words: Sequence[str]) -> list[str]:
    """The word list of a word-level tiny tokenizer, validated: non-empty, lower-case single words, unique.

    Why: the tokenizer lower-cases and splits prompts on whitespace and punctuation, so an entry
    with a space, an upper-case letter or a special-token name could never be produced.
    """
    out = [str(w) for w in words]
    if not out:
        raise ValueError("vocabulary is empty; list the words of the prompts, or remove it for ByT5 bytes")
    for word in out:
        if not word or word != word.lower() or not word.isalnum():
            raise ValueError(f"vocabulary entry {word!r} is not a lower-case word of letters/digits; "
                             "write each word alone, in lower case")
    duplicates = sorted({w for w in out if out.count(w) > 1})
    if duplicates:
        raise ValueError(f"vocabulary lists {', '.join(map(repr, duplicates))} more than once; keep one of each")
    return out


def word_tokenizer(words: Sequence[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` mapping each listed word to one id (others to ``<unk>``), plus ``</s>``.

    Ids 0-2 are ``<pad>``, ``</s>``, ``<unk>`` as in T5; text is lower-cased and split on whitespace
    and punctuation; ``</s>`` is appended as the ByT5 and mT5 tokenizers do.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_WORD_SPECIALS)}
    for word in check_vocabulary(words):
        vocab[word] = len(vocab)
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                        special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=1 << 20)


def fill_parameters_deterministically(model: Any, seed: int) -> None:
    """Overwrite every parameter from a seeded CPU generator, in ``named_parameters`` order.

    Independent of the library's own initialisers (which change between versions): norm weights
    are ``1 + 0.1 * randn`` (as in the golden tiny mT5), other vectors are zero, matrices are
    ``randn / sqrt(fan_in)`` and embedding tables ``randn`` (T5 scales them by nothing else).
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            lowered = name.lower()
            if "norm" in lowered or lowered.endswith(("ln_f.weight", "ln_1.weight", "ln_2.weight")):
                value = 1.0 + 0.1 * noise if param.ndim == 1 and lowered.endswith("weight") else torch.zeros_like(noise)
            elif param.ndim == 1:
                value = torch.zeros_like(noise)
            elif "embed" in lowered or lowered.startswith("shared") or "wte" in lowered or "wpe" in lowered:
                value = noise
            elif "relative_attention_bias" in lowered:
                value = 0.1 * noise
            else:
                value = noise / float(param.shape[-1]) ** 0.5
            param.copy_(value.to(param.dtype))


def tiny_t5_settings(*, seed: int, d_model: int, num_layers: int = 2, num_heads: int = 4,
                     vocabulary: Sequence[str] | None = None) -> dict[str, Any]:
    """The full description of a tiny mT5 (its hash names the cache folder).

    Without ``vocabulary`` the description is the same as before the option existed, so the cache
    folders (and weights) of earlier ByT5 builds stay valid.
    """
    if d_model % num_heads:
        raise ConfigError(f"text_encoder.num_heads: {num_heads} must divide d_model ({d_model}).")
    extra: dict[str, Any] = {}
    vocab_size = _BYT5_VOCAB
    if vocabulary is not None:
        extra["vocabulary"] = list(vocabulary)
        vocab_size = len(_WORD_SPECIALS) + len(extra["vocabulary"])
    return {
        **extra,
        "format": TINY_T5_FORMAT,
        "seed": int(seed),
        "vocab_size": vocab_size,
        "d_model": int(d_model),
        "d_kv": int(d_model) // int(num_heads),
        "d_ff": 2 * int(d_model),
        "num_layers": int(num_layers),
        "num_heads": int(num_heads),
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
    }


def mt5_config_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``MT5Config`` arguments of a tiny mT5 description (:func:`tiny_t5_settings` less osctl's own keys)."""
    return {k: v for k, v in settings.items() if k not in ("format", "seed", "vocabulary")}


def build_tiny_t5(folder: str | os.PathLike[str], *, seed: int = 0, d_model: int = 32, num_layers: int = 2,
                  num_heads: int = 4, vocabulary: Sequence[str] | None = None) -> Path:
    """Write a deterministic random tiny mT5 encoder and its tokenizer into ``folder``.

    The tokenizer is a ``ByT5Tokenizer``, or with ``vocabulary`` a word-level one over those words
    (:func:`word_tokenizer`; the embedding table then has one row per word plus three specials).

    Same arguments give bit-identical weights on any machine (see
    :func:`fill_parameters_deterministically`). Sizes follow the golden tiny mT5 (vocab 384, gated
    GELU, ``d_kv = d_model / num_heads``, ``d_ff = 2 * d_model``). The folder is written atomically
    (a temporary sibling renamed into place); an existing complete folder is kept as is. Returns
    the folder, which the ``t5`` encoder (``name_or_path``) loads like any saved model.
    """
    settings = tiny_t5_settings(seed=seed, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                                vocabulary=vocabulary)
    target = Path(folder).expanduser()
    if (target / "osctl_tiny_t5.json").is_file():
        return target
    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        config = transformers.MT5Config(**mt5_config_fields(settings), is_encoder_decoder=False, use_cache=False,
                                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        model = transformers.MT5EncoderModel(config)
        fill_parameters_deterministically(model, seed)
        model.save_pretrained(staging)
        if not (staging / "config.json").is_file():
            # transformers >= 5 writes models only on global rank 0 of a process group; the other
            # ranks (and other nodes' local rank 0, without a shared disk) write the same weights directly
            from safetensors.torch import save_model

            model.config.save_pretrained(staging)
            save_model(model, str(staging / "model.safetensors"))
        if vocabulary is None:
            transformers.ByT5Tokenizer().save_pretrained(staging)
        else:
            word_tokenizer(vocabulary).save_pretrained(staging)
        (staging / "osctl_tiny_t5.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "osctl_tiny_t5.json").is_file():
                raise
            # another process finished the same build first: keep theirs
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/osctl``, else ``~/.cache/osctl``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "osctl"


def tiny_t5_folder(config: TinyT5Config) -> Path:
    """The cache folder of ``config``'s tiny model: ``<cache_dir>/tiny_t5-<hash of its settings>``."""
    settings = tiny_t5_settings(seed=config.seed, d_model=config.d_model, num_layers=config.num_layers,
                                num_heads=config.num_heads, vocabulary=config.vocabulary)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_root()
    return root / f"tiny_t5-{digest}"


def build_tiny_t5_encoder(config: TinyT5Config, **runtime: Any) -> T5TextEncoder:
    """Factory of ``tiny_t5``: build (once, cached) and load through the same path as ``t5``.

    ``meta=True`` builds the same shapes on the meta device and writes nothing (no cache folder).
    """
    if runtime.get("meta"):
        settings = tiny_t5_settings(seed=config.seed, d_model=config.d_model, num_layers=config.num_layers,
                                    num_heads=config.num_heads, vocabulary=config.vocabulary)
        return meta_t5_encoder({**mt5_config_fields(settings), "model_type": "mt5"}, max_length=config.max_length,
                               dtype=_pick_dtype(config.dtype, runtime.get("dtype")), source="tiny_t5")
    folder = build_tiny_t5(tiny_t5_folder(config), seed=config.seed, d_model=config.d_model,
                           num_layers=config.num_layers, num_heads=config.num_heads, vocabulary=config.vocabulary)
    return load_t5_encoder(str(folder), max_length=config.max_length,
                           dtype=_pick_dtype(config.dtype, runtime.get("dtype")), device=runtime.get("device"),
                           key="text_encoder.cache_dir")

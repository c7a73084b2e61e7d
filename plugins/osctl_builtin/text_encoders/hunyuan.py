"""HunyuanVideo's two text encoders as one osctl text encoder: LLaVA-Llama-3 hidden states and CLIP-L's pooled vector.

``HunyuanVideoPipeline`` conditions its transformer on two texts of the prompt:

- LLaVA-Llama-3 (``text_encoder/``, a ``LlamaModel``; ``tokenizer/``): the prompt put into a chat template
  (:data:`TEMPLATE`), tokenized to ``crop_start + max_length`` tokens, encoded with its mask; the hidden states
  of the third-last layer (``hidden_states[-(2 + 1)]``) past the template's ``crop_start`` tokens are the
  sequence the transformer attends to, with their mask;
- CLIP-L (``text_encoder_2/``, a ``CLIPTextModel``; ``tokenizer_2/``): the bare prompt in 77 tokens, encoded
  without a mask; its ``pooler_output`` joins the timestep embedding.

osctl's text-encoder contract is one tensor of token ids and one mask in (``tokenize``), one tensor of states
out (``encode``), with the same length. :class:`HunyuanTextEncoder` packs both encoders into it, ``N =
crop_start + max_length + clip_length`` tokens:

- ``input_ids``: ``[Llama ids (crop_start + max_length) | CLIP ids (clip_length)]``;
- ``attention_mask``: ``[1 | the prompt's Llama mask (max_length) | 0 ...]`` (the mask of the states);
- states ``B x N x D`` (``D`` Llama's width): ``[CLIP pooled vector (in the first 768 values) | the prompt's
  Llama states (max_length) | 0 ...]``.

The ``hunyuan_video`` model unpacks them (:meth:`osctl_builtin.models.hunyuan_video.model.
HunyuanVideoTransformers.prepare_text`). The Llama mask of the template tokens is all ones (the template is
never truncated), so ``encode`` rebuilds Llama's full mask from the packed one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from osctl import ConfigError
from osctl.availability import MissingWeights
from osctl.registry import ComponentConfig
from osctl.utils.dtypes import component_dtype

#: HunyuanVideoPipeline's prompt template (its DEFAULT_PROMPT_TEMPLATE) and the tokens of its prefix
TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
CROP_START = 95
#: the released encoders' config.json values (a plan counts them without the 16 GB of weights)
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "text_encoder": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128320,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                     "hidden_act": "silu", "tie_word_embeddings": False},
    "text_encoder_2": {"model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072,
                       "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 49408,
                       "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"},
}
COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
FETCH_HINT = ("download a HunyuanVideo diffusers pipeline (e.g. `hf download hunyuanvideo-community/HunyuanVideo`) "
              "and name it with pipeline_path or text_encoder.name_or_path")


class HunyuanTextConfig(ComponentConfig):
    """Options of the ``hunyuan_text`` encoder (recipe section ``text_encoder``)."""

    name_or_path: str = Field("hunyuanvideo-community/HunyuanVideo",
                              description="a HunyuanVideo diffusers pipeline folder or hub id: its text_encoder/, "
                                          "tokenizer/, text_encoder_2/ and tokenizer_2/ are read; pipeline_path fills it")
    max_length: int = Field(256, gt=0, description="Llama tokens of the prompt after the template (the pipeline's "
                                                   "max_sequence_length)")
    crop_start: int = Field(CROP_START, ge=0, description="tokens of the template before the prompt (95 with the "
                                                          "released tokenizer)")
    template: str = Field(TEMPLATE, description="the chat template around the prompt ({} marks the prompt)")
    clip_length: int = Field(77, gt=0, description="CLIP tokens of the prompt")
    hidden_layers_to_skip: int = Field(2, ge=0, description="Llama states of hidden_states[-(n + 1)] (the pipeline: 2)")
    dtype: str | None = Field(None, description="weights dtype (fp32, bf16, fp16); default: the command's, else fp32")
    cache_dir: str | None = Field(None, description="Hugging Face cache to read a hub id from; default HF's")

    @classmethod
    def pipeline_options(cls, pipeline_path: str) -> dict[str, Any]:
        """The options a recipe's ``pipeline_path`` fills in (explicit keys win): the pipeline itself."""
        return {"name_or_path": pipeline_path}

    def root(self) -> Path | None:
        """The pipeline folder on this machine, or None."""
        from osctl.families.sources import resolve_root

        return resolve_root(self.name_or_path, self.cache_dir)

    def folders(self) -> dict[str, Path] | None:
        """``{component: folder}`` of the four text components, or None when the pipeline is not here."""
        root = self.root()
        return None if root is None else {name: root / name for name in COMPONENTS}

    def diffusers_components(self) -> dict[str, Path] | None:
        """The four folders ``ckpt convert --to diffusers-pipeline`` copies (None when they are not here)."""
        return self.folders()

    def hidden_size(self) -> int:
        """Llama's width: the transformer's ``text_embed_dim``."""
        folders = self.folders()
        if folders is not None and (folders["text_encoder"] / "config.json").is_file():
            from osctl.families.sources import read_json_object

            return int(read_json_object(folders["text_encoder"] / "config.json", "text_encoder.name_or_path")
                       ["hidden_size"])
        return int(RELEASED_CONFIGS["text_encoder"]["hidden_size"])

    def missing_weights(self) -> list[MissingWeights]:
        """The pipeline when it is not on this machine, or its text folders when they hold no weights."""
        from osctl.families.sources import missing_source

        folders = self.folders()
        if folders is None:
            return [missing_source(self.name_or_path, "text_encoder.name_or_path", what="HunyuanVideo pipeline",
                                   cache_dir=self.cache_dir, fetch=FETCH_HINT)]
        return [MissingWeights("text_encoder.name_or_path", f"{str(folders[name])!r} holds no weights",
                               str(folders[name]), FETCH_HINT)
                for name in ("text_encoder", "text_encoder_2")
                if not any(folders[name].glob("*.safetensors")) and not any(folders[name].glob("*.bin"))]

    def packed_length(self) -> int:
        """Tokens of the packed ids, mask and states (see the module docstring)."""
        return self.crop_start + self.max_length + self.clip_length


class HunyuanTextEncoder:
    """LLaVA-Llama-3 and CLIP-L, frozen, behind ``osctl.protocols.TextEncoder`` (see the module docstring)."""

    def __init__(self, llama: Any, tokenizer: Any, clip: Any, tokenizer_2: Any, config: HunyuanTextConfig) -> None:
        self.model, self.tokenizer = llama, tokenizer
        self.model_2, self.tokenizer_2 = clip, tokenizer_2
        self.config = config
        self.max_length = config.max_length
        self.hidden_size = int(llama.config.hidden_size)
        self.pooled_size = int(clip.config.hidden_size)
        if self.pooled_size > self.hidden_size:
            raise ConfigError(f"text_encoder: CLIP's width {self.pooled_size} exceeds Llama's {self.hidden_size}; the "
                              "pooled vector is packed into one row of Llama's states.")

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def parameters(self) -> Iterator[Any]:
        """Both encoders' parameters (a plan counts them)."""
        yield from self.model.parameters()
        yield from self.model_2.parameters()

    def to(self, device: Any = None, dtype: Any = None) -> HunyuanTextEncoder:
        for module in (self.model, self.model_2):
            module.to(device=device, dtype=dtype)
        return self

    def tokenize(self, texts: Sequence[str] | str, max_length: int | None = None) -> dict[str, Any]:
        """Packed ``input_ids`` and ``attention_mask`` (``B x N``) of ``texts``; ``max_length`` replaces the prompt's
        Llama tokens."""
        import torch

        batch = [texts] if isinstance(texts, str) else list(texts)
        length = int(max_length or self.max_length)
        crop = self.config.crop_start
        llama = self.tokenizer([self.config.template.format(text) for text in batch], max_length=crop + length,
                               padding="max_length", truncation=True, return_attention_mask=True, return_tensors="pt")
        clip = self.tokenizer_2(batch, max_length=self.config.clip_length, padding="max_length", truncation=True,
                                return_tensors="pt")
        ids = torch.cat([llama["input_ids"], clip["input_ids"]], dim=1).to(torch.int64)
        mask = torch.zeros_like(ids)
        mask[:, 0] = 1
        mask[:, 1: 1 + length] = llama["attention_mask"][:, crop:]
        return {"input_ids": ids, "attention_mask": mask}

    def encode(self, input_ids: Any, attention_mask: Any) -> Any:
        """Packed states ``B x N x D`` (see the module docstring), without gradients."""
        import torch

        total = input_ids.shape[1]
        clip_length = self.config.clip_length
        crop = self.config.crop_start
        length = total - clip_length - crop
        device = self.device
        llama_ids = input_ids[:, : crop + length].to(device)
        llama_mask = torch.cat([torch.ones_like(llama_ids[:, :crop]), attention_mask[:, 1: 1 + length].to(device)], 1)
        with torch.no_grad():
            hidden = self.model(input_ids=llama_ids, attention_mask=llama_mask, output_hidden_states=True).hidden_states
            states = hidden[-(self.config.hidden_layers_to_skip + 1)][:, crop:]
            pooled = self.model_2(input_ids[:, crop + length:].to(device), output_hidden_states=False).pooler_output
        packed = states.new_zeros(input_ids.shape[0], total, states.shape[2])
        packed[:, 0, : pooled.shape[1]] = pooled.to(states.dtype)
        packed[:, 1: 1 + length] = states
        return packed

    def diffusers_modules(self) -> dict[str, Any]:
        """The pipeline components this encoder is (``ckpt convert --to diffusers-pipeline`` saves them)."""
        return {"text_encoder": self.model, "tokenizer": self.tokenizer, "text_encoder_2": self.model_2,
                "tokenizer_2": self.tokenizer_2}

    def __repr__(self) -> str:
        return f"HunyuanTextEncoder(source={self.config.name_or_path!r}, hidden_size={self.hidden_size})"


def build_hunyuan_text(config: HunyuanTextConfig, **runtime: Any) -> HunyuanTextEncoder:
    """Factory of ``hunyuan_text``: both encoders and tokenizers from the pipeline's folders, frozen; with
    ``meta=True`` both encoders on the meta device from their (released) configurations, no tokenizers."""
    import torch
    import transformers

    dtype = component_dtype(config.dtype, runtime.get("dtype"), "text_encoder dtype")
    folders = config.folders()
    if runtime.get("meta"):
        modules = []
        for name, cls in (("text_encoder", "LlamaModel"), ("text_encoder_2", "CLIPTextModel")):
            values = dict(RELEASED_CONFIGS[name])
            if folders is not None and (folders[name] / "config.json").is_file():
                from osctl.families.sources import read_json_object

                values = read_json_object(folders[name] / "config.json", "text_encoder.name_or_path")
            fields = {k: v for k, v in values.items() if not k.startswith("_") and k != "architectures"}
            model_type = str(fields.pop("model_type"))
            with torch.device("meta"):
                modules.append(getattr(transformers, cls)(transformers.AutoConfig.for_model(model_type, **fields)))
        for module in modules:
            module.to(dtype=dtype).requires_grad_(False)
        return HunyuanTextEncoder(modules[0], None, modules[1], None, config)
    if folders is None:
        from osctl.families.sources import missing_source

        raise ConfigError(missing_source(config.name_or_path, "text_encoder.name_or_path", what="HunyuanVideo pipeline",
                                         cache_dir=config.cache_dir).describe() + ".", hint=FETCH_HINT)
    try:
        llama = transformers.LlamaModel.from_pretrained(folders["text_encoder"], dtype=dtype, local_files_only=True)
        clip = transformers.CLIPTextModel.from_pretrained(folders["text_encoder_2"], dtype=dtype, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folders["tokenizer"], local_files_only=True)
        tokenizer_2 = transformers.AutoTokenizer.from_pretrained(folders["tokenizer_2"], local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"text_encoder.name_or_path: the HunyuanVideo text encoders in {config.name_or_path!r} could "
                          f"not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).",
                          hint=FETCH_HINT) from None
    for module in (llama, clip):
        module.eval().requires_grad_(False)
        if runtime.get("device") is not None:
            module.to(runtime["device"])
    return HunyuanTextEncoder(llama, tokenizer, clip, tokenizer_2, config)

"""The released configurations of the text encoders osctl's recipes name, shipped so a plan needs no download.

``osctl train --dry-run`` counts the encoder's parameters on the meta device from these values when the
model is neither a local folder nor in the Hugging Face cache. They are the encoder-relevant keys of each
model's ``config.json`` on the hub (``model_type`` picks the transformers class); the values below are
those published with the models (google/mt5-xxl: mT5 paper and its t5x gin ``mt5/xxl.gin`` — d_model
4096, 64 heads of 64, 24 layers, d_ff 10240 gated-GELU, vocabulary 250112; google/umt5-xxl: the same
sizes with vocabulary 256384, the UniMax release; google/t5-v1_1-xxl: the same sizes with T5's
vocabulary of 32128, the encoder the CogVideoX and LTX-Video pipelines ship). Nothing here imports torch or
transformers.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

_XXL: dict[str, Any] = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_heads": 64,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,
    "initializer_factor": 1.0,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    # the reference's --text_encoder_name_1 (Open-Sora-Plan v1.3)
    "google/mt5-xxl": {**_XXL, "model_type": "mt5", "vocab_size": 250112},
    # T5 v1.1 XXL (the encoder of CogVideoX, LTX-Video, PixArt): English vocabulary of 32128
    "google/t5-v1_1-xxl": {**_XXL, "model_type": "t5", "vocab_size": 32128},
    # UniMax mT5 (a relative position bias in every layer instead of the first only)
    "google/umt5-xxl": {**_XXL, "model_type": "umt5", "vocab_size": 256384},
}
# the Wan diffusers pipelines carry google/umt5-xxl's encoder in their text_encoder/ folder
for _repo in ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
              "Wan-AI/Wan2.2-TI2V-5B-Diffusers"):
    RELEASED_CONFIGS[f"{_repo}/text_encoder"] = RELEASED_CONFIGS["google/umt5-xxl"]
# the CogVideoX and LTX-Video diffusers pipelines carry T5 v1.1 XXL's encoder
for _repo in ("THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b", "THUDM/CogVideoX1.5-5B", "Lightricks/LTX-Video",
              "Lightricks/LTX-Video-0.9.5", "Lightricks/LTX-Video-0.9.7-dev"):
    RELEASED_CONFIGS[f"{_repo}/text_encoder"] = RELEASED_CONFIGS["google/t5-v1_1-xxl"]


def released_config(repo_id: str) -> dict[str, Any] | None:
    """A fresh copy of the shipped ``config.json`` values of hub model ``repo_id``, or None when not shipped."""
    config = RELEASED_CONFIGS.get(repo_id)
    return deepcopy(config) if config is not None else None

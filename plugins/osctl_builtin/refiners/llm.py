"""The ``llm`` refiner: a local causal language model rewrites each prompt (reference §7.4).

The reference (``opensora/sample/caption_refiner.py``) loads a chat LM (a LoRA-tuned
Llama-3.1-8B-Instruct, HF ``LanguageBind/Open-Sora-Plan-v1.3.0/prompt_refiner``), renders a chat with
the system message "You are a caption refiner." and a user instruction asking to enrich the
sentence, generates up to 512 new tokens and keeps only the decoded continuation. This module does
the same, one prompt at a time, with greedy decoding forced explicitly (the reference relies on the
checkpoint's generation config) and without the reference's double BOS: when the chat template
already starts with the BOS token, the rendered text is tokenized without adding another one.

:func:`build_tiny_causal_lm` writes a tiny random Llama with a byte-level tokenizer and a chat
template into a folder, so the refiner can be exercised with no download.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from osctl import ConfigError
from osctl.registry import ComponentConfig
from osctl.text import POSITIVE_TEMPLATE

#: The reference's system message.
REFINER_SYSTEM_PROMPT = "You are a caption refiner."

#: The reference's user instruction; the prompt replaces ``{}``. Kept byte for byte, including the
#: stray ``" "`` pairs that the reference's string continuation lines leave inside it, because that is
#: what the released refiner was run with.
REFINER_INSTRUCTION = (
    '\nRefine the sentence: "{}" to contain subject description, action, scene description. " '
    '"(Optional: camera language, light and shadow, atmosphere) and conceive some additional actions '
    'to make the sentence more dynamic. " "Make sure it is a fluent sentence, not nonsense.\n'
)

Precision = Literal["fp32", "bf16", "fp16"]


class LLMRefinerConfig(ComponentConfig):
    """Options of the ``llm`` refiner (recipe section ``refiner``)."""

    path: str = Field(..., description="local folder or HF id of a chat causal LM (the reference's --caption_refiner)")
    max_new_tokens: int = Field(512, gt=0, description="generation budget per prompt (greedy decoding)")
    dtype: Precision | None = Field(None, description="weights dtype; default: the command's dtype, else fp32")
    trust_remote_code: bool = Field(False, description="allow custom modelling code shipped with the checkpoint")
    apply_positive_template: bool = Field(
        False, description="also wrap the refined prompt in the reference positive template (refine + template)"
    )

    def missing_weights(self) -> list[Any]:
        """The LM when its weights are not on this machine (sampling refuses to start without them)."""
        from osctl_builtin.text_encoders.t5 import missing_pretrained

        missing = missing_pretrained(self.path, "refiner.path", kind="chat causal LM")
        return [missing] if missing is not None else []


class LLMRefiner:
    """Rewrites each prompt with a chat LM: system + instruction, greedy, continuation only, stripped."""

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 512,
                 apply_positive_template: bool = False) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "refiner.path: the model's tokenizer has no chat template; use an instruction-tuned model "
                "whose tokenizer_config.json (or chat_template.jinja) defines one."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.apply_positive_template = apply_positive_template

    @staticmethod
    def messages(prompt: str) -> list[dict[str, str]]:
        """The chat the reference sends for ``prompt``: its system message and instruction."""
        return [
            {"role": "system", "content": REFINER_SYSTEM_PROMPT},
            {"role": "user", "content": REFINER_INSTRUCTION.format(prompt)},
        ]

    def render(self, prompt: str) -> str:
        """The chat-template text fed to the model, ending with the assistant generation prompt."""
        return self.tokenizer.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def continuation_ids(self, prompt: str) -> list[int]:
        """Token ids greedily generated after the rendered chat (at most ``max_new_tokens``)."""
        import torch
        from transformers import GenerationConfig

        text = self.render(prompt)
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        encoded = self.tokenizer([text], return_tensors="pt", add_special_tokens=add_special)
        device = next(self.model.parameters()).device
        input_ids = encoded["input_ids"].to(device)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        generation = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=eos, pad_token_id=pad)
        with torch.no_grad():
            output = self.model.generate(input_ids=input_ids, attention_mask=encoded["attention_mask"].to(device),
                                         generation_config=generation)
        return output[0, input_ids.shape[1]:].tolist()

    def refine(self, prompt: str) -> str:
        """The refined prompt: the decoded continuation without special tokens, stripped."""
        refined = self.tokenizer.decode(self.continuation_ids(prompt), skip_special_tokens=True).strip()
        return POSITIVE_TEMPLATE.format(refined) if self.apply_positive_template else refined

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        """One refined prompt per input prompt, in order."""
        return [self.refine(prompt) for prompt in prompts]

    def __repr__(self) -> str:
        return f"LLMRefiner(model={type(self.model).__name__}, max_new_tokens={self.max_new_tokens})"


def build_llm(config: LLMRefinerConfig, **runtime: Any) -> LLMRefiner:
    """Factory of ``llm``: load the chat LM and its tokenizer (local files only when offline)."""
    import transformers

    from osctl.utils.dtypes import component_dtype
    from osctl_builtin.text_encoders.t5 import resolve_pretrained, unavailable

    source, local_only = resolve_pretrained(config.path, key="refiner.path")
    common = {"local_files_only": local_only, "trust_remote_code": config.trust_remote_code}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=component_dtype(config.dtype, runtime.get("dtype"), "refiner dtype"), **common
        )
    except (OSError, ValueError) as exc:
        raise unavailable(config.path, key="refiner.path", local_only=local_only, exc=exc) from None
    model.eval()
    model.requires_grad_(False)
    if runtime.get("device") is not None:
        model.to(runtime["device"])
    return LLMRefiner(model, tokenizer, max_new_tokens=config.max_new_tokens,
                      apply_positive_template=config.apply_positive_template)


# ----------------------------------------------------------------------------------------------
# a tiny chat LM for tests and the demo
# ----------------------------------------------------------------------------------------------

_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_causal_lm(folder: str | os.PathLike[str], seed: int = 0, *, hidden_size: int = 32,
                         num_layers: int = 2, num_heads: int = 4) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` with a byte-level chat tokenizer into ``folder``.

    The tokenizer (``tokenizers`` BPE over the 256 byte symbols, no merges, wrapped in
    ``PreTrainedTokenizerFast``) reads any text without a vocabulary file and carries a simple Jinja
    chat template (``<|system|>...<|end|><|user|>...<|end|><|assistant|>``). Weights come from a
    seeded generator, so the same seed gives the same model everywhere. Written atomically; an
    existing complete folder is kept. Returns the folder, loadable by the ``llm`` refiner.
    """
    target = Path(folder).expanduser()
    marker = target / "osctl_tiny_causal_lm.json"
    if marker.is_file():
        return target
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from osctl_builtin.text_encoders.t5 import fill_parameters_deterministically

    if hidden_size % num_heads:
        raise ConfigError(f"build_tiny_causal_lm: num_heads ({num_heads}) must divide hidden_size ({hidden_size}).")
    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        additional_special_tokens=_SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=4096, pad_token_id=vocab["<|pad|>"], bos_token_id=vocab["<|bos|>"],
        eos_token_id=vocab["<|eos|>"], tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    fill_parameters_deterministically(model, seed)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / marker.name).write_text(json.dumps(
            {"seed": int(seed), "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads},
            sort_keys=True) + "\n")
        try:
            staging.rename(target)
        except OSError:
            if not marker.is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target

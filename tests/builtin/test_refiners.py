"""The ``none``, ``template`` and ``llm`` refiners (the last with a tiny random local chat LM)."""

from __future__ import annotations

import json

import pytest
import torch

import osctl
from osctl.plugin_manager import build_registry, new_plugin_manager
from osctl.protocols import Refiner
from osctl_builtin.refiners import (
    NEGATIVE_PROMPT,
    POSITIVE_TEMPLATE,
    REFINER_INSTRUCTION,
    REFINER_SYSTEM_PROMPT,
    build_tiny_causal_lm,
)
from osctl_builtin.refiners.llm import LLMRefiner

PROMPTS = ["A cat playing piano in a jazz bar, warm light", "a dog"]


@pytest.fixture(scope="module")
def registry():
    return build_registry(new_plugin_manager())


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny_lm", seed=1)


@pytest.fixture(scope="module")
def refiner(registry, tiny_lm):
    return registry.build("refiner", "llm", {"path": str(tiny_lm), "max_new_tokens": 6})


def test_registered(registry):
    assert {"none", "template", "llm"} <= set(registry.names("refiner"))


def test_constants_match_the_golden_manifest(golden):
    manifest = json.loads((golden / "pipeline" / "manifest.json").read_text())
    assert manifest["positive_template"] == POSITIVE_TEMPLATE
    assert manifest["negative_prompt"] == NEGATIVE_PROMPT


def test_none_is_identity(registry):
    refine = registry.build("refiner", "none")
    assert isinstance(refine, Refiner)
    assert refine(PROMPTS) == PROMPTS and refine([]) == []


def test_template_is_exact(registry, golden):
    manifest = json.loads((golden / "pipeline" / "manifest.json").read_text())
    refine = registry.build("refiner", "template")
    assert refine([manifest["prompt"]]) == [manifest["pipeline_prompt_argument"]]
    assert refine(PROMPTS) == [f"\n    high quality, high aesthetic, {p}\n    " for p in PROMPTS]
    custom = registry.build("refiner", "template", {"template": "best: {}"})
    assert custom(["x"]) == ["best: x"]
    with pytest.raises(osctl.ConfigError, match=r"refiner\.template"):
        registry.make_config("refiner", "template", {"template": "no slot"}, where="refiner")


def test_llm_chat_has_the_reference_prompts(refiner):
    assert REFINER_SYSTEM_PROMPT == "You are a caption refiner."
    assert REFINER_INSTRUCTION.startswith('\nRefine the sentence: "{}" to contain subject description')
    rendered = refiner.render(PROMPTS[1])
    assert REFINER_SYSTEM_PROMPT in rendered
    assert REFINER_INSTRUCTION.format(PROMPTS[1]) in rendered
    assert rendered.endswith("<|assistant|>")
    assert refiner.messages("p")[0] == {"role": "system", "content": REFINER_SYSTEM_PROMPT}


def test_llm_returns_one_string_per_prompt_deterministically(refiner):
    first = refiner(PROMPTS)
    assert len(first) == len(PROMPTS) and all(isinstance(p, str) for p in first)
    assert first == [p.strip() for p in first]
    assert refiner(PROMPTS) == first


def test_llm_is_greedy(refiner):
    """The continuation equals an explicit argmax loop over the model's logits."""
    model, tokenizer = refiner.model, refiner.tokenizer
    ids = tokenizer([refiner.render(PROMPTS[0])], return_tensors="pt", add_special_tokens=False)["input_ids"]
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(refiner.max_new_tokens):
            next_id = int(model(input_ids=ids).logits[0, -1].argmax())
            generated.append(next_id)
            if next_id == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    assert refiner.continuation_ids(PROMPTS[0]) == generated
    expected = tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert refiner([PROMPTS[0]]) == [expected]


def test_llm_same_seed_same_model(registry, refiner, tmp_path):
    again = build_tiny_causal_lm(tmp_path / "again", seed=1)
    other = registry.build("refiner", "llm", {"path": str(again), "max_new_tokens": 6})
    assert other(PROMPTS) == refiner(PROMPTS)
    assert not refiner.model.training and not any(p.requires_grad for p in refiner.model.parameters())


def test_llm_can_apply_the_template(registry, tiny_lm, refiner):
    wrapped = registry.build("refiner", "llm", {"path": str(tiny_lm), "max_new_tokens": 6,
                                                "apply_positive_template": True})
    assert wrapped([PROMPTS[1]]) == [POSITIVE_TEMPLATE.format(refiner([PROMPTS[1]])[0])]


def test_llm_errors(registry, refiner, tmp_path):
    with pytest.raises(osctl.ConfigError, match=r"refiner\.path"):
        registry.make_config("refiner", "llm", {}, where="refiner")
    with pytest.raises(osctl.ConfigError, match="is not a folder"):
        registry.build("refiner", "llm", {"path": str(tmp_path / "missing")})
    with pytest.raises(osctl.ConfigError, match="not available"):
        registry.build("refiner", "llm", {"path": "someone/no-such-refiner"})

    class NoTemplate:
        chat_template = None

    with pytest.raises(osctl.ConfigError, match="chat template"):
        LLMRefiner(refiner.model, NoTemplate())

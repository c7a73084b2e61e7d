"""The ``t5`` and ``tiny_t5`` text encoders: golden token ids and embeddings, errors, determinism."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import osctl
from osctl.plugin_manager import build_registry, new_plugin_manager
from osctl.protocols import TextEncoder
from osctl.text import NEGATIVE_PROMPT, POSITIVE_TEMPLATE
from osctl_builtin.text_encoders.t5 import build_tiny_t5


@pytest.fixture(scope="module")
def registry():
    return build_registry(new_plugin_manager())


@cache
def _golden_encoder(folder: str):
    """The golden tiny mT5 loaded once per session through the ``t5`` plugin (max_length 96)."""
    registry = build_registry(new_plugin_manager())
    return registry.build("text_encoder", "t5", {"name_or_path": folder, "max_length": 96})


@pytest.fixture
def golden_pipeline(golden):
    pipeline = golden / "pipeline"
    manifest = json.loads((pipeline / "manifest.json").read_text())
    return _golden_encoder(str(pipeline / "mt5_tiny")), manifest, load_file(pipeline / "common.safetensors")


def test_registered_with_aliases(registry):
    assert {"t5", "tiny_t5"} <= set(registry.names("text_encoder"))
    assert registry.get("text_encoder", "mt5").name == "t5"
    assert registry.get("text_encoder", "umt5").name == "t5"


def test_tiny_t5_summary_names_both_tokenizers(registry):
    summary = registry.get("text_encoder", "tiny_t5").spec.summary
    assert "byte-level tokenizer" in summary and "word-level over `vocabulary`" in summary
    assert "ByT5 tokenizer" not in summary


@pytest.mark.parametrize("which", ["prompt", "negative"])
def test_golden_token_ids_masks_and_embeddings(golden_pipeline, which):
    encoder, manifest, common = golden_pipeline
    assert isinstance(encoder, TextEncoder)
    assert encoder.hidden_size == 32 and encoder.max_length == 96
    text = POSITIVE_TEMPLATE.format(manifest["prompt"]) if which == "prompt" else NEGATIVE_PROMPT
    tokens = encoder.tokenize([text])
    assert tokens["input_ids"].dtype == torch.int64 and tokens["attention_mask"].dtype == torch.int64
    assert torch.equal(tokens["input_ids"], common[f"{which}_input_ids"])
    assert torch.equal(tokens["attention_mask"], common[f"{which}_attention_mask"])
    embeds = encoder.encode(tokens["input_ids"], tokens["attention_mask"])
    expected = common["prompt_embeds" if which == "prompt" else "negative_prompt_embeds"]
    assert embeds.shape == expected.shape and not embeds.requires_grad
    torch.testing.assert_close(embeds, expected, atol=2e-5, rtol=0)


def test_golden_batch_and_lengths(golden_pipeline):
    encoder, manifest, common = golden_pipeline
    texts = [NEGATIVE_PROMPT, POSITIVE_TEMPLATE.format(manifest["prompt"])]
    tokens = encoder.tokenize(texts)
    assert int(tokens["attention_mask"][1].sum()) == manifest["prompt_token_count_unpadded"]
    assert int(tokens["input_ids"][1, 85]) == 1  # </s> closes the prompt
    states, mask = encoder.encode_texts(texts)
    torch.testing.assert_close(states, torch.cat([common["negative_prompt_embeds"], common["prompt_embeds"]]),
                               atol=2e-5, rtol=0)
    assert torch.equal(mask, tokens["attention_mask"])
    assert encoder.tokenize(["abc"], max_length=8)["input_ids"].tolist() == [[100, 101, 102, 1, 0, 0, 0, 0]]


def test_encoder_is_frozen(golden_pipeline):
    encoder, _, _ = golden_pipeline
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_missing_hub_model_is_a_config_error_without_network(registry, monkeypatch):
    """Offline, a model that is not in the local cache is refused at once: no connection is even tried
    (so there is nothing to retry)."""
    import socket

    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(osctl.ConfigError) as info:
        registry.build("text_encoder", "t5", {"name_or_path": "google/mt5-xxl"})
    assert attempts == []
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "text_encoder.name_or_path" in message and "google/mt5-xxl" in message and "download" in message


def test_missing_folder_is_a_config_error(registry, tmp_path):
    with pytest.raises(osctl.ConfigError, match="is not a folder"):
        registry.build("text_encoder", "t5", {"name_or_path": str(tmp_path / "nowhere")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(osctl.ConfigError, match="could not be loaded"):
        registry.build("text_encoder", "t5", {"name_or_path": str(tmp_path / "empty")})


def test_config_is_strict_and_knows_hidden_sizes(registry, golden):
    with pytest.raises(osctl.ConfigError, match="unknown key"):
        registry.make_config("text_encoder", "t5", {"text_encoder_name": "x"}, where="text_encoder")
    default = registry.make_config("text_encoder", "t5", {}, where="text_encoder")
    assert default.name_or_path == "google/mt5-xxl" and default.max_length == 512 and default.hidden_size() == 4096
    local = registry.make_config("text_encoder", "t5", {"name_or_path": str(golden / "pipeline" / "mt5_tiny")},
                                 where="text_encoder")
    assert local.hidden_size() == 32
    with pytest.raises(osctl.ConfigError, match="must divide d_model"):
        registry.make_config("text_encoder", "tiny_t5", {"d_model": 30, "num_heads": 4}, where="text_encoder")


def _state(encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.model.state_dict().items()}


def test_tiny_t5_is_deterministic_and_cached(registry, tmp_path):
    options = {"seed": 7, "d_model": 24, "num_heads": 4, "max_length": 16}
    first = registry.build("text_encoder", "tiny_t5", {**options, "cache_dir": str(tmp_path / "a")})
    second = registry.build("text_encoder", "tiny_t5", {**options, "cache_dir": str(tmp_path / "b")})
    assert first.hidden_size == 24 and first.max_length == 16
    a, b = _state(first), _state(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prompts = ["a cat playing piano", "ünïcödé 猫"]
    states, _ = first.encode_texts(prompts)
    assert states.shape == (2, 16, 24) and torch.isfinite(states).all()
    assert torch.equal(states, second.encode_texts(prompts)[0])
    folders = list((tmp_path / "a").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tiny_t5-")  # no temp dir left behind
    again = registry.build("text_encoder", "tiny_t5", {**options, "cache_dir": str(tmp_path / "a")})
    assert torch.equal(again.encode_texts(prompts)[0], states)
    other = registry.build("text_encoder", "tiny_t5", {**options, "seed": 8, "cache_dir": str(tmp_path / "a")})
    assert not torch.equal(other.encode_texts(prompts)[0], states)
    assert len(list((tmp_path / "a").iterdir())) == 2


def test_build_tiny_t5_folder_loads_through_t5(registry, tmp_path):
    folder = build_tiny_t5(tmp_path / "tiny", seed=3, d_model=16, num_layers=1, num_heads=2)
    assert isinstance(folder, Path) and (folder / "config.json").is_file()
    assert build_tiny_t5(folder, seed=3, d_model=16, num_layers=1, num_heads=2) == folder
    from_folder = registry.build("text_encoder", "t5", {"name_or_path": str(folder), "max_length": 12})
    from_factory = registry.build("text_encoder", "tiny_t5", {"seed": 3, "d_model": 16, "num_layers": 1,
                                                               "num_heads": 2, "max_length": 12,
                                                               "cache_dir": str(tmp_path / "cache")})
    assert type(from_folder.model).__name__ == "MT5EncoderModel"
    assert type(from_folder.tokenizer).__name__ == "ByT5Tokenizer"
    states = from_folder.encode_texts(["hello"])[0]
    assert torch.equal(states, from_factory.encode_texts(["hello"])[0])


def test_second_encoder_is_returned_separately(registry, tmp_path):
    first = build_tiny_t5(tmp_path / "one", seed=1, d_model=16, num_layers=1, num_heads=2)
    second = build_tiny_t5(tmp_path / "two", seed=2, d_model=8, num_layers=1, num_heads=2)
    encoder = registry.build("text_encoder", "t5", {"name_or_path": str(first), "name_or_path_2": str(second),
                                                    "max_length": 10})
    assert encoder.text_encoder_2 is not None and encoder.text_encoder_2.hidden_size == 8
    tokens = encoder.text_encoder_2.tokenize(["a dog"])
    assert encoder.text_encoder_2.encode(**tokens).shape == (1, 10, 8)
    assert encoder.encode_texts(["a dog"])[0].shape == (1, 10, 16)
    plain = registry.build("text_encoder", "t5", {"name_or_path": str(first)})
    assert plain.text_encoder_2 is None


def test_dtype_option(registry, tmp_path):
    folder = build_tiny_t5(tmp_path / "tiny", seed=0, d_model=16, num_layers=1, num_heads=2)
    encoder = registry.build("text_encoder", "t5", {"name_or_path": str(folder), "dtype": "bf16"})
    assert encoder.dtype == torch.bfloat16
    assert encoder.encode_texts(["x"])[0].dtype == torch.bfloat16
    runtime = registry.build("text_encoder", "t5", {"name_or_path": str(folder)}, dtype=torch.float16)
    assert runtime.dtype == torch.float16


WORDS = ["a", "red", "blue", "circle", "moving", "left", "on", "black", "background"]


def test_tiny_t5_word_vocabulary_gives_one_token_per_word(registry, tmp_path):
    options = {"d_model": 16, "num_heads": 2, "max_length": 12, "vocabulary": WORDS, "cache_dir": str(tmp_path)}
    enc = registry.build("text_encoder", "tiny_t5", options)
    tokens = enc.tokenize(["A red circle, moving LEFT on a black background", "a green circle"])
    ids = tokens["input_ids"]
    # <pad>=0, </s>=1, <unk>=2, then the words in order; case folded; punctuation and unknown words -> <unk>
    assert ids[0].tolist() == [3, 4, 6, 2, 7, 8, 9, 3, 10, 11, 1, 0]
    assert ids[1].tolist()[:4] == [3, 2, 6, 1] and tokens["attention_mask"][1].sum() == 4
    assert enc.model.config.vocab_size == 3 + len(WORDS)
    states, _ = enc.encode_texts(["a red circle", "a blue circle"])
    assert not torch.equal(states[0, 1], states[1, 1])  # the colour word reaches the output
    again = registry.build("text_encoder", "tiny_t5", options)
    assert torch.equal(again.encode_texts(["a red circle"])[0], states[:1])


def test_tiny_t5_vocabulary_changes_the_cache_folder_but_bytes_keep_theirs(registry, tmp_path):
    from osctl_builtin.text_encoders.t5 import TinyT5Config, tiny_t5_folder, tiny_t5_settings

    assert "vocabulary" not in tiny_t5_settings(seed=0, d_model=32)  # earlier ByT5 cache folders stay valid
    byte_level = tiny_t5_folder(TinyT5Config(cache_dir=str(tmp_path)))
    words = tiny_t5_folder(TinyT5Config(cache_dir=str(tmp_path), vocabulary=WORDS))
    assert byte_level != words


@pytest.mark.parametrize("words, message", [
    ([], "vocabulary is empty"),
    (["Red"], "'Red' is not a lower-case word"),
    (["dark red"], "'dark red' is not a lower-case word"),
    (["red", "red"], "'red' more than once"),
    (["a", True], "read as True: YAML reads on/off/yes/no as booleans; quote the words"),
])
def test_tiny_t5_bad_vocabulary_is_a_config_error(registry, words, message):
    with pytest.raises(osctl.ConfigError, match=message):
        registry.make_config("text_encoder", "tiny_t5", {"vocabulary": words}, where="text_encoder")

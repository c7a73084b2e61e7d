"""Caption choice, aesthetic sentences, cleaning and CFG dropout: rules and statistics over 10 000 draws."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from osctl.data.records import KIND_IMAGE, KIND_VIDEO
from osctl.data.stream.captions import (
    HIGH_AESTHETIC_IMAGE,
    HIGH_AESTHETIC_VIDEO,
    LOW_AESTHETIC_IMAGE,
    LOW_AESTHETIC_VIDEO,
    CaptionPolicy,
    add_aesthetic_sentence,
    tokenize_texts,
    training_text,
)
from osctl.data.stream.sampler import sample_rng
from osctl.text.clean import clean_caption

N = 10_000
RAW = CaptionPolicy(cfg=0.0, clean=False)


def test_reference_sentence_lists():
    for pool in (HIGH_AESTHETIC_VIDEO, LOW_AESTHETIC_VIDEO, HIGH_AESTHETIC_IMAGE, LOW_AESTHETIC_IMAGE):
        assert len(pool) == len(set(pool)) == 10
    assert all("video" in s or "With its" in s for s in HIGH_AESTHETIC_VIDEO + LOW_AESTHETIC_VIDEO)
    assert "This video ranks highly for aesthetic quality" in HIGH_AESTHETIC_VIDEO  # no period, as the reference


def test_thresholds_are_inclusive_and_kind_picks_the_wording():
    rng = random.Random(0)
    assert add_aesthetic_sentence("cap", 5.0, KIND_VIDEO, RAW, rng) == "cap"
    assert add_aesthetic_sentence("cap", None, KIND_VIDEO, RAW, rng) == "cap"
    assert add_aesthetic_sentence("cap", float("nan"), KIND_VIDEO, RAW, rng) == "cap"
    for score, kind, pool in ((5.75, KIND_VIDEO, HIGH_AESTHETIC_VIDEO), (4.25, KIND_VIDEO, LOW_AESTHETIC_VIDEO),
                              (9.0, KIND_IMAGE, HIGH_AESTHETIC_IMAGE), (1.0, KIND_IMAGE, LOW_AESTHETIC_IMAGE)):
        text = add_aesthetic_sentence("cap", score, kind, RAW, rng)
        assert any(text in (f"cap {s}", f"{s} cap") for s in pool), (score, text)
    custom = CaptionPolicy(aesthetic_high=9.0, aesthetic_low=1.0, high_video=("Nice.",))
    assert add_aesthetic_sentence("cap", 8.9, KIND_VIDEO, custom, rng) == "cap"
    assert add_aesthetic_sentence("cap", 9.0, KIND_VIDEO, custom, rng) in ("cap Nice.", "Nice. cap")


def test_statistics_over_ten_thousand_draws():
    policy = CaptionPolicy(cfg=0.1, clean=False)
    caps = ["alpha", "beta", "gamma", "delta"]
    texts = [training_text(caps, 6.5, KIND_VIDEO, policy, sample_rng(42, 0, i)) for i in range(N)]
    dropped = sum(t == "" for t in texts)
    assert abs(dropped / N - 0.1) < 0.012  # ~4 sigma
    kept = [t for t in texts if t]
    first = Counter(next(c for c in caps if c in t) for t in kept)
    assert all(abs(first[c] / len(kept) - 0.25) < 0.02 for c in caps)
    after = sum(t.split(" ", 1)[0] in caps for t in kept)  # caption first = sentence after it
    assert abs(after / len(kept) - 0.5) < 0.02
    sentences = Counter(next(s for s in HIGH_AESTHETIC_VIDEO if s in t) for t in kept)
    assert len(sentences) == 10 and min(sentences.values()) > 0.07 * len(kept)


def test_cleaning_is_the_shared_cleaner_and_dropout_gives_empty_text():
    caption = "A <b>Red</b> Ball at https://example.com/x"
    text = training_text([caption], None, KIND_VIDEO, CaptionPolicy(cfg=0.0), random.Random(1))
    assert text == clean_caption(caption, True) and text == text.lower() and "http" not in text
    assert training_text([caption], None, KIND_VIDEO, CaptionPolicy(cfg=1.0), random.Random(1)) == ""
    assert training_text([], None, KIND_VIDEO, RAW, random.Random(1)) == ""


def test_same_rng_same_text():
    policy = CaptionPolicy(cfg=0.3)
    caps = ["one thing", "another thing"]
    a = [training_text(caps, 3.0, KIND_IMAGE, policy, sample_rng(7, 1, i)) for i in range(50)]
    b = [training_text(caps, 3.0, KIND_IMAGE, policy, sample_rng(7, 1, i)) for i in range(50)]
    assert a == b and len(set(a)) > 3


def test_policy_from_recipe_reads_captions_section_and_optional_lists():
    section = SimpleNamespace(cfg=0.2, clean=False, support_chinese=False, aesthetic_high=6.0, aesthetic_low=4.0,
                              high_video=["Great video."])
    policy = CaptionPolicy.from_recipe(SimpleNamespace(data=SimpleNamespace(captions=section)))
    assert (policy.cfg, policy.clean, policy.support_chinese, policy.aesthetic_high) == (0.2, False, False, 6.0)
    assert policy.high_video == ("Great video.",) and policy.low_video == LOW_AESTHETIC_VIDEO


def test_tokenize_checks_padding():
    def good(texts):
        return {"input_ids": torch.zeros(len(texts), 8, dtype=torch.long), "attention_mask": torch.ones(len(texts), 8)}

    assert tokenize_texts(["a", "b"], good)["input_ids"].shape == (2, 8)

    def ragged(texts):
        return {"input_ids": torch.zeros(len(texts), 8), "attention_mask": torch.ones(len(texts), 7)}

    with pytest.raises(ValueError, match="pad every text"):
        tokenize_texts(["a"], ragged)

"""Training text for one sample: caption choice, aesthetic sentence, cleaning, CFG dropout (reference §1.4).

Per sample, in the reference's order, every random decision drawn from the sample's own
``random.Random`` (so the result depends only on the data seed, the epoch and the sample's position,
never on DataLoader workers):

1. one caption of ``cap`` chosen uniformly;
2. when the record has an aesthetic score: at or above ``aesthetic_high`` one of the high-quality
   sentences, at or below ``aesthetic_low`` one of the low-quality sentences (separate video and image
   wording), joined with one space before or after the caption (50/50);
3. with ``clean``: :func:`osctl.text.clean.clean_caption` (the sentence is cleaned with the caption,
   as in the reference; sampling applies the same function when ``sample.clean_captions`` is on);
4. with probability ``cfg`` the text becomes ``""`` (classifier-free-guidance dropout).

The sentences below are the reference's, verbatim (two of them lack a final period in the reference
too, kept so token ids match). :class:`CaptionPolicy.from_recipe` reads ``data.captions`` and, once
the schema has them, the optional sentence lists (``high_video``, ``low_video``, ``high_image``,
``low_image``); until then these defaults apply.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from osctl.data.records import KIND_IMAGE

HIGH_AESTHETIC_VIDEO: tuple[str, ...] = (
    "This video has a high aesthetic quality.",
    "The beauty of this video is exceptional.",
    "This video scores high in aesthetic value.",
    "With its harmonious colors and balanced composition.",
    "This video ranks highly for aesthetic quality",
    "The artistic quality of this video is excellent.",
    "This video is rated high for beauty.",
    "The aesthetic quality of this video is impressive.",
    "This video has a top aesthetic score.",
    "The visual appeal of this video is outstanding.",
)
LOW_AESTHETIC_VIDEO: tuple[str, ...] = (
    "This video has a low aesthetic quality.",
    "The beauty of this video is minimal.",
    "This video scores low in aesthetic appeal.",
    "The aesthetic quality of this video is below average.",
    "This video ranks low for beauty.",
    "The artistic quality of this video is lacking.",
    "This video has a low score for aesthetic value.",
    "The visual appeal of this video is low.",
    "This video is rated low for beauty.",
    "The aesthetic quality of this video is poor.",
)
HIGH_AESTHETIC_IMAGE: tuple[str, ...] = (
    "This image has a high aesthetic quality.",
    "The beauty of this image is exceptional",
    "This photo scores high in aesthetic value.",
    "With its harmonious colors and balanced composition.",
    "This image ranks highly for aesthetic quality.",
    "The artistic quality of this photo is excellent.",
    "This image is rated high for beauty.",
    "The aesthetic quality of this image is impressive.",
    "This photo has a top aesthetic score.",
    "The visual appeal of this image is outstanding.",
)
LOW_AESTHETIC_IMAGE: tuple[str, ...] = (
    "This image has a low aesthetic quality.",
    "The beauty of this image is minimal.",
    "This image scores low in aesthetic appeal.",
    "The aesthetic quality of this image is below average.",
    "This image ranks low for beauty.",
    "The artistic quality of this image is lacking.",
    "This image has a low score for aesthetic value.",
    "The visual appeal of this image is low.",
    "This image is rated low for beauty.",
    "The aesthetic quality of this image is poor.",
)


@dataclass(frozen=True)
class CaptionPolicy:
    """How a sample's captions become its training text (see the module docstring)."""

    cfg: float = 0.1
    clean: bool = True
    support_chinese: bool = True
    aesthetic_high: float = 5.75
    aesthetic_low: float = 4.25
    high_video: tuple[str, ...] = HIGH_AESTHETIC_VIDEO
    low_video: tuple[str, ...] = LOW_AESTHETIC_VIDEO
    high_image: tuple[str, ...] = HIGH_AESTHETIC_IMAGE
    low_image: tuple[str, ...] = LOW_AESTHETIC_IMAGE

    @classmethod
    def from_recipe(cls, recipe: Any) -> CaptionPolicy:
        """The policy of a validated recipe's ``data.captions`` (sentence lists: recipe when set, else reference)."""
        section = recipe.data.captions
        lists = {}
        for name in ("high_video", "low_video", "high_image", "low_image"):
            value = getattr(section, name, None)
            if value:
                lists[name] = tuple(str(s) for s in value)
        return cls(cfg=float(section.cfg), clean=bool(section.clean), support_chinese=bool(section.support_chinese),
                   aesthetic_high=float(section.aesthetic_high), aesthetic_low=float(section.aesthetic_low), **lists)

    def sentences(self, kind: int, high: bool) -> tuple[str, ...]:
        """The sentence list for ``kind`` (video or image) and quality (high or low)."""
        if kind == KIND_IMAGE:
            return self.high_image if high else self.low_image
        return self.high_video if high else self.low_video


def add_aesthetic_sentence(caption: str, score: float | None, kind: int, policy: CaptionPolicy,
                           rng: random.Random) -> str:
    """``caption`` with an aesthetic sentence before or after it when ``score`` is high or low, else unchanged."""
    if score is None or score != score:  # absent or NaN
        return caption
    if score <= policy.aesthetic_low:
        pool = policy.sentences(kind, high=False)
    elif score >= policy.aesthetic_high:
        pool = policy.sentences(kind, high=True)
    else:
        return caption
    if not pool:
        return caption
    sentence = pool[rng.randrange(len(pool))]
    return f"{caption} {sentence}" if rng.random() < 0.5 else f"{sentence} {caption}"


def clean_text(text: str, policy: CaptionPolicy) -> str:
    """The caption cleaner of the reference when ``policy.clean`` (the same function sampling uses), else ``text``."""
    if not policy.clean:
        return text
    from osctl.text.clean import clean_caption

    return clean_caption(text, policy.support_chinese)


def training_text(captions: Sequence[str], aesthetic: float | None, kind: int, policy: CaptionPolicy,
                  rng: random.Random) -> str:
    """The text one sample is trained with (steps 1-4 of the module docstring); ``""`` when dropped for CFG.

    Draws from ``rng`` in a fixed order (caption, sentence, side, dropout), so the same ``rng`` state
    gives the same text.
    """
    if not captions:
        return ""
    caption = captions[rng.randrange(len(captions))] if len(captions) > 1 else captions[0]
    caption = add_aesthetic_sentence(caption, aesthetic, kind, policy, rng)
    if rng.random() < policy.cfg:
        return ""
    return clean_text(caption, policy)


def caption_variants(captions: Sequence[str], aesthetic: float | None, kind: int, policy: CaptionPolicy) -> list[str]:
    """Every text :func:`training_text` can give this sample except the CFG-dropout ``""``: each caption, with
    each aesthetic sentence before and after it when the score calls for one, cleaned; in a fixed order,
    without repeats. (An empty caption list gives ``[]``: such a sample always trains on ``""``.)"""
    if not captions:
        return []
    out: dict[str, None] = {}
    for caption in captions:
        pool: tuple[str, ...] = ()
        if aesthetic is not None and aesthetic == aesthetic:
            if aesthetic <= policy.aesthetic_low:
                pool = policy.sentences(kind, high=False)
            elif aesthetic >= policy.aesthetic_high:
                pool = policy.sentences(kind, high=True)
        texts = [f"{caption} {s}" for s in pool] + [f"{s} {caption}" for s in pool] if pool else [caption]
        for text in texts:
            out[clean_text(text, policy)] = None
    return list(out)


Tokenize = Callable[[list[str]], dict[str, Any]]
"""``tokenize(texts) -> {"input_ids": B x L, "attention_mask": B x L}`` (the text-encoder plugin's tokenizer)."""


def tokenize_texts(texts: list[str], tokenize: Tokenize) -> dict[str, Any]:
    """Token ids and attention mask of ``texts`` with the text encoder's tokenizer, padded to its max length.

    Checks the plugin's answer so a tokenizer that forgets to pad fails here with its shapes, not as a
    stacking error inside the training step.
    """
    out = tokenize(list(texts))
    ids, mask = out["input_ids"], out["attention_mask"]
    if tuple(ids.shape) != tuple(mask.shape) or ids.ndim != 2 or ids.shape[0] != len(texts):
        raise ValueError(f"the text encoder's tokenize returned input_ids {tuple(ids.shape)} and attention_mask "
                         f"{tuple(mask.shape)} for {len(texts)} texts; it must pad every text to its max length")
    return {"input_ids": ids, "attention_mask": mask}

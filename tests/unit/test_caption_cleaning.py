"""The training caption cleaner against every golden case (OSP v1.3.1 ``text_preprocessing``)."""

from __future__ import annotations

import json
import warnings

import pytest

from osctl.text.clean import clean_caption, clean_caption_list_form

FORMS = {
    "clean_support_chinese_true": lambda caption: clean_caption(caption, True),
    "clean_support_chinese_false": lambda caption: clean_caption(caption, False),
    "clean_list_wrapped_support_chinese_true": lambda caption: clean_caption_list_form(caption, True),
}


@pytest.fixture
def rows(golden):
    data = json.loads((golden / "data" / "caption_cleaning.json").read_text(encoding="utf-8"))
    return data["rows"]


def test_golden_has_all_cases(rows):
    assert len(rows) == 36


@pytest.mark.parametrize("form", list(FORMS))
def test_every_golden_caption(rows, form):
    clean = FORMS[form]
    mismatches = [(row["input"], clean(row["input"]), row[form]) for row in rows if clean(row["input"]) != row[form]]
    assert not mismatches, "\n".join(f"{inp!r}: got {got!r}, want {want!r}" for inp, got, want in mismatches)


def test_list_form_is_clean_of_the_stringified_list():
    for caption in ["", ".hidden", "“Smart quotes” and ‘single’ ones", "A Cat"]:
        assert clean_caption_list_form(caption, True) == clean_caption(str([caption]), True)


def test_pure_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = clean_caption("photo.jpg https://example.com/x", True)
        assert clean_caption("photo.jpg https://example.com/x", True) == first == ""
    assert clean_caption("Mixed 中文 Text", support_chinese=True) == "mixed 中文 text"
    assert clean_caption("Mixed 中文 Text", support_chinese=False) == "mixed text"

"""Options given to captioner and scorer plugins on the command line (`--set`)."""

from __future__ import annotations

import pytest

from osctl.curate.apply import parse_options
from osctl.errors import UsageError


def test_set_options_are_yaml_values_but_sentences_stay_text() -> None:
    assert parse_options(["model=/m", "max_new_tokens=8", "prompt=Describe: briefly", "words=[a, b]"],
                         scoped=False) == {"model": "/m", "max_new_tokens": 8, "prompt": "Describe: briefly",
                                           "words": ["a", "b"]}
    assert parse_options(["motion.pairs=2", "tech.size=64"], scoped=True) == {"motion": {"pairs": 2},
                                                                             "tech": {"size": 64}}


def test_set_options_need_a_key_and_a_value() -> None:
    with pytest.raises(UsageError, match="write KEY=VALUE"):
        parse_options(["model"], scoped=False)

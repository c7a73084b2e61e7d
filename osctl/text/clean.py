"""The reference's training caption cleaner, as a pure function (reference §1.4 step 3).

Open-Sora-Plan cleans every training caption with a DeepFloyd-IF / PixArt style cleaner before
tokenising it: URL-decoding, lower-casing, removal of URLs, HTML, @handles, CJK symbol blocks
(ideographs are kept for mT5), normalisation of dashes and quotes, removal of IP addresses, ids,
file names, shop spam and number junk, punctuation clean-up, ``ftfy`` + double HTML unescape and
whitespace collapse. It runs once per caption, as in OSP v1.3.1's ``text_preprocessing`` (some
other revisions run it twice, which changes a few captions, e.g. ``"now,"`` becomes ``"now"``). The
result is checked against ``golden/data/caption_cleaning.json`` (ftfy 6.3, beautifulsoup4 4.15).

The reference passes the dataset caption as a one-element list, which the cleaner stringifies; that
"list form" is reproduced exactly by ``clean_caption(str([caption]), ...)`` and is offered as
:func:`clean_caption_list_form` only for byte-compatibility with captions cleaned by the reference.

``ftfy`` and ``bs4`` are imported on first use (about 0.1 s) so importing this module stays cheap.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from functools import cache
from typing import Any

__all__ = ["clean_caption", "clean_caption_list_form"]

_Rule = tuple["re.Pattern[str]", str]


def _rules(*pairs: tuple[str, str]) -> list[_Rule]:
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


# A URL either starts with a scheme, or is a host name ending in one of a few top-level domains.
# The second rule is the reference's "www" variant; it only matches hosts the first one left behind.
_URL_TAIL = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_URLS = _rules(
    (r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", ""),
    (r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", ""),
)

_HANDLES = _rules((r"@[\w\d]+\b", ""))

# CJK strokes, katakana phonetic extensions, enclosed CJK letters, CJK compatibility,
# ideographs extension A and Yijing hexagrams are always removed.
_CJK_SYMBOLS = _rules(*((f"[{block}]+", "") for block in (
    "\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff", "\u3400-\u4dbf", "\u4dc0-\u4dff",
)))
# The unified ideographs (the Chinese characters mT5 can read) only without Chinese support.
_CJK_IDEOGRAPHS = _rules(("[\u4e00-\u9fff]+", ""))

_DASHES_AND_QUOTES = _rules(
    # every kind of dash or hyphen, runs included, becomes one ASCII hyphen
    (r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030"
     r"\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+", "-"),
    (r"[`´«»“”¨]", '"'),
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
)

_IDS_AND_NUMBERS = _rules(
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),   # IPv4 addresses
    (r"\d:\d\d\s+$", ""),                            # a trailing "article id" such as 3:45 + spaces
    (r"\\n", " "),                                   # a literal backslash-n
    (r"#\d{1,3}\b", ""),                             # #123
    (r"#\d{5,}\b", ""),                              # #12345...
    (r"\b\d{6,}\b", ""),                             # 123456...
    (r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", ""),  # file names
)

_PUNCTUATION = _rules(
    (r"[\"\']{2,}", '"'),                            # runs of quotes
    (r"[\.]{2,}", " "),                              # ellipses
    (r"[#®•©™&@·º½¾¿¡§~)(\][}{|\\/*]+", " "),        # stray symbols and brackets
    (r"\s+\.\s+", " "),                              # a lone " . "
)

# Words with more than three '-' or '_' are slugs such as this-is-my-cute-cat.
_SLUG_SEPARATOR = re.compile(r"(?:\-|\_)")

_SPAM_AND_JUNK = _rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),              # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),              # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),                    # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),            # sizes such as 1920x1080 (Latin x, Cyrillic х, ×)
    (r"\b\s+\:\s+", ": "),                           # "a : b" -> "a: b"
    (r"(\D[,\./])\b", r"\1 "),                       # a space after , . / glued to the next word
    (r"\s+", " "),
)

# The reference forgets to strip here (``caption.strip()`` without assignment), so the edge rules
# below see the collapsed text with its outer spaces; keeping that preserves its results.
_EDGES = _rules(
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),             # quotes around the whole caption
    (r"^[\'\_,\-\:;]", ""),                          # one leading ' _ , - : ;
    (r"[\'\_,\-\:\-\+]$", ""),                       # one trailing ' _ , - : +
    (r"^\.\S+$", ""),                                # a single dot-word such as ".hidden"
)


@cache
def _libraries() -> tuple[Any, Any]:
    """``(BeautifulSoup, ftfy)``, imported once on first use.

    bs4 warns when a caption looks like a file name or URL ("not markup"); for captions that is
    expected, so that one warning category is silenced.
    """
    import warnings

    import ftfy
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

    warnings.filterwarnings("ignore", category=MarkupResemblesLocatorWarning)

    return BeautifulSoup, ftfy


def _apply(text: str, rules: list[_Rule]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def clean_caption(text: str, support_chinese: bool) -> str:
    """Clean a training caption exactly like the reference's ``text_preprocessing`` (v1.3.1).

    The result is lower-case, free of URLs, HTML, @handles, ids and shop spam, with normalised
    dashes/quotes and collapsed whitespace. ``support_chinese`` keeps CJK unified ideographs (the
    reference sets it when the text encoder is an mT5); other CJK symbol blocks are always removed.
    Sampling does not use this: the reference never cleans prompts at inference.
    """
    soup_class, ftfy = _libraries()
    text = urllib.parse.unquote_plus(str(text)).strip().lower()
    text = text.replace("<person>", "person")
    text = _apply(text, _URLS)
    text = soup_class(text, features="html.parser").text
    text = _apply(text, _HANDLES)
    text = _apply(text, _CJK_SYMBOLS)
    if not support_chinese:
        text = _apply(text, _CJK_IDEOGRAPHS)
    text = _apply(text, _DASHES_AND_QUOTES)
    text = _apply(text, _IDS_AND_NUMBERS)
    text = _apply(text, _PUNCTUATION)
    if len(_SLUG_SEPARATOR.findall(text)) > 3:
        text = _SLUG_SEPARATOR.sub(" ", text)
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    text = _apply(text, _SPAM_AND_JUNK)
    text = _apply(text, _EDGES)
    return text.strip()


def clean_caption_list_form(text: str, support_chinese: bool) -> str:
    """The reference dataset's exact result: it passes ``[caption]``, which the cleaner stringifies.

    Differs from :func:`clean_caption` only on edge cases (an empty caption gives ``'"'``, a
    caption ``.hidden`` gives ``'. hidden'``, quotes at the ends may be kept or lost); use it only to
    reproduce captions cleaned by the reference byte for byte.
    """
    return clean_caption(str([text]), support_chinese)

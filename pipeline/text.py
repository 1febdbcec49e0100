"""Caption text: normalisation and tokenisation.

``tokenize`` is the one definition of a token for the whole project (vocab
building, sampling prompts, neighbours).
"""

from __future__ import annotations

import re
import unicodedata

_TOKEN = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")  # words; keeps "t-shirt" and "someone's" whole
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u2010": "-", "\u2011": "-", "\u2013": "-"})


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))

"""Caption text: normalisation, tokenisation, and the text encoders training uses.

``tokenize`` is the one definition of a token for the whole project (vocab
building, sampling prompts, neighbours). The encoders take per-token word
vectors (B,L,D) and lengths rather than ids, so a prompt with words never seen
in training can be encoded from fastText's subword vectors.
"""

from __future__ import annotations

import re
import unicodedata

import torch
from torch import nn

_TOKEN = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")  # words; keeps "t-shirt" and "someone's" whole
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u2010": "-", "\u2011": "-", "\u2013": "-"})


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def _mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # B,L


class MeanTextEncoder(nn.Module):
    """The original's frozen encoder: the mean of the word vectors. No parameters."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, vectors: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        m = _mask(lengths, vectors.shape[1]).unsqueeze(-1).to(vectors.dtype)  # B,L,1
        return (vectors * m).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(vectors.dtype)  # B,D


class GRUTextEncoder(nn.Module):
    """A trainable bidirectional GRU over the word vectors (the original's sentence encoder)."""

    def __init__(self, dim: int, hidden: int = 128, out_dim: int = 128):
        super().__init__()
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, out_dim)
        self.out_dim = out_dim

    def forward(self, vectors: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(vectors, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed)  # 2,B,H: last forward and last backward state
        return self.proj(torch.cat([h[0], h[1]], dim=-1))  # B,out_dim


def lookup(table: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """(B,L) ids -> (B,L,D) vectors from a frozen table whose row 0 is padding."""
    return nn.functional.embedding(token_ids, table, padding_idx=0)

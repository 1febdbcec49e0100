"""Read word vectors from a fastText ``.bin`` without loading it into RAM.

A public model such as cc.en.300.bin is ~7 GB, almost all of it the input
matrix (2M words + 2M hashed n-gram buckets, x 300 floats). This reader parses
the header and dictionary as a stream, memory-maps the matrix, and computes
``get_word_vector`` exactly as fastText does (word row + character n-gram rows
hashed with FNV-1a, averaged), so any word, seen or not, gets its vector while
only the rows it touches are paged in. ``tests/test_vocab.py`` checks it against
the fasttext library bit for bit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import UserError

MAGIC = 793712314
VERSION = 12
_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate t


def _fnv1a(b: bytes) -> int:
    h = 2166136261
    for c in b:
        h ^= (c - 256 if c > 127 else c) & 0xFFFFFFFF  # fastText hashes signed chars
        h = (h * 16777619) & 0xFFFFFFFF
    return h


class FastTextBin:
    def __init__(self, path, words=None):
        """Open ``path``; keep dictionary ids only for ``words`` (None: all)."""
        self.path = Path(path)
        keep = None if words is None else set(words)
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise UserError(f"cannot open {path}: {e.strerror}") from None
        with f:
            head = f.read(8)
            if len(head) < 8 or struct.unpack("<ii", head) != (MAGIC, VERSION):
                raise UserError(f"{path} is not a fastText .bin model (bad magic/version)")
            args = _ARGS.unpack(f.read(_ARGS.size))
            self.dim, self.bucket, self.minn, self.maxn = args[0], args[8], args[9], args[10]
            size, self.nwords, _nlabels = struct.unpack("<3i", f.read(12))
            _ntokens, prune = struct.unpack("<2q", f.read(16))
            self.ids: dict[str, int] = {}
            self.counts: dict[str, int] = {}
            buf, pos = b"", 0
            for i in range(size):  # stream the dictionary; 2M entries in a public model
                end = buf.find(b"\0", pos)
                while end < 0 or len(buf) < end + 10:
                    more = f.read(1 << 20)
                    if not more:
                        raise UserError(f"{path}: truncated fastText dictionary")
                    buf, pos = buf[pos:] + more, 0
                    end = buf.find(b"\0", pos)
                word = buf[pos:end].decode("utf-8", errors="replace")
                count, _type = struct.unpack_from("<qb", buf, end + 1)
                if i < self.nwords and (keep is None or word in keep):
                    self.ids[word] = i
                    self.counts[word] = count
                pos = end + 10
            offset = f.tell() - (len(buf) - pos)
            f.seek(offset)
            self.prune = {}
            if prune > 0:
                pairs = np.frombuffer(f.read(8 * prune), dtype="<i4").reshape(-1, 2)
                self.prune = dict(map(tuple, pairs.tolist()))
            self.prune_size = prune
            quant = f.read(1)
            if quant != b"\0":
                raise UserError(f"{path} is a quantized model (.ftz); use the full .bin")
            m, n = struct.unpack("<2q", f.read(16))
            if n != self.dim:
                raise UserError(f"{path}: matrix width {n} != dim {self.dim}; corrupt model")
            start = f.tell()
        self.matrix = np.memmap(self.path, dtype="<f4", mode="r", offset=start, shape=(m, n))

    def subwords(self, word: str) -> list[int]:
        """Matrix rows fastText averages for ``word``."""
        rows = [self.ids[word]] if word in self.ids else []
        if self.maxn <= 0 or self.prune_size == 0 or word == "</s>":  # fastText: no n-grams for EOS
            return rows
        b = ("<" + word + ">").encode("utf-8")
        for i in range(len(b)):
            if (b[i] & 0xC0) == 0x80:  # not the first byte of a UTF-8 character
                continue
            j, n = i, 1
            while j < len(b) and n <= self.maxn:
                j += 1
                while j < len(b) and (b[j] & 0xC0) == 0x80:
                    j += 1
                if n >= self.minn and not (n == 1 and (i == 0 or j == len(b))):
                    h = _fnv1a(b[i:j]) % self.bucket
                    if self.prune_size > 0:
                        if h not in self.prune:
                            n += 1
                            continue
                        h = self.prune[h]
                    rows.append(self.nwords + h)
                n += 1
        return rows

    def word_vector(self, word: str) -> np.ndarray:
        rows = self.subwords(word)
        vec = np.zeros(self.dim, np.float32)
        for r in rows:  # float32, in fastText's order, so results match it exactly
            vec += self.matrix[r]
        return vec * np.float32(1.0 / len(rows)) if rows else vec

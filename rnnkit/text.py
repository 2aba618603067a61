"""Text → tokens → ids: cleaning (d2l | lower | none), tokenisation (char | word) and `Vocab`.

Nothing here knows about tensors or batches; see `data.py` for that.
"""
from __future__ import annotations

import collections
import io
import re
from typing import Iterable, Sequence

import numpy as np

CLEAN_MODES = ("d2l", "lower", "none")
TOKEN_MODES = ("char", "word")
_NON_LETTERS = re.compile("[^A-Za-z]+")


def clean_lines(text: str, mode: str = "d2l") -> list[str]:
    """Split `text` into lines and clean each the chosen way.

    d2l: the book's `re.sub('[^A-Za-z]+', ' ', line).strip().lower()`; lower: lower-case only;
    none: every character kept (newlines too), so `''.join(lines) == text`.
    """
    if mode == "d2l":  # lines as the book's open(...).readlines() sees them (universal newlines)
        lines = io.StringIO(text, newline=None).readlines()
        return [_NON_LETTERS.sub(" ", line).strip().lower() for line in lines]
    if mode == "lower":
        return text.lower().splitlines(keepends=True)
    if mode == "none":
        return text.splitlines(keepends=True)
    raise ValueError(f"unknown cleaning {mode!r}; choose one of {', '.join(CLEAN_MODES)}")


def tokenize(lines: Sequence[str], token: str = "word") -> list[list[str]]:
    """One token list per line: characters (`char`) or whitespace-separated words (`word`)."""
    if token == "word":
        return [line.split() for line in lines]
    if token == "char":
        return [list(line) for line in lines]
    raise ValueError(f"unknown token type {token!r}; choose one of {', '.join(TOKEN_MODES)}")


SEPARATOR = {"char": "", "word": " "}   # what joins two tokens back into text


def tokens_of(text: str, token: str) -> list[str]:
    """One text's tokens, as `tokenize` reads a line: characters, or whitespace-split words."""
    return list(text) if token == "char" else text.split()


def detokenize(tokens: Iterable[str], token: str) -> str:
    """Tokens back to text: characters joined as they are, words with a space between."""
    return SEPARATOR[token].join(tokens)


def extend(prefix: str, tokens: Sequence[str], token: str) -> str:
    """A prefix and the tokens generated after it, as one text."""
    if not tokens:
        return prefix
    return prefix + SEPARATOR[token] + detokenize(tokens, token)


def count_corpus(tokens: Sequence) -> collections.Counter:
    """Token counts of a flat token list or a list of token lists (insertion order = first seen)."""
    if len(tokens) == 0 or isinstance(tokens[0], list):
        tokens = [tok for line in tokens for tok in line]
    return collections.Counter(tokens)


class Vocab:
    """Token ↔ id table: `<unk>` is 0, then reserved tokens, then tokens by descending frequency.

    >>> v = Vocab(list("abracadabra"))
    >>> v.idx_to_token, v["a"], v[["b", "z"]], v.to_tokens([1, 2])
    (['<unk>', 'a', 'b', 'r', 'c', 'd'], 1, [2, 0], ['a', 'b'])
    """

    def __init__(self, tokens: Sequence | None = None, min_freq: int = 0,
                 reserved_tokens: Sequence[str] | None = None):
        counter = count_corpus(tokens if tokens is not None else [])
        # sorted() is stable and Counter keeps first-seen order, so ties keep first-seen order.
        self._token_freqs = sorted(counter.items(), key=lambda kv: kv[1], reverse=True)
        self.idx_to_token = ["<unk>"] + list(reserved_tokens or [])
        self.token_to_idx = {tok: i for i, tok in enumerate(self.idx_to_token)}
        for tok, freq in self._token_freqs:
            if freq < min_freq:
                break
            if tok not in self.token_to_idx:
                self.idx_to_token.append(tok)
                self.token_to_idx[tok] = len(self.idx_to_token) - 1

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(tok) for tok in tokens]

    def to_tokens(self, indices):
        if not isinstance(indices, (list, tuple)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[i] for i in indices]

    @property
    def unk(self) -> int:
        return 0

    @property
    def token_freqs(self) -> list[tuple[str, int]]:
        return self._token_freqs

    def to_dict(self) -> dict:
        """A JSON-ready, versioned description (see `from_dict`)."""
        return {"format": "rnnkit-vocab", "version": 1, "idx_to_token": self.idx_to_token,
                "token_freqs": [[t, n] for t, n in self._token_freqs]}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """Rebuild a vocabulary saved by `to_dict`, checking every field's type."""
        if not isinstance(d, dict) or d.get("format") != "rnnkit-vocab" or d.get("version") != 1:
            raise ValueError("not an rnnkit vocabulary (format 'rnnkit-vocab', version 1)")
        itos, freqs = d.get("idx_to_token"), d.get("token_freqs")
        if (not isinstance(itos, list) or not itos or itos[0] != "<unk>"
                or not all(isinstance(t, str) for t in itos) or len(set(itos)) != len(itos)):
            raise ValueError("vocabulary 'idx_to_token' must be distinct strings starting with '<unk>'")
        if not isinstance(freqs, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], int) and p[1] >= 0 for p in freqs):
            raise ValueError("vocabulary 'token_freqs' must be a list of [token, count] pairs")
        vocab = cls()
        vocab.idx_to_token = list(itos)
        vocab.token_to_idx = {t: i for i, t in enumerate(itos)}
        vocab._token_freqs = [(t, n) for t, n in freqs]
        return vocab


def text_to_ids(text: str, clean: str = "d2l", token: str = "char", min_freq: int = 0,
                vocab: Vocab | None = None) -> tuple[np.ndarray, Vocab]:
    """The book's list pipeline on one string: clean → tokenize → Vocab → ids, int64 (N,).

    `vocab` maps with an existing vocabulary (unknown tokens → <unk>) instead of building one.
    """
    tokens = tokenize(clean_lines(text, clean), token)
    if vocab is None:
        vocab = Vocab(tokens, min_freq=min_freq)
    return np.fromiter((vocab[t] for line in tokens for t in line), dtype=np.int64), vocab

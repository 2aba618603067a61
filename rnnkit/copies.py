"""What a sample copied from the training text: for every position of the sample, the longest
span starting there that the training slice holds verbatim (the matching statistics), read off
a suffix array of the training slice (`pydivsufsort`), built once per run and kept beside it.

    sample      t h e   t i m e   m a c h i n e   w a s
    ms[i]       9 8 7 ...                             (tokens matched from i on)
    copies      ═════════════════                     spans of >= copy_min tokens

Exact: each position's span is found by one binary search of the suffix array (its neighbours
in sorted order share the longest prefix with it), so the report for a 1,000-token sample
costs ~1,000 searches, whatever the size of the training text.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RnnkitError
from .files import atomic_write

FORMAT = "rnnkit-copies"
COPY_MIN = {"char": 20, "word": 6}        # the default shortest span counted as a copy
MAX_TOKENS = 1 << 28                      # training tokens an index covers (1 GiB of int32)


class DamagedIndex(RnnkitError):
    """copies.safetensors is not the index of this run's training slice."""


def _sha1(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).view(np.uint8)).hexdigest()


@dataclass
class CopyReport:
    """One sample's copies: its longest shared span and the share of its tokens in copies."""
    longest: int                 # tokens of the longest span the training slice holds
    sample_at: int               # where that span starts in the sample
    train_at: int                # ... and where it occurs in the training slice
    copied_share: float          # generated tokens inside spans of >= copy_min tokens
    copy_min: int
    indexed: int                 # training tokens searched: all, or the first MAX_TOKENS
    spans: list[tuple[int, int, int]]  # (start, end, where it occurs in the training slice)
                                       # of each copy in the sample, overlapping ones merged

    def to_dict(self) -> dict:
        return {"longest": self.longest, "sample_at": self.sample_at, "train_at": self.train_at,
                "copied_share": self.copied_share, "copy_min": self.copy_min,
                "indexed_tokens": self.indexed,
                "spans": [list(s) for s in self.spans]}


class CopyIndex:
    """A suffix array of the training ids `text` (N,): `sa` (N,) the suffixes' starts in
    lexicographic order of the ids."""

    def __init__(self, text: np.ndarray, sa: np.ndarray):
        self.text, self.sa = np.ascontiguousarray(text), sa
        # big-endian fixed-width bytes sort as the ids do, so a suffix compares as bytes
        self.width = self.text.dtype.itemsize
        self.bytes = self.text.astype(self.text.dtype.newbyteorder(">")).tobytes()

    @classmethod
    def build(cls, text: np.ndarray) -> "CopyIndex":
        from pydivsufsort import divsufsort
        text = np.array(text[:MAX_TOKENS])                      # writable, contiguous
        return cls(text, divsufsort(text) if len(text) else np.zeros(0, np.int64))

    def save(self, path: Path) -> None:
        from safetensors.numpy import save
        meta = {"format": FORMAT, "tokens": str(len(self.text)), "text_sha1": _sha1(self.text),
                "sa_sha1": _sha1(self.sa)}
        atomic_write(path, save({"sa": self.sa}, metadata=meta))

    @classmethod
    def load(cls, path: Path, text: np.ndarray) -> "CopyIndex":
        """The index at `path` for the training ids `text`, refused unless it is exactly the
        one built from them (a damaged or stale file is an error that says how to rebuild)."""
        from safetensors import SafetensorError, safe_open
        text = np.asarray(text[:MAX_TOKENS])
        bad = f"{path} is not this run's copy index; delete it and rnnkit builds it again"
        try:
            with safe_open(str(path), framework="np") as f:
                meta, sa = f.metadata() or {}, f.get_tensor("sa")
        except (SafetensorError, OSError, KeyError, ValueError):
            raise DamagedIndex(bad) from None
        if (meta.get("format") != FORMAT or meta.get("tokens") != str(len(text))
                or sa.shape != (len(text),) or meta.get("text_sha1") != _sha1(text)
                or meta.get("sa_sha1") != _sha1(sa)):
            raise DamagedIndex(bad)
        return cls(text, sa)

    def longest_from(self, sample: np.ndarray, i: int) -> tuple[int, int]:
        """(length, start in the training ids) of the longest prefix of sample[i:] that the
        training ids hold."""
        w, n = self.width, len(self.sa)
        if n == 0:
            return 0, 0
        query = sample[i:].astype(self.text.dtype.newbyteorder(">")).tobytes()
        lo, hi = 0, n                                   # the first suffix >= query
        while lo < hi:
            mid = (lo + hi) // 2
            start = int(self.sa[mid]) * w
            if self.bytes[start:start + len(query)] < query:
                lo = mid + 1
            else:
                hi = mid
        best = (0, 0)
        for j in (lo - 1, lo):                          # its neighbours share the most with it
            if 0 <= j < n:
                at = int(self.sa[j])
                length = _common_prefix(self.text[at:at + len(query) // w], sample[i:])
                if length > best[0]:
                    best = (length, at)
        return best

    def report(self, sample: np.ndarray, generated_from: int, copy_min: int) -> CopyReport:
        """The copies of `sample` (ids; its tokens from `generated_from` on were generated,
        those before are the prefix): the longest shared span that holds a generated token, and
        the share of generated tokens inside shared spans of at least `copy_min` tokens."""
        sample = np.asarray(sample, dtype=self.text.dtype)
        m = len(sample)
        longest, reach = (0, 0, 0), np.zeros(m + 1, np.int64)
        found = [self.longest_from(sample, i) for i in range(m)]      # (length, where) per i
        for i, (length, at) in enumerate(found):
            if i + length > generated_from and length > longest[0]:
                longest = (length, i, at)
            if length >= copy_min:
                reach[i] = i + length                   # tokens i .. i+length-1 are a copy
        covered = np.maximum.accumulate(reach[:m]) > np.arange(m) if m else np.zeros(0, bool)
        made = covered[generated_from:]
        spans, start = [], None
        for k, c in enumerate(list(covered) + [False]):
            if c and start is None:
                start = k
            elif not c and start is not None:
                spans.append((start, k, found[start][1]))
                start = None
        return CopyReport(longest[0], longest[1], longest[2],
                          float(made.mean()) if len(made) else 0.0, copy_min, len(self.text),
                          spans)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def describe(report: CopyReport, span: str, token: str) -> str:
    """One line: the longest copy (abridged) and the share of the sample in copies."""
    unit = "chars" if token == "char" else "words"
    shown = span if len(span) <= 60 else span[:28] + " … " + span[-28:]
    where = "training text" if report.indexed < MAX_TOKENS else \
        f"training text's first {MAX_TOKENS:,} tokens (the index's bound)"
    return (f"  copied: longest {report.longest:,} {unit} (at token {report.train_at:,} of the "
            f"{where}: {json.dumps(shown, ensure_ascii=False)}); "
            f"{100 * report.copied_share:.0f}% of the sample in copies of "
            f"{report.copy_min}+ {unit}")

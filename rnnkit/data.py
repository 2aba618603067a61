"""Corpora and minibatches: the bundled Time Machine, any UTF-8 file, splits, and the book's
random and sequential minibatch iterators over an id array (no tensors until a batch is made).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .config import STDIN
from .encode import ids_dtype, prepare, read_corpus, stdin_copy  # noqa: F401 (read_corpus: API)
from .errors import RnnkitError
from .files import atomic_write
from .text import Vocab, text_to_ids

TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
EXACT_SHUFFLE_LIMIT = 1 << 20  # subsequences up to which random sampling shuffles as the book


def sha1_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def time_machine_text() -> str:
    """The book's copy of *The Time Machine*, shipped with the package and checksum-verified."""
    raw = resources.files("rnnkit").joinpath("data/timemachine.txt").read_bytes()
    if sha1_of(raw) != TIME_MACHINE_SHA1:
        raise RnnkitError("the bundled timemachine.txt is damaged (sha1 mismatch); reinstall rnnkit")
    return raw.decode("utf-8")


def download(url: str, sha1: str | None, cache_dir: str | os.PathLike,
             timeout: float = 30) -> Path:
    """Fetch `url` into `cache_dir` once, verify its sha1 (None: any file will do, as the
    book's 1.0 `download` allows), and return the local path."""
    target = Path(cache_dir) / url.rstrip("/").split("/")[-1]
    if target.is_file() and (sha1 is None or sha1_of(target.read_bytes()) == sha1):
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise RnnkitError(f"cannot download {url} ({reason}); if offline, copy the file to "
                          f"{target} by hand") from None
    if sha1 is not None and sha1_of(data) != sha1:
        raise RnnkitError(f"download of {url} has sha1 {sha1_of(data)}, expected {sha1}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data)
    return target


def corpus_path(config) -> Path | None:
    """The file a config's corpus is read from: None for the bundled book; for a corpus read
    from standard input, the copy `rnnkit train --corpus -` kept in the cache."""
    if config.corpus != STDIN:
        return None if config.corpus is None else Path(config.corpus)
    path = stdin_copy(config.corpus_sha1 or "")
    if not path.is_file():
        raise RnnkitError(f"the run's corpus was standard input, and its copy ({path}) is no "
                          "longer in the cache; pass the text again with --corpus FILE")
    return path


def load_corpus(path: str | os.PathLike | None = None, clean: str = "d2l", token: str = "char",
                min_freq: int = 0, vocab: Vocab | None = None) -> tuple[np.ndarray, Vocab]:
    """A corpus → (ids (N,), vocab): The Time Machine (default) through the book's own list
    pipeline, any other file through the cached vectorised one (`encode.prepare`), which gives
    the same ids. With `vocab`, the ids are in that vocabulary (unknown tokens → <unk>)."""
    if path is None:
        ids, vocab = text_to_ids(time_machine_text(), clean, token, min_freq, vocab)
        if ids.size == 0:
            raise RnnkitError(f"corpus The Time Machine has no tokens after --clean {clean}; "
                              "try --clean none")
        return ids, vocab
    ids, own, _ = prepare(path, clean, token, 0 if vocab is not None else min_freq)
    if vocab is None or own.idx_to_token == vocab.idx_to_token:
        return ids, own
    to_run = np.array([vocab[t] for t in own.idx_to_token],    # this file's id → the run's id
                      dtype=ids_dtype(len(vocab)))
    return to_run[ids], vocab


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Slices:
    """A corpus cut into contiguous slices, held-out ones taken from the end:

        ids:  | train (capped: its first max_tokens) ...unused... | val | test |
              0                                        val_start ^  test_start ^

    Each slice is a view of `ids`; `before(split)` is the text that precedes it, which a model
    that reads history (an n-gram mixture) sees before the slice's first token."""
    ids: np.ndarray                 # (N,) the whole corpus
    train_end: int
    val_start: int
    test_start: int

    @classmethod
    def of(cls, ids: np.ndarray, val_fraction: float = 0.1, max_tokens: int = -1,
           test_fraction: float = 0.0) -> "Slices":
        """`max_tokens > 0` keeps the first `max_tokens` of the training slice (the book's
        10,000), so the held-out slices never overlap what training sees."""
        n = len(ids)
        test_start = n - round(n * test_fraction)
        val_start = test_start - round(n * val_fraction)
        return cls(ids, min(val_start, max_tokens) if max_tokens > 0 else val_start,
                   val_start, test_start)

    def __getitem__(self, split: str) -> np.ndarray:
        start, end = self._bounds(split)
        return self.ids[start:end]

    def before(self, split: str) -> np.ndarray:
        return self.ids[:self._bounds(split)[0]]

    def _bounds(self, split: str) -> tuple[int, int]:
        return {"train": (0, self.train_end), "val": (self.val_start, self.test_start),
                "test": (self.test_start, len(self.ids))}[split]


def split_corpus(ids: np.ndarray, val_fraction: float = 0.1, max_tokens: int = -1,
                 test_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous (train, val, test) slices (`Slices.of`)."""
    slices = Slices.of(ids, val_fraction, max_tokens, test_fraction)
    return tuple(slices[split] for split in SPLITS)


def read_slices(config, vocab: Vocab | None = None) -> tuple[Vocab, Slices]:
    """The config's corpus and its slices: the one place a run's slices are derived. With
    `vocab` the ids are in that vocabulary (unknown tokens → <unk>), else in the corpus's own."""
    ids, vocab = load_corpus(corpus_path(config), config.clean, config.token,
                             config.min_freq, vocab=vocab)
    return vocab, Slices.of(ids, config.val_fraction, config.token_cap(), config.test_fraction)


class Batches:
    """Minibatches (X, Y) of shape (batch_size, num_steps), int64, with Y = X shifted by one.

    `starts[i, r]` is where row r of batch i begins in the corpus, so both samplers share one
    iterator that gathers straight from the id array (a list, numpy array or memmap).
    """

    def __init__(self, corpus, starts: np.ndarray, num_steps: int):
        self.corpus = corpus if isinstance(corpus, np.ndarray) else np.asarray(corpus, np.int64)
        self.starts, self.num_steps = starts, num_steps

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, first: int):
        """Batches `first`, `first + 1`, … (to resume an epoch part-way)."""
        import torch          # here, not at the top: `rnnkit vocab` and `prepare` need no torch
        steps = np.arange(self.num_steps)
        for row_starts in self.starts[first:]:
            idx = row_starts[:, None] + steps                           # (B, T)
            x = torch.from_numpy(np.asarray(self.corpus[idx], dtype=np.int64))   # (B, T)
            y = torch.from_numpy(np.asarray(self.corpus[idx + 1], dtype=np.int64))
            yield x, y

    def rows(self, sl: slice) -> "Batches":
        """The same batches restricted to rows `sl` (one rank's share in data-parallel training)."""
        return Batches(self.corpus, self.starts[:, sl], self.num_steps)


def random_batches(corpus, batch_size: int, num_steps: int, rng: random.Random) -> Batches:
    """The book's random sampling: random offset, shuffled non-overlapping subsequences.

    corpus:  a b c d e f g h i j k l m n ...     (offset k drawn from [0, num_steps))
    subseqs: [c d e] [f g h] [i j k] [l m n] ... shuffled, then dealt batch_size at a time;
    neighbouring batches are unrelated, so the state is re-initialised for every batch.
    """
    offset = rng.randint(0, num_steps - 1)
    num_subseqs = (len(corpus) - offset - 1) // num_steps
    if num_subseqs <= EXACT_SHUFFLE_LIMIT:   # the book's shuffle, draw for draw
        order = list(range(num_subseqs))
        rng.shuffle(order)
    else:  # a Python list of millions of ints costs gigabytes: shuffle in numpy instead
        order = np.random.default_rng(rng.getrandbits(64)).permutation(num_subseqs)
    num_batches = num_subseqs // batch_size
    starts = np.asarray(order[: num_batches * batch_size], dtype=np.int64) * num_steps + offset
    return Batches(corpus, starts.reshape(num_batches, batch_size), num_steps)


def sequential_batches(corpus, batch_size: int, num_steps: int, rng: random.Random) -> Batches:
    """The book's sequential partitioning: row r of batch i+1 continues row r of batch i.

    the stream (after a random offset in [0, num_steps]) is cut into batch_size rows:
      row 0: [a b c][d e f][g h i]        batch 0 = first column of windows,
      row 1: [j k l][m n o][p q r]        batch 1 = the second, ...
    so the final hidden state of a batch is the right initial state for the next one
    (detached, so gradients stop at the window edge).
    """
    offset = rng.randint(0, num_steps)
    row_len = (len(corpus) - offset - 1) // batch_size
    num_batches = row_len // num_steps
    starts = (offset + np.arange(batch_size, dtype=np.int64)[None, :] * row_len
              + np.arange(num_batches, dtype=np.int64)[:, None] * num_steps)
    return Batches(corpus, starts.reshape(num_batches, batch_size), num_steps)


SAMPLERS = {"random": random_batches, "sequential": sequential_batches}


def min_tokens_for_batch(batch_size: int, num_steps: int, sampling: str) -> int:
    """The shortest corpus that always yields at least one batch, whatever the random offset."""
    if sampling == "random":
        return batch_size * num_steps + num_steps
    return batch_size * num_steps + num_steps + 1

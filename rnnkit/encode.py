"""Corpora of gigabytes: clean, count and encode characters in bounded memory with vectorised
numpy passes, and cache the ids as a memory-mapped array keyed by the file's checksum and the
settings. Gives exactly the ids and vocabulary of `data.load_corpus` (tested on The Time
Machine and on random text); word tokens use that list pipeline.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import RnnkitError
from .text import Vocab

CHUNK = 16 << 20                       # bytes read at a time: bounds the working memory
_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
# d2l cleaning as one byte map: letters → lower case, newlines kept, everything else → space.
# Every byte of a multi-byte UTF-8 character is ≥ 0x80, a non-letter, as the book's regex says.
_D2L_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 else 10 if c in (10, 13)
                   else 32 for c in range(256))


def cache_dir() -> Path:
    """$RNNKIT_CACHE, else ~/.cache/rnnkit."""
    return Path(os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit")


def _d2l_clean(block: bytes) -> bytes:
    """The book's per-line cleaning of whole lines of raw bytes, concatenated: non-letter runs
    become one space, each line is stripped and lower-cased ('\r' ends a line, as in text mode)."""
    b = block.translate(_D2L_TABLE)
    while b"  " in b:                  # each pass shortens every run of spaces
        b = b.replace(b"    ", b" ").replace(b"  ", b" ")
    b = b.replace(b" \n", b"\n").replace(b"\n ", b"\n")   # strip each line's ends
    return b.strip(b" ").replace(b"\n", b"")                # a block starts and ends a line


def _blocks(path: Path) -> Iterator[bytes]:
    """Whole-line blocks of about CHUNK bytes (lines are independent under every cleaning)."""
    carry = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            yield data[:cut]
            carry = data[cut:]
    if carry:
        yield carry


def code_points(path: Path, clean: str) -> Iterator[np.ndarray]:
    """The cleaned text of `path` as uint8 (d2l: ASCII) or uint32 (code points) arrays."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    first, offset, lines = True, 0, 0

    def not_utf8(block: bytes, e: UnicodeDecodeError) -> RnnkitError:
        line = lines + block.count(b"\n", 0, e.start) + 1
        return RnnkitError(f"corpus {path} is not valid UTF-8 (byte offset {offset + e.start}, "
                           f"line {line}); convert it, e.g. with iconv -t UTF-8")
    for block in _blocks(path):
        if clean == "d2l":
            try:
                block.decode("utf-8")      # the book reads text: refuse what is not UTF-8
            except UnicodeDecodeError as e:
                raise not_utf8(block, e) from None
            yield np.frombuffer(_d2l_clean(block), dtype=np.uint8)
        else:
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as e:
                raise not_utf8(block, e) from None
            if first:
                text = text.removeprefix("\ufeff")
            if clean == "lower":
                text = text.lower()
            yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        first = False
        offset += len(block)
        lines += block.count(b"\n")


def count_chars(path: Path, clean: str) -> Vocab:
    """Vocabulary of the cleaned characters, ordered exactly as `Vocab` orders them."""
    counts = np.zeros(256, dtype=np.int64)
    first_seen = np.full(256, np.iinfo(np.int64).max, dtype=np.int64)
    position = 0
    for cps in code_points(path, clean):
        top = int(cps.max()) + 1 if cps.size else 0
        if top > counts.size:
            counts = np.concatenate([counts, np.zeros(top - counts.size, np.int64)])
            first_seen = np.concatenate(
                [first_seen, np.full(top - first_seen.size, np.iinfo(np.int64).max)])
        for start in range(0, cps.size, 1 << 22):   # bincount widens to int64: chunk it
            part = cps[start:start + (1 << 22)]
            present = np.bincount(part, minlength=counts.size)
            new = np.flatnonzero((present > 0) & (counts == 0))
            if new.size:               # first positions of characters never seen before
                where = np.flatnonzero(np.isin(part, new))
                codes, idx = np.unique(part[where], return_index=True)
                first_seen[codes] = position + start + where[idx]
            counts += present
        position += cps.size
    seen = np.flatnonzero(counts)
    order = seen[np.lexsort((first_seen[seen], -counts[seen]))]
    vocab = Vocab()
    for code in order:
        tok = chr(code)
        vocab.token_to_idx[tok] = len(vocab.idx_to_token)
        vocab.idx_to_token.append(tok)
    vocab._token_freqs = [(chr(c), int(counts[c])) for c in order]
    return vocab


def encode_chars(path: Path, clean: str, vocab: Vocab, out: Path) -> np.ndarray:
    """Write the ids of `path` to the .npy file `out` (memory-mapped) and return it."""
    n = sum(cps.size for cps in code_points(path, clean))
    top = max((ord(t) for t in vocab.idx_to_token[1:]), default=0) + 1
    dtype = np.uint8 if len(vocab) <= 256 else np.uint32
    lookup = np.zeros(max(top, 256), dtype=dtype)          # code point → id (0 = <unk>)
    for i, tok in enumerate(vocab.idx_to_token[1:], start=1):
        if len(tok) == 1:
            lookup[ord(tok)] = i
    tmp = out.with_name(out.name + ".tmp")
    ids = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n,))
    pos = 0
    for cps in code_points(path, clean):
        inside = cps < lookup.size
        ids[pos:pos + cps.size] = np.where(inside, lookup[np.minimum(cps, lookup.size - 1)], 0)
        pos += cps.size
    ids.flush()
    del ids
    os.replace(tmp, out)
    return np.load(out, mmap_mode="r")


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def prepare(path: str | os.PathLike, clean: str = "d2l", token: str = "char",
            min_freq: int = 0) -> tuple[np.ndarray, Vocab, Path]:
    """(ids as a read-only memmap, vocab, cache file), encoding the corpus on first use."""
    from .data import load_corpus
    path = Path(path)
    read_corpus_checks(path)
    key = hashlib.sha1(f"{file_sha1(path)}:{clean}:{token}:{min_freq}:v1".encode()).hexdigest()
    root = cache_dir()
    ids_path, vocab_path = root / f"{key}.ids.npy", root / f"{key}.vocab.json"
    if ids_path.is_file() and vocab_path.is_file():
        try:
            vocab = Vocab.from_dict(json.loads(vocab_path.read_text(encoding="utf-8")))
            return np.load(ids_path, mmap_mode="r"), vocab, ids_path
        except (OSError, ValueError):
            pass                                           # a damaged cache: rebuild it
    root.mkdir(parents=True, exist_ok=True)
    if token == "char" and min_freq <= 1:
        vocab = count_chars(path, clean)
        ids = encode_chars(path, clean, vocab, ids_path)
    else:                                                  # words: the list pipeline
        ids_list, vocab = load_corpus(path, clean, token, min_freq)
        np.save(ids_path.with_name(ids_path.name + ".tmp.npy"), ids_list)
        os.replace(ids_path.with_name(ids_path.name + ".tmp.npy"), ids_path)
        ids = np.load(ids_path, mmap_mode="r")
    if len(ids) == 0:
        raise RnnkitError(f"corpus {path} has no tokens after --clean {clean}; try --clean none")
    tmp = vocab_path.with_name(vocab_path.name + ".tmp")
    tmp.write_text(json.dumps(vocab.to_dict(), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, vocab_path)
    return ids, vocab, ids_path


def read_corpus_checks(path: Path) -> None:
    """The checks of `data.read_corpus` that need no full read: exists, file, non-empty, text."""
    if not path.exists():
        raise RnnkitError(f"corpus not found: {path}; pass --corpus with an existing text file")
    if path.is_dir():
        raise RnnkitError(f"corpus {path} is a directory; pass a UTF-8 text file")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise RnnkitError(f"cannot read corpus {path}: {e.strerror}; check its permissions") \
            from None
    if not head:
        raise RnnkitError(f"corpus {path} is empty; pass a file with text in it")
    if b"\0" in head:
        raise RnnkitError(f"corpus {path} looks binary (NUL byte at offset {head.find(0)}); "
                          "pass a text file")

"""Corpus files → ids: read, clean, count and encode characters in bounded memory with
vectorised numpy passes, and cache the ids as a memory-mapped array keyed by the file's checksum
and the settings. Gives exactly the ids and vocabulary of the book's list pipeline
(`text.text_to_ids`; tested on The Time Machine and on random text); word tokens use it.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import RnnkitError
from .files import FileLock, atomic_write, check_regular_file
from .text import Vocab, text_to_ids

CHUNK = 1 << 20                        # bytes read at a time: bounds the working memory
CACHE_FORMAT = "rnnkit-ids-v3"         # ids file + JSON metadata (length, crc32, vocabulary)
# d2l cleaning as one byte map: letters → lower case, newlines kept, everything else → space.
# Every byte of a multi-byte UTF-8 character is ≥ 0x80, a non-letter, as the book's regex says.
_D2L_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 else 10 if c in (10, 13)
                   else 32 for c in range(256))


def cache_dir() -> Path:
    """$RNNKIT_CACHE, else ~/.cache/rnnkit."""
    return Path(os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit")


def _d2l_clean(block: bytes) -> np.ndarray:
    """The book's per-line cleaning of whole lines of raw bytes, concatenated, as uint8: runs of
    non-letters become one space, each line is stripped and lower-cased ('\r' ends a line)."""
    a = np.frombuffer(block.translate(_D2L_TABLE), dtype=np.uint8)
    if a.size == 0:
        return a
    letter, space = a > 32, a == 32                    # letters 97..122, space 32, newline 10
    edges = np.diff(space.view(np.int8))               # +1: a run of spaces starts, -1: ends
    starts, ends = np.flatnonzero(edges == 1) + 1, np.flatnonzero(edges == -1) + 1
    if space[0]:
        starts = np.concatenate([[0], starts])
    if space[-1]:
        ends = np.concatenate([ends, [a.size]])
    inner = (starts > 0) & (ends < a.size)
    starts, ends = starts[inner], ends[inner]
    # a run stays as one space only between two letters of the same line
    starts = starts[letter[starts - 1] & letter[ends]]
    keep = letter
    keep[starts] = True
    return a[keep]


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
    first, offset = True, 0

    def not_utf8(block: bytes, e: UnicodeDecodeError) -> RnnkitError:
        with open(path, "rb") as f:    # count lines only when there is an error to report
            line = f.read(offset).count(b"\n") + block.count(b"\n", 0, e.start) + 1
        return _not_utf8(path, line, offset + e.start)
    for block in _blocks(path):
        _refuse_nul(path, block, offset)  # the same verdict as reading the whole file
        if clean == "d2l":
            try:
                block.decode("utf-8")      # the book reads text: refuse what is not UTF-8
            except UnicodeDecodeError as e:
                raise not_utf8(block, e) from None
            yield _d2l_clean(block)
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


def _bincount(part: np.ndarray, size: int) -> np.ndarray:
    """np.bincount, ~3x faster for bytes: count byte pairs as uint16, then fold the pairs."""
    if part.dtype != np.uint8 or part.size < 2:
        return np.bincount(part, minlength=size)
    even = part.size & ~1
    pairs = np.bincount(part[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    counts = pairs.sum(0) + pairs.sum(1)                 # low bytes + high bytes
    if part.size > even:
        counts[part[-1]] += 1
    return np.concatenate([counts, np.zeros(max(0, size - 256), counts.dtype)])


def _count(arrays, sink=None) -> tuple[np.ndarray, np.ndarray]:
    """(count, first position) of every code in the arrays; each array also goes to `sink`."""
    counts = np.zeros(256, dtype=np.int64)
    first_seen = np.full(256, np.iinfo(np.int64).max, dtype=np.int64)
    position = 0
    for cps in arrays:
        if sink is not None:
            sink.write(cps.tobytes())
        top = int(cps.max()) + 1 if cps.size else 0
        if top > counts.size:
            counts = np.concatenate([counts, np.zeros(top - counts.size, np.int64)])
            first_seen = np.concatenate(
                [first_seen, np.full(top - first_seen.size, np.iinfo(np.int64).max)])
        for start in range(0, cps.size, 1 << 20):   # bincount widens to int64: chunk it
            part = cps[start:start + (1 << 20)]
            present = _bincount(part, counts.size)
            new = np.flatnonzero((present > 0) & (counts == 0))
            for code in new:           # first positions of characters never seen before
                first_seen[code] = position + start + int(np.argmax(part == code))
            counts += present
        position += cps.size
    return counts, first_seen


def _vocab(counts: np.ndarray, first_seen: np.ndarray) -> Vocab:
    """The vocabulary `Vocab` would build: by descending count, ties in first-seen order."""
    seen = np.flatnonzero(counts)
    order = seen[np.lexsort((first_seen[seen], -counts[seen]))]
    vocab = Vocab()
    for code in order:
        vocab.token_to_idx[chr(code)] = len(vocab.idx_to_token)
        vocab.idx_to_token.append(chr(code))
    vocab._token_freqs = [(chr(c), int(counts[c])) for c in order]
    return vocab


def _lookup(vocab: Vocab, size: int) -> np.ndarray:
    """Code point → id table (0 = <unk>); uint8 ids while the vocabulary allows."""
    dtype = ids_dtype(len(vocab))
    top = max([ord(t) + 1 for t in vocab.idx_to_token[1:]] + [size])
    table = np.zeros(top, dtype=dtype)
    for i, tok in enumerate(vocab.idx_to_token[1:], start=1):
        table[ord(tok)] = i
    return table


def encode_chars(path: Path, clean: str, out) -> Vocab:
    """Count and encode the characters of `path` into the open, empty file `out` (raw ids).

    d2l text is ASCII, so one pass writes the cleaned bytes while counting and a second,
    in-place pass over that file maps bytes to ids; other cleanings clean twice instead.
    """
    if clean == "d2l":
        counts, first_seen = _count(code_points(path, clean), sink=out)
        vocab = _vocab(counts, first_seen)
        mapping = _lookup(vocab, 256).tobytes()   # 256 entries: bytes.translate does the lookup
        out.flush()
        out.seek(0)
        while chunk := out.read(CHUNK):           # in place, a chunk at a time (no whole-file map)
            out.seek(-len(chunk), os.SEEK_CUR)
            out.write(chunk.translate(mapping))
    else:
        vocab = _vocab(*_count(code_points(path, clean)))
        table = _lookup(vocab, 0)
        for cps in code_points(path, clean):
            out.write(table[cps].tobytes())
    return vocab


def ids_dtype(vocab_size: int):
    """The id array's type: one byte a token while the vocabulary fits in 256, else four."""
    return np.uint8 if vocab_size <= 256 else np.uint32


def _open_ids(path: Path, dtype) -> np.ndarray:
    size = path.stat().st_size // np.dtype(dtype).itemsize
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(size,))


def count_characters(path: Path) -> int:
    """Characters (code points) in a UTF-8 file: every byte that is not a continuation byte."""
    n = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            a = np.frombuffer(block, dtype=np.uint8)
            n += a.size - int(np.count_nonzero((a & 0xC0) == 0x80))
    return n


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def stdin_copy(sha1: str) -> Path:
    """Where the text of `rnnkit train --corpus -` is kept, by its sha1."""
    return cache_dir() / f"stdin-{sha1}.txt"


def save_stdin(stream) -> str:
    """Read standard input once into the cache (so every later step reads a file); its sha1."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha1()
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".stdin.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            while block := stream.read(CHUNK):
                h.update(block)
                f.write(block)
            if f.tell() == 0:
                raise RnnkitError("standard input is empty; pipe a text in, e.g. "
                                  "cat notes.txt | rnnkit train --corpus -")
        os.replace(tmp, stdin_copy(h.hexdigest()))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _load_cached(ids_path: Path, meta_path: Path) -> tuple[np.ndarray, Vocab] | None:
    """The cached ids and vocabulary if the entry is whole: its length and checksum match
    what was recorded when it was written. None for a missing, partial or damaged entry."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        vocab = Vocab.from_dict(meta["vocab"])
        dtype = ids_dtype(len(vocab))
        length = meta["length"]
        if (meta.get("format") != CACHE_FORMAT or not isinstance(length, int) or length < 1
                or ids_path.stat().st_size != length * np.dtype(dtype).itemsize
                or _crc32(ids_path) != meta["crc32"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _open_ids(ids_path, dtype), vocab


def _write_entry(path: Path, clean: str, token: str, min_freq: int, ids_path: Path,
                 meta_path: Path) -> None:
    """Encode into a temporary file of this writer's own, then publish ids, then metadata."""
    fd, tmp = tempfile.mkstemp(dir=ids_path.parent, prefix=f".{ids_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as out:
            if token == "char" and min_freq <= 1:
                vocab = encode_chars(path, clean, out)
            else:                                          # words: the list pipeline
                ids, vocab = text_to_ids(read_corpus(path), clean, token, min_freq)
                out.write(ids.astype(ids_dtype(len(vocab))).tobytes())
            length = out.tell() // np.dtype(ids_dtype(len(vocab))).itemsize
            out.flush()
            os.fsync(out.fileno())
        if length == 0:
            raise RnnkitError(f"corpus {path} has no tokens after --clean {clean}; "
                              "try --clean none")
        meta = {"format": CACHE_FORMAT, "length": length, "crc32": _crc32(Path(tmp)),
                "vocab": vocab.to_dict()}
        os.replace(tmp, ids_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write(meta_path, json.dumps(meta, ensure_ascii=False).encode("utf-8"))


def prepare(path: str | os.PathLike, clean: str = "d2l", token: str = "char",
            min_freq: int = 0) -> tuple[np.ndarray, Vocab, Path]:
    """(ids as a read-only memmap, vocab, cache file), encoding the corpus on first use.

    Concurrent callers for one corpus and settings take turns on a lock per cache entry; an
    entry whose length or checksum does not match its metadata is rebuilt, never trusted.
    """
    path = Path(path)
    check_corpus(path)
    key = hashlib.sha1(f"{file_sha1(path)}:{clean}:{token}:{min_freq}".encode()).hexdigest()
    root = cache_dir()
    ids_path, meta_path = root / f"{key}.ids", root / f"{key}.json"
    cached = _load_cached(ids_path, meta_path)
    if cached is None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            with FileLock(root / f"{key}.lock", owner=f"pid {os.getpid()}"):
                cached = _load_cached(ids_path, meta_path)   # another writer may have finished
                if cached is None:
                    _write_entry(path, clean, token, min_freq, ids_path, meta_path)
                    cached = _load_cached(ids_path, meta_path)
        except OSError as e:
            raise RnnkitError(f"cannot write the corpus cache in {root} ({e.strerror}); free "
                              "some space or set RNNKIT_CACHE to another directory") from None
        if cached is None:
            raise RnnkitError(f"the corpus cache entry {ids_path} does not verify after "
                              "writing; check the disk")
    return (*cached, ids_path)


def read_corpus(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file as a string (for word tokens and small files), refusing missing,
    empty, binary or mis-encoded files with the same messages as `prepare`."""
    path = Path(path)
    check_corpus(path)
    raw = path.read_bytes()
    _refuse_nul(path, raw, 0)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw.count(b"\n", 0, e.start) + 1, e.start) from None
    return text.removeprefix("\ufeff")


def check_corpus(path: Path) -> None:
    """The checks that need no full read: a regular, readable, non-empty file of text."""
    if not path.exists() and not path.is_symlink():
        raise RnnkitError(f"corpus not found: {path}; pass --corpus with an existing text file")
    check_regular_file(path, "corpus")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise RnnkitError(f"cannot read corpus {path}: {e.strerror}; check its permissions") \
            from None
    if not head:
        raise RnnkitError(f"corpus {path} is empty; pass a file with text in it")
    _refuse_nul(path, head, 0)


def _refuse_nul(path: Path, block: bytes, offset: int) -> None:
    nul = block.find(b"\0")
    if nul >= 0:
        raise RnnkitError(f"corpus {path} looks binary (NUL byte at offset {offset + nul}); "
                          "pass a text file")


def _not_utf8(path: Path, line: int, offset: int) -> RnnkitError:
    return RnnkitError(f"corpus {path} is not valid UTF-8 (byte offset {offset}, line {line}); "
                       "convert it, e.g. with iconv -t UTF-8")

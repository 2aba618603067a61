"""The vectorised, cached pipeline gives exactly the list pipeline's ids and vocabulary."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit import encode
from rnnkit.data import time_machine_text
from rnnkit.errors import RnnkitError
from rnnkit.text import text_to_ids


def load_corpus(path, clean="d2l", token="char"):
    """The reference: the book's list pipeline over the whole file."""
    ids, vocab = text_to_ids(encode.read_corpus(path), clean, token)
    if ids.size == 0:
        raise RnnkitError("no tokens")
    return ids, vocab


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))


def _same(path, clean, token="char"):
    fast_ids, fast_vocab, _ = encode.prepare(path, clean, token)
    ids, vocab = load_corpus(path, clean, token)
    assert fast_vocab.idx_to_token == vocab.idx_to_token
    assert fast_vocab.token_freqs == vocab.token_freqs
    assert np.array_equal(np.asarray(fast_ids, dtype=np.int64), ids)


@pytest.mark.parametrize("clean", ["d2l", "lower", "none"])
def test_time_machine_encodes_identically(clean, tmp_path, monkeypatch):
    path = tmp_path / "tm.txt"
    path.write_text(time_machine_text(), encoding="utf-8")
    monkeypatch.setattr(encode, "CHUNK", 4096)      # many blocks, to test their seams
    _same(path, clean)


def test_word_tokens_go_through_the_list_pipeline(tmp_path):
    path = tmp_path / "tm.txt"
    path.write_text(time_machine_text(), encoding="utf-8")
    _same(path, "d2l", "word")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab AZ\n\r\t.,!é时🙂\ufeff")), min_size=1,
               max_size=300), st.sampled_from(["d2l", "lower", "none"]), st.integers(7, 64))
def test_random_text_encodes_identically(text, clean, chunk):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.txt"
        path.write_bytes(text.encode("utf-8"))
        old = encode.CHUNK
        encode.CHUNK = chunk
        try:
            fast = encode.prepare(path, clean)
        except RnnkitError:
            with pytest.raises(RnnkitError):
                load_corpus(path, clean)
            return
        finally:
            encode.CHUNK = old
        ids, vocab = load_corpus(path, clean)
        assert fast[1].idx_to_token == vocab.idx_to_token
        assert fast[1].token_freqs == vocab.token_freqs
        assert np.array_equal(np.asarray(fast[0], dtype=np.int64), ids)


def test_the_cache_is_reused_and_keyed_by_content(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello world\n" * 100)
    ids, _, cached = encode.prepare(path)
    assert isinstance(ids, np.memmap) and cached.exists() and not ids.flags.writeable
    mtime = cached.stat().st_mtime_ns
    assert encode.prepare(path)[2] == cached and cached.stat().st_mtime_ns == mtime
    path.write_text("other text\n" * 100)
    assert encode.prepare(path)[2] != cached
    assert encode.prepare(path, "none")[2] != encode.prepare(path, "d2l")[2]


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "bin").write_bytes(b"ab\0")
    (tmp_path / "latin").write_bytes(b"ok\ncaf\xe9\n")
    for name, message in (("missing", "not found"), ("bin", "binary"), ("latin", "UTF-8")):
        with pytest.raises(RnnkitError, match=message):
            encode.prepare(tmp_path / name)


def test_prepare_command_prints_statistics(tmp_path, capsys):
    from rnnkit.cli import main
    path = tmp_path / "c.txt"
    path.write_text("Zeit für Äpfel 时间\n" * 10, encoding="utf-8")
    assert main(["prepare", "--corpus", str(path), "--clean", "none"]) == 0
    out = capsys.readouterr().out
    assert "180 characters" in out and "tokens      180" in out and "cache" in out
    assert encode.count_characters(path) == len(path.read_text(encoding="utf-8"))


def test_batches_from_the_memory_map_equal_batches_from_the_list(tmp_path):
    import random
    from rnnkit.data import random_batches, sequential_batches
    path = tmp_path / "tm.txt"
    path.write_text(time_machine_text(), encoding="utf-8")
    mapped, _, _ = encode.prepare(path)
    listed, _ = load_corpus(path)
    for sampler in (random_batches, sequential_batches):
        a = list(sampler(mapped, 32, 35, random.Random(5)))
        b = list(sampler(listed.tolist(), 32, 35, random.Random(5)))
        assert len(a) == len(b) > 100
        assert all(np.array_equal(x, y) and np.array_equal(u, v) for (x, u), (y, v) in zip(a, b))

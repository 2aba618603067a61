import random

import numpy as np
import pytest
import torch

from rnnkit import d2l
from rnnkit.data import (TIME_MACHINE_SHA1, download, load_corpus, random_batches,
                         read_corpus, sequential_batches, sha1_of, split_corpus)
from rnnkit.errors import RnnkitError


def test_bundled_corpus_is_the_books_file(tmp_path):
    from importlib import resources
    raw = resources.files("rnnkit").joinpath("data/timemachine.txt").read_bytes()
    assert sha1_of(raw) == TIME_MACHINE_SHA1


def test_batches_have_the_chapter_shape_and_shifted_targets():
    ids, _ = load_corpus()
    train, _, _ = split_corpus(ids, 0.1, 10_000)
    for sampler in (random_batches, sequential_batches):
        batches = list(sampler(train, 32, 35, random.Random(0)))
        assert len(batches) >= 8
        for X, Y in batches:
            assert X.shape == Y.shape == (32, 35) and X.dtype == Y.dtype == torch.int64
            # Y is X shifted by one token in the corpus
            assert torch.equal(X[:, 1:], Y[:, :-1])


def test_split_trains_on_the_books_first_10000_tokens_and_holds_out_the_tail():
    ids, _ = load_corpus()
    corpus, _ = d2l.load_corpus_time_machine(10_000)
    train, val, test = split_corpus(ids, 0.1, 10_000)
    assert train.tolist() == corpus
    assert len(val) == 17_058 and np.array_equal(val, ids[-17_058:]) and len(test) == 0
    train_all, val2, test2 = split_corpus(ids, 0.1, -1, test_fraction=0.05)
    assert len(train_all) + len(val2) + len(test2) == len(ids)
    assert np.array_equal(np.concatenate([train_all, val2, test2]), ids)


def test_random_sampling_uses_each_subsequence_once_without_overlap():
    corpus = np.arange(1000)
    batches = random_batches(corpus, 4, 7, random.Random(3))
    starts = [int(x) for X, _ in batches for x in X[:, 0]]
    assert len(starts) == len(set(starts))
    covered = sorted(t for X, _ in batches for t in X.flatten().tolist())
    assert len(covered) == len(set(covered))        # no token in two subsequences
    offset = min(starts)
    assert all((s - offset) % 7 == 0 for s in starts)
    assert len(starts) == ((1000 - offset - 1) // 7 // 4) * 4


def test_sequential_rows_continue_across_batches():
    corpus = np.arange(500)
    batches = list(sequential_batches(corpus, 3, 5, random.Random(1)))
    for (X0, _), (X1, _) in zip(batches, batches[1:]):
        assert torch.equal(X1[:, 0], X0[:, -1] + 1)   # row r of batch i+1 follows row r of batch i


def test_same_seed_same_batches_and_different_seed_different():
    ids = np.arange(2000)
    a = [X for X, _ in random_batches(ids, 4, 5, random.Random(7))]
    b = [X for X, _ in random_batches(ids, 4, 5, random.Random(7))]
    c = [X for X, _ in random_batches(ids, 4, 5, random.Random(8))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _book_random(corpus, batch_size, num_steps):  # the book's code, verbatim
    corpus = corpus[random.randint(0, num_steps - 1):]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    random.shuffle(initial_indices)

    def data(pos):
        return corpus[pos: pos + num_steps]

    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        initial_indices_per_batch = initial_indices[i: i + batch_size]
        X = [data(j) for j in initial_indices_per_batch]
        Y = [data(j + 1) for j in initial_indices_per_batch]
        yield torch.tensor(X), torch.tensor(Y)


def _book_sequential(corpus, batch_size, num_steps):  # the book's code, verbatim
    offset = random.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset: offset + num_tokens])
    Ys = torch.tensor(corpus[offset + 1: offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i: i + num_steps], Ys[:, i: i + num_steps]


@pytest.mark.parametrize("ours,book", [(d2l.seq_data_iter_random, _book_random),
                                       (d2l.seq_data_iter_sequential, _book_sequential)])
def test_iterators_equal_the_books_code_for_the_same_seed(ours, book):
    corpus, _ = d2l.load_corpus_time_machine(10_000)
    for seed in range(3):
        random.seed(seed)
        expected = list(book(corpus, 32, 35))
        random.seed(seed)
        got = list(ours(corpus, 32, 35))
        assert len(got) == len(expected)
        for (X, Y), (Xb, Yb) in zip(got, expected):
            assert torch.equal(X, Xb) and torch.equal(Y, Yb)


def test_read_corpus_refuses_bad_files(tmp_path):
    cases = {"missing.txt": None, "dir": "DIR", "empty.txt": b"", "bin.txt": b"ab\0cd",
             "latin1.txt": "caf\xe9\n".encode("latin-1")}
    for name, content in cases.items():
        p = tmp_path / name
        if content == "DIR":
            p.mkdir()
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(RnnkitError):
            read_corpus(p)
    with pytest.raises(RnnkitError, match="line 2"):
        (tmp_path / "bad2.txt").write_bytes(b"ok\n\xff\n")
        read_corpus(tmp_path / "bad2.txt")
    (tmp_path / "ok.txt").write_text("\ufeffhello 世界", encoding="utf-8")
    assert read_corpus(tmp_path / "ok.txt") == "hello 世界"


def test_download_verifies_sha1_and_explains_offline(tmp_path):
    src = tmp_path / "src" / "corpus.txt"
    src.parent.mkdir()
    src.write_bytes(b"some text\n")
    got = download(src.as_uri(), sha1_of(b"some text\n"), tmp_path / "cache")
    assert got.read_bytes() == b"some text\n"
    with pytest.raises(RnnkitError, match="sha1"):
        download(src.as_uri(), "0" * 40, tmp_path / "cache2")
    with pytest.raises(RnnkitError, match="offline"):
        download("http://127.0.0.1:9/corpus.txt", "0" * 40, tmp_path / "cache3")

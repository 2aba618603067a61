from hypothesis import given
from hypothesis import strategies as st

from rnnkit.data import load_corpus, time_machine_text
from rnnkit.text import Vocab, clean_lines, tokenize

SEED_TABLE = [(' ', 29927), ('e', 17838), ('t', 13515), ('a', 11704), ('i', 10138),
              ('n', 9917), ('o', 9758), ('s', 8486), ('h', 8257), ('r', 7674), ('d', 6337),
              ('l', 6146), ('m', 4043), ('u', 3805), ('c', 3424), ('f', 3354), ('w', 3225),
              ('g', 3075), ('y', 2679), ('p', 2427), ('b', 1897), ('v', 1295), ('k', 1087),
              ('x', 236), ('z', 144), ('j', 97), ('q', 95)]


def test_time_machine_char_vocab_matches_the_seed_table():
    ids, vocab = load_corpus()
    assert vocab.token_freqs == SEED_TABLE
    assert len(vocab) == 28
    assert len(ids) == 170_580
    assert vocab.idx_to_token[:3] == ["<unk>", " ", "e"]


def test_d2l_cleaning_keeps_letters_and_spaces_lowercased():
    lines = clean_lines("The Time-Machine, by H. G. Wells\r\n\n  [1895]  \n", "d2l")
    assert lines == ["the time machine by h g wells", "", ""]
    assert set("".join(clean_lines(time_machine_text(), "d2l"))) <= set(" abcdefghijklmnopqrstuvwxyz")


def test_clean_none_keeps_every_character():
    text = "Ünïcödé 时间机器\r\nline two 🙂\n"
    assert "".join(clean_lines(text, "none")) == text
    assert "".join(clean_lines(text, "lower")) == text.lower()


def test_word_tokens_of_the_time_machine():
    tokens = tokenize(clean_lines(time_machine_text(), "d2l"), "word")
    vocab = Vocab(tokens, min_freq=5)
    assert vocab.token_freqs[:3] == [("the", 2261), ("i", 1267), ("and", 1245)]
    assert vocab["the"] == 1 and vocab["notawordatall"] == 0


def test_vocab_indexing_reserved_tokens_and_min_freq():
    v = Vocab(list("abracadabra"), min_freq=2, reserved_tokens=["<pad>"])
    # a:5 b:2 r:2 c:1 d:1; ties keep first-seen order; c, d fall below min_freq
    assert v.idx_to_token == ["<unk>", "<pad>", "a", "b", "r"]
    assert v[["a", "z"]] == [2, 0] and v[("b",)] == [3]
    assert v.to_tokens(4) == "r" and v.to_tokens([2, 3]) == ["a", "b"]
    assert v.unk == 0


@given(st.lists(st.text(min_size=1, max_size=3), max_size=50))
def test_vocab_round_trips_every_seen_token(tokens):
    v = Vocab(tokens)
    assert v.to_tokens(v[tokens]) == tokens
    w = Vocab.from_dict(v.to_dict())
    assert w.idx_to_token == v.idx_to_token and w.token_freqs == v.token_freqs
    assert w[tokens] == v[tokens]


@given(st.text(max_size=200))
def test_char_round_trip_with_clean_none(text):
    tokens = tokenize(clean_lines(text, "none"), "char")
    v = Vocab(tokens)
    ids = [v[t] for line in tokens for t in line]
    assert "".join(v.to_tokens(ids)) == text

"""Both editions of the book, as their own source has them (tests/book/, written by
tests/book/extract.py): every PyTorch cell of the recurrent chapters runs in a real Jupyter
kernel with only the import line changed — the English edition's 1.0 API through
`from rnnkit.d2l import v1 as d2l`, the Chinese edition's chapter 9 through `from rnnkit import
d2l` — with the epochs cut short and a small English–French file planted for translation."""
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from kernels import result, run_two_at_a_time, selected

BOOK = Path(__file__).resolve().parent / "book"
BOOK_SHA1 = "94646ad1522d915e7b0f9296181140edcf86a4f5"          # the book's fra-eng.zip
IMPORT = {"en": "from rnnkit.d2l import v1 as d2l", "zh": "from rnnkit import d2l"}
SHORTER = {  # the sizes the tests run at: (what the book says, what runs here)
    "en": [("max_epochs=100", "max_epochs=2"), ("max_epochs=50", "max_epochs=2"),
           ("max_epochs=30", "max_epochs=2"), ("max_epochs=5", "max_epochs=2"),
           ("TimeMachine(batch_size=1024, num_steps=32)",   # 2 of its 10 training batches
            "TimeMachine(batch_size=1024, num_steps=32, num_train=2048, num_val=1024)")],
    "zh": [("num_epochs, lr = 500, 1", "num_epochs, lr = 2, 1"),
           ("lr, num_epochs, device = 0.005, 300,", "lr, num_epochs, device = 0.005, 10,")],
}
# the board's curves of the model a notebook trained last: the first and last point of each
REPORT = """import json as _json
_m = globals().get('model')
print('BOARD', _json.dumps({k: [float(v[0].y), float(v[-1].y)] for k, v in
      getattr(getattr(_m, 'board', None), 'data', {}).items() if v}))"""


def fra_eng_zip(pairs: int = 700) -> bytes:
    """A fra-eng.zip of the book's layout (fra-eng/fra.txt, 'english<TAB>french' lines)."""
    subjects = [("i", "je"), ("you", "tu"), ("he", "il"), ("she", "elle"), ("we", "nous")]
    states = [("am cold", "ai froid"), ("am tired", "suis fatigué"), ("am here", "suis là"),
              ("am lost", "suis perdu"), ("am calm", "suis calme"), ("am ready", "suis prêt")]
    lines = []
    for i in range(pairs):
        (en_s, fr_s), (en_v, fr_v) = subjects[i % 5], states[(i // 5) % 6]
        end = "!" if i % 7 == 0 else "."
        lines.append(f"{en_s.capitalize()} {en_v}{end}\t{fr_s.capitalize()}\u202f{fr_v}{end}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("fra-eng/fra.txt", "\n".join(lines) + "\n")
        z.writestr("fra-eng/_about.txt", "planted by the tests")
    return buffer.getvalue()


def section(edition: str, name: str, workdir: Path):
    """The section's notebook: a `tab` that selects PyTorch, the planted data, the cells."""
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    planted = fra_eng_zip()
    (workdir / "data" / "fra-eng.zip").write_bytes(planted)
    sha1 = hashlib.sha1(planted).hexdigest()
    prelude = ("class _Tab:\n    def selected(self, *names): return 'pytorch' in names\n"
               "    def interact_select(self, *names): pass\ntab = _Tab()\n"
               f"{IMPORT[edition]}\n" +
               (f"d2l.MTFraEng.SHA1 = {sha1!r}" if edition == "en" else
                f"d2l.DATA_HUB['fra-eng'] = (d2l.DATA_URL + 'fra-eng.zip', {sha1!r})"))
    cells = [prelude]
    for source in json.loads((BOOK / edition / f"{name}.json").read_text(encoding="utf-8")):
        source = source.replace("from d2l import torch as d2l", IMPORT[edition])
        source = source.replace(BOOK_SHA1, sha1)
        for book, here in SHORTER[edition]:
            source = source.replace(book, here)
        cells.append(source)
    cells.append(REPORT)
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


async def run_section(edition: str, name: str, tmp_path: Path):
    workdir = tmp_path / "book" / "notebook"
    workdir.mkdir(parents=True)
    nb = section(edition, name, tmp_path / "book")
    await NotebookClient(nb, timeout=600, kernel_name="python3").async_execute(cwd=str(workdir))
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") + "\n"
                   for o in outputs if o.get("output_type") in ("stream", "execute_result"))
    board = json.loads(text.split("BOARD ", 1)[1].splitlines()[0])
    return nb, text, board


@pytest.fixture(scope="module")
def sections(request, tmp_path_factory) -> dict:
    """Every selected section's notebook run: (edition, name) -> (nb, text, board)."""
    keys = selected(request, {
        "test_the_english_edition_runs_with_only_its_import_changed":
            lambda params: ("en", params["name"]),
        "test_the_chinese_editions_chapter_9_runs_with_only_its_import_changed":
            lambda params: ("zh", params["name"])})
    return run_two_at_a_time({key: (lambda key=key: run_section(
        *key, tmp_path_factory.mktemp(key[1]))) for key in keys})


EN_SECTIONS = ["sequence", "text-sequence", "language-model", "rnn", "rnn-scratch",
               "rnn-concise", "lstm", "gru", "deep-rnn", "bi-rnn",
               "machine-translation-and-dataset", "encoder-decoder", "seq2seq"]
TRAINED = {"sequence", "rnn-scratch", "rnn-concise", "lstm", "gru", "deep-rnn", "seq2seq"}


@pytest.mark.parametrize("name", EN_SECTIONS)
def test_the_english_edition_runs_with_only_its_import_changed(name, sections):
    nb, text, board = result(sections, ("en", name))
    if name in TRAINED:                      # each training cell draws inline, in place
        fits = [c for c in nb.cells if "trainer.fit(" in c.source]
        assert fits and all(any("image/png" in o.get("data", {}) for o in c.outputs)
                            for c in fits)
        train = [k for k in board if k.startswith("train_")]
        assert train, board
        for k in train:
            first, last = board[k]
            assert math.isfinite(last) and last < first, (k, board)
    if name == "rnn-scratch":                # prediction after the prefix, as the book shows
        assert "'it has" in text, text[-1000:]


@pytest.mark.parametrize("name", ["bi-rnn", "machine-translation-and-dataset",
                                  "encoder-decoder", "seq2seq"])
def test_the_chinese_editions_chapter_9_runs_with_only_its_import_changed(name, sections):
    nb, text, _ = result(sections, ("zh", name))
    if name in ("bi-rnn", "seq2seq"):
        trains = [c for c in nb.cells if ("train_ch8(" in c.source or "train_seq2seq(" in
                                           c.source) and "def " not in c.source]
        assert trains
        if name == "seq2seq":        # drawn inline every 10 epochs (bi-rnn runs 2 here)
            assert all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in trains)
        final = [float(line.split()[1].rstrip(",")) for line in text.splitlines()
                 if line.startswith(("perplexity ", "loss "))]
        # finite, and below where an untrained model starts: a uniform guess over the
        # vocabulary (perplexity 28; a loss of ln |V| nats, |V| ≥ 10 here)
        assert final and all(math.isfinite(x) for x in final), text[-2000:]
        assert final[-1] < (28 if name == "bi-rnn" else math.log(10)), text[-2000:]
    if name == "seq2seq":
        assert text.count("bleu") >= 4                     # the book's four translations


# ---- equality where the book defines the numbers ------------------------------------------
def _book_namespace(*sections: str) -> dict:
    """The English edition's own cells of `sections`, run here against a copy of v1 whose
    TimeMachine the book builds up itself (so the book's code, not rnnkit's, is measured)."""
    import types

    from rnnkit.d2l import v1
    proxy = types.ModuleType("d2l")
    proxy.__dict__.update({k: getattr(v1, k) for k in dir(v1) if not k.startswith("__")})
    ns = {"d2l": proxy, "tab": type("Tab", (), {"selected": lambda self, *n: "pytorch" in n})()}
    for name in sections:
        for source in json.loads((BOOK / "en" / f"{name}.json").read_text(encoding="utf-8")):
            code = "\n".join(line for line in source.splitlines() if not line.startswith("%"))
            code = code.replace("from d2l import torch as d2l", "")
            exec(compile(code, f"<book {name}>", "exec"), ns)
            if "TimeMachine" in ns and proxy.TimeMachine is v1.TimeMachine:
                proxy.TimeMachine = ns["TimeMachine"]       # the reader's class from here on
    return ns


def test_the_1_0_time_machine_has_the_books_vocabulary_and_batches(monkeypatch, tmp_path):
    import torch

    from rnnkit.d2l import v1
    monkeypatch.chdir(tmp_path)
    book = _book_namespace("text-sequence", "language-model")
    ours = v1.TimeMachine(batch_size=2, num_steps=10)
    theirs = book["d2l"].TimeMachine(batch_size=2, num_steps=10)
    assert ours.vocab.idx_to_token == theirs.vocab.idx_to_token
    assert ours.vocab.idx_to_token[:3] == [" ", "<unk>", "a"] and len(ours.vocab) == 28
    assert torch.equal(ours.X, theirs.X) and torch.equal(ours.Y, theirs.Y)
    for train in (True, False):
        torch.manual_seed(0)
        a = next(iter(ours.get_dataloader(train)))
        torch.manual_seed(0)
        b = next(iter(theirs.get_dataloader(train)))
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_same_model_through_both_apis_gives_the_same_step():
    """v1's RNNScratch + RNNLMScratch and rnnkit's RNNScratch, same weights, same batch: the
    same loss, gradients and clipped SGD update (to 1e-5)."""
    import torch

    from rnnkit.d2l import v1
    from rnnkit.models import RNNScratch
    from rnnkit.train import clip_gradients
    torch.manual_seed(0)
    V, H, B, T = 28, 32, 16, 35
    book = v1.RNNLMScratch(v1.RNNScratch(num_inputs=V, num_hiddens=H), vocab_size=V, lr=1)
    ours = RNNScratch(V, H, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for name in ("W_xh", "W_hh", "b_h"):
            getattr(ours, name).copy_(getattr(book.rnn, name) * 5)   # weights that matter
        ours.W_hq.copy_(book.W_hq * 5)
        ours.b_q.copy_(book.b_q)
        for name in ("W_xh", "W_hh", "b_h"):
            getattr(book.rnn, name).copy_(getattr(ours, name))
        book.W_hq.copy_(ours.W_hq)
    X, Y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    loss_book = book.loss(book(X), Y)
    logits, _ = ours(X, ours.begin_state(B))                           # (T, B, V)
    loss_ours = torch.nn.functional.cross_entropy(logits.reshape(-1, V), Y.T.reshape(-1))
    assert torch.allclose(loss_book, loss_ours, atol=1e-6)
    loss_book.backward()
    loss_ours.backward()
    pairs = [(book.rnn.W_xh, ours.W_xh), (book.rnn.W_hh, ours.W_hh), (book.rnn.b_h, ours.b_h),
             (book.W_hq, ours.W_hq), (book.b_q, ours.b_q)]
    for a, b in pairs:
        assert torch.allclose(a.grad, b.grad, atol=1e-5), (a.shape, (a.grad - b.grad).abs().max())
    trainer = v1.Trainer(max_epochs=1, gradient_clip_val=0.1)
    trainer.clip_gradients(0.1, book)
    clip_gradients(ours.parameters(), 0.1)
    for opt in (book.configure_optimizers(), torch.optim.SGD(ours.parameters(), lr=1)):
        opt.step()
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-5)


def test_bleu_gives_the_worked_values():
    from rnnkit import d2l
    from rnnkit.d2l import v1
    assert v1.bleu is d2l.bleu
    assert d2l.bleu("il est malade .", "il est malade .", 2) == 1.0
    # p1 = 3/4, p2 = 2/3: (3/4)^(1/2) (2/3)^(1/4); no brevity penalty (same length)
    assert math.isclose(d2l.bleu("a b c d", "a b c e", 2), 0.75 ** 0.5 * (2 / 3) ** 0.25)
    # a short prediction pays exp(1 - 4/2); its unigrams and bigram all match
    assert math.isclose(d2l.bleu("a b", "a b c d", 2), math.exp(1 - 4 / 2))
    assert d2l.bleu("x y", "a b", 2) == 0.0


def test_sequence_mask_and_the_masked_loss_on_the_books_examples():
    import torch

    from rnnkit import d2l
    X = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert d2l.sequence_mask(X, torch.tensor([1, 2])).tolist() == [[1, 0, 0], [4, 5, 0]]
    X = torch.ones(2, 3, 4)
    assert d2l.sequence_mask(X, torch.tensor([1, 2]), value=-1)[0, 1].tolist() == [-1] * 4
    loss = d2l.MaskedSoftmaxCELoss()
    got = loss(torch.ones(3, 4, 10), torch.ones((3, 4), dtype=torch.long), torch.tensor([4, 2, 0]))
    assert torch.allclose(got, torch.tensor([2.3026, 1.1513, 0.0]), atol=1e-4)


def test_fra_eng_offline_is_one_clear_error_and_a_planted_copy_is_read(tmp_path, monkeypatch):
    import urllib.request

    from rnnkit import d2l
    from rnnkit.d2l import v1

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")                   # the book's root is ../data
    with pytest.raises(d2l.DownloadError) as e:
        v1.MTFraEng(batch_size=3)
    message = str(e.value)
    assert "fra-eng.zip" in message and "http://d2l-data.s3-accelerate.amazonaws.com/" \
        "fra-eng.zip" in message and "copy the file to" in message and "\n" not in message
    with pytest.raises(d2l.DownloadError, match="'fra-eng'"):
        d2l.read_data_nmt()
    planted = fra_eng_zip()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fra-eng.zip").write_bytes(planted)
    sha1 = hashlib.sha1(planted).hexdigest()
    monkeypatch.setattr(v1.MTFraEng, "SHA1", sha1)
    data = v1.MTFraEng(batch_size=3)
    src, tgt, src_valid_len, label = next(iter(data.train_dataloader()))
    assert src.shape == (3, 9) and tgt.shape == label.shape == (3, 9)
    assert data.src_vocab["<eos>"] != data.src_vocab.unk and "i" in data.src_vocab.idx_to_token
    monkeypatch.setitem(d2l.DATA_HUB, "fra-eng", (d2l.DATA_URL + "fra-eng.zip", sha1))
    text = d2l.preprocess_nmt(d2l.read_data_nmt())
    assert text.startswith("i am cold !\tje ai froid !")
    it, src_vocab, tgt_vocab = d2l.load_data_nmt(batch_size=2, num_steps=8)
    X, X_valid_len, Y, Y_valid_len = next(iter(it))
    assert X.shape == Y.shape == (2, 8) and src_vocab["<pad>"] == 1


def test_the_english_notebooks_run_in_a_real_kernel_with_inline_plots(tmp_path):
    root = Path(__file__).resolve().parent.parent / "notebooks"
    for name in ("en_rnn_scratch", "en_rnn_concise"):
        nb = nbformat.read(root / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        source = "\n".join(c.source for c in code)
        assert "from rnnkit.d2l import v1 as d2l" in source and "tab." not in source
        for cell in code:
            for book, here in SHORTER["en"]:
                cell.source = cell.source.replace(book, here)
        NotebookClient(nb, timeout=600, kernel_name="python3").execute(cwd=str(tmp_path))
        fits = [c for c in code if "trainer.fit(" in c.source]
        assert fits and all(sum("image/png" in o.get("data", {}) for o in c.outputs) == 1
                            for c in fits)                  # one image, updated in place
    assert not list(tmp_path.glob("*.png"))                 # inline, not files, in a notebook


def test_the_time_machine_of_the_1_0_api_is_offline(tmp_path, monkeypatch):
    import urllib.request

    from rnnkit.d2l import v1

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    path = v1.download(v1.DATA_URL + "timemachine.txt", str(tmp_path),
                       "090b5e7e70c295757f55df93cb0a180b9691891a")
    assert hashlib.sha1(Path(path).read_bytes()).hexdigest() == \
        "090b5e7e70c295757f55df93cb0a180b9691891a"


def test_a_download_without_a_checksum_takes_the_file_there(tmp_path, monkeypatch):
    import urllib.request

    from rnnkit.d2l import v1

    class Answer:
        def __init__(self, *args, **kwargs): pass
        def __enter__(self): return self
        def __exit__(self, *args): pass
        def read(self): return b"served"
    monkeypatch.setattr(urllib.request, "urlopen", Answer)
    path = v1.download("http://example.invalid/x.txt", str(tmp_path))   # no sha1: any file
    assert Path(path).read_bytes() == b"served"
    (tmp_path / "x.txt").write_bytes(b"mine")
    assert Path(v1.download("http://example.invalid/x.txt", str(tmp_path))).read_bytes() == b"mine"


def test_save_hyperparameters_reads_the_callers_arguments():
    from rnnkit.d2l import v1

    class B(v1.HyperParameters):
        def __init__(self, a, b=2, _private=3, skip=4):
            self.save_hyperparameters(ignore=["skip"])

    b = B(1)
    assert b.hparams == {"a": 1, "b": 2} and (b.a, b.b) == (1, 2)
    assert not hasattr(b, "skip") and not hasattr(b, "_private")


def test_a_classifier_scores_accuracy_and_cross_entropy_over_all_positions():
    import torch

    from rnnkit.d2l import v1
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]]])   # (B, T, C)
    labels = torch.tensor([[0, 0], [1, 1]])
    model = v1.Classifier()
    assert float(model.accuracy(logits, labels)) == 0.5
    assert model.accuracy(logits, labels, averaged=False).tolist() == [1.0, 0.0, 1.0, 0.0]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1))
    assert torch.allclose(model.loss(logits, labels), expected)


def test_a_script_gets_the_progress_as_a_png_and_keeps_its_backend(tmp_path, monkeypatch):
    import matplotlib

    from rnnkit.d2l import v1
    monkeypatch.chdir(tmp_path)
    backend = matplotlib.get_backend()
    data = v1.TimeMachine(batch_size=64, num_steps=16, num_train=512, num_val=128)
    model = v1.RNNLMScratch(v1.RNNScratch(len(data.vocab), 16), len(data.vocab), lr=1)
    v1.Trainer(max_epochs=2, gradient_clip_val=1).fit(model, data)
    assert (tmp_path / "progress.png").stat().st_size > 1000
    assert matplotlib.get_backend() == backend
    first, last = model.board.data["train_ppl"][0].y, model.board.data["train_ppl"][-1].y
    assert last < first


@pytest.mark.parametrize("edition", ["en", "zh"])
def test_every_library_name_the_chapters_use_is_there(edition):
    import importlib
    import re
    module = importlib.import_module("rnnkit.d2l.v1" if edition == "en" else "rnnkit.d2l")
    from book.extract import for_pytorch     # the PyTorch rendering: other tabs' code goes
    used = {name for path in (BOOK / edition).glob("*.json")
            for cell in json.loads(path.read_text(encoding="utf-8"))
            for name in re.findall(r"\bd2l\.(\w+)", for_pytorch(cell))}
    assert len(used) > 20
    assert [name for name in sorted(used) if not hasattr(module, name)] == []

"""The book where its readers run it: the chapters as notebooks in a real Jupyter kernel
(nbclient + ipykernel), the d2l library's aliases and helpers, plots inline, data offline."""
import hashlib
import json
import urllib.request
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from kernels import result, run_two_at_a_time, selected
from rnnkit import d2l

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


async def _execute(nb, cwd: Path):
    await NotebookClient(nb, timeout=300, kernel_name="python3").async_execute(cwd=str(cwd))
    return nb


def _chapter(name: str):
    """The shipped notebook, checked to be stored clean and to import rnnkit, epochs cut."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    source = "\n".join(c.source for c in code)
    assert "from rnnkit import d2l" in source and "from d2l import" not in source
    for cell in code:                                      # the epochs cut short
        cell.source = cell.source.replace("num_epochs, lr = 500, 1", "num_epochs, lr = 20, 1")
    return nb


@pytest.fixture(scope="module")
def kernels_ran(request, tmp_path_factory) -> dict:
    """The selected notebooks of this file run: name → (the executed notebook, its folder)."""
    names = selected(request, {
        "test_the_chapter_notebooks_run_in_a_real_kernel_with_inline_plots":
            lambda params: params["name"],
        "test_the_books_source_form_and_the_next_chapters_run_in_a_kernel":
            lambda params: "source form"})

    async def run(name):
        cwd = tmp_path_factory.mktemp(name.replace(" ", "_"))
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c)
                                             for c in BOOK_SOURCE_FORM]) \
            if name == "source form" else _chapter(name)
        return await _execute(nb, cwd), cwd
    return run_two_at_a_time({name: (lambda name=name: run(name)) for name in names})


def _outputs(cell, kind: str) -> list:
    return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


def _text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", ["rnn_scratch", "rnn_concise"])
def test_the_chapter_notebooks_run_in_a_real_kernel_with_inline_plots(name, kernels_ran):
    nb, cwd = result(kernels_ran, name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = _text(nb)
    assert text.count("tokens/sec on cpu") == 2               # each notebook trains twice
    trains = [c for c in code if "train_ch8(" in c.source and "def " not in c.source]
    assert trains and all(len(_outputs(c, "image/png")) == 1 for c in trains)  # redrawn in place
    assert not list(cwd.glob("*.png"))                     # inline, not files, in a notebook


BOOK_SOURCE_FORM = [
    "%matplotlib inline\nimport matplotlib\nimport torch\nfrom torch import nn\n"
    "from torch.nn import functional as F\nfrom rnnkit import d2l\nbackend = matplotlib.get_backend()",
    # the data hub, offline
    "d2l.DATA_HUB['time_machine'] = (d2l.DATA_URL + 'timemachine.txt',\n"
    "                                '090b5e7e70c295757f55df93cb0a180b9691891a')\n"
    "with open(d2l.download('time_machine'), 'r') as f:\n    lines = f.readlines()\nlen(lines)",
    # the aliases as the book's source writes them
    "X = d2l.reshape(d2l.arange(10), (2, 5))\nprint(F.one_hot(X.T, 28).shape)\n"
    "H = d2l.zeros((2, 4))\nprint(d2l.concat((H, d2l.ones((1, 4))), 0).shape, d2l.size(X))\n"
    "print(d2l.reduce_sum(d2l.astype(X, d2l.float32)), d2l.normal(0, 0.01, (3,)).shape)",
    "freqs = [100, 50, 30, 10, 5, 2, 1]\n"
    "d2l.plot(freqs, xlabel='token: x', ylabel='frequency: n(x)', xscale='log', yscale='log')",
    "batch_size, num_steps = 32, 35\n"
    "train_iter, vocab = d2l.load_data_time_machine(batch_size, num_steps)",
    # the GRU chapter's from-scratch model, in the book's shape
    "def get_params(vocab_size, num_hiddens, device):\n"
    "    num_inputs = num_outputs = vocab_size\n"
    "    def normal(shape):\n        return torch.randn(size=shape, device=device) * 0.01\n"
    "    def three():\n        return (normal((num_inputs, num_hiddens)),\n"
    "                normal((num_hiddens, num_hiddens)), torch.zeros(num_hiddens, device=device))\n"
    "    W_xz, W_hz, b_z = three()\n    W_xr, W_hr, b_r = three()\n    W_xh, W_hh, b_h = three()\n"
    "    W_hq = normal((num_hiddens, num_outputs))\n    b_q = torch.zeros(num_outputs, device=device)\n"
    "    params = [W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q]\n"
    "    for param in params:\n        param.requires_grad_(True)\n    return params\n\n"
    "def init_gru_state(batch_size, num_hiddens, device):\n"
    "    return (torch.zeros((batch_size, num_hiddens), device=device), )\n\n"
    "def gru(inputs, state, params):\n"
    "    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params\n"
    "    H, = state\n    outputs = []\n    for X in inputs:\n"
    "        Z = torch.sigmoid((X @ W_xz) + (H @ W_hz) + b_z)\n"
    "        R = torch.sigmoid((X @ W_xr) + (H @ W_hr) + b_r)\n"
    "        H_tilda = torch.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)\n"
    "        H = Z * H + (1 - Z) * H_tilda\n        outputs.append(H @ W_hq + b_q)\n"
    "    return torch.cat(outputs, dim=0), (H,)",
    "vocab_size, num_hiddens, device = len(vocab), 32, d2l.try_gpu()\n"
    "num_epochs, lr = 20, 1\n"
    "model = d2l.RNNModelScratch(len(vocab), num_hiddens, device, get_params, init_gru_state, gru)\n"
    "d2l.train_ch8(model, train_iter, vocab, lr, num_epochs, device)",
    "num_inputs = vocab_size\ngru_layer = nn.GRU(num_inputs, num_hiddens)\n"
    "model = d2l.RNNModel(gru_layer, len(vocab))\nmodel = model.to(device)\n"
    "d2l.train_ch8(model, train_iter, vocab, lr, num_epochs, device)",
    "lstm_layer = nn.LSTM(num_inputs, num_hiddens)\nmodel = d2l.RNNModel(lstm_layer, len(vocab))\n"
    "model = model.to(device)\nd2l.train_ch8(model, train_iter, vocab, lr, num_epochs, device)",
    "num_layers = 2\nlstm_layer = nn.LSTM(num_inputs, num_hiddens, num_layers)\n"
    "model = d2l.RNNModel(lstm_layer, len(vocab))\nmodel = model.to(device)\n"
    "d2l.train_ch8(model, train_iter, vocab, lr * 2, num_epochs, device)",
    "assert matplotlib.get_backend() == backend, (backend, matplotlib.get_backend())",
]


def test_the_books_source_form_and_the_next_chapters_run_in_a_kernel(kernels_ran):
    nb, _ = result(kernels_ran, "source form")   # raises CellExecutionError on any failure
    cells = nb.cells
    assert cells[1].outputs[0]["data"]["text/plain"] == "3221"
    assert "torch.Size([5, 2, 28])" in _text(nb) and "torch.Size([3, 4]) 10" in _text(nb)
    assert _outputs(cells[3], "image/png") or _outputs(cells[3], "image/svg+xml")
    for cell in cells[6:10]:                     # GRU scratch, nn.GRU, nn.LSTM, 2-layer LSTM
        assert len(_outputs(cell, "image/png")) == 1
        assert "tokens/sec on cpu" in "".join(o.get("text", "") for o in cell.outputs)


def test_aliases_have_the_d2l_librarys_semantics():
    x = torch.arange(12).reshape(3, 4)
    assert torch.equal(d2l.reshape(d2l.arange(10), (2, 5)), torch.arange(10).reshape(2, 5))
    assert d2l.size(x) == 12 and d2l.numpy(x).shape == (3, 4)
    assert d2l.astype(x, torch.float32).dtype == torch.float32
    assert torch.equal(d2l.transpose(x), x.t()) and torch.equal(d2l.reduce_sum(x, dim=0), x.sum(0))
    assert torch.equal(d2l.argmax(x, dim=1), torch.full((3,), 3))
    assert float(d2l.reduce_mean(d2l.astype(x, d2l.float32))) == 5.5
    assert d2l.to(x, torch.float64).dtype == torch.float64
    assert d2l.concat((x, x), 1).shape == (3, 8) and d2l.stack((x, x)).shape == (2, 3, 4)
    assert d2l.normal(0, 1, (2, 3)).shape == (2, 3) and d2l.rand(2).shape == (2,)
    assert d2l.zeros((2, 2)).sum() == 0 and d2l.ones(3).sum() == 3 and d2l.eye(3).trace() == 3
    assert d2l.int32 is torch.int32 and d2l.float32 is torch.float32
    assert torch.allclose(d2l.tanh(d2l.tensor([0.5])), torch.tanh(torch.tensor([0.5])))
    assert d2l.linspace(0, 1, 5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.equal(d2l.matmul(d2l.eye(2), d2l.ones(2, 2)), torch.ones(2, 2))
    for name in ("meshgrid", "sin", "sinh", "cos", "cosh", "exp", "log", "randn", "abs"):
        assert getattr(d2l, name) is getattr(torch, name)


def test_the_time_machine_downloads_offline_from_the_bundled_copy(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setitem(d2l.DATA_HUB, "time_machine", (
        d2l.DATA_URL + "timemachine.txt", "090b5e7e70c295757f55df93cb0a180b9691891a"))
    path = d2l.download("time_machine", cache_dir=str(tmp_path))
    assert hashlib.sha1(Path(path).read_bytes()).hexdigest() == d2l.DATA_HUB["time_machine"][1]


def test_unknown_names_and_offline_misses_fail_with_one_clear_message(tmp_path, monkeypatch):
    with pytest.raises(d2l.DownloadError, match="'nope' is not in d2l.DATA_HUB"):
        d2l.download("nope")
    monkeypatch.setitem(d2l.DATA_HUB, "elsewhere", ("http://127.0.0.1:9/elsewhere.txt", "0" * 40))
    with pytest.raises(d2l.DownloadError) as e:
        d2l.download("elsewhere", cache_dir=str(tmp_path))
    message = str(e.value)
    assert "'elsewhere'" in message and "http://127.0.0.1:9/elsewhere.txt" in message
    assert "copy the file to" in message and "\n" not in message


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path

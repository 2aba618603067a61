"""The book's names with the book's signatures, so the code of chapters 8 and 9 (text
preprocessing through deep RNNs) runs after only `from d2l import torch as d2l` →
`from rnnkit import d2l`, in a script or in Jupyter (where the plots show inline).

Like the book, these use Python's and torch's global random generators (seed them with
`random.seed` / `torch.manual_seed`); the rest of rnnkit takes generators explicitly.
Each function is the book's own code or a thin adapter over the modules it names.
"""
from __future__ import annotations

import io
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data as _data
from .. import generate as _generate
from .. import text as _text
from ..text import Vocab, count_corpus, tokenize  # noqa: F401  (the book's names)

from ..errors import RnnkitError

__all__ = ["read_time_machine", "tokenize", "Vocab", "count_corpus", "load_corpus_time_machine",
           "seq_data_iter_random", "seq_data_iter_sequential", "SeqDataLoader",
           "load_data_time_machine", "get_params", "init_rnn_state", "rnn", "RNNModelScratch",
           "predict_ch8", "grad_clipping", "sgd", "train_epoch_ch8", "train_ch8", "RNNModel",
           "try_gpu", "try_all_gpus", "Timer", "Accumulator", "Animator", "plot", "set_figsize",
           "use_svg_display", "set_axes", "DATA_HUB", "DATA_URL", "download", "load_array",
           "evaluate_loss", "linreg", "squared_loss", "download_extract", "extract",
           # chapter 9 (d2l-zh): bidirectional RNNs through beam search (rnnkit/d2l/seq2seq.py)
           "read_data_nmt", "preprocess_nmt", "tokenize_nmt", "show_list_len_pair_hist",
           "truncate_pad", "build_array_nmt", "load_data_nmt", "Encoder", "Decoder",
           "EncoderDecoder", "Seq2SeqEncoder", "sequence_mask", "MaskedSoftmaxCELoss",
           "train_seq2seq", "predict_seq2seq", "bleu"]


# ---- text and data (rnnkit.text, rnnkit.data) --------------------------------------------
def read_time_machine() -> list[str]:
    """The Time Machine as cleaned lines: letters and spaces only, lower case."""
    return _text.clean_lines(_data.time_machine_text(), "d2l")


def load_corpus_time_machine(max_tokens: int = -1) -> tuple[list[int], Vocab]:
    """Character ids of The Time Machine (a list, as the book) and its vocabulary."""
    tokens = tokenize(read_time_machine(), "char")
    vocab = Vocab(tokens)
    corpus = [vocab[token] for line in tokens for token in line]
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def seq_data_iter_random(corpus, batch_size: int, num_steps: int):
    """Random sampling (the book's), drawing from Python's global `random`."""
    yield from _data.random_batches(corpus, batch_size, num_steps, random)


def seq_data_iter_sequential(corpus, batch_size: int, num_steps: int):
    """Sequential partitioning (the book's), drawing from Python's global `random`."""
    yield from _data.sequential_batches(corpus, batch_size, num_steps, random)


class SeqDataLoader:
    """An iterable of (X, Y) minibatches over The Time Machine."""

    def __init__(self, batch_size, num_steps, use_random_iter, max_tokens):
        self.data_iter_fn = seq_data_iter_random if use_random_iter else seq_data_iter_sequential
        self.corpus, self.vocab = load_corpus_time_machine(max_tokens)
        self.batch_size, self.num_steps = batch_size, num_steps

    def __iter__(self):
        return self.data_iter_fn(self.corpus, self.batch_size, self.num_steps)


def load_data_time_machine(batch_size, num_steps, use_random_iter=False, max_tokens=10000):
    """(iterator of minibatches, vocab) — the book's entry point."""
    data_iter = SeqDataLoader(batch_size, num_steps, use_random_iter, max_tokens)
    return data_iter, data_iter.vocab


# ---- the model from scratch (rnnkit.models.RNNScratch is the module form) -----------------
def get_params(vocab_size, num_hiddens, device):
    num_inputs = num_outputs = vocab_size

    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01

    W_xh = normal((num_inputs, num_hiddens))
    W_hh = normal((num_hiddens, num_hiddens))
    b_h = torch.zeros(num_hiddens, device=device)
    W_hq = normal((num_hiddens, num_outputs))
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xh, W_hh, b_h, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params


def init_rnn_state(batch_size, num_hiddens, device):
    return (torch.zeros((batch_size, num_hiddens), device=device),)


def rnn(inputs, state, params):
    """inputs (T, B, V) one-hot → (outputs (T·B, V), (H,))."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    H, = state
    outputs = []
    for X in inputs:                                                   # (B, V)
        H = torch.tanh(torch.mm(X, W_xh) + torch.mm(H, W_hh) + b_h)    # (B, H)
        Y = torch.mm(H, W_hq) + b_q                                    # (B, V)
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


class RNNModelScratch:
    """An RNN model from scratch: `net(X, state)` → (logits (T·B, V), state)."""

    def __init__(self, vocab_size, num_hiddens, device, get_params, init_state, forward_fn):
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.params = get_params(vocab_size, num_hiddens, device)
        self.init_state, self.forward_fn = init_state, forward_fn

    def __call__(self, X, state):
        X = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        return self.forward_fn(X, state, self.params)

    def begin_state(self, batch_size, device):
        return self.init_state(batch_size, self.num_hiddens, device)


class RNNModel(nn.Module):
    """The book's concise model: a `torch.nn.RNN`/`GRU`/`LSTM` layer and a linear output layer."""

    def __init__(self, rnn_layer, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        self.num_directions = 2 if self.rnn.bidirectional else 1
        self.linear = nn.Linear(self.num_hiddens * self.num_directions, self.vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, state = self.rnn(X, state)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state

    def begin_state(self, device, batch_size=1):
        shape = (self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens)
        if not isinstance(self.rnn, nn.LSTM):
            return torch.zeros(shape, device=device)
        return (torch.zeros(shape, device=device), torch.zeros(shape, device=device))


# ---- prediction (rnnkit.generate) --------------------------------------------------------
def _fast_stepper(net, device):
    """rnnkit's inference path where the net is one it can read, else None (book's loop)."""
    if torch.device(device).type != "cpu":
        return None
    if isinstance(net, RNNModelScratch) and net.forward_fn is rnn:
        W_xh, W_hh, b_h, W_hq, b_q = net.params
        return _generate.ScratchStepper(W_xh, W_hh, b_h, W_hq, b_q, torch.zeros(1, W_hh.shape[0]))
    layer = getattr(net, "rnn", None)
    if (isinstance(net, RNNModel) and type(layer) is nn.RNN and layer.num_layers == 1
            and layer.nonlinearity == "tanh" and not layer.bidirectional and layer.bias):
        return _generate.ScratchStepper(
            layer.weight_ih_l0.T, layer.weight_hh_l0.T, layer.bias_ih_l0 + layer.bias_hh_l0,
            net.linear.weight.T, net.linear.bias, torch.zeros(1, layer.hidden_size))
    return None


def predict_ch8_loop(prefix, num_preds, net, vocab, device):
    """The book's predict_ch8 loop, verbatim: one forward call and one new tensor per step."""
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]

    def get_input():
        return torch.tensor([outputs[-1]], device=device).reshape((1, 1))

    for y in prefix[1:]:  # warm-up
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return "".join([vocab.idx_to_token[i] for i in outputs])


def predict_ch8(prefix, num_preds, net, vocab, device):
    """Warm up on `prefix`, then append `num_preds` greedy characters (same text as the book's
    loop; rnnkit's inference path where it recognises the net, else the loop without autograd)."""
    step = _fast_stepper(net, device)
    if step is not None:
        ids = [vocab[c] for c in prefix]
        new = _generate.generate_with(step, ids, num_preds)[0].tolist()
        return "".join([vocab.idx_to_token[i] for i in ids + new])
    with torch.no_grad():
        return predict_ch8_loop(prefix, num_preds, net, vocab, device)


# ---- training (rnnkit.train) -------------------------------------------------------------
def grad_clipping(net, theta):
    """Scale all gradients by θ/‖g‖ when their global norm ‖g‖ exceeds θ."""
    if isinstance(net, nn.Module):
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = net.params
    norm = torch.sqrt(sum(torch.sum((p.grad ** 2)) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm


def sgd(params, lr, batch_size):
    """Minibatch stochastic gradient descent."""
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def train_epoch_ch8(net, train_iter, loss, updater, device, use_random_iter):
    """One epoch; returns (perplexity, tokens per second)."""
    state, timer = None, Timer()
    metric = Accumulator(2)  # sum of training loss, number of tokens
    for X, Y in train_iter:
        if state is None or use_random_iter:
            state = net.begin_state(batch_size=X.shape[0], device=device)
        else:
            if isinstance(net, nn.Module) and not isinstance(state, tuple):
                state.detach_()
            else:
                for s in state:
                    s.detach_()
        y = Y.T.reshape(-1)
        X, y = X.to(device), y.to(device)
        y_hat, state = net(X, state)
        l = loss(y_hat, y.long()).mean()
        if isinstance(updater, torch.optim.Optimizer):
            updater.zero_grad()
            l.backward()
            grad_clipping(net, 1)
            updater.step()
        else:
            l.backward()
            grad_clipping(net, 1)
            updater(batch_size=1)  # the mean was already taken
        metric.add(l * y.numel(), y.numel())
    return math.exp(metric[0] / metric[1]), metric[1] / timer.stop()


def train_ch8(net, train_iter, vocab, lr, num_epochs, device, use_random_iter=False, *,
              plot_path=None):
    """Train, printing a sample every 10 epochs; the perplexity curve is drawn inline in
    Jupyter (as the book's), or to `plot_path` (default train_ch8.png) in a script."""
    loss = nn.CrossEntropyLoss()
    animator = Animator(xlabel="epoch", ylabel="perplexity", legend=["train"],
                        xlim=[10, num_epochs],
                        path=plot_path or (None if in_notebook() else "train_ch8.png"))
    if isinstance(net, nn.Module):
        updater = torch.optim.SGD(net.parameters(), lr)
    else:
        def updater(batch_size):
            return sgd(net.params, lr, batch_size)

    def predict(prefix):
        return predict_ch8(prefix, 50, net, vocab, device)

    for epoch in range(num_epochs):
        ppl, speed = train_epoch_ch8(net, train_iter, loss, updater, device, use_random_iter)
        if (epoch + 1) % 10 == 0:
            print(predict("time traveller"))
            animator.add(epoch + 1, [ppl])
    print(f"perplexity {ppl:.1f}, {speed:.1f} tokens/sec on {str(device)}")
    print(predict("time traveller"))
    print(predict("traveller"))


def try_gpu(i=0):
    """The i-th GPU if there is one, else the CPU."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f"cuda:{i}")
    return torch.device("cpu")


def try_all_gpus():
    """Every GPU, or [cpu] when there is none."""
    return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] or \
        [torch.device("cpu")]


# ---- the book's data hub (rnnkit.data) ----------------------------------------------------
DATA_HUB: dict[str, tuple[str, str]] = {}
DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"


class DownloadError(RnnkitError):
    """A file of DATA_HUB that could not be had: the message says which, from where, and
    what to do."""


def fetch(url: str, sha1: str | None, folder: str) -> str:
    """The local path of `url` in `folder`, downloaded once and sha1-checked (both editions'
    `download` come here). The Time Machine (the book's sha1) is rnnkit's own copy: offline."""
    if sha1 == _data.TIME_MACHINE_SHA1:
        bundled = Path(_data.__file__).parent / "data" / "timemachine.txt"
        if bundled.is_file():
            return str(bundled)
    try:
        return str(_data.download(url, sha1, folder, timeout=15))
    except RnnkitError as e:
        raise DownloadError(f"cannot get {url.rstrip('/').split('/')[-1]!r}: {e}") from None


def download(name, cache_dir=os.path.join("..", "data")):
    """The local path of `DATA_HUB[name]`, downloaded into `cache_dir` once and sha1-checked."""
    if name not in DATA_HUB:
        raise DownloadError(f"{name!r} is not in d2l.DATA_HUB (it has {sorted(DATA_HUB)}); "
                            f"register it first: d2l.DATA_HUB[{name!r}] = (url, sha1)")
    url, sha1 = DATA_HUB[name]
    try:
        return fetch(url, sha1, cache_dir)
    except DownloadError as e:
        raise DownloadError(str(e).replace(f"cannot get {url.split('/')[-1]!r}",
                                           f"cannot get {name!r}", 1)) from None


def extract(filename, folder=None) -> str:
    """Unpack a .zip or .tar(.gz) file next to it (or into `folder`); returns where."""
    import tarfile
    import zipfile
    base = folder or os.path.dirname(filename)
    if filename.endswith(".zip"):
        with zipfile.ZipFile(filename) as z:
            z.extractall(base)
    elif filename.endswith((".tar", ".gz", ".tgz")):
        with tarfile.open(filename) as t:    # no member may land outside `base`
            t.extractall(base, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    else:
        raise DownloadError(f"{filename}: only .zip and .tar files can be extracted")
    return base


def download_extract(name, folder=None):
    """`download` a .zip/.tar of DATA_HUB and unpack it; returns its folder (or `folder` in it)."""
    fname = download(name)
    base = extract(fname)
    return os.path.join(base, folder) if folder else os.path.splitext(fname)[0]


def load_array(data_arrays, batch_size, is_train=True):
    """A DataLoader over tensors, shuffled for training."""
    dataset = torch.utils.data.TensorDataset(*data_arrays)
    return torch.utils.data.DataLoader(dataset, batch_size, shuffle=is_train)


def linreg(X, w, b):
    """The linear regression model X w + b."""
    return torch.matmul(X, w) + b


def squared_loss(y_hat, y):
    """Half the squared error, per example."""
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def evaluate_loss(net, data_iter, loss):
    """Mean loss of `net` over a data iterator."""
    metric = Accumulator(2)  # sum of losses, number of examples
    for X, y in data_iter:
        out = net(X)
        y = y.reshape(out.shape)
        l = loss(out, y)
        metric.add(l.sum(), l.numel())
    return metric[0] / metric[1]


# ---- the book's small helpers ------------------------------------------------------------
class Timer:
    def __init__(self):
        self.times = []
        self.start()

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def avg(self):
        return sum(self.times) / len(self.times)

    def sum(self):
        return sum(self.times)

    def cumsum(self):
        return np.array(self.times).cumsum().tolist()


class Accumulator:
    """Sums over n variables."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b.detach() if torch.is_tensor(b) else b)
                     for a, b in zip(self.data, args)]

    def reset(self):
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]




# ---- plots: inline in Jupyter, PNG files in scripts; the user's backend is never changed --
def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def use_svg_display():
    """Show pyplot figures as SVG in Jupyter (the book's look); nothing outside Jupyter."""
    if in_notebook():
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("svg")


def set_figsize(figsize=(3.5, 2.5)):
    """The size of the figures `plot` draws."""
    use_svg_display()
    _pyplot().rcParams["figure.figsize"] = figsize


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend):
    """Label, scale and limit a matplotlib axes, with a legend and a grid."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    axes.set_xlim(xlim)
    axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def plot(X, Y=None, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None,
         xscale="linear", yscale="linear", fmts=("-", "m--", "g-.", "r:"), figsize=(3.5, 2.5),
         axes=None):
    """Plot one or several series on pyplot's current axes (shown inline in Jupyter)."""
    set_figsize(figsize)
    axes = axes if axes else _pyplot().gca()

    def one_axis(v):
        return (hasattr(v, "ndim") and v.ndim == 1) or (
            isinstance(v, list) and not hasattr(v[0], "__len__"))

    if one_axis(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif one_axis(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts):
        axes.plot(*((x, y, fmt) if len(x) else (y, fmt)))
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend or [])


def _pyplot():
    import matplotlib.pyplot as plt
    return plt


def __getattr__(name):
    if name == "plt":            # d2l.plt, imported on first use
        return _pyplot()
    raise AttributeError(f"module 'rnnkit.d2l' has no attribute {name!r}")


class Animator:
    """Draws points as they arrive, like the book's: redrawn in place inline in Jupyter, and
    into the PNG file `path` in a script (default animator.png)."""

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None,
                 xscale="linear", yscale="linear", fmts=("-", "m--", "g-.", "r:"), nrows=1,
                 ncols=1, figsize=(3.5, 2.5), path=None):
        from matplotlib.figure import Figure       # not pyplot: no backend is touched
        self.fig = Figure(figsize=figsize)
        axes = self.fig.subplots(nrows, ncols)
        self.axes = [axes] if nrows * ncols == 1 else list(axes.flat)
        if xlim is not None and xlim[0] >= xlim[1]:
            xlim = None          # e.g. xlim=[10, 10] for a 10-epoch run: let matplotlib choose
        self.config_axes = lambda: set_axes(self.axes[0], xlabel, ylabel, xlim, ylim, xscale,
                                            yscale, legend or [])
        self.X, self.Y, self.fmts = None, None, fmts
        self.inline = in_notebook()
        self.path = path if path is not None or self.inline else "animator.png"
        self.handle = None

    def add(self, x, y):
        if not hasattr(y, "__len__"):
            y = [y]
        if not hasattr(x, "__len__"):
            x = [x] * len(y)
        if self.X is None:
            self.X, self.Y = [[] for _ in y], [[] for _ in y]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for x_, y_, fmt in zip(self.X, self.Y, self.fmts):
            self.axes[0].plot(x_, y_, fmt)
        self.config_axes()
        self.draw()

    def draw(self):
        self.handle = show_figure(self.fig, self.handle, self.inline, self.path)


def show_figure(fig, handle, inline: bool, path: str | None):
    """Draw a matplotlib Figure: inline in Jupyter as one output updated in place (pass back
    the handle this returns), and into the file `path` if one is given. Both editions' boards."""
    fig.tight_layout()
    if inline:
        from IPython.display import Image, display
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        image = Image(data=buffer.getvalue(), format="png")
        if handle is None:
            handle = display(image, display_id=True)
        else:
            handle.update(image)
    if path is not None:
        fig.savefig(path)
    return handle


# ---- the book's framework aliases (d2l 0.17's torch module) ---------------------------------
ones, zeros, tensor, arange, meshgrid = torch.ones, torch.zeros, torch.tensor, torch.arange, \
    torch.meshgrid
sin, sinh, cos, cosh, tanh = torch.sin, torch.sinh, torch.cos, torch.cosh, torch.tanh
linspace, exp, log, normal = torch.linspace, torch.exp, torch.log, torch.normal
rand, randn, matmul, int32, float32 = torch.rand, torch.randn, torch.matmul, torch.int32, \
    torch.float32
concat, stack, abs, eye = torch.cat, torch.stack, torch.abs, torch.eye
nn_Module = nn.Module


def numpy(x, *args, **kwargs):
    return x.detach().numpy(*args, **kwargs)


def size(x, *args, **kwargs):
    return x.numel(*args, **kwargs)


def reshape(x, *args, **kwargs):
    return x.reshape(*args, **kwargs)


def to(x, *args, **kwargs):
    return x.to(*args, **kwargs)


def reduce_sum(x, *args, **kwargs):
    return x.sum(*args, **kwargs)


def argmax(x, *args, **kwargs):
    return x.argmax(*args, **kwargs)


def astype(x, *args, **kwargs):
    return x.type(*args, **kwargs)


def transpose(x, *args, **kwargs):
    return x.t(*args, **kwargs)


def reduce_mean(x, *args, **kwargs):
    return x.mean(*args, **kwargs)


from .seq2seq import (  # noqa: E402  (chapter 9, on the names above)
    Decoder, Encoder, EncoderDecoder, MaskedSoftmaxCELoss, Seq2SeqEncoder, bleu,
    build_array_nmt, load_data_nmt, predict_seq2seq, preprocess_nmt, read_data_nmt,
    sequence_mask, show_list_len_pair_hist, tokenize_nmt, train_seq2seq, truncate_pad)

DATA_HUB["fra-eng"] = (DATA_URL + "fra-eng.zip", "94646ad1522d915e7b0f9296181140edcf86a4f5")

"""The English edition's library (d2l 1.0) for its recurrent chapters: a reader changes only
`from d2l import torch as d2l` to `from rnnkit.d2l import v1 as d2l`.

The class-based API the chapters build on (`HyperParameters`, `ProgressBoard`, `Module`,
`DataModule`, `Trainer`, `Classifier`), the data (`TimeMachine`, `MTFraEng`) and the models of
"Recurrent Neural Networks" and "Modern Recurrent Neural Networks", with the book's semantics.
Plots, the bundled Time Machine and downloads are the 0.17 module's (`rnnkit.d2l`), shared.
Like the book, these draw from torch's global generator (seed it with `torch.manual_seed`).
"""
from __future__ import annotations

import collections
import inspect
import os
import re

import torch
from torch import nn
from torch.nn import functional as F

from . import (DATA_URL, Accumulator, DownloadError, Timer, extract, fetch,  # noqa: F401
               in_notebook, plot, set_axes, set_figsize, show_figure, use_svg_display)
from .seq2seq import (Decoder, Encoder, bleu, init_seq2seq,  # noqa: F401  (both editions')
                      preprocess_nmt, show_list_len_pair_hist)

DATA_HUB: dict[str, tuple[str, str]] = {}


def __getattr__(name):
    if name == "plt":            # d2l.plt, imported on first use
        import matplotlib.pyplot as plt
        return plt
    if name in ("float", "int"):  # d2l.float, d2l.int: here, not to shadow Python's own
        return getattr(torch, name)
    raise AttributeError(f"module 'rnnkit.d2l.v1' has no attribute {name!r}")


# ---- the framework aliases of d2l 1.0: 0.17's (shared), and those 1.0 added ----------------
from . import (abs, arange, argmax, astype, concat, cos, cosh, exp, eye,  # noqa: E402,F401
               float32, int32, linspace, log, matmul, meshgrid, nn_Module, normal, numpy,
               ones, rand, randn, reduce_mean, reduce_sum, reshape, sin, sinh, size, stack,
               tanh, tensor, to, transpose, zeros)

ones_like, zeros_like, int64 = torch.ones_like, torch.zeros_like, torch.int64
sigmoid, batch_matmul = torch.sigmoid, torch.bmm


def expand_dims(x, *args, **kwargs):
    return x.unsqueeze(*args, **kwargs)


def swapaxes(x, *args, **kwargs):
    return x.swapaxes(*args, **kwargs)


def repeat(x, *args, **kwargs):
    return x.repeat(*args, **kwargs)


def check_len(a, n):
    """Assert that the list `a` has `n` items."""
    assert len(a) == n, f"list's length {len(a)} != expected length {n}"


def check_shape(a, shape):
    """Assert that the tensor `a` has `shape`."""
    assert a.shape == shape, f"tensor's shape {a.shape} != expected shape {shape}"


def cpu():
    return torch.device("cpu")


def gpu(i=0):
    return torch.device(f"cuda:{i}")


def num_gpus():
    return torch.cuda.device_count()


def try_gpu(i=0):
    """GPU i if there is one, else the CPU."""
    return gpu(i) if num_gpus() >= i + 1 else cpu()


def try_all_gpus():
    return [gpu(i) for i in range(num_gpus())]


# ---- downloads (the 1.0 signature; the Time Machine is the bundled copy) --------------------
def download(url, folder=os.path.join("..", "data"), sha1_hash=None):
    """The local path of `url` in `folder`, fetched once and sha1-checked; without network, one
    DownloadError that names the file, the URL and where to put a copy."""
    return fetch(url, sha1_hash, folder)


# ---- the object-oriented design: hyperparameters, the board, models, data, trainer ---------
def add_to_class(Class):
    """Decorator: define the decorated function as a method of `Class` (cells add methods)."""
    def wrapper(obj):
        setattr(Class, obj.__name__, obj)
    return wrapper


class HyperParameters:
    """`save_hyperparameters()` in an `__init__` keeps its arguments as attributes."""

    def save_hyperparameters(self, ignore=()):
        """Every argument of the calling function (not self, not `ignore`, not _private) becomes
        an attribute, and all of them `self.hparams`."""
        frame = inspect.currentframe().f_back
        arguments = inspect.getargvalues(frame).locals
        self.hparams = {k: v for k, v in arguments.items()
                        if k not in {*ignore, "self"} and not k.startswith("_")}
        for k, v in self.hparams.items():
            setattr(self, k, v)


class ProgressBoard(HyperParameters):
    """Points drawn as they arrive, each line the mean of every `every_n` points: inline in
    Jupyter (one output, updated in place), into a PNG file (`path`) in a script. The user's
    matplotlib backend is never changed."""

    def __init__(self, xlabel=None, ylabel=None, xlim=None, ylim=None, xscale="linear",
                 yscale="linear", ls=("-", "--", "-.", ":"), colors=("C0", "C1", "C2", "C3"),
                 fig=None, axes=None, figsize=(3.5, 2.5), display=True, path=None):
        self.save_hyperparameters()
        self._handle = None

    def draw(self, x, y, label, every_n=1):
        Point = collections.namedtuple("Point", ["x", "y"])
        if not hasattr(self, "raw_points"):
            self.raw_points, self.data = collections.OrderedDict(), collections.OrderedDict()
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        points.append(Point(x, y))
        if len(points) != every_n:
            return
        line.append(Point(sum(p.x for p in points) / len(points),
                          sum(p.y for p in points) / len(points)))
        points.clear()
        if self.display:
            self._render()

    def _render(self):
        if self.fig is None and self.axes is not None:
            self.fig = self.axes.figure                   # the caller's axes, in their figure
        if self.fig is None:
            from matplotlib.figure import Figure          # not pyplot: no backend is touched
            self.fig = Figure(figsize=self.figsize)
        axes = self.axes if self.axes is not None else (self.fig.axes or
                                                        [self.fig.add_subplot()])[0]
        axes.cla()
        lines = [axes.plot([p.x for p in v], [p.y for p in v], linestyle=ls, color=color)[0]
                 for v, ls, color in zip(self.data.values(), self.ls, self.colors)]
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel or "x")
        axes.set_ylabel(self.ylabel)
        axes.set_xscale(self.xscale)
        axes.set_yscale(self.yscale)
        axes.legend(lines, list(self.data))
        inline = in_notebook()
        self._handle = show_figure(self.fig, self._handle, inline,
                                   self.path or (None if inline else "progress.png"))


class Module(nn.Module, HyperParameters):
    """The base of the book's models: `loss`, `forward`, `training_step`, `validation_step`,
    `configure_optimizers`, and a board that plots the loss as `Trainer.fit` runs."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__()
        self.save_hyperparameters()
        self.board = ProgressBoard()

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X):
        assert hasattr(self, "net"), "Neural network is defined"
        return self.net(X)

    def plot(self, key, value, train):
        """One point of `key` on the board, x in epochs: train points twice an epoch, validation
        points once (averaged over the batches between them)."""
        assert hasattr(self, "trainer"), "Trainer is not inited"
        self.board.xlabel = "epoch"
        if train:
            x = self.trainer.train_batch_idx / self.trainer.num_train_batches
            n = self.trainer.num_train_batches / self.plot_train_per_epoch
        else:
            x = self.trainer.epoch + 1
            n = self.trainer.num_val_batches / self.plot_valid_per_epoch
        self.board.draw(x, numpy(to(value, cpu())), ("train_" if train else "val_") + key,
                        every_n=max(1, int(n)))

    def training_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", loss, train=True)
        return loss

    def validation_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("loss", loss, train=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(self, inputs, init=None):
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)


class DataModule(HyperParameters):
    """The base of the book's data: `get_dataloader(train)` gives the training or validation
    batches; `get_tensorloader` serves rows of tensors as a DataLoader."""

    def __init__(self, root=os.path.join("..", "data"), num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        tensors = tuple(a[indices] for a in tensors)
        dataset = torch.utils.data.TensorDataset(*tensors)
        return torch.utils.data.DataLoader(dataset, self.batch_size, shuffle=train)


class Trainer(HyperParameters):
    """Fits a Module to a DataModule for `max_epochs`, on the first of `num_gpus` GPUs when
    there is one; `gradient_clip_val` > 0 clips the global gradient norm."""

    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0):
        self.save_hyperparameters()
        self.gpus = [gpu(i) for i in range(min(num_gpus, torch.cuda.device_count()))]

    def prepare_data(self, data):
        self.train_dataloader = data.train_dataloader()
        self.val_dataloader = data.val_dataloader()
        self.num_train_batches = len(self.train_dataloader)
        self.num_val_batches = len(self.val_dataloader) if self.val_dataloader is not None \
            else 0

    def prepare_model(self, model):
        model.trainer = self
        model.board.xlim = [0, self.max_epochs]
        if self.gpus:
            model.to(self.gpus[0])
        self.model = model

    def prepare_batch(self, batch):
        return [to(a, self.gpus[0]) for a in batch] if self.gpus else batch

    def fit(self, model, data):
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = model.configure_optimizers()
        self.epoch = self.train_batch_idx = self.val_batch_idx = 0
        for self.epoch in range(self.max_epochs):
            self.fit_epoch()

    def fit_epoch(self):
        self.model.train()
        for batch in self.train_dataloader:
            loss = self.model.training_step(self.prepare_batch(batch))
            self.optim.zero_grad()
            with torch.no_grad():
                loss.backward()
                if self.gradient_clip_val > 0:
                    self.clip_gradients(self.gradient_clip_val, self.model)
                self.optim.step()
            self.train_batch_idx += 1
        if self.val_dataloader is None:
            return
        self.model.eval()
        for batch in self.val_dataloader:
            with torch.no_grad():
                self.model.validation_step(self.prepare_batch(batch))
            self.val_batch_idx += 1

    def clip_gradients(self, grad_clip_val, model):
        """Scale every gradient by grad_clip_val / ‖g‖ when the global norm ‖g‖ exceeds it."""
        params = [p for p in model.parameters() if p.requires_grad]
        norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
        if norm > grad_clip_val:
            for p in params:
                p.grad[:] *= grad_clip_val / norm


class SGD(HyperParameters):
    """Minibatch SGD over `params`: p ← p − lr · ∂loss/∂p."""

    def __init__(self, params, lr):
        self.save_hyperparameters()

    def step(self):
        for param in self.params:
            param -= self.lr * param.grad

    def zero_grad(self):
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


class LinearRegression(Module):
    """One lazy linear unit, N(0, 0.01²) weights, zero bias, mean squared error, SGD."""

    def __init__(self, lr):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.LazyLinear(1)
        self.net.weight.data.normal_(0, 0.01)
        self.net.bias.data.fill_(0)

    def forward(self, X):
        return self.net(X)

    def loss(self, y_hat, y):
        return nn.MSELoss()(y_hat, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), self.lr)

    def get_w_b(self):
        return self.net.weight.data, self.net.bias.data


class Classifier(Module):
    """A Module whose loss is the cross-entropy of logits (…, C) and which also reports
    accuracy on validation."""

    def validation_step(self, batch):
        Y_hat = self(*batch[:-1])
        self.plot("loss", self.loss(Y_hat, batch[-1]), train=False)
        self.plot("acc", self.accuracy(Y_hat, batch[-1]), train=False)

    def accuracy(self, Y_hat, Y, averaged=True):
        """The share (or, not averaged, the 0/1 list) of rows whose argmax is the label."""
        Y_hat = Y_hat.reshape(-1, Y_hat.shape[-1])
        preds = Y_hat.argmax(dim=1).type(Y.dtype)
        compare = (preds == Y.reshape(-1)).type(torch.float32)
        return compare.mean() if averaged else compare

    def loss(self, Y_hat, Y, averaged=True):
        return F.cross_entropy(Y_hat.reshape(-1, Y_hat.shape[-1]), Y.reshape(-1),
                               reduction="mean" if averaged else "none")

    def layer_summary(self, X_shape):
        X = randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


# ---- text: the 1.0 vocabulary and The Time Machine ---------------------------------------
class Vocab:
    """The 1.0 vocabulary: tokens (a list, or a list of lists) with frequency ≥ `min_freq`,
    '<unk>' and `reserved_tokens`, indexed in sorted order (not by frequency, as in 0.17)."""

    def __init__(self, tokens=(), min_freq=0, reserved_tokens=()):
        tokens = list(tokens)
        if tokens and isinstance(tokens[0], list):
            tokens = [t for line in tokens for t in line]
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = sorted({"<unk>", *reserved_tokens,
                                    *(t for t, freq in self.token_freqs if freq >= min_freq)})
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[t] for t in tokens]

    def to_tokens(self, indices):
        if hasattr(indices, "__len__") and len(indices) > 1:
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[indices]

    @property
    def unk(self):
        return self.token_to_idx["<unk>"]


class TimeMachine(DataModule):
    """The Time Machine, letters and spaces, lower case, as characters: every window of
    `num_steps` + 1 ids is one example (X the first num_steps, Y shifted by one); the first
    `num_train` examples train, the next `num_val` validate. Offline: rnnkit's own copy."""

    def _download(self):
        fname = download(DATA_URL + "timemachine.txt", self.root,
                         "090b5e7e70c295757f55df93cb0a180b9691891a")
        with open(fname, encoding="utf-8") as f:
            return f.read()

    def _preprocess(self, text):
        return re.sub("[^A-Za-z]+", " ", text).lower()

    def _tokenize(self, text):
        return list(text)

    def build(self, raw_text, vocab=None):
        """(ids of the text's tokens, vocab): a new vocabulary unless one is given."""
        tokens = self._tokenize(self._preprocess(raw_text))
        if vocab is None:
            vocab = Vocab(tokens)
        return [vocab[t] for t in tokens], vocab

    def __init__(self, batch_size, num_steps, num_train=10000, num_val=5000):
        super().__init__()
        self.save_hyperparameters()
        corpus, self.vocab = self.build(self._download())
        array = torch.tensor([corpus[i:i + num_steps + 1]
                              for i in range(len(corpus) - num_steps)])   # (N, T + 1)
        self.X, self.Y = array[:, :-1], array[:, 1:]

    def get_dataloader(self, train):
        idx = slice(0, self.num_train) if train else \
            slice(self.num_train, self.num_train + self.num_val)
        return self.get_tensorloader([self.X, self.Y], train, idx)


# ---- the recurrent models: from scratch and with torch's layers -------------------------
class RNNScratch(Module):
    """H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), weights N(0, sigma²): inputs (T, B, D) →
    (a list of T states (B, H), the last state)."""

    def __init__(self, num_inputs, num_hiddens, sigma=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.W_xh = nn.Parameter(randn(num_inputs, num_hiddens) * sigma)
        self.W_hh = nn.Parameter(randn(num_hiddens, num_hiddens) * sigma)
        self.b_h = nn.Parameter(zeros(num_hiddens))

    def forward(self, inputs, state=None):
        if state is None:
            state = zeros((inputs.shape[1], self.num_hiddens), device=inputs.device)  # (B, H)
        else:
            state, = state
        outputs = []
        for X in inputs:                                                      # X: (B, D)
            state = tanh(matmul(X, self.W_xh) + matmul(state, self.W_hh) + self.b_h)  # (B, H)
            outputs.append(state)
        return outputs, state


class RNNLMScratch(Classifier):
    """A language model over an RNN: one-hot inputs, O_t = H_t W_hq + b_q, perplexity plotted
    as it trains; `predict` warms up on a prefix, then writes greedily."""

    def __init__(self, rnn, vocab_size, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.init_params()

    def init_params(self):
        self.W_hq = nn.Parameter(randn(self.rnn.num_hiddens, self.vocab_size) * self.rnn.sigma)
        self.b_q = nn.Parameter(zeros(self.vocab_size))

    def training_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("ppl", exp(loss), train=True)
        return loss

    def validation_step(self, batch):
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.plot("ppl", exp(loss), train=False)

    def one_hot(self, X):
        """(B, T) ids → (T, B, V) one-hot floats: time first, as the RNN loops over it."""
        return F.one_hot(X.T, self.vocab_size).type(torch.float32)

    def output_layer(self, rnn_outputs):
        """T states (B, H) → logits (B, T, V)."""
        return stack([matmul(H, self.W_hq) + self.b_q for H in rnn_outputs], 1)

    def forward(self, X, state=None):
        rnn_outputs, _ = self.rnn(self.one_hot(X), state)
        return self.output_layer(rnn_outputs)

    def predict(self, prefix, num_preds, vocab, device=None):
        state, outputs = None, [vocab[prefix[0]]]
        for i in range(len(prefix) + num_preds - 1):
            X = tensor([[outputs[-1]]], device=device)                        # (1, 1)
            rnn_outputs, state = self.rnn(self.one_hot(X), state)
            if i < len(prefix) - 1:                                          # warm-up
                outputs.append(vocab[prefix[i + 1]])
            else:
                Y = self.output_layer(rnn_outputs)                           # (1, 1, V)
                outputs.append(int(Y.argmax(dim=2).reshape(1)))
        return "".join(vocab.idx_to_token[i] for i in outputs)


class RNN(Module):
    """torch's nn.RNN: inputs (T, B, D), state (1, B, H) → (outputs (T, B, H), state)."""

    def __init__(self, num_inputs, num_hiddens):
        super().__init__()
        self.save_hyperparameters()
        self.rnn = nn.RNN(num_inputs, num_hiddens)

    def forward(self, inputs, H=None):
        return self.rnn(inputs, H)


class RNNLM(RNNLMScratch):
    """RNNLMScratch with a lazy nn.Linear output layer over torch's (T, B, H) outputs."""

    def init_params(self):
        self.linear = nn.LazyLinear(self.vocab_size)

    def output_layer(self, hiddens):
        return swapaxes(self.linear(hiddens), 0, 1)                          # (B, T, V)


class GRU(RNN):
    """torch's multi-layer nn.GRU, with dropout between layers."""

    def __init__(self, num_inputs, num_hiddens, num_layers=1, dropout=0):
        Module.__init__(self)
        self.save_hyperparameters()
        self.rnn = nn.GRU(num_inputs, num_hiddens, num_layers, dropout=dropout)


class LSTM(RNN):
    """torch's multi-layer nn.LSTM (the state is the pair (H, C))."""

    def __init__(self, num_inputs, num_hiddens, num_layers=1, dropout=0):
        Module.__init__(self)
        self.save_hyperparameters()
        self.rnn = nn.LSTM(num_inputs, num_hiddens, num_layers, dropout=dropout)

    def forward(self, inputs, H_C=None):
        return self.rnn(inputs, H_C)


# ---- machine translation: the data, the encoder-decoder, seq2seq -------------------------
class MTFraEng(DataModule):
    """English–French pairs (Tatoeba, fra-eng.zip, downloaded the book's way): words and
    punctuation, <eos> ended, cut or padded to `num_steps`; targets begin with <bos>.
    `SHA1` is the checksum the download must match."""

    SHA1 = "94646ad1522d915e7b0f9296181140edcf86a4f5"

    def _download(self):
        extract(download(DATA_URL + "fra-eng.zip", self.root, self.SHA1))
        with open(os.path.join(self.root, "fra-eng", "fra.txt"), encoding="utf-8") as f:
            return f.read()

    def _preprocess(self, text):
        return preprocess_nmt(text)               # the same cleaning in both editions

    def _tokenize(self, text, max_examples=None):
        src, tgt = [], []
        for i, line in enumerate(text.split("\n")):
            if max_examples and i > max_examples:
                break
            parts = line.split("\t")
            if len(parts) == 2:
                src.append([t for t in f"{parts[0]} <eos>".split(" ") if t])
                tgt.append([t for t in f"{parts[1]} <eos>".split(" ") if t])
        return src, tgt

    def __init__(self, batch_size, num_steps=9, num_train=512, num_val=128):
        super().__init__()
        self.save_hyperparameters()
        self.arrays, self.src_vocab, self.tgt_vocab = self._build_arrays(self._download())

    def _build_arrays(self, raw_text, src_vocab=None, tgt_vocab=None):
        """((src (n, T), tgt input (n, T), src valid lengths (n,), tgt labels (n, T)), vocabs)."""
        def build_array(sentences, vocab, is_tgt=False):
            sentences = [s[:self.num_steps] + ["<pad>"] * (self.num_steps - len(s))
                         for s in sentences]
            if is_tgt:
                sentences = [["<bos>"] + s for s in sentences]
            if vocab is None:
                vocab = Vocab(sentences, min_freq=2)
            array = tensor([vocab[s] for s in sentences])
            valid_len = (array != vocab["<pad>"]).type(torch.int32).sum(1)
            return array, vocab, valid_len
        src, tgt = self._tokenize(self._preprocess(raw_text), self.num_train + self.num_val)
        src_array, src_vocab, src_valid_len = build_array(src, src_vocab)
        tgt_array, tgt_vocab, _ = build_array(tgt, tgt_vocab, True)
        return ((src_array, tgt_array[:, :-1], src_valid_len, tgt_array[:, 1:]),
                src_vocab, tgt_vocab)

    def get_dataloader(self, train):
        idx = slice(0, self.num_train) if train else slice(self.num_train, None)
        return self.get_tensorloader(self.arrays, train, idx)

    def build(self, src_sentences, tgt_sentences):
        """The arrays of new sentence pairs, in this dataset's vocabularies."""
        raw_text = "\n".join(s + "\t" + t for s, t in zip(src_sentences, tgt_sentences))
        arrays, _, _ = self._build_arrays(raw_text, self.src_vocab, self.tgt_vocab)
        return arrays


class EncoderDecoder(Classifier):
    """An encoder and a decoder trained as a classifier over target tokens."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, enc_X, dec_X, *args):
        enc_all_outputs = self.encoder(enc_X, *args)
        dec_state = self.decoder.init_state(enc_all_outputs, *args)
        return self.decoder(dec_X, dec_state)[0]               # the decoder's output only

    def predict_step(self, batch, device, num_steps, save_attention_weights=False):
        """Greedy decoding of a batch for `num_steps`: (ids (B, num_steps), attention)."""
        src, tgt, src_valid_len, _ = [to(a, device) for a in batch]
        enc_all_outputs = self.encoder(src, src_valid_len)
        dec_state = self.decoder.init_state(enc_all_outputs, src_valid_len)
        outputs, attention_weights = [expand_dims(tgt[:, 0], 1)], []
        for _ in range(num_steps):
            Y, dec_state = self.decoder(outputs[-1], dec_state)
            outputs.append(argmax(Y, 2))
            if save_attention_weights:
                attention_weights.append(self.decoder.attention_weights)
        return concat(outputs[1:], 1), attention_weights


class Seq2SeqEncoder(Encoder):
    """Embedding + multi-layer GRU: (B, T) ids → outputs (T, B, H), state (layers, B, H)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers, dropout=0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = GRU(embed_size, num_hiddens, num_layers, dropout)
        self.apply(init_seq2seq)

    def forward(self, X, *args):
        embs = self.embedding(X.t().type(torch.int64))                  # (T, B, E)
        return self.rnn(embs)


class Seq2Seq(EncoderDecoder):
    """The RNN encoder-decoder, trained with Adam on the loss over non-padding target tokens;
    validation plots the loss."""

    def __init__(self, encoder, decoder, tgt_pad, lr):
        super().__init__(encoder, decoder)
        self.save_hyperparameters()

    def validation_step(self, batch):
        Y_hat = self(*batch[:-1])
        self.plot("loss", self.loss(Y_hat, batch[-1]), train=False)

    def loss(self, Y_hat, Y):
        """The mean cross-entropy over target tokens that are not padding (the chapter's)."""
        l = super().loss(Y_hat, Y, averaged=False)  # noqa: E741  (the book's name)
        mask = (Y.reshape(-1) != self.tgt_pad).type(torch.float32)
        return (l * mask).sum() / mask.sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

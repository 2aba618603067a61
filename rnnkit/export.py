"""One step of a trained model as an ONNX graph, so that a run generates without Python's torch:
token ids (N,) and the state in, logits (N, V) and the next state out, N dynamic.

Every model — the scratch RNN, GRU and LSTM, and torch's layers (stacked, with embeddings) — is
first read as the same layers in `torch.nn`'s gate order and form (its `cell_layers`), then written
with one ONNX node per equation, so the graph reads like the cells in models.py. minGRU and
minLSTM are written block by block from their module (minrnn.py), their sequential step; the
transformer is not exported (its step needs a growing key/value cache).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import nn

from .checkpoint import _json_bytes
from .errors import UsageError
from .files import atomic_write
from .minrnn import GATES as GATES_MIN
from .models import LanguageModel, Layer, _np
from .text import SEPARATOR

OPSET = 17
GATES = {"rnn": 1, "gru": 3, "lstm": 4}   # gate blocks in torch.nn's order: GRU r z n, LSTM i f g o


class _Graph:
    """A small builder: named initializers and nodes, fresh names for intermediate values."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs):
        names = [name] if name else [f"{kind.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(self.helper.make_node(kind, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


def _step(g: _Graph, cell: str, k: int, layer: Layer, x: str, h: str, c: str | None,
          hidden: int) -> tuple[str, str | None]:
    """One layer's equations (torch.nn's forms): its new (h, c)."""
    gx = g.op("Add", g.op("MatMul", x, g.const(f"W_x{k}", layer.W_x)),
              g.const(f"b_x{k}", layer.b_x))                              # (N, G·H)
    gh = g.op("Add", g.op("MatMul", h, g.const(f"W_h{k}", layer.W_h)),
              g.const(f"b_h{k}", layer.b_h))                              # (N, G·H)
    if cell == "rnn":                                     # h' = tanh(x W_x + b_x + h W_h + b_h)
        return g.op("Tanh", g.op("Add", gx, gh)), None
    split = g.const(f"split{k}", np.full(GATES[cell], hidden, dtype=np.int64))
    if cell == "gru":
        rx, zx, nx = g.op("Split", gx, split, outputs=3, axis=1)
        rh, zh, nh = g.op("Split", gh, split, outputs=3, axis=1)
        r = g.op("Sigmoid", g.op("Add", rx, rh))          # reset gate
        z = g.op("Sigmoid", g.op("Add", zx, zh))          # update gate
        n = g.op("Tanh", g.op("Add", nx, g.op("Mul", r, nh)))   # candidate
        return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n))), None   # (1-z) n + z h
    i, f, cand, o = g.op("Split", g.op("Add", gx, gh), split, outputs=4, axis=1)
    c_new = g.op("Add", g.op("Mul", g.op("Sigmoid", f), c),
                 g.op("Mul", g.op("Sigmoid", i), g.op("Tanh", cand)))   # c' = f c + i g
    return g.op("Mul", g.op("Sigmoid", o), g.op("Tanh", c_new)), c_new  # h' = o tanh(c')


def _linear(g: _Graph, x: str, layer: nn.Linear, name: str, out: str | None = None) -> str:
    """x W^T + b of an nn.Linear (`out`: the result's name)."""
    y = g.op("MatMul", x, g.const(f"{name}_W", _np(layer.weight).T))
    return g.op("Add", y, g.const(f"{name}_b", _np(layer.bias)), name=out)


def _rms_norm(g: _Graph, x: str, norm, name: str) -> str:
    """x / sqrt(mean(x²) + eps) ⊙ w, as torch.nn.RMSNorm (eps: float32's, its default)."""
    eps = norm.eps if norm.eps is not None else float(np.finfo(np.float32).eps)
    mean = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)       # (N, 1)
    rms = g.op("Sqrt", g.op("Add", mean, g.const(f"{name}_eps", np.float32(eps))))
    return g.op("Mul", g.op("Div", x, rms), g.const(f"{name}_w", _np(norm.weight)))


def _min_step(g: _Graph, k: int, block, x: str, h: str, previous: str | None
              ) -> tuple[str, str, str | None]:
    """One minGRU/minLSTM block (minrnn.py): the residual stream's next x, the state h' and,
    with the token shift, this step's u (the next step's previous)."""
    cell, H = block.cell, block.cell.hidden
    u = last = _rms_norm(g, x, block.norm1, f"norm1_{k}")
    if block.mu is not None:                              # u + μ (u_{t−1} − u)
        u = g.op("Add", u, g.op("Mul", g.const(f"mu{k}", _np(block.mu)),
                                g.op("Sub", previous, u)))
    parts = g.op("Split", _linear(g, u, cell.to_gates, f"gates{k}"),
                 g.const(f"split{k}", np.full(len(GATES_MIN[cell.kind]) + 1, H, np.int64)),
                 outputs=len(GATES_MIN[cell.kind]) + 1, axis=1)
    h_tilde = parts[-1]
    zero = g.const(f"zero{k}", np.float32(0.0))
    v = g.op("Where", g.op("GreaterOrEqual", h_tilde, zero),
             g.op("Add", h_tilde, g.const(f"half{k}", np.float32(0.5))),
             g.op("Sigmoid", h_tilde))                                        # g(h̃)
    if cell.kind == "mingru":                             # h' = (1 − z) h + z g(h̃)
        z = g.op("Sigmoid", parts[0])
        h_new = g.op("Add", g.op("Mul", g.op("Sub", g.const(f"one{k}", np.float32(1.0)), z), h),
                     g.op("Mul", z, v))
    else:                                                 # h' = f' h + i' g(h̃)
        f, i = g.op("Sigmoid", parts[0]), g.op("Sigmoid", parts[1])
        total = g.op("Add", f, i)
        h_new = g.op("Add", g.op("Mul", g.op("Div", f, total), h),
                     g.op("Mul", g.op("Div", i, total), v))
    out = h_new if isinstance(cell.out, nn.Identity) else \
        g.op("MatMul", h_new, g.const(f"out{k}_W", _np(cell.out.weight).T))
    x = g.op("Add", x, out)
    up = _linear(g, _rms_norm(g, x, block.norm2, f"norm2_{k}"), block.mlp.up, f"up{k}")
    gelu = g.op("Mul", g.op("Mul", up, g.const(f"gelu_half{k}", np.float32(0.5))),
                g.op("Add", g.const(f"gelu_one{k}", np.float32(1.0)),
                     g.op("Erf", g.op("Div", up, g.const(f"sqrt2_{k}",
                                                           np.float32(np.sqrt(2)))))))
    x = g.op("Add", x, _linear(g, gelu, block.mlp.down, f"down{k}"))
    return x, h_new, (last if block.mu is not None else None)


def _build_min(model) -> tuple[_Graph, dict]:
    """The step of a MinRNN: ids (N,), h (layers, N, H) and, with the token shift, u (layers,
    N, dim) → logits (N, V), h_next (and u_next)."""
    g = _Graph()
    x = g.op("Gather", g.const("embedding", _np(model.embedding.weight)), "ids", axis=0)
    shapes = {"h": [len(model.blocks), "N", model.num_hiddens]}
    if model.token_shift:
        shapes["u"] = [len(model.blocks), "N", model.dim]
    new = {name: [] for name in shapes}
    for k, block in enumerate(model.blocks):
        layer = g.const(f"layer{k}", np.array(k))
        state = {name: g.op("Gather", name, layer, axis=0) for name in shapes}  # (N, ·) each
        x, new_h, new_u = _min_step(g, k, block, x, state["h"], state.get("u"))
        for name, value in (("h", new_h), ("u", new_u)):
            if name in shapes:
                new[name].append(g.op("Unsqueeze", value, g.const(f"axis0_{name}{k}",
                                                                  np.array([0]))))
    _linear(g, _rms_norm(g, x, model.norm, "norm"), model.linear, "out", out="logits")
    for name, values in new.items():
        g.op("Concat", *values, axis=0, name=f"{name}_next")
    return g, shapes


def build_onnx(model: LanguageModel):
    """The ONNX ModelProto of one step of `model`'s network (see the module docstring)."""
    from .minrnn import MinRNN
    network = model.network
    if isinstance(network, MinRNN):
        g, shapes = _build_min(network)
        return _finish(g, shapes, network.vocab_size)
    view = model.network.cell_layers()
    cell, table, layers, W_out, b_out = view.cell, view.table, view.layers, view.W_out, view.b_out
    # torch's layers keep a state (layers, N, H); the scratch cells one (N, H)
    hidden = layers[0].W_h.shape[0]
    stacked = model.network.begin_state(1, "cpu")[0].dim() == 3
    g = _Graph()
    # the first layer's input projection of a one-hot or embedded token: a row lookup
    x = g.op("Gather", g.const("input_table", table), "ids", axis=0)           # (N, in)
    names = ["h", "c"] if cell == "lstm" else ["h"]
    new = {n: [] for n in names}
    for k, layer in enumerate(layers):
        index = g.const(f"layer{k}", np.array(k)) if stacked else None
        state = {n: g.op("Gather", n, index, axis=0) if stacked else n for n in names}  # (N, H)
        h, c = _step(g, cell, k, layer, x, state["h"], state.get("c"), hidden)
        new["h"].append(h)
        if c is not None:
            new["c"].append(c)
        x = h
    g.op("Add", g.op("MatMul", x, g.const("W_out", W_out)), g.const("b_out", b_out),
         name="logits")                                                       # (N, V)
    for n in names:
        if stacked:
            g.op("Concat", *[g.op("Unsqueeze", v, g.const(f"axis0_{n}{i}", np.array([0])))
                             for i, v in enumerate(new[n])], axis=0, name=f"{n}_next")
        else:
            g.op("Identity", new[n][0], name=f"{n}_next")
    shape = ([len(layers), "N", hidden] if stacked else ["N", hidden])
    return _finish(g, {n: shape for n in names}, table.shape[0])


def _finish(g: _Graph, shapes: dict[str, list], vocab_size: int):
    """The checked ModelProto of graph `g`: ids and the states (name: shape) in, logits and
    the next states out."""
    from onnx import TensorProto, checker, helper
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in shapes.items()]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", vocab_size])] \
        + [helper.make_tensor_value_info(f"{n}_next", TensorProto.FLOAT, shape)
           for n, shape in shapes.items()]
    graph = helper.make_graph(g.nodes, "rnnkit_step", inputs, outputs, g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rnnkit")
    checker.check_model(proto)
    return proto


def export_onnx(run, out: str | os.PathLike, *, weights: str | None = None,
                force: bool = False) -> tuple[Path, Path]:
    """Write a run's network (`run`: a `Run`, or a run directory with `weights`) as `out`
    (.onnx) and, beside it, `out` with .json: the vocabulary, the config and how to call the
    graph. Nothing is written unless both can be."""
    from .run import Run
    if not isinstance(run, Run):
        run = Run.open(run, weights=weights, ngram=False)
    out = Path(out)
    sidecar = out.with_suffix(".json")
    for path in (out, sidecar):
        if path.exists() and not force:
            raise UsageError(f"{path} exists; pass --force to replace it")
        if path.is_dir() or not path.parent.is_dir():
            raise UsageError(f"cannot write {path}: pick a file in an existing directory")
    network, config = run.model.network, run.config
    proto = build_onnx(network)
    state = network.begin_state(1, "cpu")
    names = [value.name for value in proto.graph.input[1:]]   # the states, in order: h, c or u
    meta = {"format": "rnnkit-onnx", "version": 1, "model": out.name,
            "inputs": {"ids": ["N"], **{n: ["N" if i == s.dim() - 2 else d
                                             for i, d in enumerate(s.shape)]
                                        for n, s in zip(names, state)}},
            "outputs": ["logits"] + [f"{n}_next" for n in names],
            "separator": SEPARATOR[config.token], "prefix": config.prefix,
            "vocab": run.vocab.to_dict(), "config": config.to_dict()}
    atomic_write(out, proto.SerializeToString())
    atomic_write(sidecar, _json_bytes(meta))
    return out, sidecar

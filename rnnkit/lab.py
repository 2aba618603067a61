"""What the web lab shows of a model: how surprised it is by each character of a text, what it
would have guessed instead, and what every hidden unit does along the text.

One recurrent pass (`trace`: one GEMV per character and layer, an RNN, GRU or LSTM layer in one
compiled call, `fastloop`, else `layer_numpy`) gives every layer's states and gates and the
logits; `score` and `units` read from it. Every network goes through its `cell_layers`, the
same torch-form view the ONNX graph is written from.
"""
from __future__ import annotations

import numpy as np

from . import fastloop
from .generate import rnn_step_numpy
from .models import CellLayers

FEATURES = ("inside quotes", "inside parentheses", "position in line", "start of a word",
            "after a vowel")
BLOCK = 2048    # rows of (T, H) worked on at a time: a 100,000-character text would otherwise
                # make 200 MB temporaries per request, and fresh pages are slow to fault in
STATES = {"rnn": ("h",), "gru": ("h", "r", "z", "n"), "lstm": ("h", "c", "i", "f", "g", "o"),
          "mingru": ("h", "z"), "minlstm": ("h", "f", "i"), "transformer": ()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)        # no overflow for large |x|


def trace(view: CellLayers, ids: list[int]) -> dict:
    """Run a network (its `cell_layers`) over `ids` from its zero state. Returns {"logits":
    (T, V), "layers": [{state name: (T, H)}]}: logits[t] predicts ids[t + 1]; states are those
    after reading ids[t]. (Call it as `model.trace(ids)`.)"""
    cell, layers, W_out, b_out = view.cell, view.layers, view.W_out, view.b_out
    ids = np.asarray(ids, dtype=np.int64)
    compiled = fastloop.library() is not None and cell in ("rnn", *fastloop.GATED)
    x, record, logits = None, [], None
    for k, layer in enumerate(layers):
        if x is None:                  # layer 1: project the table, then pick rows (V << T)
            gx = (view.table @ layer.W_x + layer.b_x)[ids]               # (T, G·H) all steps
        else:
            gx = x @ layer.W_x + layer.b_x                                # (T, G·H) all steps
        if cell == "rnn":
            gx += layer.b_h                                               # both biases, once
        if not compiled:
            out = layer_numpy(cell, gx, layer)
        elif cell == "rnn":                          # the loop of layer_numpy, in one C call
            last = k == len(layers) - 1
            states = np.empty((len(ids), layer.W_h.shape[0]), np.float32)          # (T, H)
            states.fill(0.0)           # fault its pages in here, not in two threads at once
            got = fastloop.rnn_trace(gx, fastloop.pack_columns(layer.W_h),
                                     np.zeros(layer.W_h.shape[0], np.float32), out=states,
                                     W_out=W_out if last else None, b_out=b_out)
            out, logits = {"h": states}, (got[1] if last else None)
        else:
            out = fastloop.gated_trace(cell, gx, layer.W_h, layer.b_h)
        record.append(out)
        x = out["h"]
    if logits is None:
        logits = x @ W_out + b_out                                        # (T, V)
    return {"logits": logits, "layers": record, "cell": cell}


def layer_numpy(cell: str, gx: np.ndarray, layer) -> dict[str, np.ndarray]:
    """One layer read step by step from zero states, given its inputs' part of every step
    gx (T, G·H) (for an RNN, both biases in it): its states and gates (T, H) by name. The
    reference the compiled loops are tested against."""
    T, H = len(gx), layer.W_h.shape[0]
    W_h = np.asfortranarray(layer.W_h)                          # GEMV's faster layout here
    out = {n: np.empty((T, H), np.float32) for n in STATES[cell]}
    h, c = np.zeros(H, np.float32), np.zeros(H, np.float32)
    gh = np.empty(layer.W_h.shape[1], np.float32)                         # (G·H,)
    for t in range(T):
        if cell == "rnn":                                                 # in place: no allocation
            h = rnn_step_numpy(h, W_h, gx[t], gh, out=out["h"][t])
            continue
        np.dot(h, W_h, out=gh)
        gh += layer.b_h
        if cell == "gru":
            r = _sigmoid(gx[t, :H] + gh[:H])
            z = _sigmoid(gx[t, H:2 * H] + gh[H:2 * H])
            n = np.tanh(gx[t, 2 * H:] + r * gh[2 * H:])
            h = n + z * (h - n)
            out["r"][t], out["z"][t], out["n"][t] = r, z, n
        else:
            g = gx[t] + gh
            i, f, o = _sigmoid(g[:H]), _sigmoid(g[H:2 * H]), _sigmoid(g[3 * H:])
            cand = np.tanh(g[2 * H:3 * H])
            c = f * c + i * cand
            h = o * np.tanh(c)
            out["c"][t], out["i"][t], out["f"][t], out["g"][t], out["o"][t] = c, i, f, cand, o
        out["h"][t] = h
    return out


def score(traced: dict, ids: list[int], top: int = 5) -> dict:
    """Per position t >= 1: the probability the model gave the character that came, its
    surprisal in bits, and the `top` likeliest guesses (ids, probabilities); and the text's
    bits per character. Position 0 has no prediction (None)."""
    logits = traced["logits"][:-1].astype(np.float64)                    # (T-1, V) predict t+1
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))    # (T-1, V)
    actual = logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]          # (T-1,)
    best = np.argsort(-logp, axis=1)[:, :top]                            # (T-1, top)
    bits = -actual / np.log(2)
    return {"prob": [None] + np.exp(actual).round(6).tolist(),
            "bits": [None] + bits.round(4).tolist(),
            "top_ids": [None] + best.tolist(),
            "top_probs": [None] + np.exp(np.take_along_axis(logp, best, 1)).round(6).tolist(),
            "bits_per_char": float(bits.mean()) if len(bits) else None}


def text_features(tokens: list[str]) -> np.ndarray:
    """(T, 5) simple features of each character (FEATURES), computed from the text alone: the
    loop of `text_features_loop` as running sums over the whole text."""
    T = len(tokens)
    if T == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    kinds = {ch: i for i, ch in enumerate(dict.fromkeys(tokens))}
    kind = np.fromiter((kinds[ch] for ch in tokens), np.int64, T)            # (T,) token kinds
    table = list(kinds)
    of = lambda test: np.array([test(ch) for ch in table], bool)[kind]       # noqa: E731

    quote, opens, closes = of(lambda c: c in "\"“”"), of(lambda c: c == "("), of(lambda c: c == ")")
    alpha, newline = of(str.isalpha), of(lambda c: c == "\n")
    vowel = of(lambda c: c.lower() in "aeiou" and c != "")
    inside = np.cumsum(quote) % 2                                        # after its own toggle
    walk = np.cumsum(opens.astype(np.int64) - closes)                    # depth without the floor
    depth = walk - np.minimum(0, np.minimum.accumulate(walk))            # max(0, ·) at each step
    before = np.concatenate([[0], depth[:-1]])                           # depth before t
    t = np.arange(T)
    line_start = np.maximum.accumulate(np.where(np.concatenate([[False], newline[:-1]]), t, 0))
    prev_alpha = np.concatenate([[False], alpha[:-1]])
    prev_vowel = np.concatenate([[False], vowel[:-1]])
    return np.stack([inside, (before + opens) > 0, t - line_start, alpha & ~prev_alpha,
                     prev_vowel], axis=1).astype(np.float32)


def text_features_loop(tokens: list[str]) -> np.ndarray:
    """`text_features` one character at a time: the reference it is tested against."""
    out = np.zeros((len(tokens), len(FEATURES)), np.float32)
    quote = depth = column = 0
    prev = ""
    for t, ch in enumerate(tokens):
        if ch in "\"“”":
            quote ^= 1
        depth += ch == "("
        out[t] = (quote, depth > 0, column, ch.isalpha() and not prev.isalpha(),
                  prev.lower() in "aeiou" and prev != "")
        depth = max(0, depth - (ch == ")"))
        column = 0 if ch == "\n" else column + 1
        prev = ch
    return out


def correlations(acts: np.ndarray, feats: np.ndarray, top: int = 10) -> dict:
    """For each feature, the `top` units by |Pearson correlation| with it: [[unit, r], ...]
    (none for a feature the text does not vary, e.g. quotes in a text without any)."""
    mean, f = acts.mean(0), feats - feats.mean(0)                        # (H,), (T, F)
    cov, var = np.zeros((acts.shape[1], f.shape[1])), np.zeros(acts.shape[1])
    for s in range(0, len(acts), BLOCK):          # (BLOCK, H) temporaries, never (T, H)
        a = acts[s:s + BLOCK] - mean                                     # (BLOCK, H)
        cov += a.T @ f[s:s + BLOCK]                                      # (H, F)
        var += np.einsum("th,th->h", a, a)                               # (H,)
    denom = np.sqrt(var)[:, None] * np.sqrt(np.einsum("tf,tf->f", f, f))[None, :]
    r = np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)
    ranked = {}
    for j, name in enumerate(FEATURES):
        order = np.argsort(-np.abs(r[:, j]))[:top]
        ranked[name] = [[int(u), round(float(r[u, j]), 4)] for u in order if r[u, j] != 0]
    return ranked


def units(traced: dict, tokens: list[str], layer: int, state: str) -> dict:
    """Every unit's activation per character for one layer and state (or gate) as int8
    ("values" (T, H), value = q / 127 * scale[unit]), and the units ranked by feature."""
    acts = traced["layers"][layer][state]                                # (T, H)
    scale = np.maximum(max_abs(acts), 1e-12)                             # (H,)
    q = np.empty(acts.shape, np.int8)                                    # (T, H)
    for s in range(0, len(acts), BLOCK):
        block = np.divide(acts[s:s + BLOCK], scale)                      # (BLOCK, H)
        q[s:s + BLOCK] = np.rint(np.multiply(block, 127, out=block), out=block)
    return {"layer": layer, "state": state, "shape": list(acts.shape),
            "scale": scale.round(6).tolist(), "values": q,
            "features": list(FEATURES),
            "ranking": correlations(acts, text_features(tokens))}


def max_abs(acts: np.ndarray) -> np.ndarray:
    """(H,) max |acts| over the rows of (T, H), a block of rows at a time: numpy's max along
    axis 0 of the whole array is 2x slower than the same over cache-sized blocks."""
    hi = np.full(acts.shape[1], -np.inf, acts.dtype)
    lo = np.full(acts.shape[1], np.inf, acts.dtype)
    for s in range(0, len(acts), 256):
        np.maximum(hi, acts[s:s + 256].max(axis=0), out=hi)
        np.minimum(lo, acts[s:s + 256].min(axis=0), out=lo)
    return np.maximum(hi, -lo)

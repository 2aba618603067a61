"""Generation's per-character loops, compiled (`fastloop.c`): the chapter's one-stream recurrence
as one call (greedy decoding, the lab's trace of an RNN layer) and the Kneser–Ney lookups that
the n-gram mixture makes every step. Each is tested against its numpy reference
(`rnn_step_numpy`, `ScratchStepper.greedy_numpy`, `KneserNey.rows_probs_numpy`).

The C file is built on first use with the machine's C compiler (`$CC`, else `cc`) for this
CPU and kept in rnnkit's cache folder ($RNNKIT_CACHE, else ~/.cache/rnnkit).
Where that cannot be done, or RNNKIT_FASTLOOP=0, everything runs the numpy loop and
`status()` says why in one line.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from .encode import cache_dir

SOURCE = Path(__file__).with_name("fastloop.c")
SOURCES = [SOURCE, SOURCE.with_name("fasttrain.c")]      # built as one library
HEADER = SOURCE.with_name("fastloop.h")
BUILDS = (["-O3", "-march=native"], ["-O3"])     # for this CPU's vector units, else any CPU's
LINK = ["-shared", "-fPIC", "-pthread"]
LANES, PANEL = 16, 128            # fastloop.c's vector width and panel width, in floats
TRAIN_PANEL = 32                  # and the panel width of its training GEMMs (TP)
_lib: ctypes.CDLL | None = None
_flags: list[str] = []
_why_not: str | None = None
_tried = False
_building = threading.Lock()


def _cpu() -> str:
    """What -march=native depends on: a build is kept per CPU model and feature set."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({x for x in lines if x.startswith(("model name", "flags"))}))


def _build(cc: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, *LINK, "-o", tmp, *map(str, SOURCES)], check=True,
                       timeout=120, capture_output=True)
        os.replace(tmp, target)         # atomic: concurrent builders each leave a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The compiled loops, built on first call; None where they cannot be (see `status`)."""
    global _tried
    if not _tried:
        with _building:                 # the lab's threads may all ask at once: one builds,
            if not _tried:              # and the others wait for its library
                _load()
                _tried = True
    return _lib


def _load() -> None:
    global _lib, _why_not
    if os.environ.get("RNNKIT_FASTLOOP", "1") == "0":
        _why_not = "RNNKIT_FASTLOOP=0"
        return
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        _why_not = "no C compiler found (set CC)"
        return
    failures = []
    for flags in BUILDS:               # a compiler without -march=native gets the plain build
        code = b"".join(f.read_bytes() for f in (*SOURCES, HEADER))
        key = hashlib.sha256(code + " ".join([cc, *flags, *LINK]).encode()
                             + _cpu().encode()).hexdigest()[:16]
        target = cache_dir() / f"fastloop-{platform.machine()}-{key}.so"
        try:
            if not target.exists():
                _build(cc, flags, target)
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            first = detail.decode(errors="replace").strip().splitlines()[:1]
            failures.append((first or [str(e)])[0])
    else:
        _why_not = f"could not build {SOURCE.name} with {cc}: {failures[0]}"
        return
    ptr, i = ctypes.c_void_p, ctypes.c_int
    lib.rnn_trace.argtypes = [i, i, ptr, ptr, ptr, ptr, i, i, ptr, ptr, ptr]
    lib.rnn_greedy.argtypes = [i, ptr, i, i, i, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i]
    lib.kn_rows.argtypes = [i, i, ptr, ctypes.c_int64, i, ptr, ptr, ptr, ptr, ptr, ptr, ptr,
                            ptr, ptr]
    lib.kn_mix.argtypes = [i, i, ptr, ptr, ctypes.c_int64, i, ptr, ptr, ptr, ptr, ptr, ptr,
                           ptr, i, ptr, ptr, ptr]
    lib.gated_trace.argtypes = [i, i, i, ptr, ptr, ptr, ptr, ptr]
    lib.rnn_train_forward.argtypes = [i, i, i, ptr, ptr, ptr, ptr, ptr, ptr, i]
    lib.rnn_train_backward.argtypes = [i, i, i, ptr, ptr, ptr, ptr, ptr, ptr, i]
    lib.gemm_rows.argtypes = [i, i, i, ptr, ptr, ptr, ptr, i]
    lib.gemm_xty.argtypes = [i, i, i, i, ptr, ptr, ctypes.c_int64, ptr, ptr, i, i]
    lib.has_bf16.argtypes = []
    lib.pack_pairs.argtypes = [i, i, ptr, ctypes.c_int64, ctypes.c_int64, ptr]
    lib.pack_pairs.restype = None
    lib.pack_floats.argtypes = [i, i, ptr, ctypes.c_int64, ctypes.c_int64, ptr]
    lib.pack_floats.restype = None
    lib.min_forward.argtypes = [i, i, i, i, ptr, ptr, ptr, i]
    lib.min_backward.argtypes = [i, i, i, i, ptr, ptr, ptr, ptr, ptr, ptr, i]
    for f in (lib.rnn_trace, lib.rnn_greedy, lib.kn_rows, lib.kn_mix, lib.gated_trace,
              lib.rnn_train_forward, lib.rnn_train_backward, lib.gemm_rows, lib.gemm_xty,
              lib.has_bf16, lib.min_forward, lib.min_backward):
        f.restype = i                                  # 0, or -1 out of memory
    _lib, _flags[:] = lib, flags


def threads() -> int:
    """Threads for a team: two where two cores are ours — shared by the processes of a
    `--nproc` run (RNNKIT_FASTLOOP_THREADS overrides). Safe on a busy machine: the caller does
    any panel the helper has not claimed."""
    wanted = os.environ.get("RNNKIT_FASTLOOP_THREADS", "")
    if wanted.isdigit():
        return max(1, int(wanted))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")     # processes of a `--nproc` run here
    return max(1, min(2, cores // max(1, int(ranks) if ranks.isdigit() else 1)))


def status() -> str:
    """One line: which loop one-stream greedy decoding and the lab's RNN trace run."""
    if library() is not None:
        return f"compiled loop ({SOURCE.name}, {' '.join(_flags)}, {threads()} threads)"
    return f"numpy loop: {_why_not}"


def pack_columns(W: np.ndarray) -> np.ndarray:
    """(n_in, n_out) → fastloop.c's layout: panels of 128 columns (the last one padded with
    zeros to a multiple of 16), each n_in contiguous rows."""
    n_in, n_out = W.shape
    full = n_out // PANEL * PANEL
    panels = np.asarray(W[:, :full], np.float32).reshape(n_in, full // PANEL, PANEL)
    packed = np.empty(n_in * _round(n_out), np.float32)
    packed[:n_in * full].reshape(full // PANEL, n_in, PANEL)[:] = panels.transpose(1, 0, 2)
    tail = packed[n_in * full:].reshape(n_in, -1)                 # (n_in, width of the last)
    tail[:, :n_out - full] = W[:, full:]
    tail[:, n_out - full:] = 0.0
    return packed


def _round(n: int) -> int:
    return -(-n // LANES) * LANES


def _address(a: np.ndarray) -> int:
    """a's data pointer (a third quicker than a.ctypes.data). The caller keeps `a` alive, in a
    name, for as long as C reads it: an address does not hold the array."""
    return a.__array_interface__["data"][0]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _check(rc: int) -> None:
    if rc != 0:
        raise MemoryError("fastloop: out of memory, or more tables than kn_rows takes")


def rnn_trace(gx: np.ndarray, W_hh_packed: np.ndarray, h0: np.ndarray,
              out: np.ndarray | None = None, W_out: np.ndarray | None = None,
              b_out: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """states (T, H): states[t] = tanh(gx[t] + states[t-1] W_hh), from h0 (H,); gx (T, H) is
    X_t W_xh + b_h. Given W_out (H, V) and b_out (V,): (states, logits (T, V)) with
    logits[t] = states[t] W_out + b_out."""
    lib = library()
    gx, h0 = _f32(gx), _f32(h0)
    T, H = gx.shape
    out = np.empty((T, H), np.float32) if out is None else out
    assert out.flags.c_contiguous and out.dtype == np.float32 and out.shape == (T, H)
    if W_out is None:
        _check(lib.rnn_trace(T, H, gx.ctypes.data, W_hh_packed.ctypes.data, h0.ctypes.data,
                             out.ctypes.data, threads(), 0, None, None, None))
        return out
    V = W_out.shape[1]
    W_out_packed, b_out = pack_columns(W_out), _f32(b_out)
    logits = np.empty((T, V), np.float32)
    _check(lib.rnn_trace(T, H, gx.ctypes.data, W_hh_packed.ctypes.data, h0.ctypes.data,
                         out.ctypes.data, threads(), V, W_out_packed.ctypes.data,
                         b_out.ctypes.data, logits.ctypes.data))
    return out, logits


GATED = {"lstm": (0, ("h", "c", "i", "f", "g", "o")), "gru": (1, ("h", "r", "z", "n"))}


def gated_trace(cell: str, gx: np.ndarray, W_h: np.ndarray, b_h: np.ndarray
                ) -> dict[str, np.ndarray]:
    """One LSTM or GRU layer read from zero states, as `lab.trace`'s numpy loop reads it:
    gx (T, G·H) = x W_x + b_x, W_h (H, G·H), b_h (G·H) in torch's gate order → every state and
    gate (T, H) by name (lab.STATES)."""
    code, names = GATED[cell]
    gx, b_h = _f32(gx), _f32(b_h)
    (T, GH), H = gx.shape, W_h.shape[0]
    out = np.empty((len(names), T, H), np.float32)
    W_h_packed, gh = pack_columns(W_h), np.empty(_round(GH), np.float32)   # alive in the call
    _check(library().gated_trace(code, T, H, _address(gx), _address(W_h_packed),
                                 _address(b_h), _address(out), _address(gh)))
    return dict(zip(names, out))


CHUNK = 1 << 16     # greedy ids a call makes at most: Ctrl-C is seen between calls (~0.5 s)


def rnn_greedy(prefix: list[int], num_preds: int, rows: np.ndarray, W_hh_packed: np.ndarray,
               W_hq_packed: np.ndarray, b_q: np.ndarray, h0: np.ndarray) -> list[int]:
    """Warm up on `prefix` from h0 (H,), then `num_preds` greedy ids; rows (V, H) = W_xh + b_h,
    b_q (V,). Same steps as `ScratchStepper.greedy_numpy`."""
    lib = library()
    V, H = rows.shape
    rows, b_q = _f32(rows), _f32(b_q)
    h = np.empty((2, H), np.float32)                  # H_{t-1} and H_t, in turn
    h[0] = h0
    logits = np.empty(_round(V), np.float32)
    ids = np.asarray(prefix, dtype=np.intc)
    if len(ids) == 0 or ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"prefix ids must be given and lie in [0, {V})")
    made: list[int] = []
    while True:
        n = min(CHUNK, num_preds - len(made))
        out = np.empty(n, np.intc)
        _check(lib.rnn_greedy(len(ids), ids.ctypes.data, n, H, V, rows.ctypes.data,
                              W_hh_packed.ctypes.data, W_hq_packed.ctypes.data,
                              b_q.ctypes.data, h.ctypes.data, logits.ctypes.data,
                              out.ctypes.data, threads()))
        made += out.tolist()
        if len(made) == num_preds:
            return made
        h[0] = h[(len(ids) - 1 + n) % 2]              # the state after the call's last step
        ids = out[-1:].copy()                         # fed first by the next call


class CountLookup:
    """A Kneser–Ney model's flat tables (`KneserNey._flat_tables`) as `kn_rows` reads them:
    `rows(history)` is `KneserNey.rows_probs_numpy(history)`, bitwise."""

    def __init__(self, tokens: np.ndarray, shares: np.ndarray, tables: list, top_totals:
                 np.ndarray, vocab_size: int):
        as64 = lambda a, t: np.ascontiguousarray(a, dtype=t)  # noqa: E731
        self.V, self.order = vocab_size, len(tables) - 1
        self.tokens, self.shares = as64(tokens, np.int64), as64(shares, np.float64)
        self.top_totals = as64(top_totals, np.int64)
        self.keep = [(as64(c, np.int64), as64(s, np.int64), as64(b, np.float64))
                     for c, s, b in tables]                   # the pointers below point here
        n, P = len(tables), ctypes.c_void_p
        self.contexts = (P * n)(*[c.ctypes.data for c, _, _ in self.keep])
        self.starts = (P * n)(*[s.ctypes.data for _, s, _ in self.keep])
        self.backoff = (P * n)(*[b.ctypes.data for _, _, b in self.keep])
        self.n_contexts = np.array([len(c) for c, _, _ in self.keep], np.int64)
        self.tables = (self.contexts, _address(self.n_contexts), self.starts, self.backoff,
                       _address(self.top_totals), _address(self.tokens), _address(self.shares))

    def rows(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """history (R, L ≥ order) ids, −1 before the text → p (R, V), top-context counts (R,).
        A generation step's call: ~1 µs of C a row, the rest is this call's Python."""
        history = np.ascontiguousarray(history, dtype=np.int64)
        R, L = history.shape
        p, top = np.empty((R, self.V)), np.empty(R, np.int64)
        _check(library().kn_rows(R, L, _address(history), self.V, self.order + 1, *self.tables,
                                 _address(p), _address(top)))
        return p, top

    def mix(self, history: np.ndarray, ids: np.ndarray, p_net: np.ndarray, weights: np.ndarray
            ) -> np.ndarray:
        """A generation step: history (R, L) int64 shifted in place with ids (R,) appended,
        then λ p_net + (1 − λ) p_kn (R, V) — `MixtureStepper`'s numpy arithmetic, bitwise."""
        assert history.dtype == np.int64 and history.flags.c_contiguous
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        p_net, weights = np.ascontiguousarray(p_net), np.ascontiguousarray(weights)
        R, L = history.shape
        out = np.empty((R, self.V))
        _check(library().kn_mix(R, L, _address(history), _address(ids), self.V, self.order + 1,
                                *self.tables, len(weights), _address(weights), _address(p_net),
                                _address(out)))
        return out


def pack_panels(W: torch.Tensor) -> torch.Tensor:
    """(K, N) → the training GEMMs' layout: panels of 32 columns (the last padded with zeros),
    each K contiguous rows of 32: (⌈N/32⌉, K, 32). In C (any strides), else in torch."""
    if library() is None or W.dtype != torch.float32 or W.device.type != "cpu":
        return pack_panels_torch(W)
    K, N = W.shape
    W = W.detach()
    out = torch.empty(-(-N // TRAIN_PANEL), K, TRAIN_PANEL)
    library().pack_floats(K, N, W.data_ptr(), W.stride(0), W.stride(1), _ptr(out))
    return out


def pack_panels_torch(W: torch.Tensor) -> torch.Tensor:
    """`pack_panels` in torch: the reference the C packing is tested against."""
    K, N = W.shape
    P = -(-N // TRAIN_PANEL)
    if N == P * TRAIN_PANEL:                                 # no padding: one copy
        return W.detach().unflatten(1, (P, TRAIN_PANEL)).transpose(0, 1).contiguous()
    padded = torch.zeros(K, P * TRAIN_PANEL, dtype=torch.float32)
    padded[:, :N] = W.detach()
    return padded.reshape(K, P, TRAIN_PANEL).transpose(0, 1).contiguous()


def has_bf16() -> bool:
    """Whether the compiled library multiplies in bf16 (AVX512-BF16 in its -march=native build)."""
    return library() is not None and bool(library().has_bf16())


def cannot_train(precision: str) -> str | None:
    """Why `--impl compiled` at this precision runs bptt's torch path instead (one line), or
    None when fasttrain.c runs it."""
    if library() is None:
        return status()
    if precision == "bf16" and not has_bf16():
        return "this CPU or build has no AVX512-BF16 for bf16 products"
    return None


def pack_pairs(W: torch.Tensor) -> torch.Tensor:
    """(K, N) → the bf16 GEMMs' layout: W rounded to bfloat16 (to nearest even), rows taken in
    pairs (k even in the low half of an int32), panels of 32 columns: (⌈N/32⌉, ⌈K/2⌉, 32).
    In C where the library has bf16 (a tenth of `pack_pairs_torch`'s time), else in torch."""
    if not has_bf16() or W.dtype != torch.float32 or W.device.type != "cpu":
        return pack_pairs_torch(W)
    K, N = W.shape
    W = W.detach()
    out = torch.empty(-(-N // TRAIN_PANEL), -(-K // 2), TRAIN_PANEL, dtype=torch.int32)
    library().pack_pairs(K, N, W.data_ptr(), W.stride(0), W.stride(1), _ptr(out))
    return out


def pack_pairs_torch(W: torch.Tensor) -> torch.Tensor:
    """`pack_pairs` in torch: the reference the C packing is tested against."""
    K, N = W.shape
    P, Kp = -(-N // TRAIN_PANEL), -(-K // 2)
    padded = torch.zeros(2 * Kp, P * TRAIN_PANEL, dtype=torch.bfloat16)
    padded[:K, :N] = W.detach()
    pairs = padded.view(torch.int16).reshape(Kp, 2, P, TRAIN_PANEL).permute(2, 0, 3, 1)
    return pairs.contiguous().view(torch.int32).reshape(P, Kp, TRAIN_PANEL)


def _ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.dtype in (torch.float32, torch.int32, torch.int64) and t.is_contiguous() \
        and t.device.type == "cpu"
    return t.data_ptr()


def gemm_rows(x: torch.Tensor, W_packed: torch.Tensor, N: int, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """x (M, K) W + bias → (M, N), W = the (K, N) matrix packed (`pack_panels`): split by rows,
    for M >> N (the output layer, its gradient)."""
    x = x.contiguous()
    (M, K), out = x.shape, torch.empty(x.shape[0], N)
    _check(library().gemm_rows(M, K, N, _ptr(x), _ptr(W_packed), _ptr(bias), _ptr(out),
                               threads()))
    return out


def gemm_xty(x1: torch.Tensor, Y: torch.Tensor, x2: torch.Tensor | None = None,
             bf16: bool = False) -> torch.Tensor:
    """x1ᵀ Y[:K1] + x2ᵀ Y[K1:] (M, N) for x1 (K1, M), x2 (K2, M), Y (K1 + K2, N): a weight's
    gradient as one product over all T·B rows (bf16 products with `bf16`)."""
    x1 = x1.contiguous()
    x2 = None if x2 is None else x2.contiguous()
    Y = Y.contiguous()
    (K1, M), K2, N = x1.shape, 0 if x2 is None else x2.shape[0], Y.shape[1]
    out = torch.empty(M, N)
    _check(library().gemm_xty(M, N, K1, K2, _ptr(x1), _ptr(x2), M, _ptr(Y), _ptr(out),
                              int(bf16), threads()))
    return out


def _split(W_packed: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(fp32 panels, None) or (None, bf16 pairs), as the C side takes either."""
    return (None, W_packed) if W_packed.dtype == torch.int32 else (W_packed, None)


def rnn_train_forward(ids: torch.Tensor, rows: torch.Tensor, h0: torch.Tensor,
                      W_packed: torch.Tensor) -> torch.Tensor:
    """Hs (T, B, H): Hs[t] = tanh(rows[ids[t]] + Hs[t-1] W_hh), Hs[-1] = h0 (B, H); ids (T, B),
    rows (V, H) = W_xh + b_h, W_packed = pack_panels(W_hh), or pack_pairs(W_hh) for bf16
    products. `bptt.RNNRecurrence.forward`'s arithmetic, with X_t W_xh as a row of W_xh."""
    (T, B), H = ids.shape, h0.shape[1]
    ids, rows, h0 = ids.contiguous(), rows.contiguous(), h0.contiguous()
    Hs = torch.empty(T, B, H)
    _check(library().rnn_train_forward(T, B, H, _ptr(ids), _ptr(rows), _ptr(h0),
                                       *map(_ptr, _split(W_packed)), _ptr(Hs), threads()))
    return Hs


def rnn_train_backward(dH: torch.Tensor, Hs: torch.Tensor, WT_packed: torch.Tensor,
                       want_dh0: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dZ (T, B, H), the loss's gradient at each step's pre-activation, from dH (T, B, H) (each
    step's own output's) and Hs; and dh0 (B, H) if asked. WT_packed = pack_panels(W_hhᵀ), or
    pack_pairs(W_hhᵀ)."""
    T, B, H = Hs.shape
    dH = dH.contiguous()
    dZ = torch.empty(T, B, H)
    dh0 = torch.empty(B, H) if want_dh0 else None
    _check(library().rnn_train_backward(T, B, H, _ptr(dH), _ptr(Hs),
                                        *map(_ptr, _split(WT_packed)), _ptr(dZ), _ptr(dh0),
                                        threads()))
    return dZ, dh0


def min_forward(lstm: bool, gates: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """A minGRU (or minLSTM) window: h (B, T, H) from the gates' pre-activations (B, T, G·H)
    and h0 (B, H), as `MinCell.sequential` steps it."""
    gates, h0 = gates.contiguous(), h0.contiguous()
    (B, T, _), H = gates.shape, h0.shape[1]
    h = torch.empty(B, T, H)
    _check(library().min_forward(int(lstm), B, T, H, _ptr(gates), _ptr(h0), _ptr(h), threads()))
    return h


def min_backward(lstm: bool, gates: torch.Tensor, h0: torch.Tensor, h: torch.Tensor,
                 dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d gates (B, T, G·H) and d h0 (B, H) from dh (B, T, H) for `min_forward`'s window."""
    dh, (B, T, H) = dh.contiguous(), h.shape
    dgates, dh0 = torch.empty_like(gates), torch.empty(B, H)
    _check(library().min_backward(int(lstm), B, T, H, _ptr(gates), _ptr(h0), _ptr(h), _ptr(dh),
                                  _ptr(dgates), _ptr(dh0), threads()))
    return dgates, dh0

"""A counting model mixed into the network: interpolated Kneser–Ney over the training ids, and
the mixture p = λ·p_net + (1 − λ)·p_kn whose weights λ are fitted on the validation slice.

Why: a counting model learns a table of contexts in one pass over the text, where a network
needs many epochs of gradient descent to memorise the same table; the network, in turn, sees
further back and generalises across contexts. On a small text or a table-like source the counts
win, on long-range structure the network does, and their mixture beats both (README "Quality").
λ depends on how often the training text held the n-gram model's context (how much its counts
can be trusted): one weight per power of two of that count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import fastloop
from .models import LanguageModel

BUCKETS = 16            # λ per evidence bucket: floor(log2(1 + count of the context)), capped
FIT_STEPS = 60          # bisection steps: λ to within 2^-60
KEY_BITS = 62           # n-gram keys are base-V numbers in an int64


def max_context(vocab_size: int) -> int:
    """The longest context whose (context, token) keys fit in KEY_BITS: V^(k+1) < 2^62."""
    return max(1, int(KEY_BITS / math.log2(max(vocab_size, 2))) - 1)


def ngram_keys(ids: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """Every n-gram of `ids` as one base-V number (N - n + 1,): ids[i..i+n) → Σ id·V^(n-1-j)."""
    keys = ids[:len(ids) - n + 1].astype(np.int64)
    for j in range(1, n):
        keys = keys * vocab_size + ids[j:len(ids) - n + 1 + j]
    return keys


@dataclass
class CountTable:
    """Counts of (context, next token) for contexts of one length, sorted by key (context·V +
    token), so that each context's tokens are one contiguous slice."""
    keys: np.ndarray        # (P,) int64, strictly ascending
    counts: np.ndarray      # (P,) int64, ≥ 1
    vocab_size: int
    discount: float = 0.75  # D: the absolute discount of this context length

    def __post_init__(self):
        context = self.keys // self.vocab_size
        first = np.flatnonzero(np.r_[True, context[1:] != context[:-1]])
        self.contexts = context[first]                                    # (C,) ascending
        self.starts = np.r_[first, len(self.keys)]                        # (C + 1,)
        self.totals = np.add.reduceat(self.counts, first) if len(first) else self.counts[:0]

    @classmethod
    def of_keys(cls, keys: np.ndarray, vocab_size: int) -> "CountTable":
        unique, counts = np.unique(keys, return_counts=True)
        return cls(unique, counts.astype(np.int64), vocab_size)

    def find(self, context: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found (M,), index (M,)) of each context key among this table's contexts."""
        if not len(self.contexts):
            return np.zeros(len(context), bool), np.zeros(len(context), np.int64)
        j = np.minimum(np.searchsorted(self.contexts, context), len(self.contexts) - 1)
        return valid & (self.contexts[j] == context), j

    def count(self, context: np.ndarray, token: np.ndarray) -> np.ndarray:
        """c(context, token) for each row (M,); 0 where the pair never occurred."""
        if not len(self.keys):
            return np.zeros(len(token), np.int64)
        key = context * self.vocab_size + token
        i = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return np.where(self.keys[i] == key, self.counts[i], 0)

    def dense(self, j: np.ndarray) -> np.ndarray:
        """Counts of every token after the contexts at indices `j`: (M, V)."""
        lo, hi = self.starts[j], self.starts[j + 1]
        if len(j) == 1:                  # one context (generation): a slice, the same values
            out = np.zeros((1, self.vocab_size))
            out[0, self.keys[lo[0]:hi[0]] % self.vocab_size] = self.counts[lo[0]:hi[0]]
            return out
        lengths = hi - lo                                                 # (M,) tokens seen
        rows = np.repeat(np.arange(len(j)), lengths)                      # (Σ lengths,)
        pairs = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) \
            + np.repeat(lo, lengths)                                      # (Σ lengths,)
        out = np.zeros((len(j), self.vocab_size))                         # (M, V)
        out[rows, self.keys[pairs] % self.vocab_size] = self.counts[pairs]
        return out


def ney_discount(counts: np.ndarray) -> float:
    """Ney's absolute discount n1 / (n1 + 2·n2), from how many n-grams occur once and twice."""
    n1, n2 = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.75


def count_tables(ids: np.ndarray, vocab_size: int, longest: int
                 ) -> tuple[list[CountTable], list[CountTable]]:
    """(raw, continuation) tables for context lengths 0..longest (continuation: up to
    longest − 1). raw[k]: how often each token followed each k-token context; continuation[k]:
    after how many distinct tokens each (k-token context, token) pair occurred — what
    Kneser–Ney's lower orders count. Both use the discount of the raw counts."""
    if longest > max_context(vocab_size):
        raise ValueError(f"{longest} tokens of context overflow the keys of a vocabulary of "
                         f"{vocab_size} (at most {max_context(vocab_size)})")
    ids = np.asarray(ids, dtype=np.int64)
    raw, continuation = [], []
    for k in range(longest + 1):
        raw.append(CountTable.of_keys(ngram_keys(ids, k + 1, vocab_size), vocab_size))
        raw[k].discount = ney_discount(raw[k].counts)
        if k < longest:
            longer = np.unique(ngram_keys(ids, k + 2, vocab_size))        # distinct (k+2)-grams
            continuation.append(CountTable.of_keys(longer % vocab_size ** (k + 1), vocab_size))
            continuation[k].discount = raw[k].discount
    return raw, continuation


class KneserNey:
    """Interpolated Kneser–Ney with `tables[k]` for k = 0..order (the top one raw counts,
    the lower ones continuation counts): p_k(w|h) = max(c(h,w) − D_k, 0)/c(h)
    + D_k·N(h·)/c(h)·p_{k−1}(w|h'), and p_{−1} uniform. An unseen context backs off whole."""

    def __init__(self, tables: list[CountTable]):
        self.tables, self.order = tables, len(tables) - 1
        self.vocab_size = tables[0].vocab_size
        self._flat = None                       # generation's view of the tables: _flat_tables
        self._lookup = None                     # the same, for fastloop.kn_rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_flat": None, "_lookup": None}      # rebuilt when used

    @classmethod
    def fit(cls, ids: np.ndarray, vocab_size: int, order: int) -> "KneserNey":
        raw, continuation = count_tables(ids, vocab_size, order)
        return cls(continuation[:order] + [raw[order]])

    @classmethod
    def from_arrays(cls, tables: list[tuple[np.ndarray, np.ndarray]], discounts: list,
                    vocab_size: int) -> "KneserNey":
        """Rebuild from (keys, counts) per context length as saved, refusing arrays that are
        not what `count_tables` makes (a file from elsewhere)."""
        order = len(tables) - 1
        if not 1 <= order <= max_context(vocab_size) or len(discounts) != len(tables):
            raise ValueError(f"an order of {order} does not fit a vocabulary of {vocab_size}")
        built = []
        for k, ((keys, counts), d) in enumerate(zip(tables, discounts)):
            if keys.dtype != np.int64 or counts.dtype != np.int64 or keys.ndim != 1 \
                    or keys.shape != counts.shape:
                raise ValueError(f"table {k} is not int64 keys and counts of one length")
            if len(keys) and (keys[0] < 0 or keys[-1] >= vocab_size ** (k + 1)
                              or (np.diff(keys) <= 0).any() or counts.min() < 1):
                raise ValueError(f"table {k} holds keys out of order or range, or bad counts")
            if not (isinstance(d, (int, float)) and 0 <= d <= 1):
                raise ValueError(f"discount {d!r} is not in [0, 1]")
            built.append(CountTable(keys, counts, vocab_size, float(d)))
        return cls(built)

    def contexts(self, history: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """For k = 0..order, (key (M,), valid (M,)) of the last k tokens of each history row
        (M, L), L ≥ order; −1 marks a position before the text began (not a valid context)."""
        key, valid = np.zeros(len(history), np.int64), np.ones(len(history), bool)
        out, L = [(key, valid)], history.shape[1]
        for k in range(1, self.order + 1):         # one token further back: the next digit
            token = history[:, L - k]
            key = key + np.maximum(token, 0) * self.vocab_size ** (k - 1)
            valid = valid & (token >= 0)
            out.append((key, valid))
        return out

    def target_probs(self, history: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """p(target | history) for each row: history (M, L), targets (M,) → (M,)."""
        p = np.full(len(targets), 1.0 / self.vocab_size)                 # (M,) uniform floor
        for table, (key, valid) in zip(self.tables, self.contexts(history)):
            found, j = table.find(key, valid)
            c = table.count(key, targets).astype(np.float64)              # (M,)
            total, seen = table.totals[j], table.starts[j + 1] - table.starts[j]
            mixed = (np.maximum(c - table.discount, 0) + table.discount * seen * p) / \
                np.maximum(total, 1)
            p = np.where(found, mixed, p)
        return p

    def next_probs(self, history: np.ndarray) -> np.ndarray:
        """p(· | history) over the whole vocabulary: history (M, L) → (M, V), rows sum to 1."""
        p = np.full((len(history), self.vocab_size), 1.0 / self.vocab_size)  # (M, V)
        for table, (key, valid) in zip(self.tables, self.contexts(history)):
            found, j = table.find(key, valid)
            if not found.any():
                continue
            j = j[found]
            c = table.dense(j)                                            # (F, V)
            total = table.totals[j][:, None]                              # (F, 1)
            seen = (table.starts[j + 1] - table.starts[j])[:, None]       # (F, 1)
            p[found] = (np.maximum(c - table.discount, 0)
                        + table.discount * seen * p[found]) / total
        return p

    def row_probs(self, history: list[int]) -> tuple[np.ndarray, int]:
        """`next_probs` of one history (≥ order ids, −1 before the text) and how often its
        top context occurred: `rows_probs` of one row."""
        compiled = self.compiled_lookup()
        if compiled is None:
            return self.row_probs_numpy(history)
        p, top = compiled.rows(np.asarray(history, np.int64)[None])
        return p[0], int(top[0])

    def rows_probs(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`next_probs` of every history row (R, L ≥ order) and how often each row's top
        context occurred (R,): generation's lookups, compiled (`fastloop.kn_rows`), else
        `rows_probs_numpy`; bitwise the same either way."""
        compiled = self.compiled_lookup()
        if compiled is None:
            return self.rows_probs_numpy(history)
        return compiled.rows(history)

    def compiled_lookup(self) -> "fastloop.CountLookup | None":
        """The tables as `fastloop.kn_rows` reads them (built once), or None without fastloop."""
        if self._lookup is None and fastloop.library() is not None \
                and self.order < 64:                                     # kn_rows' limit
            tokens, shares, tables = self._flat_tables()
            self._lookup = fastloop.CountLookup(tokens, shares, tables,
                                                self.tables[-1].totals, self.vocab_size)
        return self._lookup

    def row_probs_numpy(self, history: list[int]) -> tuple[np.ndarray, int]:
        """`row_probs` in numpy, the recursion unrolled: p = Σ_k (Π_{m>k} b_m)·a_k + Π_k b_k / V
        over the seen contexts, a_k = max(c − D, 0)/c(h), b_k = D·N(h·)/c(h). One lookup per
        context length, then a handful of numpy calls in all."""
        tokens, shares, tables = self._flat_tables()
        V, key, seen, top = self.vocab_size, 0, [], 0
        for k, (contexts, starts, backoff) in enumerate(tables):
            if k:
                token = history[len(history) - k]
                if token < 0:                                 # before the text: no context
                    break
                key += token * V ** (k - 1)
            j = int(contexts.searchsorted(key))
            if j == len(contexts) or contexts[j] != key:   # nor, then, any longer one: each
                break                                      # longer context holds this one
            seen.append((int(starts[j]), int(starts[j + 1]), float(backoff[j])))
            top = int(self.tables[k].totals[j]) if k == self.order else 0
        scales, scale = [], 1.0
        for _, _, b in reversed(seen):                        # from the longest context down
            scales.append(scale)
            scale *= b
        lo = np.array([s[0] for s in reversed(seen)], np.int64)
        lengths = np.array([s[1] - s[0] for s in reversed(seen)], np.int64)
        first = np.cumsum(lengths) - lengths
        pairs = np.arange(lengths.sum()) + np.repeat(lo - first, lengths)  # (Σ lengths,)
        p = np.bincount(tokens[pairs], shares[pairs] * np.repeat(scales, lengths), V)
        return p + scale / V, top

    def rows_probs_numpy(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`row_probs_numpy` of every history row (R, L) at once: (R, V) and (R,), bitwise the
        same values (the same products, summed in the same order), in ~12 numpy calls an order
        whatever R."""
        tokens, shares, tables = self._flat_tables()
        (R, L), V = history.shape, self.vocab_size
        key, alive, top = np.zeros(R, np.int64), np.ones(R, bool), np.zeros(R, np.int64)
        seen = []                                    # per context length: rows, lo, hi, b
        for k, (contexts, starts, backoff) in enumerate(tables):
            if k:
                token = history[:, L - k]
                alive &= token >= 0
                key = key + np.maximum(token, 0) * V ** (k - 1)
            if not len(contexts):                     # a text shorter than this context
                break
            j = np.minimum(contexts.searchsorted(key), len(contexts) - 1)
            alive &= contexts[j] == key               # unseen: nor any longer one (row_probs)
            rows = np.flatnonzero(alive)
            if not len(rows):
                break
            j = j[rows]
            seen.append((rows, starts[j], starts[j + 1], backoff[j]))
            if k == self.order:
                top[rows] = self.tables[k].totals[j]
        scale, pieces = np.ones(R), []
        for rows, lo, hi, b in reversed(seen):                 # from the longest context down
            pieces.append((rows, lo, hi - lo, scale[rows]))
            scale[rows] *= b
        rows, lo, lengths, scales = (np.concatenate(x) for x in zip(*pieces)) if pieces else \
            (np.zeros(0, np.int64),) * 3 + (np.zeros(0),)
        first = np.cumsum(lengths) - lengths
        pairs = np.arange(lengths.sum()) + np.repeat(lo - first, lengths)  # (Σ lengths,)
        p = np.bincount(np.repeat(rows, lengths) * V + tokens[pairs],
                        shares[pairs] * np.repeat(scales, lengths), R * V).reshape(R, V)
        return p + scale[:, None] / V, top

    def _flat_tables(self):
        """Every table's pairs in two flat arrays — next token (ΣP,), discounted share (ΣP,) —
        and per table (contexts, starts into the flat arrays, back-off weights); made once."""
        if self._flat is None:
            tokens, shares, tables, offset = [], [], [], 0
            for t in self.tables:
                seen = np.diff(t.starts)                                  # N(h·) (C,)
                total = np.repeat(t.totals, seen).astype(np.float64)      # c(h) per pair
                tokens.append(t.keys % self.vocab_size)
                shares.append(np.maximum(t.counts - t.discount, 0) / total)
                tables.append((t.contexts, t.starts + offset, t.discount * seen / t.totals))
                offset += len(t.keys)
            self._flat = np.concatenate(tokens), np.concatenate(shares), tables
        return self._flat

    def evidence(self, history: np.ndarray) -> np.ndarray:
        """The λ bucket of each row (M,): floor(log2(1 + how often its top context occurred))."""
        top = self.tables[-1]
        found, j = top.find(*self.contexts(history)[-1])
        return bucket(np.where(found, top.totals[j], 0))


def bucket(count: np.ndarray) -> np.ndarray:
    """The λ bucket of top-context counts (M,): floor(log2(1 + count)), capped."""
    return np.minimum(np.log2(1 + count).astype(np.int64), BUCKETS - 1)


def fit_weights(p_net: np.ndarray, p_kn: np.ndarray, bucket: np.ndarray,
                steps: int = FIT_STEPS) -> np.ndarray:
    """λ per bucket (BUCKETS,) maximising Σ log(λ_b p_net + (1 − λ_b) p_kn). Each bucket's
    sum is concave in its λ, so bisection on the derivative finds the optimum, boundaries
    included (EM crawls there when the two parts predict alike)."""
    gap = p_net - p_kn                                                    # (N,)
    lo, hi = np.zeros(BUCKETS), np.ones(BUCKETS)
    for _ in range(steps):
        lam = (lo + hi) / 2
        slope = np.bincount(bucket, gap / (lam[bucket] * gap + p_kn), BUCKETS)  # d/dλ_b
        lo, hi = np.where(slope > 0, lam, lo), np.where(slope > 0, hi, lam)
    lam = np.minimum((lo + hi) / 2, 1 - 1e-6)   # the counts keep a sliver: never log(0)
    return np.where(np.bincount(bucket, minlength=BUCKETS) > 0, lam, 0.5)


def windows(history: torch.Tensor, X: torch.Tensor, length: int
            ) -> tuple[np.ndarray, torch.Tensor]:
    """The contexts of every step of X (B, T): the last `length` ids read up to and including
    X[:, t], as (T·B, length) with −1 before the text began; and the new history (B, length).
    `history` holds id + 1 (0: none), so that a zeroed state is an empty history."""
    seq = torch.cat([history, X + 1], dim=1).cpu().numpy().astype(np.int64) - 1  # (B, L + T)
    B, T = X.shape
    if T == 1:                                      # a generation step: the last L ids
        contexts = seq[:, 1:]                                             # (B, L)
    else:
        step = np.lib.stride_tricks.sliding_window_view(seq, length, axis=1)[:, 1:]  # (B,T,L)
        contexts = step.transpose(1, 0, 2).reshape(T * B, length)         # (T·B, L) time-major
    return contexts, torch.as_tensor(seq[:, seq.shape[1] - length:] + 1).to(history.device)


def preceding(ids: np.ndarray, starts: np.ndarray, length: int,
              before: np.ndarray | None = None) -> torch.Tensor:
    """The `length` ids before each of `starts` in `ids` — reaching back into `before`, the
    text that precedes `ids`, where given — as a history (B, length) of id + 1 (0 where the
    text has not begun): rows of held-out text start mid-text."""
    before = np.asarray(before[len(before) - length:] if before is not None and length
                        else [], dtype=np.int64)
    pos = np.asarray(starts)[:, None] - length + np.arange(length)       # (B, length)
    out = np.zeros(pos.shape, np.int64)
    inside, back = pos >= 0, (pos < 0) & (pos + len(before) >= 0)
    out[inside] = np.asarray(ids)[pos[inside]] + 1
    out[back] = before[pos[back] + len(before)] + 1
    return torch.from_numpy(out)


class NgramMixture(LanguageModel):
    """The network and a Kneser–Ney model as one model: forward gives log p_mix as logits
    (T, B, V), and the state carries the network's state plus the last ids read (B, order)."""

    def __init__(self, network: LanguageModel, ngram: KneserNey, weights: np.ndarray,
                 report: dict | None = None):
        super().__init__()
        self.report = dict(report or {})   # how it scored when fitted (ppl of mixture, parts)
        weights = np.asarray(weights, np.float64)
        if weights.shape != (BUCKETS,) or not ((weights >= 0) & (weights <= 1)).all():
            raise ValueError(f"the mixing weights must be {BUCKETS} numbers in [0, 1]")
        self.net, self.ngram, self.weights = network, ngram, weights
        self._cache: dict[bytes, tuple[np.ndarray, float]] = {}  # context → (p_kn, λ): counted()

    @property
    def network(self) -> LanguageModel:
        return self.net

    @property
    def mixture(self) -> dict:
        return {"n": self.ngram.order + 1, **self.report}

    def begin_state(self, batch_size: int, device=None) -> tuple:
        history = torch.zeros(batch_size, self.ngram.order, dtype=torch.long, device=device)
        return (*self.net.begin_state(batch_size, device), history)

    def prime(self, state: tuple, ids: np.ndarray, starts: np.ndarray,
              before: np.ndarray | None = None) -> tuple:
        """The n-gram part reads the ids before each row (`evaluate` reads held-out text in
        rows that start mid-text)."""
        history = preceding(ids, starts, self.ngram.order, before).to(state[-1].device)
        return (*state[:-1], history)

    def forward(self, X: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        logits, net_state = self.net(X, tuple(state[:-1]))               # (T, B, V)
        mixed, history = self.mix(logits, X, state[-1])
        return mixed, (*net_state, history)

    def scoring_steps(self, num_steps: int) -> int:
        return self.net.scoring_steps(num_steps)

    def stepper(self, n: int, device="cpu"):
        """The network's own step (a key/value cache, a fast path) with the counts mixed in."""
        return MixtureStepper(self, self.net.stepper(n, device), n, device)

    def trace(self, ids: list[int]) -> dict:
        traced = self.net.trace(ids)
        traced["logits"] = self.mix_trace(traced["logits"], ids)
        return traced

    def mix(self, logits: torch.Tensor, X: torch.Tensor, history: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """log(λ p_net + (1 − λ) p_kn) for network logits (T, B, V) of inputs X (B, T)."""
        T, B, V = logits.shape
        contexts, history = windows(history, X, self.ngram.order)         # (T·B, order)
        flat = logits.detach().reshape(T * B, V).cpu()
        out = torch.empty(T * B, V)                                       # (T·B, V)
        rows = max(1, (1 << 22) // V)                # a few MB at a time, even for big vocabularies
        for lo in range(0, T * B, rows):
            part = slice(lo, lo + rows)
            p_net = torch.softmax(flat[part].double(), -1).numpy()        # (R, V)
            p_kn, lam = self.counted(contexts[part])                      # (R, V), (R, 1)
            out[part] = torch.from_numpy(np.log(lam * p_net + (1 - lam) * p_kn))
        return out.reshape(T, B, V).to(logits.device), history

    def counted(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Kneser–Ney side of context rows (R, order): p_kn (R, V) and λ (R, 1). Generation
        asks for a few rows a step: compiled lookups (`rows_probs`), else the same contexts
        again and again, from a cache, each row from `row_probs` (`next_probs` to 1e-15)."""
        if len(contexts) > CACHED_ROWS_AT_ONCE:                      # evaluation: no reuse
            return (self.ngram.next_probs(contexts),
                    self.weights[self.ngram.evidence(contexts)][:, None])
        if self.ngram.compiled_lookup() is not None:     # ~1 µs a row: cheaper than the cache
            p_kn, top = self.ngram.rows_probs(contexts)                 # the cache's values
            return p_kn, self.weights[bucket(top)][:, None]
        keys = [row.tobytes() for row in contexts]
        cache = self._cache      # replaced when full, never emptied: other threads (the lab's)
        known = {key: cache[key] for key in keys if key in cache}   # may read it meanwhile
        missing = [i for i, key in enumerate(keys) if key not in known]
        if missing:
            if len(cache) + len(missing) > max(64, CACHE_VALUES // self.ngram.vocab_size):
                self._cache = cache = {}                             # bounded memory
            if len(missing) == 1:                                    # one stream: no arrays
                p, top = self.ngram.row_probs(contexts[missing[0]].tolist())
                p_kn, top = p[None], np.array([top])
            else:
                p_kn, top = self.ngram.rows_probs(contexts[missing])
            lam = self.weights[bucket(top)]
            for j, i in enumerate(missing):
                known[keys[i]] = cache[keys[i]] = (p_kn[j], lam[j])
        found = [known[key] for key in keys]
        return np.stack([p for p, _ in found]), np.array([lam for _, lam in found])[:, None]

    def forget(self) -> None:
        """Counted contexts dropped: the next steps count afresh, as in a new process."""
        self._cache = {}

    def mix_trace(self, logits: np.ndarray, ids: list[int]) -> np.ndarray:
        """The mixture's log-probabilities (T, V) along one text read from the start, given
        the network's logits (T, V) for it (the web lab's trace)."""
        X = torch.as_tensor(ids, dtype=torch.long)[None, :]              # (1, T)
        empty = torch.zeros(1, self.ngram.order, dtype=torch.long)
        return self.mix(torch.from_numpy(logits)[:, None, :], X, empty)[0][:, 0].numpy()


class MixtureStepper:
    """One step for N streams of a mixture: the network's step, then the counts mixed in
    for each stream's last ids (its history (N, order), −1 before the text) — `mix` for one
    step, without its windows and chunks."""

    def __init__(self, mixture: NgramMixture, step, n: int, device):
        self.mixture, self.step = mixture, step
        self.history = np.full((n, mixture.ngram.order), -1, np.int64)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.step(ids)                                           # (N, V)
        p_net = torch.softmax(logits.detach().cpu().double(), -1).numpy()  # (N, V)
        lookup, new = self.mixture.ngram.compiled_lookup(), ids.cpu().numpy()
        if lookup is not None and len(new) <= CACHED_ROWS_AT_ONCE:       # as `counted` decides
            mixed = lookup.mix(self.history, new, p_net, self.mixture.weights)  # the lines below
        else:
            self.history = np.concatenate([self.history[:, 1:], new[:, None]], 1)
            p_kn, lam = self.mixture.counted(self.history)                # (N, V), (N, 1)
            mixed = lam * p_net + (1 - lam) * p_kn                        # (N, V)
        return torch.from_numpy(np.log(mixed)).float().to(logits.device)

    def reorder(self, rows: torch.Tensor) -> None:
        self.step.reorder(rows)
        self.history = self.history[rows.cpu().numpy()]

    def reset(self, rows: list[int]) -> None:
        self.step.reset(rows)
        self.history[rows] = -1

    def save(self, rows: list[int]):
        return self.step.save(rows), self.history[rows].copy()

    def restore(self, rows: list[int], saved) -> None:
        self.step.restore(rows, saved[0])
        self.history[rows] = saved[1]


CACHED_ROWS_AT_ONCE = 64    # contexts a mixing call may take from the cache (generation: few)
CACHE_VALUES = 1 << 22      # probabilities the cache holds at most (32 MB)
FIT_TOKENS = 1 << 20        # validation tokens the weights are fitted on (16 weights need few)
COUNT_TOKENS = 1 << 24      # training tokens counted (the tables grow with the text)


@torch.no_grad()
def fit_mixture(network: nn.Module, train_ids: np.ndarray, val_ids: np.ndarray,
                vocab_size: int, longest: int, *, batch_size: int, num_steps: int,
                device: torch.device | str = "cpu", before: np.ndarray | None = None
                ) -> NgramMixture:
    """`network` mixed with the Kneser–Ney model of the context length (1..`longest`) and the
    weights that score the validation ids best, read as `evaluate` reads them (`before`: the
    ids that precede them); its figures (perplexities) in `.report`."""
    from .train import held_out_batches, held_out_logits
    longest = max(1, min(longest, max_context(vocab_size)))
    steps = network.scoring_steps(num_steps)
    starts = held_out_batches(val_ids, batch_size, steps).starts[0]       # each row's start
    history = preceding(val_ids, starts, longest, before)              # as `evaluate` reads
    p_net, contexts, targets = [], [], []
    for X, Y, logits in held_out_logits(network, val_ids, batch_size=batch_size,
                                        num_steps=num_steps, device=device):
        ctx, history = windows(history, X, longest)                       # (T·B, longest)
        y = Y.T.reshape(-1).numpy()                                       # (T·B,) time-major
        p = torch.softmax(logits.double().cpu(), -1).reshape(len(y), -1).numpy()
        p_net.append(p[np.arange(len(y)), y])
        contexts.append(ctx)
        targets.append(y)
        if sum(map(len, targets)) >= FIT_TOKENS:
            break
    p_net, contexts, targets = map(np.concatenate, (p_net, contexts, targets))
    raw, continuation = count_tables(np.asarray(train_ids[:COUNT_TOKENS]), vocab_size, longest)
    best = None
    for order in range(1, longest + 1):
        ngram = KneserNey(continuation[:order] + [raw[order]])
        p_kn = ngram.target_probs(contexts, targets)                      # (N,)
        bucket = ngram.evidence(contexts)                                 # (N,)
        weights = fit_weights(p_net, p_kn, bucket)
        loss = -np.log(weights[bucket] * p_net + (1 - weights[bucket]) * p_kn).mean()
        if best is None or loss < best[0]:
            best = (loss, ngram, weights, -np.log(p_kn).mean())
    loss, ngram, weights, kn_loss = best
    return NgramMixture(network, ngram, weights, report={
        "order": ngram.order, "val_ppl": math.exp(loss),
        "network_val_ppl": math.exp(-np.log(p_net).mean()),
        "ngram_val_ppl": math.exp(kn_loss), "fitted_on": len(targets)})

"""Property-based checks (hypothesis) of the iterators, prediction and clipping."""
import random

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.data import random_batches, sequential_batches
from rnnkit.generate import generate_ids
from rnnkit.models import RNNScratch
from rnnkit.train import clip_gradients

shapes = st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(0, 400),
                   st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_random_sampling_targets_each_appear_at_most_once_and_cover_the_full_batches(shape):
    batch_size, num_steps, extra, seed = shape
    n = batch_size * num_steps + num_steps + extra
    corpus = np.arange(n)                      # token value = its position
    batches = random_batches(corpus, batch_size, num_steps, random.Random(seed))
    targets = [int(t) for _, Y in batches for t in Y.flatten()]
    assert len(targets) == len(set(targets))   # no target token twice: no overlap
    offset = min(targets) - 1
    num_subseqs = (n - offset - 1) // num_steps
    # every subsequence that fits in a full batch is used once
    assert len(targets) == (num_subseqs // batch_size) * batch_size * num_steps
    for X, Y in batches:
        assert torch.equal(Y, X + 1)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_sequential_batches_tile_each_row_contiguously(shape):
    batch_size, num_steps, extra, seed = shape
    n = batch_size * num_steps + num_steps + 1 + extra
    batches = list(sequential_batches(np.arange(n), batch_size, num_steps, random.Random(seed)))
    assert len(batches) >= 1
    rows = torch.cat([X for X, _ in batches], dim=1)      # (B, num_batches * T)
    assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones_like(rows[:, 1:]))
    targets = torch.cat([Y for _, Y in batches]).flatten().tolist()
    assert len(targets) == len(set(targets))


_model = RNNScratch(28, 16, generator=torch.Generator().manual_seed(0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 27), min_size=1, max_size=20), st.integers(0, 50),
       st.integers(1, 4), st.floats(0, 2))
def test_generation_returns_exactly_num_preds_ids_per_stream(prefix, n, streams, temperature):
    out = generate_ids(_model, prefix, n, num_samples=streams, temperature=temperature, seed=0)
    assert out.shape == (streams, n)
    assert out.numel() == 0 or (0 <= int(out.min()) and int(out.max()) < 28)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=12), st.floats(1e-3, 1e3))
def test_clipping_bounds_the_norm_and_keeps_the_direction(values, theta):
    g = torch.tensor(values, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros_like(g))
    p.grad = g.clone()
    norm = clip_gradients([p], theta)
    assert abs(norm - float(g.norm())) <= 1e-9 * max(1.0, norm)
    assert float(p.grad.norm()) <= theta * (1 + 1e-9) or norm <= theta
    if norm <= theta:
        assert torch.equal(p.grad, g)
    else:
        assert torch.allclose(p.grad * norm / theta, g)

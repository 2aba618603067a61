import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit.bptt import RNNRecurrence
from rnnkit.data import load_corpus, sequential_batches, split_corpus
from rnnkit.models import RNNScratch
from rnnkit.train import perplexity, train_epoch


def _grads(impl, X, Y, h0, precision="fp32", H=96, w_scale=20):
    m = RNNScratch(28, H, impl=impl, precision=precision,
                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                      # larger weights so tanh is not linear
        m.W_hh.mul_(w_scale)
        m.W_xh.mul_(50)
    h = h0.clone().requires_grad_(True)
    out, (hT,) = m(X, (h,))
    loss = F.cross_entropy(out.reshape(-1, 28), Y.T.reshape(-1)) + hT.square().mean()
    loss.backward()
    return out, {n: p.grad for n, p in m.named_parameters()} | {"h0": h.grad}


def test_hand_derived_gradients_equal_autograd_in_fp32():
    torch.manual_seed(0)
    X, Y = torch.randint(0, 28, (8, 20)), torch.randint(0, 28, (8, 20))
    h0 = torch.randn(8, 96) * 0.5
    out_ref, ref = _grads("autograd", X, Y, h0)
    out, fast = _grads("bptt", X, Y, h0)
    assert torch.allclose(out, out_ref, atol=1e-5)
    for name in ref:
        err = (fast[name] - ref[name]).norm() / ref[name].norm()
        assert err < 1e-5, (name, err.item())


def test_recurrence_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    A = torch.randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(6, 6, dtype=torch.float64) * 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, h, w: RNNRecurrence.apply(a, h, w, False),
                                    (A, h0, W))


def test_bf16_gradients_stay_close_to_fp32():
    torch.manual_seed(0)
    X, Y = torch.randint(0, 28, (8, 20)), torch.randint(0, 28, (8, 20))
    h0 = torch.randn(8, 96) * 0.5
    # a contracting recurrence (as in training); a chaotic one amplifies any rounding
    _, ref = _grads("autograd", X, Y, h0, w_scale=5)
    _, bf = _grads("bptt", X, Y, h0, precision="bf16", w_scale=5)
    for name in ref:
        assert (bf[name] - ref[name]).norm() / ref[name].norm() < 0.05, name


def test_bptt_trains_with_the_same_perplexities_as_the_autograd_loop():
    ids, _ = load_corpus()
    train, _, _ = split_corpus(ids, 0.1, 3000)
    ppls = {}
    for impl in ("autograd", "bptt"):
        m = RNNScratch(28, 64, impl=impl, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(m.parameters(), lr=1)
        ppls[impl] = []
        for epoch in range(4):
            batches = sequential_batches(train, 8, 35, random.Random(epoch))
            loss, n, _ = train_epoch(m, batches, opt, clip=1, carry_state=True)
            ppls[impl].append(perplexity(loss, n))
    assert np.allclose(ppls["autograd"], ppls["bptt"], rtol=1e-4)
    assert ppls["bptt"][-1] < ppls["bptt"][0]


def _gated(cls, impl, seed=0):
    m = cls(28, 40, impl=impl, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():                     # away from zero so every gate is exercised
        g = torch.Generator().manual_seed(seed + 1)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_bptt_equals_the_autograd_cells(cell):
    from rnnkit.models import GRUScratch, LSTMScratch
    cls = GRUScratch if cell == "gru" else LSTMScratch
    torch.manual_seed(0)
    X, Y = torch.randint(0, 28, (6, 17)), torch.randint(0, 28, (6, 17))
    grads, outs = {}, {}
    init = [torch.randn(6, 40) * 0.5 for _ in range(2 if cell == "lstm" else 1)]
    for impl in ("autograd", "bptt"):
        m = _gated(cls, impl)
        state = tuple(s.clone().requires_grad_(True) for s in init)
        out, new = m(X, state)
        loss = F.cross_entropy(out.reshape(-1, 28), Y.T.reshape(-1)) + \
            sum(s.square().mean() for s in new)   # the final state carries gradient too
        loss.backward()
        outs[impl] = out.detach()
        grads[impl] = {n: p.grad for n, p in m.named_parameters()} | \
            {f"state{i}": s.grad for i, s in enumerate(state)}
    assert torch.allclose(outs["bptt"], outs["autograd"], atol=1e-5)
    for name, ref in grads["autograd"].items():
        err = (grads["bptt"][name] - ref).norm() / ref.norm()
        assert err < 1e-5, (cell, name, err.item())


def test_gated_recurrences_pass_gradcheck_in_float64():
    from rnnkit.bptt import GRURecurrence, LSTMRecurrence
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    A4, A3 = torch.randn(4, 2, 12, **d), torch.randn(4, 2, 9, **d)
    h0, c0 = torch.randn(2, 3, **d), torch.randn(2, 3, **d)
    W4, W3, b = torch.randn(3, 12, **d), torch.randn(3, 9, **d), torch.randn(3, **d)
    assert torch.autograd.gradcheck(lambda *a: LSTMRecurrence.apply(*a), (A4, h0, c0, W4))
    assert torch.autograd.gradcheck(lambda *a: GRURecurrence.apply(*a), (A3, h0, W3, b))

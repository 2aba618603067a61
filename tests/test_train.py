import math
import random

import numpy as np
import pytest
import torch

from rnnkit.data import random_batches, sequential_batches
from rnnkit.models import LanguageModel, RNNScratch
from rnnkit.train import clip_gradients, evaluate, perplexity, sequence_loss, train_epoch


class Uniform(LanguageModel):
    """Predicts every token with probability 1/V (a model kind of its own: the interface)."""

    def __init__(self, V):
        super().__init__()
        self.V, self.w = V, torch.nn.Parameter(torch.zeros(()))

    def begin_state(self, batch_size, device=None):
        return (torch.zeros(batch_size),)

    def forward(self, X, state):
        return torch.zeros(X.shape[1], X.shape[0], self.V) + self.w, state


def test_uniform_model_scores_exactly_the_vocabulary_size():
    ids = np.random.default_rng(0).integers(0, 28, 5000)
    loss, n = evaluate(Uniform(28), ids, batch_size=8, num_steps=35)
    assert perplexity(loss, n) == pytest.approx(28, rel=1e-12)
    logits = torch.zeros(35, 4, 28)     # the fp32 training loss: exact to fp32 rounding
    assert math.exp(sequence_loss(logits, torch.zeros(4, 35, dtype=torch.long))) == \
        pytest.approx(28, rel=1e-5)


def _params_with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_clipping_rescales_only_above_theta_and_keeps_direction():
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]     # global norm 5
    params = _params_with_grads(*g)
    assert clip_gradients(params, 10.0) == pytest.approx(5.0)
    assert torch.equal(params[0].grad, g[0])                   # below θ: untouched
    params = _params_with_grads(*g)
    clip_gradients(params, 1.0)
    assert torch.allclose(params[0].grad, g[0] / 5) and torch.allclose(params[1].grad, g[1] / 5)
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert norm.item() == pytest.approx(1.0)


@pytest.mark.parametrize("sampler,carry", [(sequential_batches, True), (random_batches, False)])
def test_a_short_training_run_lowers_perplexity(sampler, carry):
    from rnnkit.data import load_corpus, split_corpus
    ids, vocab = load_corpus()
    train, val, _ = split_corpus(ids, 0.1, 4000)
    m = RNNScratch(len(vocab), 64, impl="bptt", generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(m.parameters(), lr=1)
    before = perplexity(*evaluate(m, val, batch_size=16, num_steps=35))
    ppls = []
    for epoch in range(8):
        loss, n, _ = train_epoch(m, sampler(train, 16, 35, random.Random(epoch)), opt,
                                 clip=1, carry_state=carry)
        ppls.append(perplexity(loss, n))
    after = perplexity(*evaluate(m, val, batch_size=16, num_steps=35))
    assert before == pytest.approx(28, rel=0.01)              # untrained ≈ uniform
    assert ppls[-1] < 0.7 * ppls[0] and after < 0.7 * before


def test_sequential_training_carries_the_state_between_batches():
    seen = []

    class Spy(Uniform):
        def forward(self, X, state):
            seen.append(state[0])
            return super().forward(X, (state[0] + 1,))

    for carry, expected in ((True, [0, 1, 2]), (False, [0, 0, 0])):
        seen.clear()
        batches = sequential_batches(np.arange(500), 2, 5, random.Random(0))
        m = Spy(500)
        train_epoch(m, list(batches)[:3], torch.optim.SGD(m.parameters(), lr=0.1), clip=1,
                    carry_state=carry)
        assert [int(s[0]) for s in seen] == expected
        assert all(not s.requires_grad for s in seen)

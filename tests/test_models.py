import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.config import TrainConfig
from rnnkit.models import RNNScratch, TorchRNN, build_model, count_parameters, size_bound


def _model(impl="autograd", V=28, H=64, seed=0, **kw):
    return RNNScratch(V, H, impl=impl, generator=torch.Generator().manual_seed(seed), **kw)


def test_parameters_are_the_chapters_with_its_initialisation():
    m = RNNScratch(28, 512, generator=torch.Generator().manual_seed(0))
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"W_xh": (28, 512), "W_hh": (512, 512), "b_h": (512,),
                      "W_hq": (512, 28), "b_q": (28,)}
    assert torch.count_nonzero(m.b_h) == 0 and torch.count_nonzero(m.b_q) == 0
    assert abs(m.W_hh.std().item() - 0.01) < 5e-4 and abs(m.W_hh.mean().item()) < 5e-4
    state = m.begin_state(32)
    assert isinstance(state, tuple) and state[0].shape == (32, 512)
    assert not torch.any(state[0])


def test_one_hot_product_equals_row_lookup_of_W_xh():
    m = _model()
    X = torch.randint(0, 28, (4, 9))
    one_hot = F.one_hot(X.T, 28).float() @ m.W_xh        # (T, B, H)
    rows = m.W_xh[X.T]                                   # (T, B, H)
    assert torch.equal(one_hot, rows)
    fast = _model("bptt")
    state = (torch.randn(4, 64) * 0.3,)
    assert torch.allclose(m(X, state)[0], fast(X, state)[0], atol=1e-6)


def test_output_at_step_t_depends_only_on_inputs_up_to_t():
    for impl in ("autograd", "bptt"):
        m = _model(impl)
        X = torch.randint(1, 28, (3, 12))
        out, _ = m(X, m.begin_state(3))
        for t in (0, 5, 10):
            X2 = X.clone()
            X2[:, t + 1:] = (X2[:, t + 1:] + 7) % 28      # change only the future
            out2, _ = m(X2, m.begin_state(3))
            assert torch.equal(out[: t + 1], out2[: t + 1]), (impl, t)
            assert not torch.equal(out[t + 1:], out2[t + 1:])


def test_scratch_rnn_equals_torch_nn_rnn_with_copied_weights():
    m = _model(H=32)
    ref = nn.RNN(28, 32)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(m.W_xh.T)
        ref.weight_hh_l0.copy_(m.W_hh.T)
        ref.bias_ih_l0.copy_(m.b_h)
        ref.bias_hh_l0.zero_()
    X = torch.randint(0, 28, (5, 11))
    h0 = torch.randn(5, 32) * 0.5
    out, (hT,) = m(X, (h0,))
    H, hT_ref = ref(F.one_hot(X.T, 28).float(), h0[None])
    assert torch.allclose(out, H @ m.W_hq + m.b_q, atol=1e-6)
    assert torch.allclose(hT, hT_ref[0], atol=1e-6)


def test_torch_model_shapes_for_every_cell():
    tied = TorchRNN(28, 16, cell="lstm", num_layers=2, dropout=0.1, embed=16, tie=True)
    assert tied.linear.weight is tied.embedding.weight
    assert tied(torch.randint(0, 28, (3, 7)), tied.begin_state(3))[0].shape == (7, 3, 28)
    for cell in ("rnn", "gru", "lstm"):
        m = TorchRNN(28, 16, cell=cell)
        state = m.begin_state(3)
        out, new = m(torch.randint(0, 28, (3, 7)), state)
        assert out.shape == (7, 3, 28) and len(new) == len(state)


def test_build_model_is_reproducible_from_the_seed():
    from rnnkit.config import TrainConfig
    for impl in ("bptt", "torch"):
        cfg = TrainConfig(hidden=16, impl=impl, seed=3)
        a, b = build_model(28, cfg), build_model(28, cfg)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    state = torch.random.get_rng_state()
    build_model(28, TrainConfig(hidden=16, impl="torch", seed=5))
    assert torch.equal(state, torch.random.get_rng_state())   # no global RNG touched


def _copy_gru(m, ref):
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.cat([m.W_xr, m.W_xz, m.W_xn], 1).T)
        ref.weight_hh_l0.copy_(torch.cat([m.W_hr, m.W_hz, m.W_hn], 1).T)
        ref.bias_ih_l0.copy_(torch.cat([m.b_r, m.b_z, m.b_xn]))
        ref.bias_hh_l0.copy_(torch.cat([torch.zeros_like(m.b_r), torch.zeros_like(m.b_z),
                                        m.b_hn]))


def _copy_lstm(m, ref):
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.cat([m.W_xi, m.W_xf, m.W_xc, m.W_xo], 1).T)
        ref.weight_hh_l0.copy_(torch.cat([m.W_hi, m.W_hf, m.W_hc, m.W_ho], 1).T)
        ref.bias_ih_l0.copy_(torch.cat([m.b_i, m.b_f, m.b_c, m.b_o]))
        ref.bias_hh_l0.zero_()


def _ref_grads_of(ref, names, m):
    """Map nn.GRU/LSTM packed gradients back to the scratch parameter names."""
    H = m.num_hiddens
    gw_ih, gw_hh, gb_ih, gb_hh = (ref.weight_ih_l0.grad, ref.weight_hh_l0.grad,
                                  ref.bias_ih_l0.grad, ref.bias_hh_l0.grad)
    out = {}
    for k, gate in enumerate(names):
        out[f"W_x{gate}"] = gw_ih[k * H:(k + 1) * H].T
        out[f"W_h{gate}"] = gw_hh[k * H:(k + 1) * H].T
    return out, gb_ih, gb_hh


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_scratch_cells_equal_torch_outputs_and_gradients(cell):
    from rnnkit.models import GRUScratch, LSTMScratch
    torch.manual_seed(0)
    Scratch, Ref = (GRUScratch, nn.GRU) if cell == "gru" else (LSTMScratch, nn.LSTM)
    m = Scratch(28, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ref = Ref(28, 24)
    (_copy_gru if cell == "gru" else _copy_lstm)(m, ref)
    X = torch.randint(0, 28, (4, 9))
    state = m.begin_state(4)
    state = tuple(torch.randn_like(s) * 0.5 for s in state)
    out, new = m(X, state)
    ref_state = state[0][None] if cell == "gru" else tuple(s[None] for s in state)
    Y, ref_new = ref(F.one_hot(X.T, 28).float(), ref_state)
    ref_out = Y @ m.W_hq + m.b_q
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(new[0], (ref_new if cell == "gru" else ref_new[0])[0], atol=1e-5)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    names = ("r", "z", "n") if cell == "gru" else ("i", "f", "c", "o")
    grads, gb_ih, gb_hh = _ref_grads_of(ref, names, m)
    for name, g in grads.items():
        got = dict(m.named_parameters())[name].grad
        assert torch.allclose(got, g, rtol=1e-4, atol=1e-5), name
    H = 24
    if cell == "gru":
        assert torch.allclose(m.b_r.grad, gb_ih[:H], atol=1e-5)
        assert torch.allclose(m.b_hn.grad, gb_hh[2 * H:], atol=1e-5)
    else:
        assert torch.allclose(m.b_f.grad, gb_ih[H:2 * H], atol=1e-5)


@pytest.mark.parametrize("cell,impl", [("rnn", "bptt"), ("gru", "bptt"), ("lstm", "autograd"),
                                       ("rnn", "torch"), ("lstm", "torch"), ("mingru", "torch"),
                                       ("minlstm", "torch"), ("transformer", "torch")])
def test_the_size_bound_that_spares_the_meta_build_exceeds_every_kinds_count(cell, impl):
    """check_size builds nothing below the bound, so the bound must hold for every kind."""
    for vocab, hidden, embed, layers, steps, tie in [
            (1, 1, None, 1, 1, False), (28, 32, None, 3, 200, False), (5000, 64, 8, 2, 35, False),
            (3, 96, 200, 4, 512, False), (60, 64, 64, 2, 64, True)]:
        if (embed is not None or tie) and impl != "torch" or tie and embed != hidden \
                or cell == "transformer" and (embed is not None or tie):
            continue
        config = TrainConfig(cell=cell, impl=impl, hidden=hidden, embed=embed, layers=layers,
                             num_steps=steps, tie=tie)
        assert count_parameters(vocab, config) < size_bound(vocab, config)

"""Hand-derived backpropagation through time for `RNNScratch`, `GRUScratch` and `LSTMScratch`
(the fast paths).

Forward runs the recurrence into one preallocated (T, B, H) buffer; backward runs the reverse
recurrence with one GEMM per step and forms dW_hh as a single GEMM over all T·B rows. The
input projection is a row lookup of W_xh (equal to the one-hot product) and the output
projection one GEMM over all steps, both left to autograd. `models.RNNScratch(impl='autograd')`
is the reference this is tested against.

Measured tricks (see `rnnkit bench`): ATen's tanh costs ~5x its sigmoid on a (32, 512) block,
so we run tanh(z) = 2·sigmoid(2z) − 1 with the affine parts folded into the GEMM; MKL multiplies
by a transposed contiguous matrix ~15% faster, so W_hhᵀ is made contiguous once; and the hot
loops write into preallocated buffers (`out=`), allocating nothing per step.

`CompiledRNN` (`--impl compiled`) is the same arithmetic for the chapter's RNN with every
product in C (fasttrain.c), which multiplies these shapes ~2x faster than MKL does here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fastloop


class RNNRecurrence(torch.autograd.Function):
    """H_t = tanh(A_t + H_{t-1} W_hh) for t = 0..T-1, with A = X W_xh + b_h given: (T, B, H).

    With `bf16`, the H_{t-1} W_hh products run in bfloat16 while H, A and every sum stay fp32.
    """

    @staticmethod
    def forward(ctx, A: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor, bf16: bool):
        # S_t = sigmoid(2 Z_t), so H_t = 2 S_t − 1 = tanh(Z_t) and, with U = S − ½ = H / 2,
        # 2 Z_t = 2 A_t + 4 U_{t−1} W_hh: the affine parts fold into the GEMM's alpha.
        T, B, n = A.shape
        dtype = torch.bfloat16 if bf16 else A.dtype
        W = W_hh.t().contiguous().to(dtype).t()                  # (H, H) view of W_hhᵀ
        U = torch.mul(h0, 0.5).to(dtype)                         # (B, H) H_{t-1} / 2
        S = torch.mul(A, 2)                                      # (T, B, H) 2 A, then S
        if bf16:
            P = torch.empty(B, n, dtype=dtype, device=A.device)  # (B, H) U W_hh
        for t in range(T):
            if t > 0:  # U = S − ½ is exact in fp32 and keeps bf16's precision near H = 0
                torch.sub(S[t - 1], 0.5, out=U)                  # (B, H)
            if bf16:
                torch.mm(U, W, out=P)                            # (B, H) bf16 product
                S[t].add_(P, alpha=4)                            # (B, H) 2 Z_t, fp32 sum
            else:
                S[t].addmm_(U, W, alpha=4)                       # (B, H) 2 Z_t
            torch.sigmoid_(S[t])                                 # (B, H) S_t
        H = S.mul_(2).sub_(1)                                    # (T, B, H) = tanh(Z)
        ctx.save_for_backward(H, h0, W_hh)
        ctx.bf16 = bf16
        return H

    @staticmethod
    def backward(ctx, dH: torch.Tensor):
        H, h0, W_hh = ctx.saved_tensors
        T, B, n = H.shape
        dtype = torch.bfloat16 if ctx.bf16 else H.dtype
        W_T = W_hh.to(dtype).t()                                 # (H, H) view of W_hhᵀ
        dZ = torch.mul(H, H).neg_().add_(1)                      # (T, B, H) tanh', then dL/dZ
        dH = dH.contiguous()                                     # (T, B, H) from the outputs
        dZ[T - 1].mul_(dH[T - 1])
        g = torch.empty(B, n, dtype=H.dtype, device=H.device)    # (B, H) dL/dH_t
        if ctx.bf16:
            Zb = torch.empty(B, n, dtype=dtype, device=H.device)
            P = torch.empty(B, n, dtype=dtype, device=H.device)
        for t in range(T - 2, -1, -1):
            # dL/dH_t = dH_t (own output) + dZ_{t+1} W_hhᵀ (next step); dL/dZ_t = that · tanh'
            if ctx.bf16:
                Zb.copy_(dZ[t + 1])
                torch.mm(Zb, W_T, out=P)                         # (B, H) bf16
                torch.add(dH[t], P, out=g)                       # (B, H) fp32
            else:
                torch.addmm(dH[t], dZ[t + 1], W_T, out=g)        # (B, H)
            dZ[t].mul_(g)                                        # (B, H)
        dh0 = dW = None
        if ctx.needs_input_grad[1]:
            dh0 = dZ[0] @ W_hh.t()                               # (B, H)
        if ctx.needs_input_grad[2]:
            H_prev = torch.cat([h0.unsqueeze(0), H[:-1]])        # (T, B, H)
            # one GEMM over all T·B rows: dW_hh = Σ_t H_{t-1}ᵀ dZ_t
            dW = (H_prev.reshape(T * B, n).t().to(dtype) @ dZ.reshape(T * B, n).to(dtype))
            dW = dW.to(W_hh.dtype)                               # (H, H)
        return dZ, dh0, dW, None


class CompiledRNN(torch.autograd.Function):
    """The chapter's whole RNN — X_t W_xh as rows of W_xh, the recurrence, the output layer — and
    its hand-derived gradient (`RNNRecurrence`'s, with the output layer's and the input rows'),
    every product in fasttrain.c on two threads (`--impl compiled`); with `bf16` the recurrence's
    products (W_hh's, forward and backward, and dW_hh) in bfloat16. Its sums run in another
    order than MKL's, so it is tested against `rnn_forward` and the book's loop within
    rounding, not bitwise. X (B, T) ids, h0 (B, H) → logits (T, B, V), H_T (B, H)."""

    @staticmethod
    def forward(ctx, X, h0, W_xh, W_hh, b_h, W_hq, b_q, bf16: bool = False):
        ids = X.T.contiguous()                                            # (T, B)
        pack = fastloop.pack_pairs if bf16 else fastloop.pack_panels     # bf16: W_hh's products
        Hs = fastloop.rnn_train_forward(ids, W_xh + b_h, h0, pack(W_hh))  # (T, B, H)
        T, B, n = Hs.shape
        V = W_hq.shape[1]
        O = fastloop.gemm_rows(Hs.reshape(T * B, n), fastloop.pack_panels(W_hq), V, b_q)
        ctx.save_for_backward(ids, h0, Hs, W_hh, W_hq)
        ctx.bf16 = bf16
        return O.reshape(T, B, V), Hs[-1].clone()

    @staticmethod
    def backward(ctx, dO: torch.Tensor, dH_T: torch.Tensor | None):
        ids, h0, Hs, W_hh, W_hq = ctx.saved_tensors
        T, B, n = Hs.shape
        dO = dO.reshape(T * B, -1).contiguous()                           # (T·B, V)
        dH = fastloop.gemm_rows(dO, fastloop.pack_panels(W_hq.t()), n).reshape(T, B, n)
        if dH_T is not None:
            dH[-1] += dH_T                                                # the carried state's
        pack = fastloop.pack_pairs if ctx.bf16 else fastloop.pack_panels
        dZ, dh0 = fastloop.rnn_train_backward(dH, Hs, pack(W_hh.t()),
                                              ctx.needs_input_grad[1])    # (T, B, H)
        flat = dZ.reshape(T * B, n)                                       # (T·B, H)
        dW_xh = torch.zeros(W_hq.shape[1], n).index_add_(0, ids.reshape(-1), flat)   # (V, H)
        dW_hh = fastloop.gemm_xty(h0, flat, Hs[:-1].reshape(-1, n),
                                  bf16=ctx.bf16)                          # Σ H_{t-1}ᵀ dZ_t
        dW_hq = fastloop.gemm_xty(Hs.reshape(-1, n), dO)                  # Σ H_tᵀ dO_t
        return None, dh0, dW_xh, dW_hh, flat.sum(0), dW_hq, dO.sum(0), None


def lstm_forward(X: torch.Tensor, state: tuple, m) -> tuple[torch.Tensor, tuple]:
    """LSTMScratch `m` on ids X (B, T) → logits (T, B, V), (H_T, C_T), through LSTMRecurrence."""
    B, T = X.shape
    W_x = torch.cat([m.W_xi, m.W_xf, m.W_xc, m.W_xo], dim=1)    # (V, 4H)
    W_h = torch.cat([m.W_hi, m.W_hf, m.W_hc, m.W_ho], dim=1)    # (H, 4H)
    b = torch.cat([m.b_i, m.b_f, m.b_c, m.b_o])                 # (4H,)
    A = F.embedding(X.T, W_x) + b                                # (T, B, 4H) row lookup
    Hs, Cs = LSTMRecurrence.apply(A, state[0], state[1], W_h)    # (T, B, H) each
    O = torch.addmm(m.b_q, Hs.reshape(T * B, -1), m.W_hq)        # (T·B, V)
    return O.reshape(T, B, -1), (Hs[-1], Cs[-1])


def gru_forward(X: torch.Tensor, state: tuple, m) -> tuple[torch.Tensor, tuple]:
    """GRUScratch `m` on ids X (B, T) → logits (T, B, V), (H_T,), through GRURecurrence."""
    B, T = X.shape
    W_x = torch.cat([m.W_xr, m.W_xz, m.W_xn], dim=1)            # (V, 3H)
    W_h = torch.cat([m.W_hr, m.W_hz, m.W_hn], dim=1)            # (H, 3H)
    b = torch.cat([m.b_r, m.b_z, m.b_xn])                       # (3H,)
    A = F.embedding(X.T, W_x) + b                                # (T, B, 3H) row lookup
    Hs = GRURecurrence.apply(A, state[0], W_h, m.b_hn)          # (T, B, H)
    O = torch.addmm(m.b_q, Hs.reshape(T * B, -1), m.W_hq)        # (T·B, V)
    return O.reshape(T, B, -1), (Hs[-1],)


def rnn_forward(X: torch.Tensor, h0: torch.Tensor, W_xh, W_hh, b_h, W_hq, b_q,
                bf16: bool = False, compiled: bool = False) -> tuple[torch.Tensor, tuple]:
    """X (B, T) ids, h0 (B, H) → logits (T, B, V) and the final state (H_T,). `compiled`:
    the whole model in fasttrain.c (`CompiledRNN`), fp32 or bf16."""
    if compiled:
        O, H_T = CompiledRNN.apply(X, h0, W_xh, W_hh, b_h, W_hq, b_q, bf16)
        return O, (H_T,)
    B, T = X.shape
    A = F.embedding(X.T, W_xh) + b_h                             # (T, B, H) row lookup
    H = RNNRecurrence.apply(A, h0, W_hh, bf16)                   # (T, B, H)
    H2 = H.reshape(T * B, -1)                                    # (T·B, H)
    if bf16:
        O = (H2.to(torch.bfloat16) @ W_hq.to(torch.bfloat16)).float() + b_q
    else:
        O = torch.addmm(b_q, H2, W_hq)                           # (T·B, V)
    return O.reshape(T, B, -1), (H[-1],)


class LSTMRecurrence(torch.autograd.Function):
    """The LSTM recurrence with hand-derived BPTT. A = X W_x + b: (T, B, 4H), gates in
    torch's order i, f, g, o; W = [W_hi W_hf W_hc W_ho]: (H, 4H). Returns all H_t and C_t.

        [I F G O]_t = [σ σ tanh σ](A_t + H_{t-1} W),  C_t = F C_{t-1} + I G,  H_t = O tanh(C_t)
    """

    @staticmethod
    def forward(ctx, A: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W: torch.Tensor):
        T, B, n4 = A.shape
        n = n4 // 4
        Wf = W.t().contiguous().t()                              # (H, 4H) fast layout
        G = torch.empty_like(A)                                  # (T, B, 4H) activated gates
        Hs = torch.empty(T, B, n, dtype=A.dtype, device=A.device)  # (T, B, H)
        Cs = torch.empty_like(Hs)                                # (T, B, H)
        h, c = h0, c0
        for t in range(T):
            torch.addmm(A[t], h, Wf, out=G[t])                   # (B, 4H) pre-activations
            torch.sigmoid_(G[t, :, :2 * n])                      # (B, 2H) I, F
            torch.tanh_(G[t, :, 2 * n:3 * n])                    # (B, H) G
            torch.sigmoid_(G[t, :, 3 * n:])                      # (B, H) O
            i, f, g, o = G[t].chunk(4, dim=1)                    # (B, H) each
            torch.mul(f, c, out=Cs[t]).addcmul_(i, g)            # (B, H) C_t
            torch.tanh(Cs[t], out=Hs[t]).mul_(o)                 # (B, H) H_t
            h, c = Hs[t], Cs[t]
        ctx.save_for_backward(G, Hs, Cs, h0, c0, W)
        return Hs, Cs

    @staticmethod
    def backward(ctx, dHs: torch.Tensor | None, dCs: torch.Tensor | None):
        G, Hs, Cs, h0, c0, W = ctx.saved_tensors
        T, B, n = Hs.shape
        dHs = torch.zeros_like(Hs) if dHs is None else dHs.contiguous()
        tanhC = torch.tanh(Cs)                                   # (T, B, H)
        O = G[:, :, 3 * n:]                                      # (T, B, H)
        D_c = O * (1 - tanhC * tanhC)                            # (T, B, H) dH_t/dC_t
        # derivative of each activation at its output: σ' = s(1 − s), tanh' = 1 − g²
        D_g = G * (1 - G)                                        # (T, B, 4H)
        g_part = G[:, :, 2 * n:3 * n]
        D_g[:, :, 2 * n:3 * n] = 1 - g_part * g_part
        dG = torch.empty_like(G)                                 # (T, B, 4H) dL/d(pre-act)
        dh = torch.empty(B, n, dtype=Hs.dtype, device=Hs.device)   # (B, H) dL/dH_t
        dc = torch.zeros_like(dh)                                # (B, H) dL/dC_t
        W_T = W.t()                                              # (4H, H) view
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dHs[t])
            else:
                torch.addmm(dHs[t], dG[t + 1], W_T, out=dh)      # (B, H) own + next step
            if dCs is not None:
                dc.add_(dCs[t])
            dc.addcmul_(dh, D_c[t])                              # (B, H) through H_t = O tanh C
            i, f, g, _ = G[t].chunk(4, dim=1)
            di, df, dg, do = dG[t].chunk(4, dim=1)
            torch.mul(dh, tanhC[t], out=do)                      # (B, H) dL/dO
            torch.mul(dc, g, out=di)                             # (B, H) dL/dI
            torch.mul(dc, i, out=dg)                             # (B, H) dL/dG
            torch.mul(dc, Cs[t - 1] if t > 0 else c0, out=df)    # (B, H) dL/dF
            dG[t].mul_(D_g[t])                                   # (B, 4H) through σ / tanh
            dc.mul_(f)                                           # (B, H) dL/dC_{t-1}
        dA, dh0, dc0, dW = dG, None, None, None
        if ctx.needs_input_grad[1]:
            dh0 = dG[0] @ W_T                                    # (B, H)
        if ctx.needs_input_grad[2]:
            dc0 = dc
        if ctx.needs_input_grad[3]:
            H_prev = torch.cat([h0.unsqueeze(0), Hs[:-1]])       # (T, B, H)
            dW = H_prev.reshape(T * B, n).t() @ dG.reshape(T * B, 4 * n)  # (H, 4H) one GEMM
        return dA, dh0, dc0, dW


class GRURecurrence(torch.autograd.Function):
    """The GRU recurrence (torch's form) with hand-derived BPTT. A = X W_x + [b_r b_z b_xn]:
    (T, B, 3H); W = [W_hr W_hz W_hn]: (H, 3H); b_hn: (H,). Returns all H_t.

        P = H_{t-1} W,  R = σ(A_r + P_r),  Z = σ(A_z + P_z),  N = tanh(A_n + R (P_n + b_hn)),
        H_t = (1 − Z) N + Z H_{t-1}
    """

    @staticmethod
    def forward(ctx, A: torch.Tensor, h0: torch.Tensor, W: torch.Tensor, b_hn: torch.Tensor):
        T, B, n3 = A.shape
        n = n3 // 3
        Wf = W.t().contiguous().t()                              # (H, 3H) fast layout
        RZN = torch.empty_like(A)                                # (T, B, 3H) R, Z, N
        HN = torch.empty(T, B, n, dtype=A.dtype, device=A.device)  # (T, B, H) P_n + b_hn
        Hs = torch.empty_like(HN)                                # (T, B, H)
        P = torch.empty(B, n3, dtype=A.dtype, device=A.device)   # (B, 3H)
        h = h0
        for t in range(T):
            torch.mm(h, Wf, out=P)                               # (B, 3H) H_{t-1} W
            torch.add(A[t, :, :2 * n], P[:, :2 * n], out=RZN[t, :, :2 * n])
            torch.sigmoid_(RZN[t, :, :2 * n])                    # (B, 2H) R, Z
            r, z, nn_ = RZN[t].chunk(3, dim=1)
            torch.add(P[:, 2 * n:], b_hn, out=HN[t])             # (B, H) P_n + b_hn
            torch.addcmul(A[t, :, 2 * n:], r, HN[t], out=nn_).tanh_()  # (B, H) N
            # H_t = N + Z (H_{t-1} − N)
            torch.sub(h, nn_, out=Hs[t]).mul_(z).add_(nn_)       # (B, H)
            h = Hs[t]
        ctx.save_for_backward(RZN, HN, Hs, h0, W)
        return Hs

    @staticmethod
    def backward(ctx, dHs: torch.Tensor):
        RZN, HN, Hs, h0, W = ctx.saved_tensors
        T, B, n = Hs.shape
        dHs = dHs.contiguous()
        R, Z, N = RZN[:, :, :n], RZN[:, :, n:2 * n], RZN[:, :, 2 * n:]
        H_prev = torch.cat([h0.unsqueeze(0), Hs[:-1]])           # (T, B, H)
        dP = torch.empty_like(RZN)                               # (T, B, 3H) dL/dP
        dAn = torch.empty_like(Hs)                               # (T, B, H) dL/dA_n
        dh = torch.empty(B, n, dtype=Hs.dtype, device=Hs.device)  # (B, H) dL/dH_t
        dh_next = torch.empty_like(dh)                           # (B, H) dL/dH_{t+1}
        dn = torch.empty_like(dh)
        W_T = W.t()                                              # (3H, H) view
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dHs[t])
            else:  # own output + the direct path Z ⊙ H_t of step t+1 + its gates' GEMM
                torch.addmm(dHs[t], dP[t + 1], W_T, out=dh).addcmul_(dh_next, Z[t + 1])
            dr, dz, dhn = dP[t].chunk(3, dim=1)
            r, z, nn_ = R[t], Z[t], N[t]
            torch.sub(H_prev[t], nn_, out=dz).mul_(dh)           # (B, H) dL/dZ
            dz.mul_(z * (1 - z))                                 # through σ
            torch.mul(dh, 1 - z, out=dn)                         # (B, H) dL/dN
            dn.mul_(1 - nn_ * nn_)                               # (B, H) dL/dA_n
            dAn[t].copy_(dn)
            torch.mul(dn, HN[t], out=dr).mul_(r * (1 - r))       # (B, H) dL/d(R pre-act)
            torch.mul(dn, r, out=dhn)                            # (B, H) dL/d(P_n + b_hn)
            dh, dh_next = dh_next, dh
        dh0 = dW = db_hn = None
        dA = torch.cat([dP[:, :, :2 * n], dAn], dim=2)           # (T, B, 3H)
        if ctx.needs_input_grad[1]:
            dh0 = torch.addcmul(dP[0] @ W_T, dh_next, Z[0])      # (B, H)
        if ctx.needs_input_grad[2]:
            dW = H_prev.reshape(T * B, n).t() @ dP.reshape(T * B, 3 * n)  # (H, 3H) one GEMM
        if ctx.needs_input_grad[3]:
            db_hn = dP[:, :, 2 * n:].sum(dim=(0, 1))             # (H,)
        return dA, dh0, dW, db_hn

"""Hand-derived backpropagation through time for `RNNScratch` (the fast path).

Forward runs the recurrence into one preallocated (T, B, H) buffer; backward runs the reverse
recurrence with one GEMM per step and forms dW_hh as a single GEMM over all T·B rows. The
input projection is a row lookup of W_xh (equal to the one-hot product) and the output
projection one GEMM over all steps, both left to autograd. `models.RNNScratch(impl='autograd')`
is the reference this is tested against.

Measured tricks (see `rnnkit bench`): ATen's tanh costs ~5x its sigmoid on a (32, 512) block,
so we run tanh(z) = 2·sigmoid(2z) − 1 with the affine parts folded into the GEMM; MKL multiplies
by a transposed contiguous matrix ~15% faster, so W_hhᵀ is made contiguous once; and the hot
loops write into preallocated buffers (`out=`), allocating nothing per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def rnn_forward(X: torch.Tensor, h0: torch.Tensor, W_xh, W_hh, b_h, W_hq, b_q,
                bf16: bool = False) -> tuple[torch.Tensor, tuple]:
    """X (B, T) ids, h0 (B, H) → logits (T, B, V) and the final state (H_T,)."""
    B, T = X.shape
    A = F.embedding(X.T, W_xh) + b_h                             # (T, B, H) row lookup
    H = RNNRecurrence.apply(A, h0, W_hh, bf16)                   # (T, B, H)
    H2 = H.reshape(T * B, -1)                                    # (T·B, H)
    if bf16:
        O = (H2.to(torch.bfloat16) @ W_hq.to(torch.bfloat16)).float() + b_q
    else:
        O = torch.addmm(b_q, H2, W_hq)                           # (T·B, V)
    return O.reshape(T, B, -1), (H[-1],)

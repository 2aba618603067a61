"""`--preset quality`, sized to the data: the kind of model (`choose_kind`), and a width,
dropout, weight decay, window and batch that follow from the training tokens, the vocabulary and
the time budget.

The rule (char-rnn's guidance, measured on this project's 2-core CPU, see README "Quality"):
  0. The kind: minGRU for a large corpus, else an LSTM (`choose_kind`);
     `--cell` picks another, sized by the same steps.
  1. Capacity follows the data: the widest model of the kind whose parameter count stays within
     PARAMS_PER_TOKEN x the training tokens. More parameters than tokens overfit unless dropout
     regularises them, which is what step 3 does.
  2. Time caps capacity: the model must see the training slice at least MIN_EPOCHS times in the
     budget — or, when the corpus is too large for that, at least the kind's tokens per
     parameter (KINDS) — at the speed a width is expected to run: its FLOPs per token at the rate
     this machine trains a small model of the kind (`measure_rate`, half a second; the blocks'
     fused CPU path and torch's LSTM differ by ~1.4x per FLOP here). Measured on Tiny Shakespeare
     at 86 s: LSTM-192 (7 epochs) 1.675 nats/char, 256 (5) 1.699, 384 (3) 1.786, 512 (2) 1.871:
     below ~8 epochs a narrower model that sees the text more often wins.
  3. Regularise by the excess: dropout grows with log2(parameters / tokens); weight decay too.
     (The blocks of minGRU/minLSTM/transformer start from no dropout, the LSTM from 0.1.)
  4. Small corpora get shorter batches (more updates per epoch); early stopping is always on,
     and the run ends on its best validation epoch.
  5. Counts where counts win: a Kneser–Ney model of up to 8 tokens of context is mixed into
     the best epoch's network, its order and weights fitted on validation (`--ngram`, ngram.py).
     Measured (README "Quality"): it brings table-like sources to within ~1% of an oracle that
     knows the source, where the network alone was 13–196% behind at the same budgets.
"""
from __future__ import annotations

import math

WIDTHS = (64, 128, 192, 256, 384, 512, 768, 1024)
EMBED = 64
PARAMS_PER_TOKEN = 6.0      # step 1: parameters allowed per training token (dropout covers it)
MIN_EPOCHS = 8.0            # step 2: passes over the training slice the budget must allow
TOKENS_PER_PARAMETER = 20   # step 2, large corpora: tokens seen per parameter (the LSTM's)
FLOPS_PER_SECOND = 1.1e11   # step 2: a 2-core Zen 5 training torch's fused LSTM (measured)
MAX_DROPOUT = 0.5


# Every kind is sized by steps 1–3 at a fixed depth and window, with its own tokens per
# parameter (step 2) and batch, from runs on Tiny Shakespeare at 120 and 300 s (README
# "Recurrences of today"): the blocks with MLPs learned best with fewer tokens per parameter
# than the LSTM (with the token shift and the fused CPU path, 3×192 at ~5 tokens a weight beat
# 3×128 at ~15 at 300 s: 1.444 vs 1.52 nats) and with batches of 16 (more updates: batches of
# 64 x 128 left minGRU at 1.93). lr: AdamW's peak (nanoGPT's: 1e-3).
LSTM = dict(layers=1, num_steps=100, lr=3e-3, tokens_per_parameter=TOKENS_PER_PARAMETER)
GATES = {"rnn": 1, "gru": 3, "lstm": 4}     # torch's fused layers: sized as the LSTM is
KINDS = {"rnn": LSTM, "gru": LSTM, "lstm": LSTM,
         "mingru": dict(layers=3, num_steps=128, lr=3e-3, tokens_per_parameter=3,
                        batch_size=16, token_shift=True),
         "minlstm": dict(layers=3, num_steps=128, lr=3e-3, tokens_per_parameter=3,
                         batch_size=16, token_shift=True),
         "transformer": dict(layers=4, num_steps=64, lr=1e-3, tokens_per_parameter=8,
                             batch_size=16)}
BLOCK_WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768)
LARGE_CORPUS = 150_000      # step 0: training tokens from which minGRU leads (measured with
                            # the token shift at 161k and 1M; smaller corpora keep the LSTM,
                            # which led at 161k before the shift)


def parameters(kind: str, hidden: int, vocab_size: int) -> int:
    """Weights of the preset's model of `kind` at width `hidden` (norms and biases included
    roughly: they are a fraction of a percent)."""
    if kind in GATES:
        return lstm_parameters(hidden, vocab_size, gates=GATES[kind])
    layers, H = KINDS[kind]["layers"], hidden
    if kind == "transformer":                        # attention 4H², MLP 8H², positions
        return vocab_size * H + KINDS[kind]["num_steps"] * H + layers * (12 * H * H + 13 * H)
    gates = 2 if kind == "mingru" else 3             # gates and h̃ from x, then the MLP
    return 2 * vocab_size * H + vocab_size + layers * ((gates * H + 8 * H) * H + 7 * H)


def lstm_parameters(hidden: int, vocab_size: int, embed: int = EMBED, gates: int = 4) -> int:
    """Embedding, one LSTM layer (or `gates` = 3: GRU, 1: RNN) and the output layer."""
    return (vocab_size * embed + gates * hidden * (embed + hidden + 2) + hidden * vocab_size
            + vocab_size)


def tokens_per_second(hidden: int, vocab_size: int, rate: float = FLOPS_PER_SECOND,
                      embed: int = EMBED, kind: str = "lstm") -> float:
    """Expected training speed at `rate` FLOP/s: forward + backward ≈ 6 FLOPs per weight."""
    weights = lstm_parameters(hidden, vocab_size, embed, GATES[kind]) if kind in GATES else \
        parameters(kind, hidden, vocab_size)
    return rate / (6 * weights)


def measure_rate(device: str = "cpu", seconds: float = 0.5, kind: str = "lstm") -> float:
    """FLOP/s at which this machine trains `kind` (forward, backward and an AdamW step), so
    that step 2 sizes the model for this machine: an LSTM-256 on batches of 64 x 100, or the
    preset's blocks of `kind` at width 128 on its batches, on the threads a run gives them."""
    import time

    import torch

    from . import perf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params, loss, tokens = _probe(kind, device)
        opt = torch.optim.AdamW(params)

        def step():
            loss().backward()
            opt.step()
            opt.zero_grad()
            if device != "cpu":
                torch.cuda.synchronize()
        # a warm-up (memory, caches, threads), then the fastest of four timed stretches: this
        # shared machine slows down for seconds at a time, and a run lasts minutes
        with perf.torch_threads(perf.training_threads("torch", kind)):
            best = math.inf
            for stretch in range(5):
                steps, start = 0, time.perf_counter()
                while steps < 2 or time.perf_counter() - start < seconds / 5:
                    step()
                    steps += 1
                if stretch:
                    best = min(best, (time.perf_counter() - start) / steps)
    return tokens * 6 * sum(p.numel() for p in params) / best


def _probe(kind: str, device: str):
    """(parameters, a loss over one batch, the batch's tokens) of a small model of `kind`:
    for torch's layers an LSTM-256, else the preset's blocks at width 128 (vocabulary 64)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .config import TrainConfig
    from .models import build_model
    if kind in GATES:                                    # one rate for torch's fused layers
        lstm, head = nn.LSTM(EMBED, 256).to(device), nn.Linear(256, 64).to(device)
        x = torch.randn(100, 64, EMBED, device=device)

        def lstm_loss():
            return head(lstm(x)[0]).square().mean()
        return list(lstm.parameters()) + list(head.parameters()), lstm_loss, 6400
    shape = KINDS[kind]
    config = TrainConfig(cell=kind, impl="torch", hidden=128, layers=shape["layers"],
                         num_steps=shape["num_steps"], token_shift=shape.get("token_shift", False))
    model = build_model(64, config).to(device).train()
    X = torch.randint(0, 64, (shape["batch_size"], shape["num_steps"]), device=device)
    Y, state = torch.randint(0, 64, (X.numel(),), device=device), model.begin_state(len(X), device)

    def model_loss():
        return F.cross_entropy(model(X, state)[0].flatten(0, 1), Y)
    return list(model.parameters()), model_loss, X.numel()


def affordable(hidden: int, vocab_size: int, train_tokens: int, time_budget: float,
               rate: float, kind: str = "lstm") -> bool:
    """Step 2: whether the budget lets this width see MIN_EPOCHS passes over the training
    slice, or TOKENS_PER_PARAMETER tokens per parameter where that is fewer (no budget: yes)."""
    needed = min(MIN_EPOCHS * train_tokens, KINDS[kind]["tokens_per_parameter"]
                 * parameters(kind, hidden, vocab_size))
    speed = tokens_per_second(hidden, vocab_size, rate, kind=kind)
    return not time_budget or speed * time_budget >= needed


def choose_kind(train_tokens: int, time_budget: float) -> tuple[str, str]:
    """Step 0: the kind of model, and why. Measured on this project's 2-core CPU (validation
    nats/char of the network alone, README "Recurrences of today"): minGRU with the token shift
    led on Tiny Shakespeare (1M training tokens, 300 s) and on The Time Machine (161k, 120 s);
    without the shift the LSTM had led on the latter; the transformer trailed everywhere (it
    needs more tokens than these budgets see)."""
    if train_tokens >= LARGE_CORPUS:
        return "mingru", (f"minGRU: with {train_tokens:,} training tokens it learned fastest on "
                          "this machine (Tiny Shakespeare at 300 s: 1.44 nats/char, the LSTM "
                          "1.53, the transformer 1.72; The Time Machine at 120 s: 1.44, "
                          "minLSTM 1.45, the LSTM 1.50, the transformer 1.98)")
    return "lstm", (f"an LSTM: with {train_tokens:,} training tokens (fewer than minGRU was "
                    "measured on) it measured best on this machine (The Time Machine at 120 s "
                    "before minGRU's token shift: 1.52 nats/char; minGRU 1.58, the transformer "
                    "2.13)")


def quality_settings(train_tokens: int, vocab_size: int, time_budget: float,
                     rate: float = FLOPS_PER_SECOND, kind: str | None = None) -> dict:
    """The sized part of `--preset quality` (see the module docstring for the rule); `rate`:
    this machine's training FLOP/s (`measure_rate`); `kind`: a --cell given, else chosen."""
    why = None
    if kind is None:
        kind, why = choose_kind(train_tokens, time_budget)
    widths = WIDTHS if kind in GATES else BLOCK_WIDTHS
    fits_data = [h for h in widths
                 if parameters(kind, h, vocab_size) <= PARAMS_PER_TOKEN * train_tokens]
    fits_time = [h for h in widths
                 if affordable(h, vocab_size, train_tokens, time_budget, rate, kind)]
    hidden = min(max(fits_data, default=widths[0]), max(fits_time, default=widths[0]))
    excess = math.log2(max(parameters(kind, hidden, vocab_size) / train_tokens, 1.0))
    # the blocks get none until they have more weights than tokens: in the few epochs a
    # budget gives them, 0.1 cost minGRU 1.65 nats/char against 1.54 without (120 s)
    floor = 0.1 if kind in GATES else 0.0
    dropout = round(min(MAX_DROPOUT, floor + 0.1 * excess), 2)
    shape = KINDS[kind]
    batch_size = shape.get("batch_size", 64 if train_tokens >= 500_000 else 32)
    return {"cell": kind, "hidden": hidden, "embed": EMBED if kind in GATES else 0,
            "layers": shape["layers"], "dropout": dropout, "lr": shape["lr"],
            "weight_decay": 0.1 if excess > 2 else 0.01, "batch_size": batch_size,
            "num_steps": shape["num_steps"], "token_shift": shape.get("token_shift", False),
            "patience": 5, "why": why}

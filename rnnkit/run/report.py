"""What a run shows and records: a progress bar, a console or JSON line per epoch,
metrics.jsonl, perplexity.png and the closing summary. Silent on every rank but 0.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .. import fastloop
from ..config import STDIN
from ..encode import count_characters
from .setup import Training


def plot_perplexity(path: Path, metrics: list[dict]) -> None:
    """Training and validation perplexity per epoch (log scale), written atomically."""
    from matplotlib.figure import Figure   # no pyplot: the user's backend is never touched
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_ppl"] for m in metrics], label="train")
    if any(m["val_ppl"] is not None for m in metrics):
        ax.plot(epochs, [m["val_ppl"] for m in metrics], label="validation")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")   # 24, not 2.4×10¹ (and no mathtext to lay out)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


class Reporter:
    """`samples()` gives the texts shown every `sample_every` epochs and at the end."""

    def __init__(self, out: Path, *, epochs: int, sample_every: int,
                 samples: Callable[[], list[str]], json_lines: bool = False, stdout=None,
                 active: bool = True):
        self.out, self.epochs, self.sample_every, self.samples = out, epochs, sample_every, samples
        self.json_lines, self.stdout, self.active = json_lines, stdout or sys.stdout, active
        self.bar, self.plotted = None, 0       # epochs in perplexity.png

    def plot(self, metrics: list[dict]) -> None:
        """perplexity.png, unless it already shows these epochs (a plot costs ~0.5 s)."""
        if metrics and len(metrics) != self.plotted:
            plot_perplexity(self.out / "perplexity.png", metrics)
            self.plotted = len(metrics)

    def start(self, metrics: list[dict]) -> None:
        """metrics.jsonl as the state says (a resumed run drops lines a crash left after it)."""
        if self.active:
            (self.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        self.bar = tqdm(total=self.epochs, initial=len(metrics), unit="epoch",
                        disable=None if self.active else True, file=sys.stderr,
                        dynamic_ncols=True)

    def line(self, text: str) -> None:
        """A line for a person (not shown with --json)."""
        if self.active and not self.json_lines:
            tqdm.write(text, file=self.stdout)

    def epoch(self, record: dict, metrics: list[dict]) -> None:
        if self.active:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            epoch, text = record["epoch"], None
            if self.sample_every and epoch % self.sample_every == 0:
                record = {**record, "sample": self.samples()[0]}
                text = record["sample"]
            if epoch % 10 == 0 or epoch == self.epochs:
                self.plot(metrics)
            if self.json_lines:
                print(json.dumps(record), file=self.stdout, flush=True)
            elif text is not None:
                tqdm.write(text, file=self.stdout)
        self.bar.set_postfix(ppl=f"{record['train_ppl']:.2f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary(self, summary: dict, metrics: list[dict]) -> None:
        """The closing lines: the book's perplexity/speed line, validation, samples."""
        if not self.active:
            return
        self.plot(metrics)
        if self.json_lines:
            print(json.dumps(summary), file=self.stdout, flush=True)
            return
        ppl = "n/a" if summary["train_ppl"] is None else f"{summary['train_ppl']:.1f}"
        print(f"perplexity {ppl}, {summary['tokens_per_s']:.1f} tokens/sec on "
              f"{summary['device']}", file=self.stdout)
        if summary["val_ppl"] is not None:
            ended = ""
            if "last_val_ppl" in summary and summary["best_epoch"] != len(metrics):
                ended = (f" (best, epoch {summary['best_epoch']} of {len(metrics)}: the run ends "
                         f"on those weights; the last epoch's: {summary['last_val_ppl']:.1f})")
            val = summary["val_ppl"]
            print(f"validation perplexity {val:.{2 if val < 10 else 1}f}{ended}",
                  file=self.stdout)
        if "stopped" in summary:
            s = summary["stopped"]
            why = {
                "patience": f"no better validation for {s['patience']} epochs (--patience)",
                "time": f"the --time-budget of {s['time_budget']:g} s was spent"}
            print(f"stopped early after epoch {s['epoch']} of {s['epochs']}: "
                  f"{why[s['reason']]}", file=self.stdout)
        if "ngram" in summary:
            print(f"  with the {summary['ngram']['order'] + 1}-gram model mixed in; the network "
                  f"alone: {summary['network_val_ppl']:.2f}, the n-gram model alone: "
                  f"{summary['ngram']['val_ppl']:.2f}", file=self.stdout)
        for s, copies in zip(summary["samples"], summary["copies"]):
            print(s, file=self.stdout)
            unit = "chars" if summary["token"] == "char" else "words"
            print(f"  copied: longest {copies['longest']} {unit} of the training text; "
                  f"{100 * copies['copied_share']:.0f}% of the sample in copies of "
                  f"{copies['copy_min']}+ {unit}", file=self.stdout)


def duration(seconds: float) -> str:
    """42 s, 3 min 5 s, 2 h 10 min: how long, as a person says it ("?" when not measured)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def compiled_where(c) -> str:
    """Where `--impl compiled`'s products run: fasttrain.c, or torch's and why."""
    why = fastloop.cannot_train(c.precision)
    if why:
        return f"in torch ({why})"
    return "compiled" + (", bf16 products" if c.precision == "bf16" else "")


def describe(run: Training, seconds_per_epoch: float) -> list[str]:
    """The first lines of a run: what it will train on, what, where and for how long
    (`seconds_per_epoch`: measured by `setup.seconds_per_epoch`)."""
    c, vocab = run.config, run.vocab
    if c.corpus is None:
        corpus = "The Time Machine (bundled with rnnkit)"
    elif c.corpus == STDIN:
        corpus = f"standard input (sha1 {c.corpus_sha1[:12]}…, kept in the cache)"
    else:
        corpus = f"{c.corpus} ({count_characters(Path(c.corpus)):,} characters)"
    capped = f" (the first {c.max_tokens:,})" if c.max_tokens > 0 else ""
    kind = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM", "mingru": "minGRU",
            "minlstm": "minLSTM", "transformer": "transformer"}[c.cell]
    impl = {"bptt": "from scratch, hand-derived BPTT", "autograd": "from scratch, autograd",
            "torch": f"torch.nn.{kind}",
            "compiled": "from scratch, hand-derived BPTT, its GEMMs " + compiled_where(c)
            }[c.impl]
    if c.cell in ("mingru", "minlstm"):
        impl = "residual blocks, trained in parallel over each window"
    elif c.cell == "transformer":
        impl = f"nanoGPT's shape, context {c.num_steps}, {run.model.heads} heads"
    extras = "".join([f", {c.layers} layers" if c.layers > 1 else "",
                      ", embedding tied" if c.cell == "transformer" else
                      f", embedding {c.embed}" if c.embed else
                      ", embedding" if c.cell in ("mingru", "minlstm") else ", one-hot inputs",
                      f", dropout {c.dropout}" if c.dropout else "", ", tied" if c.tie else "",
                      ", token shift" if c.token_shift else ""])
    params = sum(p.numel() for p in run.model.parameters())
    batches = max(1, (len(run.train_ids) - 1) // (c.batch_size * c.num_steps))
    until = f"{c.epochs} epoch{'s' if c.epochs != 1 else ''}" + \
        (f" or {c.time_budget:g} s" if c.time_budget else "") + \
        (f", early stop after {c.patience} without a better validation" if c.patience else "")
    return [
        f"corpus      {corpus}: {len(run.slices.ids):,} {c.token} tokens after --clean "
        f"{c.clean}, vocabulary {len(vocab):,}",
        f"slices      train {len(run.train_ids):,}{capped} · validation {len(run.val_ids):,} · "
        f"test {len(run.test_ids):,} tokens",
        f"model       {kind} ({impl}), {c.hidden} hidden{extras}: {params:,} parameters",
        f"device      {run.team.device}, {c.precision}" + (
            f", {run.team.world} processes" if run.team.world > 1 else ""),
        f"training    {until}; {batches:,} batches of {c.batch_size} x {c.num_steps} an "
        f"epoch, ≈ {seconds_per_epoch:.2f} s an epoch (2 batches timed), "
        f"≈ {duration(seconds_per_epoch * c.epochs)} for all {c.epochs}",
        f"samples     from {c.prefix!r}" + (f" every {c.sample_every} epochs"
                                            if c.sample_every else " at the end") +
        f"; the run ends on its {c.end_on} weights",
    ] + ([f"n-gram      Kneser-Ney, up to {c.ngram} tokens of context, mixed in at the end "
          "(order and weights fitted on validation)" if len(run.val_ids) else
          "n-gram      none: --ngram needs a validation slice to fit its weights on"]
         if c.ngram else [])

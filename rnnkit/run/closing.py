"""The end of a run: it switches to its best weights (where it ends on them), fits the n-gram
mixture (`--ngram`), writes its closing samples, what they copied, and the summary.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from ..copies import COPY_MIN, CopyIndex
from ..generate import predict
from ..models import LanguageModel
from ..ngram import fit_mixture
from ..text import tokens_of
from ..train import eval_rows, evaluate, perplexity
from .setup import Training
from .state import RunState


def sample_prefixes(prefix: str) -> list[str]:
    """The run's prefix, and its last word when it has several (the book's two lines)."""
    return [prefix] + ([prefix.split()[-1]] if len(prefix.split()) > 1 else [])


def samples(t: Training, model: LanguageModel | None = None) -> list[str]:
    """Greedy continuations of the run's prefixes (`sample_prefixes`)."""
    return [predict(model or t.model, t.vocab, p, 50, token=t.config.token,
                    device=t.team.device) for p in sample_prefixes(t.config.prefix)]


def closing_copies(t: Training, out: Path, texts: list[str]) -> list[dict]:
    """What each closing sample copied from the training slice (`Run.copies`). The run writes
    its index here, for generate and the lab (a resumed run's training slice is the same, and
    so is the index it writes again)."""
    index = CopyIndex.build(t.train_ids)
    index.save(out / "copies.safetensors")
    token = t.config.token
    return [index.report(np.asarray(t.vocab[tokens_of(text, token)]),
                         len(tokens_of(prefix, token)), COPY_MIN[token]).to_dict()
            for text, prefix in zip(texts, sample_prefixes(t.config.prefix))]


def mix_ngram(t: Training, out: Path, summary: dict) -> LanguageModel:
    """Fit the n-gram mixture on the validation slice and save it beside the weights. The
    summary's validation perplexity becomes the mixture's: it is what generate and eval use."""
    c, before = t.config, t.slices.before("val")
    mixture = fit_mixture(t.model, t.train_ids, t.val_ids, len(t.vocab), c.ngram,
                          batch_size=c.batch_size, num_steps=c.num_steps, device=t.team.device,
                          before=before)
    ckpt.save_ngram(out / "ngram.safetensors", mixture)
    summary["network_val_ppl"] = summary["val_ppl"]
    summary["val_ppl"] = perplexity(*evaluate(mixture, t.val_ids, batch_size=c.batch_size,
                                              num_steps=c.num_steps, device=t.team.device,
                                              before=before))
    summary["ngram"] = {"order": mixture.ngram.order,
                        "val_ppl": mixture.report["ngram_val_ppl"]}
    return mixture


def summarize(t: Training, state: RunState, out: Path, stopped: str | None = None) -> dict:
    """The closing report. A run that ends on its best epoch switches to those weights first
    (they are what generate and eval use), so its samples and figures are theirs."""
    c = t.config
    final = state.metrics[-1] if state.metrics else {"train_ppl": None, "val_ppl": None,
                                                     "tokens_per_s": 0.0}
    summary = {"train_ppl": final["train_ppl"], "val_ppl": final["val_ppl"],
               "tokens_per_s": final["tokens_per_s"], "device": str(t.team.device),
               "out": str(out), "end_on": c.end_on, "token": c.token}
    if stopped is not None:           # said, so that a resume with more --epochs is no surprise
        summary["stopped"] = {"reason": stopped, "epoch": state.epoch, "epochs": c.epochs,
                              "patience": c.patience, "time_budget": c.time_budget}
    if state.best_val_ppl is not None:
        summary["best_val_ppl"] = state.best_val_ppl
        summary["best_epoch"] = min(state.metrics, key=lambda m: m["val_ppl"])["epoch"]
        if c.end_on == "best" and (out / "best.safetensors").exists():
            path = out / "best.safetensors"
            ckpt.load_weights_into(t.model, ckpt.read_checkpoint(path)[0], path)
            summary["last_val_ppl"], summary["val_ppl"] = final["val_ppl"], state.best_val_ppl
    model = mix_ngram(t, out, summary) if c.ngram and len(t.val_ids) else t.model
    model.eval()      # the closing samples and test figure are what generate and eval give
    summary["samples"] = samples(t, model)
    summary["copies"] = closing_copies(t, out, summary["samples"])
    if len(t.test_ids):
        usable = eval_rows(len(t.test_ids), c.batch_size, c.num_steps) >= 1
        summary["test_ppl"] = perplexity(*evaluate(
            model, t.test_ids, batch_size=c.batch_size, num_steps=c.num_steps,
            device=t.team.device, before=t.slices.before("test"))) if usable else None
    return summary

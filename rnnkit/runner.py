"""A training run end to end: corpus → vocab → splits → model → epochs, with a progress bar,
samples, metrics.jsonl, perplexity.png, atomic checkpoints, resume and clean stops on signals.
"""
from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import TrainConfig
from .data import SAMPLERS, load_corpus, min_tokens_for_batch, split_corpus
from .errors import Diverged, Interrupted, RnnkitError, UsageError
from .generate import predict
from .distributed import Team
from .encode import prepare
from .models import build_model
from .train import (Autocast, eval_rows, evaluate, make_optimizer, perplexity, scheduled_lr,
                    train_epoch)


def resolve_device(name: str) -> torch.device:
    """The torch device a `--device` value names, refusing one that is not available."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name} is not available on this machine; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name} is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name} is not supported; use cpu, cuda, mps or auto")
    return device


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The batch-order generator of one epoch: a pure function of (seed, epoch), so resume is exact."""
    return random.Random(f"rnnkit:{seed}:{epoch}")


def plot_perplexity(path: Path, metrics: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_ppl"] for m in metrics], label="train")
    if any(m["val_ppl"] is not None for m in metrics):
        ax.plot(epochs, [m["val_ppl"] for m in metrics], label="validation")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def check_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing run unless --force; --resume needs a run to continue.
    Reads only: nothing is written until the corpus and settings have passed every check."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory")
    has_run = (out / "config.json").exists()
    if resume:
        if not has_run:
            raise UsageError(f"--resume: no run to resume in {out} (no config.json)")
        return
    if has_run and not force:
        raise UsageError(f"--out {out} already holds a run; pass --resume to continue it or "
                         "--force to replace it")
    if out.is_dir() and any(out.iterdir()) and not has_run and not force:
        raise UsageError(f"--out {out} is not empty; pick a new directory or pass --force")


def make_out_dir(out: Path, *, force: bool) -> None:
    if force:
        for name in ckpt.OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"opt.{i}.{k}": v for i, s in optimizer.state_dict()["state"].items()
            for k, v in s.items() if isinstance(v, torch.Tensor)}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]):
    sd = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = value
    optimizer.load_state_dict(sd)


def train_run(config: TrainConfig, out: str | Path, *, resume: bool = False, force: bool = False,
              json_lines: bool = False, checkpoint_every: float = 300.0,
              resume_epochs: int | None = None, stdout=None) -> dict:
    """Train as `config` says, writing the run to `out`; returns the summary dict.
    With `resume`, the run's saved config is used, its epochs raised to `resume_epochs`."""
    stdout = stdout or sys.stdout
    out = Path(out)
    config.validate()
    team = Team.from_env(resolve_device(config.device))
    try:
        summary = _train(config, out, team, resume=resume, force=force, json_lines=json_lines,
                         checkpoint_every=checkpoint_every, resume_epochs=resume_epochs,
                         stdout=stdout)
        team.barrier()  # rank 0 writes the summary last: leave together, not mid-shutdown
        return summary
    except Interrupted:
        team.barrier()  # every rank stopped at the same batch (they agreed on it)
        raise
    finally:
        team.close()


def _train(config: TrainConfig, out: Path, team: Team, *, resume: bool, force: bool,
           json_lines: bool, checkpoint_every: float, resume_epochs: int | None, stdout) -> dict:
    device = team.device
    if config.batch_size % team.world:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly over "
                         f"{team.world} processes")
    check_out_dir(out, resume=resume, force=force)
    team.barrier()  # every rank has looked before rank 0 writes

    vocab = None
    if resume:
        saved_config, vocab = ckpt.load_config_and_vocab(out)
        config = TrainConfig.from_dict(
            {**saved_config.to_dict(), "epochs": resume_epochs or saved_config.epochs})
    if config.corpus is None:     # the bundled book: small, the book's own pipeline
        ids, vocab = load_corpus(None, config.clean, config.token, config.min_freq, vocab)
    else:                         # any file: vectorised, cached, memory-mapped
        ids, prepared, _ = prepare(config.corpus, config.clean, config.token, config.min_freq)
        if vocab is not None and vocab.idx_to_token != prepared.idx_to_token:
            raise RnnkitError(f"{config.corpus} changed since the run started (its vocabulary "
                              "differs); restore the file or start a new run")
        vocab = prepared
    train_ids, val_ids, test_ids = split_corpus(ids, config.val_fraction, config.max_tokens,
                                                config.test_fraction)
    need = min_tokens_for_batch(config.batch_size, config.num_steps, config.sampling)
    if len(train_ids) < need:
        raise RnnkitError(f"the training slice has {len(train_ids)} tokens; one batch of "
                          f"{config.batch_size} x {config.num_steps} needs at least {need} — "
                          "use a longer corpus or lower --batch-size / --num-steps")
    if config.val_fraction > 0 and eval_rows(len(val_ids), config.batch_size,
                                             config.num_steps) < 1:
        raise RnnkitError(f"the validation slice has {len(val_ids)} tokens, no full sequence of "
                          f"{config.num_steps} steps; raise --val-fraction or lower --num-steps")

    model = build_model(len(vocab), config).to(device)
    net = team.wrap(model)                 # what trains: DDP averages gradients over ranks
    amp = Autocast.for_config(config, device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr,
                               config.weight_decay)
    torch.manual_seed(config.seed)  # dropout draws from the global generator (saved below)
    start_epoch, start_batch, carried = 0, 0, None
    sums = (0.0, 0, 0.0)  # loss, tokens, seconds of the epoch in progress
    metrics: list[dict] = []
    # step: optimizer steps so far; spent: training seconds so far (for --time-budget);
    # best/bad: best validation perplexity and epochs since; scale: the plateau factor
    prog = {"step": 0, "spent": 0.0, "best": None, "bad": 0, "scale": 1.0}
    if resume:
        path = out / "model.safetensors"
        weights, info, extra = ckpt.read_checkpoint(path)
        ckpt.load_weights_into(model, weights, path)
        info = ckpt.check_trainer(info, path)
        _restore_optimizer(optimizer, extra)
        start_epoch, start_batch = int(info["epoch"]), int(info["batch"])
        sums = (float(info["loss_sum"]), int(info["tokens"]), float(info["seconds"]))
        n_state = sum(k.startswith("state.") for k in extra)
        carried = tuple(extra[f"state.{i}"].to(device) for i in range(n_state)) or None
        carried = team.own_rows(carried, config.batch_size)
        metrics = list(info.get("metrics", []))[:start_epoch]
        prog.update({k: info[k] for k in prog if k in info})
        if "rng" in extra:
            torch.set_rng_state(extra["rng"])
    elif team.main:
        make_out_dir(out, force=force)
        ckpt.save_run_metadata(out, config, vocab)
    if team.main:
        (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))

    def save(epoch: int, batch: int, state, loss_sum: float, tokens: int, seconds: float):
        # every rank calls this at the same batch; only rank 0 writes
        if batch > 0:
            state = team.gather_rows(state)
            loss_sum, tokens = team.sum(loss_sum, tokens)
        if not team.main:
            return
        # the metrics so far travel with the weights, so a resumed run rewrites metrics.jsonl
        # exactly even if a crash cut its last line
        info = {"epoch": epoch, "batch": batch, "loss_sum": loss_sum, "tokens": int(tokens),
                "seconds": seconds, "metrics": metrics, **prog}
        tensors = {**_optimizer_tensors(optimizer), "rng": torch.get_rng_state()}
        if state is not None and batch > 0 and config.sampling == "sequential":
            tensors.update({f"state.{i}": s for i, s in enumerate(state)})
        tokens = int(tokens)
        write_checkpoint(out / "model.safetensors", info, tensors)

    def write_checkpoint(path: Path, info: dict | None = None, tensors: dict | None = None):
        if not team.main:
            return
        try:
            ckpt.save_checkpoint(path, model, info, tensors)
        except OSError as e:
            raise RnnkitError(f"could not write the checkpoint {path} ({e.strerror}); the "
                              "previous one is kept") from None

    if not resume:  # a run is resumable from its first moment
        save(0, 0, None, 0.0, 0, 0.0)

    stop = {"signum": None}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in handlers:
        signal.signal(s, lambda signum, frame: stop.update(signum=signum))

    def emit(obj: dict, text: str | None = None):
        if not team.main:
            return
        if json_lines:
            print(json.dumps(obj), file=stdout, flush=True)
        elif text is not None:
            tqdm.write(text, file=stdout)

    def samples() -> list[str]:
        prefixes = [config.prefix] + ([config.prefix.split()[-1]]
                                      if len(config.prefix.split()) > 1 else [])
        return [predict(model, vocab, p, 50, token=config.token, device=device)
                for p in prefixes]

    bar = tqdm(total=config.epochs, initial=start_epoch, unit="epoch",
               disable=None if team.main else True,
               file=sys.stderr, dynamic_ncols=True)
    last_save = time.monotonic()

    def set_lr(epoch_progress: float):
        progress = (prog["spent"] / config.time_budget if config.time_budget
                    else epoch_progress / max(config.epochs, 1))
        lr = scheduled_lr(config.lr, step=prog["step"], progress=progress, warmup=config.warmup,
                          schedule=config.schedule, scale=prog["scale"])
        for group in optimizer.param_groups:
            group["lr"] = lr

    out_of_time = False
    try:
        for epoch in range(start_epoch, config.epochs):
            batches = SAMPLERS[config.sampling](train_ids, config.batch_size, config.num_steps,
                                                epoch_rng(config.seed, epoch))
            batches = batches.rows(team.rows(config.batch_size))
            first = start_batch if epoch == start_epoch else 0
            loss0, tokens0, seconds0 = sums if epoch == start_epoch else (0.0, 0, 0.0)

            set_lr(epoch + first / max(len(batches), 1))
            tick = time.monotonic()

            def on_batch(i, state, loss_sum, tokens):
                nonlocal last_save, tick, out_of_time
                now = time.monotonic()
                prog["step"] += 1
                prog["spent"] += now - tick
                tick = now
                set_lr(epoch + (first + i + 1) / max(len(batches), 1))
                pending, out_of_time, due = team.agree(
                    stop["signum"] is not None,
                    bool(config.time_budget) and prog["spent"] >= config.time_budget,
                    time.monotonic() - last_save > checkpoint_every)
                if pending or due:
                    save(epoch, first + i + 1, state, loss0 + loss_sum, tokens0 + tokens, 0.0)
                    last_save = time.monotonic()
                if pending:
                    raise Interrupted(stop["signum"] or signal.SIGTERM, f"epoch {epoch + 1}, batch {first + i + 1}",
                                      str(out))
                return out_of_time

            try:
                loss_sum, tokens, seconds = train_epoch(
                    net, batches.iter_from(first), optimizer, clip=config.clip,
                    carry_state=config.sampling == "sequential", device=device,
                    state=carried if first > 0 else None, on_batch=on_batch, amp=amp)
            except Diverged as e:
                raise Diverged(f"{e} of epoch {epoch + 1}; training stopped and the last good "
                               f"checkpoint is kept — lower --lr (now {config.lr}) or --clip "
                               f"(now {config.clip})") from None
            loss_sum, tokens = team.sum(loss_sum, tokens)   # the reported perplexity is global
            loss_sum, tokens, seconds = loss0 + loss_sum, tokens0 + tokens, seconds0 + seconds
            record = {"epoch": epoch + 1, "train_ppl": perplexity(loss_sum, tokens),
                      "val_ppl": None, "tokens_per_s": tokens / max(seconds, 1e-9)}
            if len(val_ids):
                record["val_ppl"] = perplexity(*evaluate(
                    model, val_ids, batch_size=config.batch_size, num_steps=config.num_steps,
                    device=device))
            metrics.append(record)
            improved = record["val_ppl"] is not None and (
                prog["best"] is None or record["val_ppl"] < prog["best"])
            if improved:
                prog["best"], prog["bad"] = record["val_ppl"], 0
                write_checkpoint(out / "best.safetensors")
            elif record["val_ppl"] is not None:
                prog["bad"] += 1
                if config.schedule == "plateau":
                    prog["scale"] *= 0.5
            save(epoch + 1, 0, None, 0.0, 0, 0.0)
            if team.main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            last_save = time.monotonic()
            text = None
            if team.main and config.sample_every and (epoch + 1) % config.sample_every == 0:
                record = {**record, "sample": samples()[0]}
                text = record["sample"]
            if team.main and ((epoch + 1) % 10 == 0 or epoch + 1 == config.epochs):
                plot_perplexity(out / "perplexity.png", metrics)
            emit(record, text)
            bar.set_postfix(ppl=f"{record['train_ppl']:.2f}", refresh=False)
            bar.update(1)
            (stopping,) = team.agree(stop["signum"] is not None)
            if stopping:
                raise Interrupted(stop["signum"] or signal.SIGTERM, f"the end of epoch {epoch + 1}",
                                  str(out))
            if out_of_time or (config.patience and prog["bad"] >= config.patience):
                break  # --time-budget spent or --patience exhausted: end as after a last epoch
    finally:
        bar.close()
        for s, h in handlers.items():
            signal.signal(s, h)

    if not team.main:
        return {}
    if metrics:
        plot_perplexity(out / "perplexity.png", metrics)
    final = metrics[-1] if metrics else {"train_ppl": None, "val_ppl": None, "tokens_per_s": 0.0}
    summary = {"train_ppl": final["train_ppl"], "val_ppl": final["val_ppl"],
               "tokens_per_s": final["tokens_per_s"], "device": str(device), "out": str(out),
               "samples": samples()}
    if prog["best"] is not None:
        summary["best_val_ppl"] = prog["best"]
    if len(test_ids):
        rows_ok = eval_rows(len(test_ids), config.batch_size, config.num_steps) >= 1
        summary["test_ppl"] = perplexity(*evaluate(
            model, test_ids, batch_size=config.batch_size, num_steps=config.num_steps,
            device=device)) if rows_ok else None
    if json_lines:
        emit(summary)
    else:
        ppl = "n/a" if final["train_ppl"] is None else f"{final['train_ppl']:.1f}"
        print(f"perplexity {ppl}, {final['tokens_per_s']:.1f} tokens/sec on {device}",
              file=stdout)
        if final["val_ppl"] is not None:
            print(f"validation perplexity {final['val_ppl']:.1f}", file=stdout)
        for s in summary["samples"]:
            print(s, file=stdout)
    return summary

"""The lab's generation streams, stepped together: every open stream of a run advances one
token per step, all of them in one batch, in one engine thread per run.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .generate import pick_next

FLUSH = 0.03                    # seconds between two chunks of one stream
BACKLOG = 8                     # chunks a client may leave unread before its stream pauses


@dataclass
class Stream:
    """One client's request: `samples` rows that read the prefix, then make `num_chars` tokens."""
    prefix: list[int]
    num_chars: int
    samples: int
    sampling: dict                          # temperature, top_k, top_p (as `pick_next` takes)
    generator: torch.Generator | None
    emit: Callable[[object], None]  # emit([[id per sample], ...]); None: done; a str: failed
    rows: list[tuple[int, int]] = field(default_factory=list)   # (block, slot) of each sample
    read: int = 0                           # prefix tokens read so far
    made: int = 0                           # tokens made so far
    cancelled: bool = False
    unsent: list = field(default_factory=list)   # steps made since the last emit
    sent_at: float = 0.0
    sent: int = 0               # chunks handed over (written by the engine only) ...
    taken: int = 0              # ... and read by the client (written by its reader only)

    @property
    def paused(self) -> bool:
        """The client has BACKLOG chunks unread: make nothing more until it reads (a client
        that stops reading costs a bounded buffer, not memory without end)."""
        return self.sent - self.taken >= BACKLOG

    def send(self, item) -> None:
        self.sent += 1
        self.emit(item)

    def flush(self, now: float, done: bool = False) -> None:
        """Hand the tokens made so far to the client: the first at once, then every FLUSH
        seconds (a chunk, not an event per character), and the rest at the end."""
        if self.unsent and (done or self.made == 1 or now - self.sent_at >= FLUSH):
            self.send(self.unsent)
            self.unsent, self.sent_at = [], now


class StreamEngine:
    """Steps every open stream of one run as one batch, in a thread of its own.

    Rows live in blocks of BLOCK slots and every block is stepped with exactly BLOCK rows: a
    fixed-size GEMM computes each row independently of its neighbours (tests/test_lab.py checks
    it), so a stream's text is exactly what it would be alone, whoever else is connected, and
    its own generator alone draws its samples."""
    BLOCK = 16

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.blocks, self.inputs, self.free = [], [], []     # steppers, their ids, free slots
        self.streams: list[Stream] = []
        self.pending: list[Stream] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True, name="rnnkit-streams").start()

    def open(self, stream: Stream) -> Stream:
        """Queue `stream`; the engine gives it rows between two steps."""
        with self.cond:
            self.pending.append(stream)
            self.cond.notify()
        return stream

    def wake(self) -> None:
        """A client read its chunks: its paused stream may go on."""
        with self.cond:
            self.cond.notify()

    @staticmethod
    def close(stream: Stream) -> None:
        stream.cancelled = True                         # the engine frees its rows next step

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not self.pending and all(s.paused and not s.cancelled
                                                   for s in self.streams):
                        self.cond.wait(timeout=0.05)      # nothing to do until a client reads
                    for stream in self.pending:
                        self._admit(stream)
                    self.pending.clear()
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 — tell every client, keep serving
                    for stream in self.streams:
                        stream.send(f"generation failed: {type(e).__name__}: {e}")
                        self.free += stream.rows
                    self.streams.clear()

    def _admit(self, stream: Stream) -> None:
        while len(self.free) < stream.samples:
            self.blocks.append(self.model.stepper(self.BLOCK))
            self.inputs.append(torch.zeros(self.BLOCK, dtype=torch.long))
            self.free += [(len(self.blocks) - 1, s) for s in range(self.BLOCK)]
        stream.rows, self.free = self.free[:stream.samples], self.free[stream.samples:]
        for b, s in stream.rows:
            self.blocks[b].reset([s])                   # a fresh zero state for each sample
            self.inputs[b][s] = stream.prefix[0]
        self.streams.append(stream)

    def _step(self) -> None:
        sitting_out: dict[int, list[int]] = {}          # the rows of paused streams, by block
        for stream in self.streams:
            if stream.paused and not stream.cancelled:
                for b, s in stream.rows:
                    sitting_out.setdefault(b, []).append(s)
        kept = {b: self.blocks[b].save(rows) for b, rows in sitting_out.items()}
        logits = torch.cat([block(ids) for block, ids in zip(self.blocks, self.inputs)])
        for b, saved in kept.items():                   # their state as if no step was taken
            self.blocks[b].restore(sitting_out[b], saved)
        now = time.monotonic()                                   # (blocks · BLOCK, V)
        for stream in list(self.streams):
            if stream.paused and not stream.cancelled:
                continue                            # its rows idle in the block until it reads
            if not stream.cancelled and stream.made < stream.num_chars:
                self._advance(stream, logits)
            done = stream.cancelled or stream.made >= stream.num_chars
            stream.flush(now, done)
            if done:
                self.streams.remove(stream)
                self.free += stream.rows
                if not stream.cancelled:
                    stream.send(None)

    def _advance(self, stream: Stream, logits: torch.Tensor) -> None:
        if stream.read + 1 < len(stream.prefix):        # warm-up: read the next prefix token
            stream.read += 1
            for b, s in stream.rows:
                self.inputs[b][s] = stream.prefix[stream.read]
            return
        rows = logits[[b * self.BLOCK + s for b, s in stream.rows]]             # (samples, V)
        ids = pick_next(rows, **stream.sampling, generator=stream.generator).tolist()
        for (b, s), token in zip(stream.rows, ids):
            self.inputs[b][s] = token
        stream.made += 1
        stream.unsent.append(ids)

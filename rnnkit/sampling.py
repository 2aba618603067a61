"""What a generation request may ask for, checked once for `rnnkit generate` and the lab
(their limits differ by design; the checks do not). No torch: a usage mistake costs nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for (the CLI and the lab allow different amounts)."""
    num_chars: int
    num_samples: int
    beam: int
    generated: int                  # num_samples x num_chars: bounds the output's memory


def check_sampling(s: dict, limits: Limits, name: Callable[[str], str] = str) -> None:
    """Raise ValueError naming the first setting of the request `s` (num_chars, num_samples,
    temperature, top_k, top_p, seed, beam, length_penalty, stop_at) out of range; `name`
    spells a setting as the caller's user knows it (the CLI's --num-chars, the lab's num_chars)."""
    n = name
    if not 0 <= s["num_chars"] <= limits.num_chars:
        raise ValueError(f"{n('num_chars')} must be between 0 and {limits.num_chars:,}")
    if not (s["temperature"] >= 0 and math.isfinite(s["temperature"])):
        raise ValueError(f"{n('temperature')} must be 0 (greedy) or more")
    if s.get("top_k") is not None and s["top_k"] < 1:
        raise ValueError(f"{n('top_k')} must be 1 or more")
    if s.get("top_p") is not None and not 0 < s["top_p"] <= 1:
        raise ValueError(f"{n('top_p')} must be in (0, 1]")
    if not 1 <= s["num_samples"] <= limits.num_samples:
        raise ValueError(f"{n('num_samples')} must be between 1 and {limits.num_samples:,}")
    if s["num_samples"] * s["num_chars"] > limits.generated:
        raise ValueError(f"{n('num_samples')} x {n('num_chars')} must be at most "
                         f"{limits.generated:,}")
    if s.get("seed") is not None and not 0 <= s["seed"] < 1 << 63:
        raise ValueError(f"{n('seed')} must be in [0, 2^63)")
    beam, penalty = s.get("beam"), s.get("length_penalty") or 0.0
    if beam is None:
        if s.get("stop_at") is not None or penalty:
            raise ValueError(f"{n('stop_at')} and {n('length_penalty')} go with {n('beam')}")
        return
    if not 1 <= beam <= limits.beam:
        raise ValueError(f"{n('beam')} must be between 1 and {limits.beam:,}")
    if s["temperature"] or s.get("top_k") is not None or s.get("top_p") is not None:
        raise ValueError(f"{n('beam')} searches for the likeliest text; it takes no "
                         f"{n('temperature')}, {n('top_k')} or {n('top_p')}")
    if s["num_samples"] > beam:
        raise ValueError(f"{n('num_samples')} must be at most {n('beam')}: {s['num_samples']} "
                         f"is more than {n('beam')} {beam} can return")
    if not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"{n('length_penalty')} must be 0 or more")

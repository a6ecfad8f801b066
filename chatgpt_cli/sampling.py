"""Choosing the next token from the unembedding logits: a few small pure functions.

    logits --(/ temperature)--> --(top-k)--> --(top-p)--> softmax --> draw one token

Temperature 0 means greedy (argmax). Inputs are never modified. Draws use a CPU generator, so
the same seed and options give the same tokens on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chatgpt_cli.errors import UsageError


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        check_options(self.temperature, self.top_k, self.top_p, self.seed)


def check_options(temperature: float, top_k: int, top_p: float, seed: int | None = None) -> None:
    if not temperature >= 0 or temperature == float("inf"):
        raise UsageError(f"temperature must be a number >= 0, not {temperature}")
    if top_k < 0:
        raise UsageError(f"top-k must be >= 0 (0 = off), not {top_k}")
    if not 0 < top_p <= 1:
        raise UsageError(f"top-p must be in (0, 1] (1 = off), not {top_p}")
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"seed must be between 0 and 2**63-1, not {seed}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits; the rest -> -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    top = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p  # mass before it already >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def probabilities(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution the next token is drawn from (float32, on the CPU)."""
    logits = logits.detach().float().cpu()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
    return torch.softmax(logits, dim=-1)


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None = None) -> int:
    """One token id from a (vocab,) row of logits."""
    if options.temperature == 0:
        return int(logits.argmax(-1))
    probs = probabilities(logits, options.temperature, options.top_k, options.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible runs, else from the OS's entropy."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen

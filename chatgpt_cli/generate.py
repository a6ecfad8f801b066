"""Generation: prefill the prompt, then decode one token at a time with the KV cache.

``Engine.generate`` yields token ids; rendering them is the caller's job. The engine remembers
which tokens its cache holds, so a new request that starts with the same tokens (the next turn of
a chat, a retry) runs only the tokens that are new.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from chatgpt_cli.cuda_graph import GraphDecoder, wants_graph
from chatgpt_cli.model import GPT
from chatgpt_cli.sampling import SamplingOptions, make_generator, sample
from chatgpt_cli.tokenizer import EOT


def prefill(model: GPT, tokens: list[int], start: int) -> torch.Tensor:
    """Run tokens at positions start.. through the model (filling the cache); the next-token logits."""
    device = model.transformer.wte.weight.device
    idx = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)
    input_pos = torch.arange(start, start + len(tokens), device=device)  # (T,)
    return model(idx, input_pos, last_only=True)[0, -1]  # (vocab,)


def decode_one(model: GPT, token: int, pos: int) -> torch.Tensor:
    """Run one token at position pos; the next-token logits."""
    device = model.transformer.wte.weight.device
    idx = torch.tensor([[token]], dtype=torch.long, device=device)  # (1, 1)
    return model(idx, torch.tensor([pos], device=device))[0, -1]  # (vocab,)


def prompt_room(window: int, max_new_tokens: int) -> int:
    """How many prompt tokens to keep so that max_new_tokens can follow in the window: the reply gets
    its room, but never more than half the window (past it, generation re-encodes and goes on)."""
    return window - min(max_new_tokens, window // 2)


def sync(device: torch.device) -> None:
    """Wait for the device to finish its queued work (a CUDA step returns once it is launched)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Stats:
    """What the last request cost; ``tokens_run`` counts every token put through the model."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    reencodes: int = 0
    tokens_run: int = 0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


@dataclass
class Engine:
    model: GPT
    cached: list[int] = field(default_factory=list)  # the tokens whose keys/values are in the cache
    stats: Stats = field(default_factory=Stats)
    total_tokens_run: int = 0

    def __post_init__(self) -> None:
        self.device = self.model.transformer.wte.weight.device
        graph = wants_graph(self.model)  # on a CUDA GPU, decode replays a CUDA graph
        self.model.setup_cache(self.window, static=graph)
        self.caches = [block.attn.kv_cache for block in self.model.transformer.h]  # this engine's own
        self.decode: Callable[[int, int], torch.Tensor] = (
            GraphDecoder(self.model) if graph else functools.partial(decode_one, self.model))

    @property
    def window(self) -> int:
        return self.model.config.n_positions

    def room(self, max_new_tokens: int) -> int:
        """Prompt tokens that fit before max_new_tokens (see ``prompt_room``)."""
        return prompt_room(self.window, max_new_tokens)

    def fit(self, tokens: list[int]) -> list[int]:
        """The prompt as the model will see it: at least one token, at most the window."""
        return (tokens or [EOT])[-self.window:]

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Put the sequence in the cache, reusing its longest common prefix; the next-token logits."""
        n = 0
        limit = min(len(self.cached), len(tokens) - 1)  # the last token always runs: we need its logits
        while n < limit and self.cached[n] == tokens[n]:
            n += 1
        self.cached = self.cached[:n]  # positions from n on are about to be overwritten
        sync(self.device)
        t0 = time.perf_counter()
        logits = prefill(self.model, tokens[n:], n)
        sync(self.device)
        self.cached = list(tokens)
        self._count(len(tokens) - n)
        self.stats.prefill_tokens += len(tokens) - n
        self.stats.prefill_seconds += time.perf_counter() - t0
        return logits

    def _count(self, n: int) -> None:
        self.stats.tokens_run += n
        self.total_tokens_run += n

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, options: SamplingOptions,
                 generator: torch.Generator | None = None, stop_at_eot: bool = True,
                 on_step: Callable[[torch.Tensor, int], None] | None = None) -> Iterator[int]:
        """Yield up to max_new_tokens sampled ids. End-of-text is yielded, then ends the stream.

        ``on_step(logits, token)``, if given, sees the logits each token was sampled from.

        Past the window, the most recent half of the sequence is encoded again (GPT-2's positions
        are absolute, so the cache cannot be shifted) and generation goes on.
        """
        self.stats = Stats()
        for block, cache in zip(self.model.transformer.h, self.caches, strict=True):
            block.attn.kv_cache = cache  # another engine on the same model may have put in its own
        generator = generator if generator is not None else make_generator(options.seed)
        tokens = self.fit(prompt)
        self.stats.prompt_tokens = len(tokens)
        logits = self._feed(tokens)
        for i in range(max_new_tokens):
            token = sample(logits, options, generator)
            if on_step is not None:
                on_step(logits, token)
            yield token
            if (token == EOT and stop_at_eot) or i == max_new_tokens - 1:
                return  # no forward pass for a token nobody will see
            tokens.append(token)
            if len(self.cached) >= self.window:
                self.stats.reencodes += 1
                logits = self._feed(tokens[-(self.window // 2):])
                continue
            sync(self.device)
            t0 = time.perf_counter()
            logits = self.decode(token, len(self.cached))
            sync(self.device)
            self.cached.append(token)
            self._count(1)
            self.stats.decode_tokens += 1
            self.stats.decode_seconds += time.perf_counter() - t0

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
from chatgpt_cli.kvcache import FusedKVCache
from chatgpt_cli.layers import prepare_batches
from chatgpt_cli.model import GPT
from chatgpt_cli.sampling import SamplingOptions, adjust, draw, draw_rows, make_generator
from chatgpt_cli.tokenizer import EOT, Tokenizer


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


def cpu_decoder(model: GPT) -> Callable[[int, int], torch.Tensor] | None:
    """The fused CPU decode step (fused.py) where the model's precision allows it, else None."""
    if model.cache_class is not FusedKVCache:
        return None  # fused.py (and numba) is not even imported
    from chatgpt_cli.fused import FusedDecoder, fusable

    return FusedDecoder(model) if fusable(model) else None


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
            GraphDecoder(self.model) if graph else cpu_decoder(self.model) or functools.partial(decode_one, self.model))
        self.batch_decode = getattr(self.decode, "rows", None)  # the fused step of -N's rows, where there is one
        # a padded vocabulary (nanoGPT rounds it up to a multiple of 64) has rows no token is behind
        self.n_vocab = min(self.model.config.vocab_size, Tokenizer.n_vocab)

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

    def _own_caches(self) -> None:
        self.stats = Stats()
        for block, cache in zip(self.model.transformer.h, self.caches, strict=True):
            block.attn.kv_cache = cache  # another engine on the same model may have put in its own

    def _count(self, n: int) -> None:
        self.stats.tokens_run += n
        self.total_tokens_run += n

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, options: SamplingOptions,
                 generator: torch.Generator | None = None, stop_at_eot: bool = True,
                 on_step: Callable[[torch.Tensor, int], None] | None = None) -> Iterator[int]:
        """Yield up to max_new_tokens sampled ids. End-of-text is yielded, then ends the stream.

        ``on_step(logits, token)``, if given, sees the logits each token was sampled from (after
        ``sampling.adjust``: the penalties and biases).

        Past the window, the most recent half of the sequence is encoded again (GPT-2's positions
        are absolute, so the cache cannot be shifted) and generation goes on.
        """
        self._own_caches()
        generator = generator if generator is not None else make_generator(options.seed)
        tokens = self.fit(prompt)
        self.stats.prompt_tokens = len(tokens)
        logits = self._feed(tokens)
        for i in range(max_new_tokens):
            logits = adjust(logits[..., :self.n_vocab], tokens, options)
            token = draw(logits, options, generator)
            if on_step is not None:
                on_step(logits, token)
            yield token
            if (token == EOT and stop_at_eot) or i == max_new_tokens - 1:
                return  # no forward pass for a token nobody will see
            tokens.append(token)
            if len(self.cached) >= self.window:
                self.stats.reencodes += 1
                logits = self._feed(tokens[-max(self.window // 2, 1):])
                continue
            sync(self.device)
            t0 = time.perf_counter()
            logits = self.decode(token, len(self.cached))
            sync(self.device)
            self.cached.append(token)
            self._count(1)
            self.stats.decode_tokens += 1
            self.stats.decode_seconds += time.perf_counter() - t0

    @torch.inference_mode()
    def generate_batch(self, prompt: list[int], max_new_tokens: int, options: SamplingOptions, n: int,
                       stop_at_eot: bool = True, ended: set[int] | None = None,
                       on_step: Callable[[int, torch.Tensor, int], None] | None = None,
                       ) -> Iterator[dict[int, int]]:
        """n independent samples of one prompt, decoded together: yield {row: token} at each step.

        One prefill (reusing this engine's cache), then the keys and values widened to n rows and
        one batched forward pass per step. A row ends on end-of-text (yielded), after max_new_tokens,
        or when the caller adds it to ``ended`` (a stop string); ended rows leave the batch. Row i
        draws from its own generator, seeded seed + i. ``on_step(row, raw_logits, token)`` sees each
        row's unadjusted logits (for log-probabilities).
        """
        self._own_caches()
        ended = ended if ended is not None else set()
        seeds = [None if options.seed is None else (options.seed + i) % 2**63 for i in range(n)]
        generators = [make_generator(s) for s in seeds]
        tokens = self.fit(prompt)
        self.stats.prompt_tokens = len(tokens)
        first = self._feed(tokens)[None, :]  # (1, vocab)
        rows = list(range(n))  # the rows still in the batch
        seqs = [list(tokens) for _ in range(n)]
        logits = first.expand(n, -1)  # (n, vocab)
        length = len(tokens)
        if n > 1 and not self.batch_decode:
            prepare_batches(self.model)  # the model's forward takes the batch: its layers' layouts for it
        try:
            self._widen(n, length)
            for step in range(max_new_tokens):
                raw = logits[:, :self.n_vocab]
                adjusted = torch.stack([adjust(row, seqs[r], options) for r, row in zip(rows, raw, strict=True)]) \
                    if options.adjusts else raw
                out = dict(zip(rows, draw_rows(adjusted, options, [generators[r] for r in rows]), strict=True))
                for i, r in enumerate(rows):
                    seqs[r].append(out[r])
                    if on_step is not None:
                        on_step(r, raw[i], out[r])
                yield out
                if step == max_new_tokens - 1:
                    return
                keep = [i for i, r in enumerate(rows) if r not in ended and not (out[r] == EOT and stop_at_eot)]
                if not keep:
                    return
                if len(keep) < len(rows):
                    self._narrow(keep)
                    rows = [rows[i] for i in keep]
                t0 = time.perf_counter()
                if length >= self.window:  # every row is as long as the others: re-encode them together
                    self.stats.reencodes += 1
                    recent = [seqs[r][-(self.window // 2):] for r in rows]
                    logits, length = self._run(recent, 0, last_only=True), len(recent[0])
                else:  # the fused step for all rows where there is one, else the model's forward
                    last = [seqs[r][-1] for r in rows]
                    run = self.batch_decode or (lambda tokens, pos: self._run([[t] for t in tokens], pos))
                    logits = run(last, length)
                    length += 1
                self._count(len(rows))
                self.stats.decode_tokens += len(rows)
                self.stats.decode_seconds += time.perf_counter() - t0
        finally:
            for block, cache in zip(self.model.transformer.h, self.caches, strict=True):
                block.attn.kv_cache = cache

    def _run(self, idx: list[list[int]], start: int, last_only: bool = False) -> torch.Tensor:
        """Tokens (rows, T) at positions start.. through the batch caches; each row's next-token logits."""
        device = self.model.transformer.wte.weight.device
        x = torch.tensor(idx, dtype=torch.long, device=device)
        pos = torch.arange(start, start + x.shape[1], device=device)
        return self.model(x, pos, last_only=last_only)[:, -1]  # (rows, vocab)

    def _widen(self, n: int, length: int) -> None:
        """Caches of n rows, each starting as a copy of this engine's first ``length`` positions."""
        c, w = self.model.config, self.model.transformer.wte.weight
        with self.model.cache_class.allocating():
            for block, cache in zip(self.model.transformer.h, self.caches, strict=True):
                wide = self.model.cache_class(n, c.n_head, self.window, c.head_dim, cache.k_cache.dtype, w.device)
                wide.copy_prefix(cache, length)
                block.attn.kv_cache = wide

    def _narrow(self, keep: list[int]) -> None:
        """Drop the rows that have ended from the batch caches."""
        index = torch.tensor(keep, device=self.model.transformer.wte.weight.device)
        for block in self.model.transformer.h:
            block.attn.kv_cache.narrow(index)

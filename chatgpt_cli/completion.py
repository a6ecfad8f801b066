"""N samples of one prompt, decoded as a batch: each one's text, tokens, why it ended, log-probabilities.

``samples`` yields each sample as it ends; ``as_json`` shapes the result like OpenAI's completions
object. The command line (cli_complete.py) prints them; nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from chatgpt_cli.generate import Engine
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.streaming import TextStream
from chatgpt_cli.tokenizer import EOT, Tokenizer


@dataclass(frozen=True)
class Alternative:
    token: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """log p(token | the text before it) under the model (raw logits), and the k most likely tokens."""

    logprob: float
    top: list[Alternative]


def token_logprob(raw_logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    top = torch.topk(logprobs, min(k, logprobs.shape[-1])) if k else None
    alts = [] if top is None else [Alternative(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
    return TokenLogprob(float(logprobs[token]), alts)


@dataclass
class Sample:
    index: int
    tokens: list[int] = field(default_factory=list)  # every token generated, end-of-text excluded
    text: str = ""  # what is printed: their decode, up to a stop string
    finish_reason: str = "length"  # length, stop (a stop string) or eos (end-of-text)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with logprobs > 0, one per token


@dataclass
class Timings:
    first_token_s: float = 0.0
    decode_tok_s: float = 0.0  # tokens of all rows together, per second


def samples(engine: Engine, tok: Tokenizer, ids: list[int], options: SamplingOptions, n: int, max_tokens: int,
            stop: Sequence[str] = (), ignore_eos: bool = False, logprobs: int = 0,
            timings: Timings | None = None) -> Iterator[Sample]:
    """Yield the n samples as each ends (those ending together in row order)."""
    found = [Sample(i) for i in range(n)]
    streams = [TextStream(tok, stop) for _ in range(n)]
    ended: set[int] = set()
    alive = set(range(n))
    timings = timings if timings is not None else Timings()
    pending: dict[int, TokenLogprob] = {}

    def on_step(row: int, raw: torch.Tensor, token: int) -> None:
        pending[row] = token_logprob(raw, token, logprobs)

    t0 = time.perf_counter()
    steps = engine.generate_batch(ids, max_tokens, options, n, stop_at_eot=not ignore_eos, ended=ended,
                                  on_step=on_step if logprobs else None)
    for i, step in enumerate(steps):
        if i == 0:
            timings.first_token_s = time.perf_counter() - t0
        done = []
        for row, token in step.items():
            s, stream = found[row], streams[row]
            if token == EOT and not ignore_eos:
                s.finish_reason = "eos"
                done.append(row)
                continue
            s.tokens.append(token)
            if logprobs:
                s.logprobs.append(pending[row])
            stream.push(token)
            if stream.stopped:
                s.finish_reason = "stop"
                done.append(row)
        for row in done:
            ended.add(row)
        for row in sorted(done):
            alive.discard(row)
            yield finish(found[row], streams[row])
    timings.decode_tok_s = engine.stats.decode_tok_s
    for row in sorted(alive):  # max tokens reached
        yield finish(found[row], streams[row])


def finish(s: Sample, stream: TextStream) -> Sample:
    stream.finish()
    s.text = stream.text
    return s


def as_json(tok: Tokenizer, model: str, prompt_tokens: int, found: list[Sample], timings: Timings,
            logprobs: int = 0) -> dict:
    """OpenAI's text_completion object (choices, usage), with token ids, end-of-text and timings added."""
    def text(t: int) -> str:
        return tok.token_bytes(t).decode("utf-8", errors="replace")

    choices = []
    for s in sorted(found, key=lambda s: s.index):
        choice: dict = {"index": s.index, "text": s.text, "tokens": s.tokens, "finish_reason": s.finish_reason,
                        "logprobs": None}
        if logprobs:
            offsets, at = [], 0
            for t in s.tokens:
                offsets.append(at)
                at += len(text(t))
            choice["logprobs"] = {
                "tokens": [text(t) for t in s.tokens],
                "token_logprobs": [lp.logprob for lp in s.logprobs],
                "top_logprobs": [[{"token": text(a.token), "id": a.token, "logprob": a.logprob} for a in lp.top]
                                 for lp in s.logprobs],
                "text_offset": offsets,
            }
        choices.append(choice)
    completion = sum(len(s.tokens) + (s.finish_reason == "eos") for s in found)
    return {"object": "text_completion", "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
            "timings": {"first_token_ms": round(timings.first_token_s * 1000, 3),
                        "decode_tok_s": round(timings.decode_tok_s, 3)}}

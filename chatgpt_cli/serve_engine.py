"""The server's one engine: a worker thread that runs requests one at a time, in arrival order.

Requests wait in a bounded queue (``Busy`` when it is full). Each request is a ``Job``; the worker
reports its progress through ``job.emit`` as small events (``Piece``, ``End``, then ``Done`` or
``Failed``). Setting ``job.cancelled`` (a client went away) stops its generation before the next
token. The engine keeps its cache between jobs, so a chat client resending its history runs only
the new tokens.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from chatgpt_cli.errors import ChatGPTCliError
from chatgpt_cli.generate import Engine
from chatgpt_cli.sampling import SamplingOptions, make_generator
from chatgpt_cli.streaming import TextStream
from chatgpt_cli.tokenizer import EOT, Tokenizer


class Busy(ChatGPTCliError):
    """The queue is full."""


class Closing(ChatGPTCliError):
    """The server is shutting down."""


@dataclass(frozen=True)
class Request:
    """What to generate: n choices for each prompt; ``logprobs`` is None (off) or how many alternatives."""

    prompts: list[list[int]]
    max_tokens: int
    options: SamplingOptions
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: bool = False  # also the logprobs of the prompt's tokens (completions' echo)


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float | None  # None: the first token of a prompt, which nothing predicts
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class Piece:  # text released for a choice, with the logprobs of the tokens it came from
    index: int
    text: str
    logprobs: list[TokenLogprob]
    prompt: bool = False  # the logprobs of the prompt's tokens (no text: the prompt is echoed whole)


@dataclass(frozen=True)
class End:
    index: int
    finish_reason: str  # "stop" (end-of-text or a stop string) or "length" (max_tokens, or cut short)
    completion_tokens: int


@dataclass(frozen=True)
class Done:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens the cache already held


@dataclass(frozen=True)
class Failed:
    message: str
    status: int = 500  # 503: the server is shutting down


@dataclass
class Choice:
    """One choice as it is generated."""

    stream: TextStream
    steps: list[TokenLogprob] = field(default_factory=list)  # logprobs not yet emitted
    count: int = 0
    reason: str = "length"
    ended: bool = False


@dataclass
class Job:
    request: Request
    emit: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    alternatives = torch.topk(logp, top) if top else None
    pairs = list(zip(alternatives.indices.tolist(), alternatives.values.tolist(), strict=True)) if top else []
    return TokenLogprob(token, float(logp[token]), pairs)


class Worker:
    """Owns the engine; ``submit`` queues a job, a thread runs the jobs in order."""

    def __init__(self, engine: Engine, max_waiting: int = 16, tokenizer: Tokenizer | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer or Tokenizer()
        self.max_waiting = max_waiting
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closing = False
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="chatgpt-cli-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    @property
    def tokens_run(self) -> int:
        return self.engine.total_tokens_run

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise Closing("the server is shutting down")
            if self._jobs.qsize() >= self.max_waiting:
                raise Busy(f"the server is busy: {self.max_waiting} requests are already waiting; retry later")
            self._jobs.put(job)

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, fail the waiting ones, cut the running one short, and stop the thread."""
        with self._lock:
            self._closing = True
            running = self.running
        if running is not None:
            running.cancelled.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(Failed("the server is shutting down", 503))
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self.running = job
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            except Exception as e:  # a bug or an out-of-memory: that request fails, the server goes on
                job.emit(Failed(f"generation failed: {type(e).__name__}: {e}"))
            finally:
                self.running = None

    def _run(self, job: Job) -> None:
        r = job.request
        generator = make_generator(r.options.seed)
        prompt_tokens = sum(len(self.engine.fit(p)) for p in r.prompts)
        completion_tokens, cached = 0, None
        for p, prompt in enumerate(r.prompts):  # the n choices of each prompt: batched when n > 1
            choices = {p * r.n + j: Choice(TextStream(self.tokenizer, r.stop)) for j in range(r.n)}
            if r.prompt_logprobs:
                scored = self.prompt_logprobs(prompt, r.logprobs or 0)
                for index in choices:
                    job.emit(Piece(index, "", scored, prompt=True))
            reused = self._single(job, prompt, choices, generator) if r.n == 1 else self._batch(job, prompt, choices)
            cached = reused if cached is None else cached
            for index, choice in choices.items():
                if not choice.ended:
                    job.emit(Piece(index, choice.stream.finish(), choice.steps))
                job.emit(End(index, choice.reason, choice.count))
                completion_tokens += choice.count
            if job.cancelled.is_set():  # the client left, or the server is closing: this is the end
                break
        job.emit(Done(prompt_tokens, completion_tokens, cached or 0))

    def _reused(self) -> int:
        """How much of the last prompt the cache held already (once its first token is drawn)."""
        return self.engine.stats.prompt_tokens - self.engine.stats.prefill_tokens

    def _single(self, job: Job, prompt: list[int], choices: dict[int, Choice], generator: torch.Generator) -> int:
        """One choice; the engine's cache then holds its tokens too (the next turn of a chat reuses them)."""
        (index, choice), = choices.items()
        k = job.request.logprobs
        on_step = (lambda logits, token: choice.steps.append(token_logprob(logits, token, k))) if k is not None \
            else None
        reused = 0
        for token in self.engine.generate(prompt, job.request.max_tokens, job.request.options, generator,
                                          on_step=on_step):
            reused = reused or self._reused()
            if job.cancelled.is_set() or self._push(job, index, choice, token):
                break
        return reused

    def _batch(self, job: Job, prompt: list[int], choices: dict[int, Choice]) -> int:
        """n choices decoded as one batch (row i is seeded seed + i); rows leave as they end."""
        r, first, k = job.request, min(choices), job.request.logprobs
        ended: set[int] = set()
        on_step = (lambda row, logits, token: choices[first + row].steps.append(token_logprob(logits, token, k))) \
            if k is not None else None
        reused = 0
        for step in self.engine.generate_batch(prompt, r.max_tokens, r.options, r.n, ended=ended, on_step=on_step):
            reused = reused or self._reused()
            if job.cancelled.is_set():
                break
            for row, token in step.items():
                if self._push(job, first + row, choices[first + row], token):
                    ended.add(row)
        return reused

    def _push(self, job: Job, index: int, choice: Choice, token: int) -> bool:
        """One more token of a choice, its text emitted; True when that ends the choice."""
        choice.count += 1
        if token == EOT:
            choice.steps = []  # nobody sees the end-of-text token
        else:
            job.emit(Piece(index, choice.stream.push(token), choice.steps))
            choice.steps = []
        if token == EOT or choice.stream.stopped:
            choice.reason, choice.ended = "stop", True
        return choice.ended

    @torch.inference_mode()
    def prompt_logprobs(self, prompt: list[int], top: int) -> list[TokenLogprob]:
        """Each prompt token's logprob given the tokens before it, from one pass without the cache
        (the cache, and what the engine knows it holds, stay as they are)."""
        prompt = self.engine.fit(prompt)
        model = self.engine.model
        blocks = model.transformer.h
        caches = [block.attn.kv_cache for block in blocks]
        try:
            for block in blocks:
                block.attn.kv_cache = None
            logits = model(torch.tensor([prompt], device=model.transformer.wte.weight.device))[0]  # (T, vocab)
        finally:
            for block, cache in zip(blocks, caches, strict=True):
                block.attn.kv_cache = cache
        self.engine.total_tokens_run += len(prompt)
        first = TokenLogprob(prompt[0], None, [])
        return [first] + [token_logprob(logits[i - 1], prompt[i], top) for i in range(1, len(prompt))]

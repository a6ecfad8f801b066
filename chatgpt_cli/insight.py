"""Looking inside the model: next-token distributions, attention patterns, and the loss of a text.

Pure computations on a loaded model (and the hook that records generation's distributions);
the command line (cli_inspect.py, cli_complete.py) renders them with render.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from chatgpt_cli.errors import ChatGPTCliError
from chatgpt_cli.model import GPT, attention_weights
from chatgpt_cli.sampling import N_VOCAB, SamplingOptions, clean_logits, probabilities


@dataclass(frozen=True)
class Candidate:
    token: int
    logit: float
    prob: float  # softmax of the raw logits
    sampled_prob: float  # after temperature / top-k / top-p: the distribution actually drawn from


@torch.inference_mode()
def next_token_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    """The unembedding logits (vocab,) for the token after ids (the last window of them)."""
    ids = ids[-model.config.n_positions:]
    idx = torch.tensor([ids], device=model.transformer.wte.weight.device)
    return model(idx, last_only=True)[0, -1].float().cpu()


def candidates(logits: torch.Tensor, n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               min_p: float = 0.0, adjusted: torch.Tensor | None = None) -> list[Candidate]:
    """The n most likely next tokens (by raw logit) with raw and sampling probabilities; the latter
    from ``adjusted`` (the logits after sampling.adjust) when given."""
    clean = clean_logits(logits)  # padded ids are never listed; NaN logits rank last
    raw = torch.softmax(clean, dim=-1)
    sampled = probabilities(logits if adjusted is None else adjusted, temperature, top_k, top_p, min_p)
    top = torch.topk(clean, min(n, logits.shape[-1], N_VOCAB))
    return [Candidate(int(i), float(logits[i]), float(raw[i]), float(sampled[i])) for i in top.indices]


@dataclass
class StepRecorder:
    """on_step hook for generation: what each token's distribution looked like."""

    options: SamplingOptions
    alternatives: int = 0
    steps: list[tuple[int, float, list[Candidate]]] = field(default_factory=list)  # (picked, its prob, candidates)

    def __call__(self, logits: torch.Tensor, token: int) -> None:
        o = self.options  # the logits come after sampling.adjust
        p = float(probabilities(logits, o.temperature, o.top_k, o.top_p, o.min_p)[token])
        alts = candidates(logits, self.alternatives, o.temperature, o.top_k, o.top_p, o.min_p) \
            if self.alternatives else []
        self.steps.append((token, p, alts))

    @property
    def last_prob(self) -> float:
        return self.steps[-1][1] if self.steps else 1.0


@torch.inference_mode()
def attention_maps(model: GPT, ids: list[int]) -> torch.Tensor:
    """Attention weights of every layer and head, (n_layer, n_head, T, T); row i sums to 1 over keys 0..i.

    Hooks catch each layer's fused Q, K, V projection; the weights are then computed with the
    model's own ``attention_weights`` (the same math as the fused kernel, spelled out).
    """
    captured: list[torch.Tensor] = []
    hooks = [block.attn.c_attn.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for block in model.transformer.h]
    try:
        idx = torch.tensor([ids], device=model.transformer.wte.weight.device)
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    C, nh = model.config.n_embd, model.config.n_head
    pos = torch.arange(len(ids), device=idx.device)
    maps = []
    for qkv in captured:
        q, k, _ = qkv.float().split(C, dim=2)
        q = q.view(1, len(ids), nh, C // nh).transpose(1, 2)  # (1, nh, T, hs)
        k = k.view(1, len(ids), nh, C // nh).transpose(1, 2)  # (1, nh, T, hs)
        maps.append(attention_weights(q, k, pos)[0])  # (nh, T, T)
    return torch.stack(maps).cpu()


def attention_summary(maps: torch.Tensor) -> list[list[tuple[int, float]]]:
    """[layer][i] = (the key query i attends most to, its weight), the weights averaged over heads."""
    mean = maps.mean(dim=1)  # (n_layer, T, T)
    best = mean.argmax(dim=-1)  # (n_layer, T)
    return [[(int(j), float(mean[layer, i, j])) for i, j in enumerate(row)] for layer, row in enumerate(best.tolist())]


@dataclass(frozen=True)
class Score:
    n_tokens: int  # tokens predicted (all but the first)
    mean_loss: float  # nats/token
    token_logprobs: list[float]  # log p(token i | tokens before it), for tokens 1..N-1

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss)


def windows(n_tokens: int, window: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first scored position): windows of the context length, half a window apart.

    Every token after the first is scored exactly once, with at least half a window of context
    (or all there is): the standard strided evaluation of a fixed-window model.
    """
    stride = max(window // 2, 1)
    scored = 1
    start = 0
    while scored < n_tokens:
        end = min(start + window, n_tokens)
        yield start, end, scored
        scored = end
        start = min(end - window + stride, n_tokens) if end < n_tokens else end
        start = max(start, 0)


@torch.inference_mode()
def score(model: GPT, ids: list[int], progress: Callable[[int], None] | None = None) -> Score:
    """Mean negative log-likelihood (nats/token) of ids under the model, windowed over the context."""
    if len(ids) < 2:
        raise ValueError("need at least two tokens to score")
    device = model.transformer.wte.weight.device
    logprobs: list[float] = []
    for start, end, first in windows(len(ids), model.config.n_positions):
        idx = torch.tensor([ids[start:end]], device=device)
        logits = model(idx)[0, :, :N_VOCAB].float()  # (T, vocab): padded ids are never a next token
        targets = idx[0, first - start:]  # the tokens scored in this window
        lp = F.log_softmax(logits[first - start - 1:-1], dim=-1).gather(1, targets[:, None])[:, 0]
        logprobs.extend(lp.cpu().tolist())
        if progress:
            progress(end - first)
    if not all(map(math.isfinite, logprobs)):
        raise ChatGPTCliError("cannot score: the model's outputs are not finite numbers "
                              "(its weights hold NaN or infinite values)")
    return Score(len(logprobs), -sum(logprobs) / len(logprobs), logprobs)

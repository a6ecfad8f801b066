"""One prediction walked through the model, with the engine's own numbers.

    text -> tokens -> wte + wpe -> n_layer x [attention, MLP] -> ln_f -> unembedding -> softmax -> a token

``explain`` runs the model's ordinary forward over the sequence (the prefill of generation) with
hooks on each stage (insight.record), then reads off: the embeddings, where the last token's
query looks in every block, the "logit lens" (ln_f and the unembedding applied to the residual
stream after each block), the final distribution and what sampling leaves of it, and the cost
of the token in multiply-adds and bytes. Pure computation; cli_explain.py renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chatgpt_cli.insight import Candidate, candidates, record, split_heads
from chatgpt_cli.model import GPT, GPTConfig, KVCache, attention_weights
from chatgpt_cli.sampling import SamplingOptions, make_generator, probabilities, sample

FIRST_VALUES = 4  # how many values of a vector are shown
TOP_KEYS = 3  # keys listed per layer (or head)
LENS_TOP = 3  # tokens listed per layer by the logit lens


@dataclass(frozen=True)
class Vector:
    norm: float
    first: list[float]  # its first few values


@dataclass(frozen=True)
class Embedding:
    pos: int
    token: int
    wte: Vector  # the token's row of the token embedding
    wpe: Vector  # the position's row of the position embedding
    total: Vector  # their sum: what enters block 0


@dataclass(frozen=True)
class Attended:
    pos: int
    token: int
    weight: float


@dataclass(frozen=True)
class Focus:
    head: int | None  # None: the mean over the heads
    keys: list[Attended]


@dataclass(frozen=True)
class Ranked:
    token: int
    prob: float


@dataclass(frozen=True)
class Layer:
    layer: int
    top: list[Ranked]  # the logit lens after this block
    attention: list[Focus]  # where the last token's query looked in this block


@dataclass(frozen=True)
class Choice:
    token: int
    prob: float  # under the raw softmax
    sampled_prob: float  # under what temperature / top-k / top-p leave
    greedy: bool
    kept: int  # tokens with a chance left after temperature / top-k / top-p
    kept_mass: float  # their share of the raw probability


@dataclass(frozen=True)
class Cost:
    """Multiply-adds and bytes for one new token at context length ``context`` (with the KV cache)."""

    context: int
    window: int
    n_layer: int
    n_embd: int
    vocab_size: int
    block_products: int  # per block: q,k,v 3C^2 + out C^2 + MLP 8C^2 = 12 C^2
    unembedding: int  # C x vocab
    attention: int  # n_layer x 2 x context x C: q.K and weights.V over every head
    weight_bytes: int  # bytes of weights one token reads
    kv_bytes: int  # bytes of keys and values it reads from the cache

    @property
    def products(self) -> int:
        return self.n_layer * self.block_products + self.unembedding

    @property
    def total(self) -> int:
        return self.products + self.attention

    def attention_for(self, context: int) -> int:
        """Per new token, with the cache: linear in the context."""
        return 2 * self.n_layer * context * self.n_embd

    def sequence_attention(self, length: int) -> int:
        """A whole sequence at once (or per token without a cache): quadratic in its length."""
        return self.n_layer * self.n_embd * length * (length + 1)


@dataclass(frozen=True)
class Explanation:
    ids: list[int]  # the tokens run (the last window of the text)
    dropped: int  # tokens before the window, not run
    config: GPTConfig
    embeddings: list[Embedding]
    layers: list[Layer]
    first_top_layer: int  # the first block after which the final top token is already the lens's top
    top: int  # the final top token (greedy's answer)
    next: list[Candidate]
    options: SamplingOptions
    chosen: Choice
    cost: Cost


def vector(x: torch.Tensor) -> Vector:
    x = x.float()
    return Vector(float(x.norm()), [float(v) for v in x[:FIRST_VALUES]])


def last_token_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """(n_head, T): the last query's attention weights over every key, from the fused projection."""
    q, k, _ = split_heads(qkv, n_head)  # (1, nh, T, hs)
    pos = torch.arange(k.shape[2], device=k.device)
    return attention_weights(q[:, :, -1:], k, pos[-1:])[0, :, 0].cpu()  # (nh, T)


def focus(weights: torch.Tensor, ids: list[int], head: int | None) -> Focus:
    top = torch.topk(weights, min(TOP_KEYS, len(weights)))
    return Focus(head, [Attended(int(j), ids[int(j)], float(w)) for w, j in zip(top.values, top.indices, strict=True)])


def lens(model: GPT, residual: torch.Tensor) -> torch.Tensor:
    """(vocab,) logits the model would give if the stream stopped here: its own ln_f and unembedding."""
    return model.head(residual[-1].view(1, 1, -1))[0, -1].float().cpu()


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes_read(model: GPT) -> int:
    """Bytes of weights one new token reads: every tensor of the blocks, ln_f and the unembedding
    in whatever form the model holds them (packed, quantized...), and one row of each embedding."""
    wte, wpe = model.transformer.wte, model.transformer.wpe
    tensors: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, KVCache) or module is wte or module is wpe:
            continue  # the cache holds activations (kv_bytes); a lookup reads one row (below)
        held = [*module._parameters.values(), *module._buffers.values(),
                *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        tensors |= {id(t): t for t in held if t is not None}
    total = sum(tensor_bytes(t) for t in tensors.values()) + tensor_bytes(wte.weight[0]) + tensor_bytes(wpe.weight[0])
    if getattr(model.lm_head, "tied_to", ()):
        total += tensor_bytes(wte.weight)  # tied: the unembedding reads all of wte
    return total


def count(config: GPTConfig, context: int, weight_bytes: int, activation_bytes: float) -> Cost:
    """The multiply-adds of one token at this context length, by formula; ``activation_bytes``: what
    one cached key or value number takes (an int8 cache: 1 byte and its share of a scale)."""
    C = config.n_embd
    return Cost(context=context, window=config.n_positions, n_layer=config.n_layer, n_embd=C,
                vocab_size=config.vocab_size, block_products=3 * C * C + C * C + 8 * C * C,
                unembedding=C * config.vocab_size, attention=2 * config.n_layer * context * C,
                weight_bytes=weight_bytes, kv_bytes=round(2 * config.n_layer * context * C * activation_bytes))


def choose(logits: torch.Tensor, options: SamplingOptions) -> Choice:
    """The token sampling picks (the same draw as generation's first token with this seed)."""
    raw = torch.softmax(logits.float(), dim=-1)
    probs = probabilities(logits, options.temperature, options.top_k, options.top_p)
    token = sample(logits, options, make_generator(options.seed))
    kept = probs > 0
    return Choice(token, float(raw[token]), float(probs[token]), options.temperature == 0,
                  int(kept.sum()), float(raw[kept].sum()))


@torch.inference_mode()
def explain(model: GPT, ids: list[int], options: SamplingOptions, top: int = 5, heads: bool = False) -> Explanation:
    """Walk the prediction of the token after ids (the last window of them) through the model."""
    if not ids:
        raise ValueError("no tokens to explain")
    c = model.config
    run, dropped = ids[-c.n_positions:], max(len(ids) - c.n_positions, 0)
    rec = record(model, run, last_only=True)  # the prefill of generation: the same numbers as `next`
    embeddings = [Embedding(p, t, vector(rec.token_embeddings[p]), vector(rec.position_embeddings[p]),
                            vector(rec.token_embeddings[p] + rec.position_embeddings[p]))
                  for p, t in enumerate(run)]
    layers = []
    for i, (qkv, residual) in enumerate(zip(rec.qkv, rec.residual, strict=True)):
        weights = last_token_attention(qkv, c.n_head)  # (nh, T)
        attn = [focus(w, run, h) for h, w in enumerate(weights)] if heads else [focus(weights.mean(0), run, None)]
        logits = lens(model, residual)
        probs, best = torch.softmax(logits, dim=-1), torch.topk(logits, LENS_TOP).indices
        layers.append(Layer(i, [Ranked(int(j), float(probs[j])) for j in best], attn))
    logits = rec.logits[-1].float().cpu()
    final = int(torch.topk(logits, 1).indices[0])  # as the lens and `next` rank them (ties alike)
    first = next((layer.layer for layer in layers if layer.top[0].token == final), c.n_layer - 1)
    cached = model.cache_dtype or model.transformer.wte.weight.dtype  # the KV cache's numbers
    per_value = {torch.int8: 1 + 4 / c.head_dim, torch.uint8: 0.5 + 4 / c.head_dim}.get(  # codes and their scales
        cached, torch.empty((), dtype=cached).element_size())  # (uint8: int4 codes, two a byte)
    cost = count(c, len(run), weight_bytes_read(model), per_value)
    return Explanation(run, dropped, c, embeddings, layers, first, final,
                       candidates(logits, top, options.temperature, options.top_k, options.top_p),
                       options, choose(logits, options), cost)

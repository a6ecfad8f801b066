"""The decode step on a CPU in one numba call for all blocks: no torch op between the products.

One GPT-2 token is ~50 matrix-vector products, 12 attentions and a few dozen small operations
(layer norms, residual adds, reshapes). Run as torch ops from Python, the small ones cost more
than a third of the step on a fast CPU. Here each block's whole step is one compiled function over
the arrays the layers already hold (layers.py), all blocks run by one call, in the model's order:

    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))      then   logits = lm_head(ln_f(x))

It computes what ``GPT.forward`` computes for one token (a test holds them together), and is used
for one row and for the rows of ``-N`` samples alike (x is (B, n_embd)), when every product of the
model is one of the numba forms (float32, bfloat16, int8; int4 on a CPU
with AVX-512 BF16) and the cache is the fused one; otherwise decode runs the model's forward
(generate.decode_one).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import typeof
from numba.typed import List

from chatgpt_cli.compiled import interrupts_held, kernel
from chatgpt_cli.kernels import widen
from chatgpt_cli.kernels_attend import attend
from chatgpt_cli.kernels_rows import rows_product
from chatgpt_cli.kvcache import FusedKVCache
from chatgpt_cli.layers import Linear, bits
from chatgpt_cli.model import GPT

step = kernel(fastmath=True)


@step
def layer_norm(x, weight, bias, eps):
    """(x - mean) / sqrt(var + eps) * weight + bias over the n_embd values of each row of x (B,
    n_embd), float64 sums. Written as loops: array expressions allocated four temporaries a row
    and took 8x the time (14 us for 8 rows of 768)."""
    out = np.empty_like(x)
    n = x.shape[1]
    for b in range(x.shape[0]):
        total = 0.0
        for i in range(n):
            total += np.float64(x[b, i])
        mean = np.float32(total / n)
        squares = 0.0
        for i in range(n):
            centred = np.float64(x[b, i] - mean)
            squares += centred * centred
        scale = np.float32(1.0 / np.sqrt(squares / n + eps))
        for i in range(n):
            out[b, i] = (x[b, i] - mean) * scale * weight[i] + bias[i]
    return out


@step
def embed(wte, wpe, tokens, pos):
    """Each token's embedding plus its position's: the residual stream x (B, n_embd) float32."""
    x = np.empty((tokens.shape[0], wpe.shape[1]), np.float32)
    for b in range(tokens.shape[0]):
        for i in range(x.shape[1]):
            x[b, i] = widen(wte[tokens[b], i]) + wpe[pos, i]
    return x


@step
def block_step(x, ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj, k_cache, v_cache, k_scale, v_scale, pos, eps):
    """One block for B rows of one token each at position ``pos``, x (B, n_embd) updated in place.

    Each product is (weight, scale, bias) as kernels.rows_product takes it (each weight read once
    for all rows); ln_* are (weight, bias); k_cache, v_cache (B, nh, max_len, hs) the block's
    cache (and its scales, for int8 and int4 codes), whose row b gets row b's key and value.
    """
    (B, C), n_head = x.shape, k_cache.shape[1]
    hs = C // n_head
    qkv = np.empty((B, 3 * C), np.float32)
    rows_product(layer_norm(x, ln_1[0], ln_1[1], eps), c_attn[0], c_attn[1], c_attn[2], qkv, False)
    q = np.ascontiguousarray(qkv[:, :C]).reshape((B, n_head, hs))  # (B, nh, hs)
    k = np.ascontiguousarray(qkv[:, C:2 * C]).reshape((B, n_head, hs))  # (B, nh, hs)
    v = np.ascontiguousarray(qkv[:, 2 * C:]).reshape((B, n_head, hs))  # (B, nh, hs)
    y = np.empty((B, n_head, hs), np.float32)
    attend(q, k, v, k_cache, v_cache, k_scale, v_scale, pos, y)  # (B, nh, hs)
    a = np.empty((B, C), np.float32)
    rows_product(y.reshape((B, C)), attn_proj[0], attn_proj[1], attn_proj[2], a, False)  # heads side by side
    x += a
    hidden = np.empty((B, c_fc[0].shape[0]), np.float32)
    rows_product(layer_norm(x, ln_2[0], ln_2[1], eps), c_fc[0], c_fc[1], c_fc[2], hidden, True)  # with the GELU
    m = np.empty((B, C), np.float32)
    rows_product(hidden, mlp_proj[0], mlp_proj[1], mlp_proj[2], m, False)
    x += m


@step
def blocks_step(x, blocks, caches, pos, eps):
    """Every block in turn (``block_step``) in one call: blocks a typed list of each block's arrays
    (made once: unboxing a list is one pointer, where a call per block unboxed ~21 arrays, 3.5 us a
    block), caches a tuple of each block's (k_cache, v_cache, k_scale, v_scale)."""
    for i in range(len(blocks)):
        ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj = blocks[i]
        k_cache, v_cache, k_scale, v_scale = caches[i]
        block_step(x, ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj, k_cache, v_cache, k_scale, v_scale, pos, eps)


@step
def head_step(x, ln_f, head, eps, logits):
    """The final layer norm and the unembedding: logits (B, vocab) of the residual stream x (B, n_embd)."""
    rows_product(layer_norm(x, ln_f[0], ln_f[1], eps), head[0], head[1], head[2], logits, False)


def layer_norm_arrays(ln: torch.nn.LayerNorm) -> tuple[np.ndarray, np.ndarray]:
    return ln.weight.detach().numpy(), ln.bias.detach().numpy()


def fusable(model: GPT) -> bool:
    """Whether every product is a numba form, the cache the fused one, the rest float32 on the CPU."""
    t = model.transformer
    linears = [getattr(parent, name) for parent, name in model.linear_layers()] + [model.lm_head]
    norms = [t.ln_f, *(ln for block in t.h for ln in (block.ln_1, block.ln_2))]
    return (t.wte.weight.device.type == "cpu" and model.cache_class is FusedKVCache
            and all(isinstance(m, Linear) and m.arrays for m in linears)
            and all(block.mlp.c_fc.gelu and not block.mlp.c_proj.gelu and not block.attn.c_attn.gelu
                    and not block.attn.c_proj.gelu for block in t.h)
            and all(ln.weight.dtype == torch.float32 for ln in norms) and t.wpe.weight.dtype == torch.float32
            and t.wte.weight.dtype in (torch.float32, torch.bfloat16))


class FusedDecoder:
    """``decoder(token, pos)`` -> next-token logits (vocab,), like ``generate.decode_one``, and
    ``decoder.rows(tokens, pos)`` -> (B, vocab) for B rows of a batch (``-N``), over the caches the
    model's blocks hold at the time of the call."""

    def __init__(self, model: GPT) -> None:
        t = model.transformer
        self.model, self.eps = model, model.config.layer_norm_epsilon
        self.wte, self.wpe = bits(t.wte.weight.detach()), t.wpe.weight.detach().numpy()
        self.blocks = List([(layer_norm_arrays(b.ln_1), b.attn.c_attn.product_arrays(), b.attn.c_proj.product_arrays(),
                             layer_norm_arrays(b.ln_2), b.mlp.c_fc.product_arrays(), b.mlp.c_proj.product_arrays())
                            for b in t.h])
        self.ln_f, self.head = layer_norm_arrays(t.ln_f), model.lm_head.product_arrays()
        self.vocab = model.lm_head.out_features
        self._load()

    def _load(self) -> None:
        """Load the step's kernels now (from numba's disk cache, else compile them), not at the first
        token decoded, where numba would: a reply's first token then waits for nothing."""
        x, logits = np.zeros((1, self.wpe.shape[1]), np.float32), np.zeros((1, self.vocab), np.float32)
        cache = self.model.transformer.h[0].attn.kv_cache.arrays
        embed.compile(tuple(typeof(a) for a in (self.wte, self.wpe, np.zeros(1, np.int64), 0)))
        block_step.compile(tuple(typeof(a) for a in (x, *self.blocks[0], *cache, 0, self.eps)))
        blocks_step.compile(tuple(typeof(a) for a in (x, self.blocks, self._caches(), 0, self.eps)))
        head_step.compile(tuple(typeof(a) for a in (x, self.ln_f, self.head, self.eps, logits)))

    def _caches(self) -> tuple:
        """The arrays of the caches the blocks hold now (-N widens and narrows them)."""
        return tuple(block.attn.kv_cache.arrays for block in self.model.transformer.h)

    def rows(self, tokens: list[int], pos: int) -> torch.Tensor:
        logits = torch.empty(len(tokens), self.vocab)
        with interrupts_held():  # numba runs Python code inside these calls (interrupts_held says why)
            x = embed(self.wte, self.wpe, np.array(tokens, np.int64), pos)  # (B, n_embd)
            blocks_step(x, self.blocks, self._caches(), pos, self.eps)
            head_step(x, self.ln_f, self.head, self.eps, logits.numpy())
        return logits

    def __call__(self, token: int, pos: int) -> torch.Tensor:
        return self.rows([token], pos)[0]

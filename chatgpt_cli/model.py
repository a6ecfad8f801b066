"""The GPT-2 decoder, top to bottom.

    tokens -> token embedding + position embedding
           -> n_layer x [ x + attn(ln_1(x)) ; x + mlp(ln_2(x)) ]   (pre-LayerNorm blocks)
           -> ln_f -> unembedding (tied to the token embedding) -> logits

Attribute names equal the keys of GPT-2 checkpoints (``transformer.h.0.attn.c_attn.weight``...),
and linear layers keep GPT-2's Conv1D layout, weight of shape (in, out), so loading is a straight
copy. This module does no I/O and prints nothing.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2 hyper-parameters, with the field names of GPT-2's ``config.json``."""

    vocab_size: int = 50257
    n_positions: int = 1024  # the context window
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Conv1D(nn.Module):
    """GPT-2's linear layer: y = x @ W + b with W stored as (in, out)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.weight.shape[1],)
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)  # (B*T, out)
        return y.view(shape)


class Unembedding(nn.Module):
    """logits = x W^T, W (vocab_size, n_embd): the checkpoint's own lm_head.weight, or the token
    embedding's matrix when tied to it (GPT-2's way; then it holds no parameter of its own)."""

    def __init__(self, vocab_size: int, n_embd: int, tied_to: nn.Embedding | None = None) -> None:
        super().__init__()
        self.tied_to = () if tied_to is None else (tied_to,)  # a tuple: not a second copy in state_dict
        if tied_to is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))

    @property
    def matrix(self) -> torch.Tensor:
        return self.tied_to[0].weight if self.tied_to else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.matrix)  # (..., vocab)


class KVCache(nn.Module):
    """Preallocated keys and values of every position seen so far, for one layer.

    ``static``: every call returns the whole buffer, so shapes never change (what a CUDA graph
    needs); the attention then masks out the positions not written yet.
    """

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None, static: bool = False) -> None:
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.static = static
        # Uninitialised unless static: only positions already written are read, and memory pages that
        # are never written are never made resident (a short chat does not pay for the whole window).
        # A static cache is read whole, so it starts at zero (masked garbage could be NaN).
        make = torch.zeros if static else self.empty
        self.register_buffer("k_cache", make(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", make(shape, dtype=dtype, device=device), persistent=False)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
        """An uninitialised buffer (a subclass may place it elsewhere)."""
        return torch.empty(shape, dtype=dtype, device=device)

    @staticmethod
    def allocating() -> contextlib.AbstractContextManager:
        """The context a model's caches are made in, all layers together (``GPT.setup_cache``)."""
        return contextlib.nullcontext()

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at input_pos (T,); return the keys and values of positions 0..end
        (0..max_len when static)."""
        self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        if self.static:
            return self.k_cache, self.v_cache  # (B, nh, max_len, hs)
        end = int(input_pos[-1]) + 1
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]  # (B, nh, end, hs)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        """Store k, v, then attend with q (B, nh, T, hs) over every key so far; ``last_only``: with
        the last query alone (B, nh, 1, hs). A faster cache may override this (layers.py)."""
        k, v = self.update(input_pos, k, v)  # (B, nh, S, hs), S = keys seen so far (max_len if static)
        if last_only:
            q, input_pos = q[:, :, -1:], input_pos[-1:]
        return attention(q, k.to(q.dtype), v.to(q.dtype), input_pos, self.static)

    def narrow(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows ``keep`` (the samples still being generated)."""
        for name, buffer in list(self.named_buffers()):
            setattr(self, name, buffer[keep])

    def copy_prefix(self, other: KVCache, length: int) -> None:
        """Positions 0..length of other's cache (one row) into every row of this one."""
        for name, buffer in self.named_buffers():
            buffer[:, :, :length] = getattr(other, name)[:, :, :length]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)  # Q, K, V in one projection
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``last_only``, keys and values of every position but the
        output of the last alone (B, 1, C)."""
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.kv_cache is not None:
            y = self.kv_cache.attend(q, k, v, input_pos, last_only)  # (B, nh, T or 1, hs)
        else:
            y = attention(q[:, :, -1:] if last_only else q, k, v, input_pos[-1:] if last_only else input_pos)
        T = y.shape[2]
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.c_proj(y)


def causal_mask(input_pos: torch.Tensor, n_keys: int) -> torch.Tensor:
    """(T, S) boolean mask: the query at position p may look at keys 0..p, never ahead."""
    return torch.arange(n_keys, device=input_pos.device)[None, :] <= input_pos[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
              masked: bool = False) -> torch.Tensor:
    """Masked scaled dot-product attention: softmax(q k^T / sqrt(hs) + mask) v.

    ``attention_weights`` spells the same math out step by step; here the fused kernel does it.
    Without ``masked`` the keys are exactly those up to the last query, which lets the kernel
    skip the mask where it can.
    """
    T, S = q.shape[-2], k.shape[-2]
    if masked:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(input_pos, S))
    if T == 1:  # one new token: it may attend to every key so far
        return F.scaled_dot_product_attention(q, k, v)
    if T == S:  # a fresh sequence: plain causal mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(input_pos, S))


def attention_weights(q: torch.Tensor, k: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """The attention pattern (B, nh, T, S): each row is a softmax over the keys a query may see."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    scores = scores.masked_fill(~causal_mask(input_pos, k.shape[-2]), float("-inf"))
    return torch.softmax(scores.float(), dim=-1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)
        self.act = nn.GELU(approximate="tanh")  # Identity where c_fc applies it itself (layers.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, 1, C) for the last position with ``last_only``."""
        a = self.attn(self.ln_1(x), input_pos, last_only)
        x = (x[:, -1:, :] if last_only else x) + a
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, tied: bool = True) -> None:
        super().__init__()
        self.config = config
        # Parameters start uninitialised (torch.empty: no time spent, no memory touched): they are
        # loaded from a checkpoint or set by init_weights.
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)),
            wpe=nn.Embedding(config.n_positions, config.n_embd, _weight=torch.empty(config.n_positions, config.n_embd)),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        # The unembedding: tied to wte unless a checkpoint brings its own lm_head.weight (out, in).
        self.tied = tied
        self.lm_head: nn.Module = Unembedding(config.vocab_size, config.n_embd,
                                              self.transformer.wte if tied else None)
        # The KV cache's kind and dtype (None: the embedding's); a precision scheme may change them.
        self.cache_class: type[KVCache] = KVCache
        self.cache_dtype: torch.dtype | None = None

    def setup_cache(self, max_len: int | None = None, batch: int = 1, static: bool = False) -> None:
        """Give every layer a preallocated KV cache (None removes them); see KVCache for static."""
        c, w = self.config, self.transformer.wte.weight
        with self.cache_class.allocating():
            for block in self.transformer.h:
                block.attn.kv_cache = None if max_len is None else self.cache_class(
                    batch, c.n_head, max_len, c.head_dim, self.cache_dtype or w.dtype, w.device, static)

    def linear_layers(self) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of every matrix product in the blocks, for swapping in faster kernels."""
        return [(parent, name) for block in self.transformer.h
                for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                                     (block.mlp, "c_proj"))]

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens idx (B, T) at positions input_pos (T,), default 0..T-1.

        With a cache set up, the keys and values of these positions are stored for later calls.
        ``last_only`` computes the logits of the last position alone (B, 1, vocab), and in the last
        block only what they need.
        """
        B, T = idx.shape
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(input_pos)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            # the last block needs the keys and values of every position, the rest of the last alone
            x = block(x, input_pos, last_only and i == self.config.n_layer - 1)  # (B, T or 1, C)
        return self.head(x)  # (B, T or 1, vocab)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm and the unembedding: residual stream (..., C) -> logits (..., vocab)."""
        return self.lm_head(self.transformer.ln_f(x))


def init_weights(model: GPT, seed: int = 0) -> GPT:
    """GPT-2's initialisation (normal(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer))."""
    gen = torch.Generator().manual_seed(seed)
    std_proj = 0.02 / math.sqrt(2 * model.config.n_layer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, std_proj, generator=gen)
            elif p.dim() == 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith(".weight"):  # LayerNorm gains
                p.fill_(1.0)
            else:
                p.zero_()
    return model

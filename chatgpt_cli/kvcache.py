"""The KV cache of the CPU's fused decode step: its one-token attention is a single kernel
(kernels_attend.attend) that writes the new key and value and attends over the cache; prompts go
through torch as usual (model.KVCache).

What a position's keys and values are stored as (``dtype``), per scheme (precision.py):

- float32 or bfloat16: as computed;
- int8 (``--dtype int8`` and ``auto``): codes in -127..127, a float32 scale per position and head
  (``k_scale``, ``v_scale``: max |value| / 127), a quarter of float32's bytes;
- uint8, int4 codes two a byte (``--dtype int4``): codes in -7..7 (15 levels) stored as 0..14 + 1,
  the scale max |value| / 7; value d of a head's first half in byte d's low nibble, of its second
  half in byte d's high nibble (the kernel's two 16-byte loads give four vectors of 16 values): an
  eighth of float32's bytes.

At 800 tokens every token reads the whole cache, so its bytes are what a long context costs.
Prompts quantize as they write and read the cache back widened, so they see the values decode sees.

One row's buffers (not -N's widened rows) are in 2 MB pages where Linux gives them (``hugepages``),
the layers' caches carved one after another from shared mappings: at 800 tokens, in 4 KB pages,
every token would read some 3,700 pages of 124M's int8 codes, more than the CPU's TLB holds. In 2 MB
pages a token at 800 positions took 0.97x the time in int8 and bfloat16, 0.99x in int4 and float32
(124M, in one process in turn). The cost: the window's whole cache is resident from the first token
(124M: 9.4 MB of int4 codes, 19 MB of int8, 38 MB in bfloat16, 75 MB in float32; llama.cpp clears
its whole cache at start, so it pays that too), not page by page as positions are written. -N's rows
keep ordinary pages: N times as much.
"""

from __future__ import annotations

import torch

from chatgpt_cli import hugepages
from chatgpt_cli.layers import bits, load_kernels
from chatgpt_cli.model import KVCache

LIMIT = {torch.int8: 127, torch.uint8: 7}  # the largest code of each quantized form (uint8: int4 codes)


def load_attention():
    """kernels_attend.attend, imported on first use (after kernels.py has set numba's cache)."""
    load_kernels()
    from chatgpt_cli.kernels_attend import attend

    return attend


class FusedKVCache(KVCache):
    """A KV cache in one of the forms above, attended by one kernel per token."""

    allocating = staticmethod(hugepages.shared)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
        if shape[0] != 1:  # -N's rows
            return torch.empty(shape, dtype=dtype, device=device)
        return hugepages.empty(shape, dtype, device if device is not None else "cpu")

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None, static: bool = False) -> None:
        if dtype == torch.uint8 and head_dim % 2:  # int4 codes pair a head's halves: odd heads keep int8
            dtype = torch.int8
        super().__init__(batch, n_head, max_len, head_dim // 2 if dtype == torch.uint8 else head_dim, dtype,
                         device, static)
        scales = max_len if dtype in LIMIT else 0  # only codes have scales (the kernel takes them all)
        for name in ("k_scale", "v_scale"):
            self.register_buffer(name, self.empty((batch, n_head, scales), torch.float32, device).fill_(1.0),
                                 persistent=False)
        self.kernel = None  # looked up on first use (12 calls a token in GPT-2 124M)
        self._arrays()

    def _arrays(self) -> None:
        self.arrays = tuple(bits(t) for t in (self.k_cache, self.v_cache, self.k_scale, self.v_scale))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        form = self.k_cache.dtype
        if form not in LIMIT:
            return super().update(input_pos, k, v)
        end = int(input_pos[-1]) + 1
        out = []
        for cache, scales, new in ((self.k_cache, self.k_scale, k), (self.v_cache, self.v_scale, v)):
            codes, scale = quantize_vectors(new.float(), LIMIT[form])
            cache.index_copy_(2, input_pos, pack_nibbles(codes) if form == torch.uint8 else codes)
            scales.index_copy_(2, input_pos, scale)
            stored = cache[:, :, :end]
            stored = unpack_nibbles(stored) if form == torch.uint8 else stored
            out.append(stored.float() * scales[:, :, :end, None])  # (B, nh, end, hs)
        return out[0], out[1]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        if q.shape[2] != 1 or q.dtype != torch.float32:
            return super().attend(q, k, v, input_pos, last_only)
        out = torch.empty(q.shape[0], q.shape[1], q.shape[3])  # (B, nh, hs)
        self.kernel = self.kernel or load_attention()
        self.kernel(q[:, :, 0].contiguous().numpy(), k[:, :, 0].contiguous().numpy(), v[:, :, 0].contiguous().numpy(),
                    *self.arrays, int(input_pos[0]), out.numpy())
        return out.view(q.shape)  # (B, nh, 1, hs)

    def narrow(self, keep: torch.Tensor) -> None:
        super().narrow(keep)
        self._arrays()


def quantize_vectors(x: torch.Tensor, limit: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., hs) float32 -> int8 codes (..., hs) in -limit..limit and one scale per vector (...,):
    x ~ codes * scale, as kernels_cache.store writes them (max |x| / limit; 1 for a vector of zeros)."""
    top = x.abs().amax(-1)
    scale = torch.where(top > 0, top * torch.tensor(1 / limit, dtype=torch.float32), torch.ones_like(top))
    return torch.round(x * (1 / scale)[..., None]).clamp(-limit, limit).to(torch.int8), scale


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int4 codes (..., hs) in -7..7 -> (..., hs/2) bytes: code d + 8 in byte d's low nibble for the
    first half, in byte d - hs/2's high nibble for the second."""
    c = (codes + 8).to(torch.uint8)
    half = c.shape[-1] // 2
    return c[..., :half] | (c[..., half:] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The int8 codes (..., hs) in -7..7 of ``pack_nibbles``' bytes (..., hs/2)."""
    return torch.cat((packed & 15, packed >> 4), dim=-1).to(torch.int8) - 8

"""The layers the precisions swap into a model (precision.py chooses which): a matrix product per
form of stored weight (the KV cache they pair with is kvcache.py's).

Each ``Linear`` kind holds its weight in one form (float32, bfloat16, int8 with a scale per row,
int4 in groups of 32) and multiplies in the fastest way for the number of rows it is given: one
row (a decode step) in a numba matrix-vector kernel (kernels.py), a few rows (a step of ``-N``
samples) in a few-rows kernel that reads each weight once for all rows, many rows (a prompt) in
torch's products. int8 keeps one scale per row: w ~ q * s, q in [-127, 127]. int4 keeps groups of
32 weights along the input, each with a scale and an offset: w ~ q * s + m, q in [0, 15] (like
llama.cpp's q4_1), and runs torch's int4 kernel.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chatgpt_cli import hugepages

ROWS_PER_CHUNK = 4096  # rows quantized at a time, so no full-size float copy is ever made
GROUP = 32  # int4 weights per group
KERNEL_ROWS = 16  # inputs of up to this many rows take the kernels (each weight read once for all rows)
WIDEN_ROWS = 128  # int4 inputs of this many rows or more: weights widened to bfloat16 for oneDNN


@functools.cache
def load_kernels():
    """kernels.py, imported on first use (numba takes a moment to import; --help never needs it)."""
    from chatgpt_cli import kernels as k  # it sets numba's cache directory

    return k


def use_torch_threads() -> None:
    """The kernels run on as many threads as torch's products (``bench --threads``)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def native_bf16(device: torch.device) -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16, AMX, Arm's BF16)."""
    return device.type == "cpu" and cpu_bf16()


@functools.cache
def cpu_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def bits(t: torch.Tensor):
    """A CPU tensor as a numpy array for the kernels; 16-bit floats as their raw bits (uint16: a
    signed view would need a mask after widening, which kept the bfloat16 loop 1.5x slower)."""
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().view(np.uint16)  # the same memory
    return t.numpy()


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) floats -> int8 codes (out, in) and one float32 scale per row (out,)."""
    codes = hugepages.empty(weight.shape, torch.int8, weight.device)  # streamed by decode: huge pages
    scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], ROWS_PER_CHUNK):
        rows = weight[start:start + ROWS_PER_CHUNK].float()
        s = rows.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a harmless scale
        codes[start:start + len(rows)] = torch.round(rows / s[:, None]).clamp(-127, 127).to(torch.int8)
        scales[start:start + len(rows)] = s
    return codes, scales


def quantize_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) floats -> int4 codes packed two a byte (out, in/2) uint8, scale and offset (out, in/32).

    In each group of 32, byte j holds weight j in its low nibble and weight j + 16 in its high one.
    """
    out, n_in = weight.shape
    packed = hugepages.empty((out, n_in // 2), torch.uint8, weight.device)  # streamed by decode: huge pages
    scale = torch.empty(out, n_in // GROUP, dtype=torch.float32, device=weight.device)
    offset = torch.empty_like(scale)
    for start in range(0, out, ROWS_PER_CHUNK):
        g = weight[start:start + ROWS_PER_CHUNK].float().view(-1, n_in // GROUP, GROUP)  # (rows, groups, 32)
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        s = ((hi - lo) / 15).clamp(min=1e-12)
        # as bfloat16 holds them (the kernels read them so), before the codes are rounded to them
        lo, s = lo.to(torch.bfloat16).float(), s.to(torch.bfloat16).float()
        q = torch.round((g - lo[..., None]) / s[..., None]).clamp(0, 15).to(torch.uint8)
        packed[start:start + len(g)] = (q[..., :GROUP // 2] | (q[..., GROUP // 2:] << 4)).view(len(g), -1)
        scale[start:start + len(g)], offset[start:start + len(g)] = s, lo
    return packed, scale, offset


def unpack_groups(packed: torch.Tensor) -> torch.Tensor:
    """The int4 codes (out, in) of ``quantize_groups``' bytes (out, in/2), as uint8 0..15."""
    p = packed.view(packed.shape[0], -1, GROUP // 2)  # (out, groups, 16)
    return torch.cat((p & 15, p >> 4), dim=2).view(packed.shape[0], -1)  # weights j and j + 16 of each group


def dequantize_groups(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weights that ``quantize_groups`` stored, in dtype."""
    q = unpack_groups(packed).to(dtype).view(packed.shape[0], -1, GROUP)  # (out, groups, 32)
    return (q * scale[..., None].to(dtype) + offset[..., None].to(dtype)).view(packed.shape[0], -1)


class Linear(nn.Module):
    """y = x W^T + b, then GPT-2's tanh GELU if ``gelu``, with W (out, in) stored in some form.

    On the CPU, one row of x (a decode step) runs the form's matrix-vector kernel (``kernels.product``
    over ``arrays``: the stored weight and a scale per row) and up to ``KERNEL_ROWS`` rows (a step
    of ``-N`` samples) ``few_rows``, by default the few-rows kernel, which reads each weight once
    for all rows; more rows (a prompt), or another device, multiply by ``dense()``, the weight
    widened for torch. ``kernel_name`` names the form ("" where the form has no numba kernel).
    """

    kernel_name = ""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> None:
        super().__init__()
        self.out_features, self.gelu = weight.shape[0], gelu
        b = torch.zeros(self.out_features, device=weight.device) if bias is None else bias.detach()
        self.register_buffer("bias", b.float() if b.device.type == "cpu" else b)
        self.arrays: tuple = ()
        self._kernels: dict = {}
        self.bias_np = self.bias.numpy() if self.bias.device.type == "cpu" else None  # the kernels' view of it

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def prepare_batches(self) -> None:
        """Called before decoding ``-N`` samples together (a form may make a faster layout)."""

    def kernel(self, kind: str):
        """The ``one_row`` or ``few_rows`` kernel, looked up once (a decode step makes ~50 calls)."""
        if kind not in self._kernels:
            load_kernels()  # sets numba's cache directory first
            from chatgpt_cli import kernels_rows

            self._kernels[kind] = getattr(load_kernels() if kind == "one_row" else kernels_rows, kind)
        return self._kernels[kind]

    def product_arrays(self) -> tuple:
        """(weight, scale, bias) as the kernels take them."""
        return (*self.arrays, self.bias_np)

    def few_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, in) float32, 1 < M <= KERNEL_ROWS, on the CPU -> (M, out)."""
        out = torch.empty(len(x), self.out_features)
        self.kernel("few_rows")(x.contiguous().numpy(), *self.arrays, self.bias_np, out.numpy(), self.gelu)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        kernels = x2.dtype == torch.float32 and x2.device.type == "cpu" and self.kernel_name
        if kernels and len(x2) == 1:  # one token: a matrix-vector product
            out = torch.empty(1, self.out_features)
            self.kernel("one_row")(x2[0].contiguous().numpy(), *self.arrays, self.bias_np, out[0].numpy(), self.gelu)
        elif kernels and len(x2) <= KERNEL_ROWS:
            out = self.few_rows(x2)
        else:
            w = self.dense(torch.bfloat16 if x2.device.type == "cpu" else x2.dtype)
            out = F.linear(x2.to(w.dtype), w).to(x2.dtype) + self.bias.to(x2.dtype)
            out = F.gelu(out, approximate="tanh") if self.gelu else out
        return out.view(x.shape[:-1] + (self.out_features,))


class Float32Linear(Linear):
    kernel_name = "f32"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight, bias, gelu)
        self.register_buffer("weight", hugepages.resident(weight, torch.float32))
        self.arrays = (bits(self.weight), np.ones(self.out_features, np.float32))

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight  # float32 stays float32, for exact prefills


class BFloat16Linear(Linear):
    kernel_name = "bf16"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight, bias, gelu)
        self.register_buffer("weight", hugepages.resident(weight, torch.bfloat16))
        self.arrays = (bits(self.weight), np.ones(self.out_features, np.float32))
        self.packed: torch.Tensor | None = None  # oneDNN's blocked copy of the weight, for -N

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight

    def prepare_batches(self) -> None:
        """Before ``-N`` samples: on a CPU with native bfloat16, a copy of the weight in oneDNN's
        blocked layout for its bfloat16 product (its dot-product instructions do twice the work of
        float32 ones). It costs the weight's size again in memory, so it is made only for ``-N``."""
        if self.packed is None and native_bf16(self.weight.device):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)

    def few_rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return super().few_rows(x)
        out = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, None, "none", [], "")
        out = out.float() + self.bias
        return F.gelu(out, approximate="tanh") if self.gelu else out


class Int8Linear(Linear):
    """w[n] ~ q[n] * s[n]: int8 codes q (out, in), a float32 scale s per row."""

    kernel_name = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight, bias, gelu)
        codes, scales = quantize_rows(weight)
        self.register_buffer("weight", codes)
        self.register_buffer("scales", scales)
        self.arrays = (codes.numpy(), scales.numpy()) if codes.device.type == "cpu" else ()

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.scales[:, None].to(dtype)


class Int4Linear(Linear):
    """w ~ q * s + m in groups of 32 along the input (see quantize_groups).

    On a CPU with AVX-512 BF16 one row (a decode step) runs the numba kernel (kernels.matvec_int4)
    on the codes as quantize_groups packs them. On the CPU every other product runs torch's int4
    kernel (``torch._weight_int4pack_mm_for_cpu``, bfloat16 activations): the codes are repacked
    into its layout, which computes w = (q - 8) * s + z, so z = m + 8 s. Elsewhere (or with an
    older torch) the weight is widened for torch (``dense``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight, bias, gelu)
        packed, scale, offset = quantize_groups(weight)
        self.in_features = weight.shape[1]
        if weight.device.type == "cpu" and load_kernels().BF16_DOT:  # the decode kernel's copy
            self.kernel_name = "int4"
            self.register_buffer("codes", packed)
            self.register_buffer("group_scales", scale.to(torch.bfloat16))
            self.register_buffer("group_offsets", offset.to(torch.bfloat16))
            self.arrays = (packed.numpy(), (bits(self.group_scales), bits(self.group_offsets)))
        self.torch_int4 = weight.device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu")
        if self.torch_int4:
            # the kernel takes outputs in tiles of 16: a vocabulary's 50257 rows get zero rows after them
            pad = -self.out_features % 16
            codes = F.pad(unpack_groups(packed).to(torch.int32), (0, 0, 0, pad))  # (out + pad, in), 0..15
            self.register_buffer("weight", torch._convert_weight_to_int4pack_for_cpu(codes, 2))
            scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(offset + 8 * scale, (0, 0, 0, pad))
            self.register_buffer("scales_and_zeros", torch.stack([scale.t(), zero.t()], dim=-1)
                                 .to(torch.bfloat16).contiguous())  # (in/32, out + pad, 2)
        else:
            self.register_buffer("weight", packed)
            self.register_buffer("scales", scale)
            self.register_buffer("offsets", offset)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, in) -> x W^T (M, out) in torch's int4 kernel."""
        out = torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.weight, GROUP, self.scales_and_zeros)
        return out[:, :self.out_features]  # (M, out): not the padding rows

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        if self.arrays:  # from the decode kernel's codes, in numba
            out = torch.empty(self.out_features, self.in_features, dtype=torch.bfloat16)
            load_kernels().widen_int4(self.arrays[0], self.arrays[1], bits(out))
            return out.to(dtype)
        if self.torch_int4:  # the weight as the kernel sees it: the product with the identity
            return self.product(torch.eye(self.in_features)).t().to(dtype)
        return dequantize_groups(self.weight, self.scales, self.offsets, dtype)

    def few_rows(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x.to(torch.bfloat16), self.dense(torch.bfloat16)).float() + self.bias
        return F.gelu(out, approximate="tanh") if self.gelu else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        one_row = self.arrays and x.dtype == torch.float32 and rows == 1
        widened = self.arrays and rows >= WIDEN_ROWS  # a long prompt: the weights widened, then oneDNN
        if one_row or widened or not (self.torch_int4 and x.device.type == "cpu"):
            return super().forward(x)
        out = self.product(x.reshape(-1, x.shape[-1])).to(x.dtype) + self.bias.to(x.dtype)
        out = F.gelu(out, approximate="tanh") if self.gelu else out
        return out.view(x.shape[:-1] + (self.out_features,))


def prepare_batches(model: nn.Module) -> None:
    """Ready every layer for decoding several samples at once (``-N``)."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.prepare_batches()

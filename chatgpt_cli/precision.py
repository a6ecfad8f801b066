"""The precisions a model runs in: one ``Scheme`` per ``--dtype``, chosen in one place at load.

A scheme converts the weights and swaps the model's layers, all through one mechanism
(``Scheme.apply``): each of the four products of every block and the unembedding becomes a layer
of the scheme's ``Linear`` kind, and the KV cache becomes the scheme's kind. What runs where:

- on the CPU, one token at a time (decode): the matrix-vector kernels of kernels.py, float32
  activations, and a fused attention over the cache; a few rows at once (a step of ``-N``
  samples): the few-rows kernels (bfloat16: oneDNN's bfloat16 product); many tokens at once
  (prefill): torch's matrix products (oneDNN), with the weights widened to bfloat16 where they are
  stored smaller; int4: torch's int4 kernel for any number of rows;
- elsewhere (CUDA, MPS) and for ``fast=False``: torch's own layers (``TorchScheme``); on CUDA the
  decode step is recorded as a CUDA graph over a static cache (cuda_graph.py).

int8 keeps one scale per row of each matrix: w ~ q * s, q in [-127, 127]. int4 keeps groups of 32
weights along the input, each with a scale and an offset: w ~ q * s + m, q in [0, 15]
(like llama.cpp's q4_1); its unembedding is int8, which keeps it faithful at little cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chatgpt_cli.model import GPT, KVCache

ROWS_PER_CHUNK = 4096  # rows quantized at a time, so no full-size float copy is ever made
GROUP = 32  # int4 weights per group
KERNEL_ROWS = 16  # inputs of up to this many rows take the kernels (each weight read once for all rows)


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
    """A CPU tensor as a numpy array for the kernels; 16-bit floats as their raw bits (int16)."""
    return (t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) floats -> int8 codes (out, in) and one float32 scale per row (out,)."""
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
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
    packed = torch.empty(out, n_in // 2, dtype=torch.uint8, device=weight.device)
    scale = torch.empty(out, n_in // GROUP, dtype=torch.float32, device=weight.device)
    offset = torch.empty_like(scale)
    for start in range(0, out, ROWS_PER_CHUNK):
        g = weight[start:start + ROWS_PER_CHUNK].float().view(-1, n_in // GROUP, GROUP)  # (rows, groups, 32)
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        s = ((hi - lo) / 15).clamp(min=1e-12)
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

    On the CPU, one row of x (a decode step) runs the form's matrix-vector kernel
    (``matvec_<kernel_name>`` over ``arrays``) and up to ``KERNEL_ROWS`` rows (a step of ``-N``
    samples) ``few_rows``, by default its few-rows kernel, which reads each weight once for all
    rows; more rows (a prompt), or another device, multiply by ``dense()``, the weight widened for torch.
    """

    kernel_name = ""

    def __init__(self, out_features: int, bias: torch.Tensor | None, gelu: bool) -> None:
        super().__init__()
        self.out_features, self.gelu = out_features, gelu
        b = torch.zeros(out_features) if bias is None else bias.detach()
        self.register_buffer("bias", b.float() if b.device.type == "cpu" else b)
        self.arrays: tuple = ()

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def few_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, in) float32, 1 < M <= KERNEL_ROWS, on the CPU -> (M, out)."""
        out = torch.empty(len(x), self.out_features)
        kernel = getattr(load_kernels(), "matmul_" + self.kernel_name)
        kernel(x.contiguous().numpy(), *self.arrays, self.bias.numpy(), out.numpy(), self.gelu)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        kernels = x2.dtype == torch.float32 and x2.device.type == "cpu" and self.kernel_name
        if kernels and len(x2) == 1:  # one token: a matrix-vector product
            out = torch.empty(1, self.out_features)
            kernel = getattr(load_kernels(), "matvec_" + self.kernel_name)
            kernel(x2[0].contiguous().numpy(), *self.arrays, self.bias.numpy(), out[0].numpy(), self.gelu)
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
        super().__init__(weight.shape[0], bias, gelu)
        self.register_buffer("weight", weight.float().contiguous())
        self.arrays = (bits(self.weight),)

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight  # float32 stays float32, for exact prefills


class BFloat16Linear(Linear):
    kernel_name = "bf16"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight.shape[0], bias, gelu)
        self.register_buffer("weight", weight.to(torch.bfloat16).contiguous())
        self.arrays = (bits(self.weight),)
        self.packed: torch.Tensor | None = None  # oneDNN's blocked copy of the weight, made on first use

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight

    def few_rows(self, x: torch.Tensor) -> torch.Tensor:
        """On a CPU with native bfloat16, oneDNN's bfloat16 product (its dot-product instructions do
        twice the work of float32 ones) on a blocked copy of the weight, made the first time ``-N``
        runs (it costs the weight's size again in memory, so only then); elsewhere the kernel."""
        if not native_bf16(x.device):
            return super().few_rows(x)
        if self.packed is None:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        out = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, None, "none", [], "")
        out = out.float() + self.bias
        return F.gelu(out, approximate="tanh") if self.gelu else out


class Int8Linear(Linear):
    """w[n] ~ q[n] * s[n]: int8 codes q (out, in), a float32 scale s per row."""

    kernel_name = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight.shape[0], bias, gelu)
        codes, scales = quantize_rows(weight)
        self.register_buffer("weight", codes)
        self.register_buffer("scales", scales)
        self.arrays = (codes.numpy(), scales.numpy()) if codes.device.type == "cpu" else ()

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.scales[:, None].to(dtype)


class Int4Linear(Linear):
    """w ~ q * s + m in groups of 32 along the input (see quantize_groups).

    On the CPU every product, of one row or many, runs torch's int4 kernel
    (``torch._weight_int4pack_mm_for_cpu``, bfloat16 activations): the codes are repacked into its
    layout, which computes w = (q - 8) * s + z, so z = m + 8 s. Elsewhere (or with an older torch)
    the weight is widened for torch (``dense``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> None:
        super().__init__(weight.shape[0], bias, gelu)
        packed, scale, offset = quantize_groups(weight)
        self.in_features = weight.shape[1]
        self.torch_int4 = weight.device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu") \
            and self.out_features % 16 == 0  # the kernel takes outputs in tiles of 16
        if self.torch_int4:
            codes = unpack_groups(packed).to(torch.int32)  # (out, in), 0..15
            self.register_buffer("weight", torch._convert_weight_to_int4pack_for_cpu(codes, 2))
            zero = offset + 8 * scale
            self.register_buffer("scales_and_zeros", torch.stack([scale.t(), zero.t()], dim=-1)
                                 .to(torch.bfloat16).contiguous())  # (in/32, out, 2)
        else:
            self.register_buffer("weight", packed)
            self.register_buffer("scales", scale)
            self.register_buffer("offsets", offset)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, in) -> x W^T (M, out) in torch's int4 kernel."""
        return torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.weight, GROUP, self.scales_and_zeros)

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        if self.torch_int4:  # the weight as the kernel sees it: the product with the identity
            return self.product(torch.eye(self.in_features)).t().to(dtype)
        return dequantize_groups(self.weight, self.scales, self.offsets, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.torch_int4 and x.device.type == "cpu"):
            return super().forward(x)
        out = self.product(x.reshape(-1, x.shape[-1])).to(x.dtype) + self.bias.to(x.dtype)
        out = F.gelu(out, approximate="tanh") if self.gelu else out
        return out.view(x.shape[:-1] + (self.out_features,))


class FusedKVCache(KVCache):
    """A KV cache whose one-token attention is a single kernel (kernels.attend_*) that writes the
    new key and value and attends over the cache; prompts go through torch as usual."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kernel_name = "attend_f32" if self.k_cache.dtype == torch.float32 else "attend_bf16"
        self.arrays = (bits(self.k_cache), bits(self.v_cache))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        if q.shape[2] != 1 or q.dtype != torch.float32:
            return super().attend(q, k, v, input_pos, last_only)
        out = torch.empty(q.shape[0], q.shape[1], q.shape[3])  # (B, nh, hs)
        getattr(load_kernels(), self.kernel_name)(q[:, :, 0].contiguous().numpy(), k[:, :, 0].contiguous().numpy(),
                                             v[:, :, 0].contiguous().numpy(), *self.arrays,
                                             int(input_pos[0]), out.numpy())
        return out.view(q.shape)  # (B, nh, 1, hs)

    def narrow(self, keep: torch.Tensor) -> None:
        super().narrow(keep)
        self.arrays = (bits(self.k_cache), bits(self.v_cache))


@dataclass(frozen=True)
class Scheme:
    """How a model's weights are stored and multiplied.

    ``storage``: the dtype the loader gives every tensor (for the converted matrices, the dtype
    they are read in until converted); ``activations``: what the model computes in;
    ``linear``: the layer kind the four block products become (None: the model's own Conv1D);
    ``head``: the unembedding's kind; ``cache``: the KV cache's kind and dtype.
    """

    name: str
    storage: torch.dtype
    activations: torch.dtype
    linear: Callable[..., nn.Module] | None = None
    head: Callable[..., nn.Module] | None = None
    cache: type[KVCache] = KVCache
    cache_dtype: torch.dtype | None = None
    kernels: str = "torch"
    quality: str = "exact (float32)"  # against float32, as ``info`` reports it

    @property
    def precision(self) -> str:
        """As ``info`` and ``bench`` show it: "bfloat16", "int8 (float32 activations)"..."""
        if self.name in ("int8", "int4"):
            return f"{self.name} ({str(self.activations).removeprefix('torch.')} activations)"
        return self.name

    def converts(self, name: str) -> bool:
        """Whether ``apply`` converts this tensor (then the loader leaves it as stored)."""
        quantized = self.linear in (Int8Linear, Int4Linear)
        return quantized and (name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
                              or name == "lm_head.weight")

    def apply(self, model: GPT, copied: Callable[[torch.Tensor], None] = lambda t: None) -> GPT:
        """Swap the model's layers for this scheme's, a layer at a time; ``copied(weight)`` is told
        of each original weight once its converted copy exists."""
        model.cache_class, model.cache_dtype = self.cache, self.cache_dtype
        if self.linear is None:
            return model
        if self.cache is FusedKVCache:
            load_kernels()
            use_torch_threads()
        for parent, name in model.linear_layers():
            conv, gelu = getattr(parent, name), name == "c_fc"  # the MLP's GELU goes into c_fc's kernel
            setattr(parent, name, self.linear(conv.weight.t(), conv.bias, gelu))  # Conv1D keeps (in, out)
            if gelu:
                parent.act = nn.Identity()
            copied(conv.weight)
        matrix = model.lm_head.matrix  # the unembedding: a layer like the others
        model.lm_head = self.head(matrix, None)
        copied(matrix)
        # the rest computes in the activations' dtype; the token embedding (a lookup, perhaps shared
        # with the unembedding) stays as stored: adding the float32 position embedding widens it
        for module in (model.transformer.wpe, model.transformer.ln_f,
                       *(m for block in model.transformer.h for m in (block.ln_1, block.ln_2))):
            module.to(self.activations)
        return model


def int4_or_int8(weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> Linear:
    """int4 where the input splits into groups of 32 (every GPT-2 size), else int8."""
    kind = Int4Linear if weight.shape[1] % GROUP == 0 else Int8Linear
    return kind(weight, bias, gelu)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = "auto, float32, bfloat16, float16, int8 or int4"
# Loss against float32 on the bundled model's test text (tests/test_precision.py bounds them)
QUALITY = {"float32": "exact (float32)",
           "bfloat16": "loss +0.002 nats/token against float32 (bundled model, a chat text)",
           "float16": "float16 weights (not measured against float32 here)",
           "int8": "loss +0.0005 nats/token against float32, top-1 token the same at 98% of positions "
                   "(bundled model, a chat text)",
           "int4": "loss +0.03 nats/token against float32, top-1 token the same at 93% of positions "
                   "(bundled model, a chat text); weights in groups of 32, unembedding int8"}
CPU_KERNELS = "numba matrix-vector + fused attention (decode), oneDNN (prefill)"


def choose_scheme(dtype: str, stored: torch.dtype, device: torch.device, fast: bool = True) -> Scheme:
    """The one place a precision is chosen: ``--dtype`` (validated by the caller), the file's dtype,
    the device. ``fast=False`` keeps torch's own layers (a model whose dtype can still change)."""
    if dtype == "auto":
        dtype = auto_dtype(stored, device)
    cpu = device.type == "cpu" and fast
    if dtype in ("int8", "int4"):
        linear = Int8Linear if dtype == "int8" else int4_or_int8
        quality = QUALITY[dtype]
        if cpu:
            kernels = f"int8 {CPU_KERNELS}" if dtype == "int8" else \
                "int4: torch's int4 kernel (blocks), int8 numba matrix-vector (unembedding) + fused attention"
            return Scheme(dtype, torch.bfloat16, torch.float32, linear, Int8Linear, FusedKVCache, torch.bfloat16,
                          kernels, quality)
        return Scheme(dtype, torch.bfloat16, torch.bfloat16, linear, Int8Linear, kernels="torch (weights widened)",
                      quality=quality)
    target = DTYPES[dtype]
    if cpu and target == torch.float32:
        return Scheme("float32", target, target, Float32Linear, Float32Linear, FusedKVCache, torch.float32,
                      f"float32 {CPU_KERNELS}")
    if cpu and target == torch.bfloat16:
        return Scheme("bfloat16", target, torch.float32, BFloat16Linear, BFloat16Linear, FusedKVCache,
                      torch.bfloat16, f"bfloat16 {CPU_KERNELS}", QUALITY["bfloat16"])
    graph = " + CUDA graph, static cache" if device.type == "cuda" else ""
    return Scheme(dtype, target, target, kernels="torch" + graph, quality=QUALITY.get(dtype, QUALITY["float32"]))


def auto_dtype(stored: torch.dtype, device: torch.device) -> str:
    """``--dtype auto``: the fastest precision whose quality holds, whatever the file's dtype.

    - a CPU with native bfloat16: bfloat16, whatever the file's dtype (half float32's bytes per
      token; llama.cpp's converter also defaults to 16 bits); other CPUs: float32 (16-bit math
      emulated in software is slower than float32);
    - a CUDA GPU: 16-bit files as stored, float32 ones in bfloat16 (float16 where it lacks it);
    - other devices: as stored (float64 as float32).
    """
    if device.type == "cuda" and stored in (torch.float16, torch.bfloat16):
        return str(stored).removeprefix("torch.")
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu":
        return "bfloat16" if native_bf16(device) else "float32"
    return "float32" if stored == torch.float64 else str(stored).removeprefix("torch.")


def warm_up() -> None:
    """Run every kernel once on tiny inputs: compiled on a machine's first run (a few seconds),
    loaded from numba's disk cache after that."""
    with torch.inference_mode():
        for kind in (Float32Linear, BFloat16Linear, Int8Linear, Int4Linear):
            for gelu in (False, True):
                kind(torch.randn(4, GROUP), None, gelu)(torch.randn(1, GROUP))
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(1, 1, 1, 4)
            FusedKVCache(1, 1, 2, 4, dtype).attend(q, q, q, torch.tensor([0]))

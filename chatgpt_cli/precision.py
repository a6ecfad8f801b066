"""The precisions a model runs in: one ``Scheme`` per ``--dtype``, chosen in one place at load.

A scheme converts the weights and swaps the model's layers, all through one mechanism
(``Scheme.apply``): each of the four products of every block and the unembedding becomes a layer
of the scheme's ``Linear`` kind (layers.py), and the KV cache becomes the scheme's kind. What runs
where:

- on the CPU, one token at a time (decode): the matrix-vector kernels of kernels.py, float32
  activations, and a fused attention over the cache; a few rows at once (a step of ``-N``
  samples): the few-rows kernels (bfloat16: oneDNN's bfloat16 product); many tokens at once
  (prefill): torch's matrix products (oneDNN), with the weights widened to bfloat16 where they are
  stored smaller; int4: torch's int4 kernel for any number of rows;
- elsewhere (CUDA, MPS) and for ``fast=False``: torch's own layers (``TorchScheme``); on CUDA the
  decode step is recorded as a CUDA graph over a static cache (cuda_graph.py).

int4's unembedding is int8, which keeps it faithful at little cost. On the CPU the KV cache
(kvcache.FusedKVCache) is kept as codes with a scale per position and head: int8 codes for int8 and
auto, int4 codes for int4; float32 and bfloat16 keep it in their own precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from chatgpt_cli import hugepages
from chatgpt_cli.kvcache import FusedKVCache
from chatgpt_cli.layers import (
    GROUP,
    BFloat16Linear,
    Float32Linear,
    Int4Linear,
    Int8Linear,
    Linear,
    load_kernels,
    native_bf16,
    use_torch_threads,
)
from chatgpt_cli.model import GPT, KVCache


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
        with hugepages.shared():  # the weights carved one after another from mappings in huge pages
            self._swap_layers(model, copied)
        # the rest computes in the activations' dtype; the token embedding (a lookup, perhaps shared
        # with the unembedding) stays as stored: adding the float32 position embedding widens it
        for module in (model.transformer.wpe, model.transformer.ln_f,
                       *(m for block in model.transformer.h for m in (block.ln_1, block.ln_2))):
            module.to(self.activations)
        return model

    def _swap_layers(self, model: GPT, copied: Callable[[torch.Tensor], None]) -> None:
        """Every product of the model (the unembedding too) as this scheme's layer."""
        for parent, name in model.linear_layers():
            conv, gelu = getattr(parent, name), name == "c_fc"  # the MLP's GELU goes into c_fc's kernel
            setattr(parent, name, self.linear(conv.weight.t(), conv.bias, gelu))  # Conv1D keeps (in, out)
            if gelu:
                parent.act = nn.Identity()
            copied(conv.weight)
        matrix = model.lm_head.matrix  # the unembedding: a layer like the others
        model.lm_head = self.head(matrix, None)
        copied(matrix)
        wte, stored = model.transformer.wte, getattr(model.lm_head, "weight", None)
        if matrix is wte.weight and stored is not None and (stored.dtype, stored.shape) == (matrix.dtype, matrix.shape):
            wte.weight = nn.Parameter(stored, requires_grad=False)  # tied: the lookup reads the one copy


def int4_or_int8(weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> Linear:
    """int4 where the input splits into groups of 32 (every GPT-2 size), else int8."""
    kind = Int4Linear if weight.shape[1] % GROUP == 0 else Int8Linear
    return kind(weight, bias, gelu)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = "auto, float32, bfloat16, float16, int8 or int4"
# Loss against float32 on the bundled model's test text: benchmarks/precision_quality.py measures them,
# tests/test_precision.py bounds them
QUALITY = {"float32": "exact (float32)",
           "bfloat16": "loss +0.0001 nats/token against float32, top-1 token the same at 99.6% of positions "
                       "(bundled model, a chat text)",
           "auto": "bfloat16 weights and an int8 KV cache: loss +0.0001 nats/token against float32, top-1 token "
                   "the same at 99.6% of positions (bundled model, a chat text; decoding -0.001, 99.6%)",
           "float16": "float16 weights (not measured against float32 here)",
           "int8": "loss +0.003 nats/token against float32, top-1 token the same at 98.9% of positions "
                   "(bundled model, a chat text; decoding a token at a time, int8 KV cache: +0.003, 98.6%)",
           "int4": "loss +0.010 nats/token against float32, top-1 token the same at 93% of positions "
                   "(bundled model, a chat text; decoding a token at a time, through the int4 KV cache: +0.024, "
                   "91%); weights in groups of 32, unembedding int8"}
CPU_KERNELS = "numba decode step, one call for all blocks (matrix-vector products + fused attention), oneDNN (prefill)"


def choose_scheme(dtype: str, stored: torch.dtype, device: torch.device, fast: bool = True) -> Scheme:
    """The one place a precision is chosen: ``--dtype`` (validated by the caller), the file's dtype,
    the device. ``fast=False`` keeps torch's own layers (a model whose dtype can still change)."""
    picked = dtype == "auto"
    if picked:
        dtype = auto_dtype(stored, device)
    cpu = device.type == "cpu" and fast
    if dtype in ("int8", "int4"):
        linear = Int8Linear if dtype == "int8" else int4_or_int8
        quality = QUALITY[dtype]
        if cpu:
            if dtype == "int8":
                kernels = f"int8 {CPU_KERNELS}; one row: int16 inputs, integer dot products"
            elif load_kernels().BF16_DOT:
                kernels = ("int4: numba decode step, one call for all blocks (int4 blocks and int8 unembedding: "
                           "AVX-512 BF16 dot products, fused attention, -N too), torch's int4 kernel (prompts)")
            else:
                kernels = "int4: torch's int4 kernel (blocks), int8 numba matrix-vector (unembedding) + fused attention"
            cache = torch.int8 if dtype == "int8" else torch.uint8  # uint8: int4 codes, two a byte
            return Scheme(dtype, torch.bfloat16, torch.float32, linear, Int8Linear, FusedKVCache, cache,
                          f"{kernels}; {dtype} KV cache", quality)
        return Scheme(dtype, torch.bfloat16, torch.bfloat16, linear, Int8Linear, kernels="torch (weights widened)",
                      quality=quality)
    target = DTYPES[dtype]
    if cpu and target == torch.float32:
        return Scheme("float32", target, target, Float32Linear, Float32Linear, FusedKVCache, torch.float32,
                      f"float32 {CPU_KERNELS}")
    if cpu and target == torch.bfloat16 and picked:  # auto: the int8 KV cache too (a long context's bytes)
        return Scheme("bfloat16", target, torch.float32, BFloat16Linear, BFloat16Linear, FusedKVCache,
                      torch.int8, f"bfloat16 {CPU_KERNELS}; int8 KV cache", QUALITY["auto"])
    if cpu and target == torch.bfloat16:
        return Scheme("bfloat16", target, torch.float32, BFloat16Linear, BFloat16Linear, FusedKVCache,
                      torch.bfloat16, f"bfloat16 {CPU_KERNELS}", QUALITY["bfloat16"])
    graph = " + CUDA graph, static cache" if device.type == "cuda" else ""
    return Scheme(dtype, target, target, kernels="torch" + graph, quality=QUALITY.get(dtype, QUALITY["float32"]))


def auto_dtype(stored: torch.dtype, device: torch.device) -> str:
    """``--dtype auto``: the fastest precision whose quality holds, whatever the file's dtype.

    - a CPU with native bfloat16: bfloat16 weights, whatever the file's dtype (half float32's
      bytes per token; llama.cpp's converter also defaults to 16 bits), and the int8 KV cache of
      ``--dtype int8`` (at 800 tokens the cache is an eighth of a 124M token's bytes in bfloat16:
      decode after 800 tokens 0.80-0.85 -> 0.89-0.97 of after 8, interleaved, same minutes); other CPUs:
      float32 (16-bit math emulated in software is slower than float32);
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
    from chatgpt_cli.fused import FusedDecoder, fusable
    from chatgpt_cli.model import GPTConfig, init_weights

    with torch.inference_mode():
        for kind in (Float32Linear, BFloat16Linear, Int8Linear, Int4Linear):
            for gelu in (False, True):
                kind(torch.randn(4, GROUP), None, gelu)(torch.randn(1, GROUP))
                kind(torch.randn(4, GROUP), None, gelu)(torch.randn(3, GROUP))
        Int4Linear(torch.randn(4, GROUP), None).dense(torch.bfloat16)  # a long prompt's widening
        for dtype in (torch.float32, torch.bfloat16, torch.int8, torch.uint8):
            for hs in (4, 64):  # other head sizes, and the 64 of every GPT-2
                q = torch.randn(1, 1, 1, hs)
                FusedKVCache(1, 1, 2, hs, dtype).attend(q, q, q, torch.tensor([0]))
        for dtype in ("float32", "bfloat16", "int8", "int4"):  # the fused decode step of each form
            scheme = choose_scheme(dtype, torch.float32, torch.device("cpu"))
            model = init_weights(GPT(GPTConfig(vocab_size=64, n_positions=4, n_embd=GROUP, n_layer=1, n_head=2)))
            model = scheme.apply(model.to(scheme.storage))
            model.setup_cache(4)
            if fusable(model):
                FusedDecoder(model)(1, 0)

"""Int8 weight-only quantization (``--dtype int8``): a quarter of float32's bytes per weight.

Decode speed is set by how many bytes of weights each token reads, so storing each weight in one
byte instead of two or four makes generation faster. Every row of a weight matrix (one output)
keeps its own scale:

    s = max |w_row| / 127,   q = round(w_row / s) in [-127, 127],   w_row ~ q * s

and y = x W^T + b becomes y = (x q^T) * s + b. Activations, LayerNorms, biases and the
embeddings stay in bfloat16; only the matrix products read int8. On the CPU the product runs in
torch's int8-weight kernel (``_weight_int8pack_mm``); elsewhere the rows are widened on the fly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from chatgpt_cli.model import GPT

COMPUTE_DTYPE = torch.bfloat16
ROWS_PER_CHUNK = 4096  # rows converted at a time, so no full-size float copy is ever made
KERNEL_MAX_ROWS = 12  # past this many input rows (a prefill) widening the codes to bfloat16 is faster


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


class Int8Linear(nn.Module):
    """y = (x q^T) * s + b: the weight (out, in) kept as int8 codes q with a scale s per row."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = COMPUTE_DTYPE) -> None:
        super().__init__()
        codes, scales = quantize_rows(weight)
        self.register_buffer("weight", codes)  # (out, in) int8
        self.register_buffer("scales", scales.to(dtype))  # (out,)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        # torch's int8 kernel (CPU) reads the codes directly; it needs rows of a multiple of 16 bytes
        self.kernel = codes.device.type == "cpu" and codes.shape[1] % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (B*T, in)
        if self.kernel and len(x2) <= KERNEL_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:  # x (q * s)^T = (x q^T) * s
            y = F.linear(x2, self.weight.to(x2.dtype)) * self.scales
        if self.bias is not None:
            y = y + self.bias
        return y.view(x.shape[:-1] + (self.weight.shape[0],))  # (..., out)


def quantize_model(model: GPT, copied: Callable[[torch.Tensor], None] = lambda t: None) -> GPT:
    """Swap every linear layer and the unembedding for Int8Linear; the rest becomes bfloat16.

    ``copied(weight)`` is told of each original weight once its int8 copy exists.
    """
    for parent, name in model.linear_layers():
        conv = getattr(parent, name)
        setattr(parent, name, Int8Linear(conv.weight.t(), conv.bias))  # Conv1D keeps (in, out)
        copied(conv.weight)
    model.packed_head = Int8Linear(model.unembedding(), None)
    copied(model.unembedding())
    for module in (model.transformer.wte, model.transformer.wpe, model.transformer.ln_f,
                   *(m for block in model.transformer.h for m in (block.ln_1, block.ln_2))):
        module.to(COMPUTE_DTYPE)
    return model


def is_quantized(model: GPT) -> bool:
    return isinstance(model.packed_head, Int8Linear)

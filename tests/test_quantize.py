"""Int8 weight-only quantization: exact per-row codes, a kernel that agrees with the plain math,
and quality checked against float32 by the loss on a text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatgpt_cli.insight import score
from chatgpt_cli.quantize import Int8Linear, is_quantized, quantize_rows
from chatgpt_cli.resources import shipped
from chatgpt_cli.tokenizer import Tokenizer
from chatgpt_cli.weights import load_model

CHAT = ("User: Hi! Can you help me book a table for two tonight?\n"
        "AI Assistant: Sure, what time would you like?\n"
        "User: Around seven, somewhere Italian.\n"
        "AI Assistant: I found a table at Luigi's at 7 pm. Shall I book it?\n"
        "User: Yes please, and could you send me the address?\n"
        "AI Assistant: Done. The address is in your messages. Enjoy your dinner!\n")


def test_codes_are_rounded_rows_with_one_scale_each():
    torch.manual_seed(0)
    w = torch.randn(37, 48)
    w[5] = 0.0  # an all-zero row must not divide by zero
    codes, scales = quantize_rows(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scales.shape == (37,)
    assert codes.abs().max() == 127
    assert torch.equal(codes[5], torch.zeros(48, dtype=torch.int8))
    nonzero = [i for i in range(37) if i != 5]
    assert torch.allclose(scales[nonzero], w[nonzero].abs().amax(dim=1) / 127)
    error = (codes.float() * scales[:, None] - w).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()  # round to nearest: at most half a step


def test_chunked_rows_equal_one_pass(monkeypatch):
    w = torch.randn(10, 32)
    whole = quantize_rows(w)
    monkeypatch.setattr("chatgpt_cli.quantize.ROWS_PER_CHUNK", 3)
    assert all(torch.equal(a, b) for a, b in zip(whole, quantize_rows(w), strict=True))


@pytest.mark.parametrize("n_in", [64, 40])  # 64: torch's int8 kernel; 40: the widening fallback
@pytest.mark.parametrize("rows", [1, 7, 40])  # 40: a prefill, past the kernel's best size
def test_int8_linear_is_the_dequantized_product(n_in, rows):
    torch.manual_seed(1)
    w, b = torch.randn(24, n_in), torch.randn(24)
    layer = Int8Linear(w, b)
    assert layer.kernel == (n_in % 16 == 0)
    x = torch.randn(1, rows, n_in, dtype=torch.bfloat16)
    codes, scales = quantize_rows(w)
    want = F.linear(x.float(), codes.float() * scales[:, None], b)
    got = layer(x)
    assert got.shape == (1, rows, 24) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, rtol=2e-2, atol=5e-2)


def test_load_int8_agrees_with_float32(tiny_dir):
    full = load_model(tiny_dir, dtype="float32").model
    loaded = load_model(tiny_dir, dtype="int8")
    assert loaded.int8 and loaded.dtype == torch.bfloat16 and loaded.precision == "int8 (bfloat16 activations)"
    assert is_quantized(loaded.model) and isinstance(loaded.model.transformer.h[0].mlp.c_fc, Int8Linear)
    idx = torch.tensor([[464, 2068, 7586, 21831, 18045, 625]])
    with torch.inference_mode():
        want, got = full(idx)[0, -1], loaded.model(idx)[0, -1].float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert torch.equal(got.topk(5).indices, want.topk(5).indices)


def test_int8_quality_on_the_bundled_model():
    """The loss on a chat text moves by less than 0.02 nats/token (measured: about 0.001)."""
    ids = Tokenizer().encode(CHAT * 2)
    full = score(load_model(shipped("weights"), dtype="float32").model, ids).mean_loss
    int8 = score(load_model(shipped("weights"), dtype="int8").model, ids).mean_loss
    assert full < 3.0
    assert abs(int8 - full) < 0.02

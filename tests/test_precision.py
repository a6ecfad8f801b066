"""Precisions (precision.py) and their kernels (kernels.py): each kernel equals torch's product on
random shapes, quantization is exact to its step, decode agrees with the full forward, and the
quality of each precision is bounded by its loss on a text against float32."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chatgpt_cli.generate import Engine, decode_one, prefill
from chatgpt_cli.kvcache import LIMIT, FusedKVCache, pack_nibbles, unpack_nibbles
from chatgpt_cli.layers import (
    KERNEL_ROWS,
    WIDEN_ROWS,
    BFloat16Linear,
    Float32Linear,
    Int4Linear,
    Int8Linear,
    bits,
    dequantize_groups,
    load_kernels,
    native_bf16,
    quantize_groups,
    quantize_rows,
)
from chatgpt_cli.precision import choose_scheme
from chatgpt_cli.resources import shipped
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.tokenizer import Tokenizer
from chatgpt_cli.weights import load_model

CHAT = ("User: Hi! Can you help me book a table for two tonight?\n"
        "AI Assistant: Sure, what time would you like?\n"
        "User: Around seven, somewhere Italian.\n"
        "AI Assistant: I found a table at Luigi's at 7 pm. Shall I book it?\n"
        "User: Yes please, and could you send me the address?\n"
        "AI Assistant: Done. The address is in your messages. Enjoy your dinner!\n"
        "User: Thanks! Who are you, by the way?\n"
        "AI Assistant: I'm an AI assistant, a small language model running on your computer.\n"
        "User: What will the weather be like tomorrow in London?\n"
        "AI Assistant: It should be cloudy with some rain in the afternoon, around 14 degrees.\n"
        "User: Can you tell me a short story about a cat?\n"
        "AI Assistant: Once upon a time, a little cat named Tom found a ball of red wool under the bed. "
        "He played with it all day, and when the sun went down he fell asleep on it.\n"
        "User: That's lovely. What movies are playing this weekend?\n"
        "AI Assistant: I can't look that up, I'm afraid: I have no access to the internet. "
        "Is there anything else I can help you with?\n"
        "User: No, that's all. Have a nice day!\n"
        "AI Assistant: You too! Goodbye.\n")


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


def test_int4_groups_round_to_half_a_step_and_pack_two_a_byte(monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(10, 64)
    packed, scale, offset = quantize_groups(w)
    assert packed.shape == (10, 32) and packed.dtype == torch.uint8 and scale.shape == offset.shape == (10, 2)
    back = dequantize_groups(packed, scale, offset, torch.float32)
    step = scale.repeat_interleave(32, dim=1)
    assert ((back - w).abs() <= step / 2 + 1e-6).all()
    assert (packed[0, 0] & 15) == torch.round((w[0, 0] - offset[0, 0]) / scale[0, 0])  # weight 0: low nibble
    assert (packed[0, 0] >> 4) == torch.round((w[0, 16] - offset[0, 0]) / scale[0, 0])  # weight 16: high one
    monkeypatch.setattr("chatgpt_cli.layers.ROWS_PER_CHUNK", 3)
    assert all(torch.equal(a, b) for a, b in zip((packed, scale, offset), quantize_groups(w), strict=True))


@pytest.mark.parametrize("kind", [Float32Linear, BFloat16Linear, Int8Linear, Int4Linear])
@pytest.mark.parametrize("shape", [(24, 64), (200, 96), (7, 32), (9, 1600)])  # 1600: a long row
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("onednn", [False, True])
def test_each_kernel_equals_torchs_product(kind, shape, gelu, onednn, monkeypatch):
    """One row (the matrix-vector kernel), a few rows (the few-rows kernel; for bfloat16 on a CPU
    with native bfloat16, oneDNN's product) and many rows (torch) against the plain math; int4
    runs torch's int4 kernel for any number of rows."""
    if onednn and not (kind is BFloat16Linear and native_bf16(torch.device("cpu"))):
        pytest.skip("oneDNN's bfloat16 product runs for bfloat16 weights on a CPU that has it")
    if not onednn:
        monkeypatch.setattr("chatgpt_cli.layers.native_bf16", lambda device: False)
    torch.manual_seed(sum(shape))
    w, b = torch.randn(shape) * 0.1, torch.randn(shape[0])
    layer = kind(w, b, gelu)
    if onednn:
        layer.prepare_batches()  # what -N does first
    dense = layer.dense(torch.float32).float()
    for rows in (1, 2, 3, 5, 8, KERNEL_ROWS, KERNEL_ROWS + 1, 40, WIDEN_ROWS):
        x = torch.randn(1, rows, shape[1])
        want = F.linear(x, dense, b)
        want = F.gelu(want, approximate="tanh") if gelu else want
        got = layer(x)
        assert got.shape == (1, rows, shape[0]) and got.dtype == torch.float32
        kernel = (rows == 1 or (rows <= KERNEL_ROWS and not onednn)) and kind is not Int4Linear
        bf16_dot = kernel and kind is BFloat16Linear and load_kernels().BF16_DOT  # x rounded to bfloat16
        tol = 1e-4 if (kernel and not bf16_dot) or kind is Float32Linear else 2e-2  # else bfloat16 inputs
        torch.testing.assert_close(got, want, atol=tol * 10, rtol=tol)
    assert (layer.packed is not None) == onednn if kind is BFloat16Linear else True  # made on first use


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16, torch.int8, torch.uint8])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("hs", [16, 64])  # 64: the LLVM IR passes (16 keys a step, then the rest one by one)
def test_fused_attention_equals_torchs(cache_dtype, batch, hs):
    """The kernel against torch's attention over the same cache, written by the kernel on one side
    and by the prompt's path (``update``) on the other: the same values, int8 and int4 codes (uint8:
    two a byte) and scales too."""
    torch.manual_seed(0)
    n_head, max_len = 3, 40
    fused = FusedKVCache(batch, n_head, max_len, hs, cache_dtype)
    plain = FusedKVCache(batch, n_head, max_len, hs, cache_dtype)
    for pos in range(max_len):  # 1 to 40 keys: none, one or two full steps of 16 and every remainder
        if pos == 8 and batch > 1:  # rows that end leave the batch (-N)
            keep = torch.tensor([0, 2])
            fused.narrow(keep)
            plain.narrow(keep)
        q, k, v = (torch.randn(fused.k_cache.shape[0], n_head, 1, hs) for _ in range(3))
        q *= 1 + pos % 4  # sharper and flatter weights
        got = fused.attend(q, k, v, torch.tensor([pos]))  # the kernel
        keys, values = plain.update(torch.tensor([pos]), k, v)  # torch's, on the same cache
        want = F.scaled_dot_product_attention(q, keys.float(), values.float())
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        for name in ("k_cache", "v_cache") + (("k_scale", "v_scale") if cache_dtype in LIMIT else ()):
            assert torch.equal(getattr(fused, name)[:, :, :pos + 1], getattr(plain, name)[:, :, :pos + 1]), name


@pytest.mark.parametrize("n_in", [64, 768, 801, 3072])
def test_int16_activations_are_rounded_with_the_largest_magnitude_as_scale(n_in):
    """kernels.quantize16 (int8 products' inputs): the scale is max |x| over the code limit, found in
    integers (the largest value negative, tiny or infinite alike), each code x * (1 / scale)
    rounded to the nearest integer."""
    kernels = load_kernels()
    limit = min(32767, (2**31 - 1) // (127 * n_in))
    x = np.random.default_rng(n_in).standard_normal(n_in).astype(np.float32)
    x[n_in // 3] = -4 * np.abs(x).max()  # the largest magnitude is a negative value
    x[:2] = [0.0, 1e-30]
    for scaled in (x, x * np.float32(1e-20)):
        codes, scale = kernels.quantize16(scaled, n_in)
        assert scale == np.float32(np.abs(scaled).max()) / np.float32(limit)
        assert np.array_equal(codes, np.rint(scaled * (np.float32(1) / scale)).astype(np.int16))
    assert kernels.quantize16(np.zeros(n_in, np.float32), n_in)[1] == 1.0  # zeros keep a harmless scale
    assert kernels.quantize16(np.full(n_in, -np.inf, np.float32), n_in)[1] == np.inf


@pytest.mark.parametrize("limit", [127, 7])  # int8 and int4 codes
def test_cache_codes_are_rounded_vectors_with_one_scale_each(limit):
    from chatgpt_cli.kvcache import quantize_vectors

    x = torch.randn(2, 3, 5, 64) * torch.logspace(-3, 3, 5)[:, None]  # vectors of very different sizes
    x[0, 0, 0] = 0.0  # a vector of zeros keeps a harmless scale
    codes, scale = quantize_vectors(x, limit)
    assert codes.dtype == torch.int8 and scale.shape == (2, 3, 5) and float(scale[0, 0, 0]) == 1.0
    assert codes.abs().amax(-1)[x.abs().amax(-1) > 0].eq(limit).all()  # each vector's largest value is +-limit
    assert ((codes * scale[..., None] - x).abs() <= scale[..., None] / 2 * (1 + 1e-6)).all()  # half a step


def test_int4_cache_codes_pair_a_heads_halves_in_a_byte():
    """Code d + 8 in byte d's low nibble, code d + hs/2 + 8 in its high one; every code -7..7 round trips."""
    codes = torch.arange(-7, 8, dtype=torch.int8).repeat(9)[:128].reshape(2, 64)  # (.., hs)
    packed = pack_nibbles(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 32)
    assert torch.equal((packed & 15).to(torch.int8) - 8, codes[..., :32])
    assert torch.equal((packed >> 4).to(torch.int8) - 8, codes[..., 32:])
    assert torch.equal(unpack_nibbles(packed), codes)


def test_an_int4_cache_of_odd_heads_keeps_int8_codes():
    cache = FusedKVCache(1, 2, 8, 5, torch.uint8)
    assert cache.k_cache.dtype == torch.int8 and cache.k_cache.shape == (1, 2, 8, 5)
    assert FusedKVCache(1, 2, 8, 6, torch.uint8).k_cache.shape == (1, 2, 8, 3)


@pytest.mark.parametrize("kind", [Float32Linear, BFloat16Linear, Int8Linear, Int4Linear])
@pytest.mark.parametrize("shape", [(24, 64), (7, 32), (9, 1600), (5, 96)])  # 7, 9, 5: tiles cut at the last
@pytest.mark.parametrize("gelu", [False, True])                             # weight rows; 96: 3 int4 groups
def test_few_rows_kernels_equal_the_one_row_kernel(kind, shape, gelu):
    """A tile's 16 sums are each one row's dot product in the one-row kernel's order, added across
    lanes in the same order: float32 and bfloat16 products of -N's rows are bit for bit one
    sample's (on a CPU without AVX-512 BF16, bfloat16 takes plain loops). int8's scaling and the
    GELU pass (its vector loop and its scalar rest split the values differently) may round the
    last bit otherwise; int4 adds its groups' offsets apart."""
    from chatgpt_cli import kernels_rows

    if kind is Int4Linear and not load_kernels().BF16_DOT:
        pytest.skip("int4's kernels need AVX-512 BF16")
    torch.manual_seed(1)
    layer = kind(torch.randn(shape) * 0.1, torch.randn(shape[0]), gelu)
    for rows in (2, 3, 4, 5, 8):
        x = torch.randn(rows, shape[1])
        got = torch.empty(rows, shape[0])
        kernels_rows.few_rows(x.numpy(), *layer.product_arrays(), got.numpy(), gelu)
        want = torch.stack([layer(x[m:m + 1])[0] for m in range(rows)])  # the one-row kernel, row by row
        tiles = kind is Float32Linear or (kind is BFloat16Linear and load_kernels().BF16_DOT)
        if tiles and not gelu:
            assert torch.equal(got, want), (rows, (got - want).abs().max())
        else:
            tol = 1e-6 if tiles or kind is Int8Linear else 1e-5  # plain loops add in another order
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_the_kernels_gelu_equals_torchs():
    from chatgpt_cli.kernels import apply_gelu

    y = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([-1e30, -200.0, 0.0, 1e-30, 200.0, 1e30])])
    got = y.clone().numpy()
    apply_gelu(got)  # in place
    want = F.gelu(y.double(), approximate="tanh")
    torch.testing.assert_close(torch.from_numpy(got).double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spread", [0.01, 1.0, 30.0, 300.0])  # 300: most weights underflow to zero
@pytest.mark.parametrize("n", [1, 7, 16, 33, 800])
def test_attention_softmax_equals_torchs(spread, n):
    """The attention's exponentials over their sum (the values' pass divides by it) are torch's softmax."""
    from chatgpt_cli.kernels_attend import exponentials

    scores = torch.randn(n, generator=torch.Generator().manual_seed(n)) * spread
    got = scores.clone().numpy()
    total = exponentials(got, got.max())  # in place
    want = torch.softmax(scores.double(), 0)
    torch.testing.assert_close(torch.from_numpy(got).double() / total, want, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16, torch.int8, torch.uint8])
@pytest.mark.parametrize("hs", [16, 64])
@pytest.mark.parametrize("where", ["query", "key", "value"])
def test_a_nan_in_the_attention_comes_out_as_in_torch(cache_dtype, hs, where):
    """As in torch's attention over the same cache: a NaN in the query or one cached key makes its
    head's output NaN (the scores' maximum is NaN, as numpy's and torch's); one in a value, the
    output values it reaches. Other heads stay finite."""
    torch.manual_seed(2)
    n_head, n = 2, 37
    fused, plain = (FusedKVCache(1, n_head, 40, hs, cache_dtype) for _ in range(2))
    for pos in range(n):  # the NaN at position 20; then its output, and the last position's
        q, k, v = (torch.randn(1, n_head, 1, hs) for _ in range(3))
        if pos == 20:
            {"query": q, "key": k, "value": v}[where][0, 0, 0, 3] = float("nan")
        got = fused.attend(q, k, v, torch.tensor([pos]))
        keys, values = plain.update(torch.tensor([pos]), k, v)
        want = F.scaled_dot_product_attention(q, keys.float(), values.float())
        if pos in (20, n - 1):
            assert torch.equal(got.isnan(), want.isnan()) and got[0, 1].isfinite().all(), pos
            if cache_dtype not in LIMIT or where == "query":  # codes: a NaN's vector is rounded as torch's path does
                assert got.isnan().any() == (pos == 20 or where != "query")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "int4"])
def test_decode_agrees_with_the_full_forward(tiny_dir, dtype):
    loaded = load_model(tiny_dir, dtype=dtype)
    model, ids = loaded.model, [464, 2068, 7586, 21831, 18045, 625, 262, 16931]
    assert loaded.scheme.kernels.startswith(dtype) and "numba" in loaded.scheme.kernels
    with torch.inference_mode():
        full = model(torch.tensor([ids]))[0]  # (T, vocab): every position at once, through torch
        engine = Engine(model)
        prefill(model, ids[:3], 0)
        for i in range(3, len(ids)):
            step = engine.decode(ids[i], i)  # one token: the kernels
            torch.testing.assert_close(step, full[i], atol=2e-2 if dtype == "float32" else 0.15, rtol=0.05)


def codes_of(cache: torch.Tensor) -> torch.Tensor:
    return unpack_nibbles(cache) if cache.dtype == torch.uint8 else cache


def assert_same_cache(a: FusedKVCache, b: FusedKVCache, n: int) -> None:
    """The keys and values of positions 0..n in two caches agree (int8 and int4 codes: as the values
    they stand for, up to a step of the code either way)."""
    for name in ("k", "v"):
        x, y = (codes_of(getattr(c, f"{name}_cache")[:, :, :n]).float() for c in (a, b))
        if a.k_cache.dtype in LIMIT:
            x, y = x * getattr(a, f"{name}_scale")[:, :, :n, None], y * getattr(b, f"{name}_scale")[:, :, :n, None]
            torch.testing.assert_close(x, y, atol=float(getattr(a, f"{name}_scale")[:, :, :n].max()) * 1.01, rtol=0)
        else:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "int4"])
def test_the_fused_decode_step_equals_the_models_forward(tiny_dir, dtype):
    """fused.py's one call for all blocks computes what GPT.forward computes for one token, and writes
    the same keys and values into the cache (int4: on a CPU with AVX-512 BF16)."""
    from chatgpt_cli.fused import FusedDecoder

    if dtype == "int4" and not load_kernels().BF16_DOT:
        pytest.skip("int4's decode kernel needs AVX-512 BF16")

    model = load_model(tiny_dir, dtype=dtype).model
    fused, plain = Engine(model), Engine(model)
    assert isinstance(fused.decode, FusedDecoder)
    ids = [464, 2068, 7586, 21831, 18045, 625, 262, 16931]
    with torch.inference_mode():
        for engine in (fused, plain):
            engine._own_caches()
            prefill(model, ids[:3], 0)
        for i in range(3, len(ids)):
            fused._own_caches()
            got = fused.decode(ids[i], i)
            plain._own_caches()
            want = decode_one(model, ids[i], i)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(fused.caches, plain.caches, strict=True):
        assert_same_cache(a, b, len(ids))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "int4"])
def test_the_fused_step_of_a_batch_equals_the_models_forward(tiny_dir, dtype):
    """-N: the fused step of B rows at once (each weight read once for all of them) computes what
    GPT.forward computes for the batch, row by row, and writes each row's keys and values (int4:
    against torch's int4 kernel, whose bfloat16 arithmetic differs from ours by more)."""
    if dtype == "int4" and not load_kernels().BF16_DOT:
        pytest.skip("int4's decode kernel needs AVX-512 BF16")
    tol = 2e-2 if dtype == "int4" else 1e-4
    model = load_model(tiny_dir, dtype=dtype).model
    fused, plain = Engine(model), Engine(model)
    assert fused.batch_decode is not None
    ids, rows = [464, 2068, 7586, 21831, 18045, 625, 262, 16931], 3
    with torch.inference_mode():
        caches = {}
        for engine in (fused, plain):
            engine._own_caches()
            prefill(model, ids[:3], 0)
            engine._widen(rows, 3)
            caches[id(engine)] = [block.attn.kv_cache for block in model.transformer.h]
        for i in range(3, len(ids)):
            tokens = [ids[i], ids[i - 1], 50256][:rows]  # different tokens in each row
            for block, cache in zip(model.transformer.h, caches[id(fused)], strict=True):
                block.attn.kv_cache = cache
            got = fused.batch_decode(tokens, i)
            for block, cache in zip(model.transformer.h, caches[id(plain)], strict=True):
                block.attn.kv_cache = cache
            want = plain._run([[t] for t in tokens], i)
            assert got.shape == (rows, model.lm_head.out_features)
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    for a, b in zip(caches[id(fused)], caches[id(plain)], strict=True):
        assert_same_cache(a, b, len(ids))


@pytest.mark.parametrize(("dtype", "fast"), [("int4", True), ("float32", False), ("bfloat16", False)])
def test_other_precisions_decode_through_the_models_forward(tiny_dir, dtype, fast):
    from chatgpt_cli.fused import FusedDecoder

    if dtype == "int4" and load_kernels().BF16_DOT:
        pytest.skip("here int4 decodes in the fused step")
    engine = Engine(load_model(tiny_dir, dtype=dtype, fast=fast).model)
    assert not isinstance(engine.decode, FusedDecoder)


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])  # the layers GPU schemes use (the others are the CPU's)
@pytest.mark.parametrize("bias", [False, True])
def test_every_layer_keeps_its_tensors_on_the_weights_device(kind, bias):
    """On a GPU a layer's buffers (an absent bias's zeros too) must be where its weight is: "meta"
    stands in for the GPU here (no data, only devices and shapes)."""
    weight = torch.empty(48, 64, device="meta")
    layer = kind(weight, torch.empty(48, device="meta") if bias else None)
    assert {t.device.type for t in layer.buffers()} == {"meta"}
    assert layer(torch.empty(1, 3, 64, device="meta")).shape == (1, 3, 48)


def test_int8_from_a_gpu_scheme_widens_in_torch():
    scheme = choose_scheme("int8", torch.float32, torch.device("cuda"))
    assert scheme.activations == torch.bfloat16 and scheme.cache is not FusedKVCache and "torch" in scheme.kernels


def test_each_quantized_scheme_keeps_its_kv_cache_as_codes():
    """On the CPU: int8 codes for int8, int4 codes two a byte for int4, in the engine's caches too
    (-N's widened rows included)."""
    cpu = torch.device("cpu")
    assert choose_scheme("int8", torch.float32, cpu).cache_dtype == torch.int8
    assert choose_scheme("int4", torch.float32, cpu).cache_dtype == torch.uint8
    assert "int4 KV cache" in choose_scheme("int4", torch.float32, cpu).kernels
    model = load_model(shipped("weights"), dtype="int4").model
    engine = Engine(model)
    half = model.config.head_dim // 2
    assert {(cache.k_cache.dtype, cache.k_cache.shape[-1]) for cache in engine.caches} == {(torch.uint8, half)}
    with torch.inference_mode():
        engine._widen(3, 4)
    assert {(b.attn.kv_cache.k_cache.dtype, b.attn.kv_cache.k_cache.shape[:1]) for b in model.transformer.h} == {
        (torch.uint8, (3,))}


def test_auto_runs_bfloat16_where_the_cpu_has_it(monkeypatch):
    from chatgpt_cli import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    for stored in (torch.float32, torch.float16, torch.bfloat16):  # whatever the file's dtype
        assert choose_scheme("auto", stored, cpu).name == "bfloat16"
        assert choose_scheme("auto", stored, cpu).cache_dtype == torch.int8  # and the int8 KV cache
        assert choose_scheme("bfloat16", stored, cpu).cache_dtype == torch.bfloat16  # asked for: 16 bits throughout
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    for stored in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        assert choose_scheme("auto", stored, cpu).name == "float32"  # never emulated 16-bit math
    assert choose_scheme("float32", torch.bfloat16, cpu).name == "float32"  # an explicit choice stays
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_scheme("auto", torch.float32, cuda).name == "bfloat16"
    assert choose_scheme("auto", torch.float16, cuda).name == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_scheme("auto", torch.float32, cuda).name == "float16"


@pytest.fixture(scope="module")
def bundled_logits() -> dict[str, torch.Tensor]:
    """The bundled model's logits (T, vocab) on a chat text, in each precision: "<dtype>" from one
    forward over the whole text (the prompt's path), "<dtype> decode" a token at a time through
    the KV cache (the path generated tokens take: on the CPU the fused kernels)."""
    ids = Tokenizer().encode(CHAT)
    logits = {"ids": torch.tensor(ids)}
    with torch.inference_mode():
        for d in ("float32", "auto", "int8", "int4"):
            model = load_model(shipped("weights"), dtype=d).model
            logits[d] = model(torch.tensor([ids]))[0].float()
            logits[f"{d} decode"] = teacher_forced_decode(model, ids)
    return logits


def teacher_forced_decode(model, ids: list[int]) -> torch.Tensor:
    """The next-token logits (T, vocab) after each token of ids, fed one at a time."""
    engine = Engine(model)
    rows = [prefill(model, ids[:1], 0)]
    rows += [engine.decode(token, pos) for pos, token in enumerate(ids[1:], start=1)]
    return torch.stack(rows).float()


@pytest.mark.parametrize("path", ["", " decode"])
def test_quality_of_each_precision_on_the_bundled_model(bundled_logits, path):
    """Loss on a chat text against float32 (nats/token), over the whole text at once and a token at
    a time: auto within 0.01, int8 within 0.02, int4 within 0.06 (benchmarks/precision_quality.py
    measures them)."""
    targets = bundled_logits["ids"][1:]
    loss = {d: F.cross_entropy(bundled_logits[d + path][:-1], targets).item()
            for d in ("float32", "auto", "int8", "int4")}
    full = loss["float32"]
    assert full < 3.0
    assert abs(loss["auto"] - full) < 0.01
    assert abs(loss["int8"] - full) < 0.02
    assert abs(loss["int4"] - full) < 0.06
    if native_bf16(torch.device("cpu")):
        assert load_model(shipped("weights")).precision == "bfloat16"


def test_decoding_a_token_at_a_time_computes_what_the_whole_text_does(bundled_logits):
    """float32 decode (the fused step) equals the full forward's logits at every position."""
    torch.testing.assert_close(bundled_logits["float32 decode"][:-1], bundled_logits["float32"][:-1],
                               atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("path", ["", " decode"])
def test_int8_top1_matches_float32(bundled_logits, path):
    """Teacher-forced, the most likely next token is float32's at >= 98% of positions."""
    agree = bundled_logits["int8" + path][:-1].argmax(-1) == bundled_logits["float32"][:-1].argmax(-1)
    assert agree.float().mean() >= 0.98


def test_kernels_are_cached_on_disk_in_the_cache_dir():
    import os
    from pathlib import Path

    load_kernels()  # compiled (or loaded) by conftest's warm-up
    cache = Path(os.environ["NUMBA_CACHE_DIR"])
    assert cache.parts[-2:] == ("chatgpt-cli", "numba")
    assert any(cache.rglob("kernels.matvec-*.nbi"))  # numba's index of the compiled code


def test_greedy_int4_is_deterministic(tiny_dir):
    model = load_model(tiny_dir, dtype="int4").model
    runs = [list(Engine(model).generate([464, 2068], 6, SamplingOptions(temperature=0), stop_at_eot=False))
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 6


@pytest.mark.parametrize("fused", [True, False])
def test_the_blocked_bfloat16_copy_is_made_for_batches_only(tiny_dir, fused):
    """A short prompt (a few rows) runs the few-rows kernel; -N in the fused step reads the weights
    as stored; only a batch through the model's forward makes oneDNN's copy of the weights."""
    loaded = load_model(tiny_dir, dtype="bfloat16")
    layers = [m for m in loaded.model.modules() if isinstance(m, BFloat16Linear)]
    engine = Engine(loaded.model)
    assert engine.batch_decode is not None  # bfloat16 decodes in the fused step on any CPU
    if not fused:
        engine.batch_decode = None
    list(engine.generate([1, 2, 3, 4, 5], 3, SamplingOptions(temperature=0)))
    assert layers and all(m.packed is None for m in layers)
    list(engine.generate_batch([1, 2, 3], 3, SamplingOptions(temperature=0), 2))
    made = not engine.batch_decode and native_bf16(torch.device("cpu"))
    assert all((m.packed is not None) == made for m in layers)


@pytest.mark.parametrize("n_in", [32, 768, 3072, 6400])
@pytest.mark.parametrize("sign", [1, -1])
def test_int8_integer_dot_products_never_overflow(n_in, sign):
    """The worst case of matvec_int8's and matmul_int8's 32-bit sums: every weight at +-127, every input at the
    vector's largest value; the result is still the exact product."""
    k = load_kernels()
    from chatgpt_cli import kernels_rows

    q = np.full((3, n_in), 127 * sign, np.int8)
    x = np.full(n_in, 1e3, np.float32)
    x[::7] = -1e3  # mixed signs, but the largest magnitude everywhere
    scale, bias, out = np.full(3, 0.5, np.float32), np.zeros(3, np.float32), np.empty(3, np.float32)
    k.matvec_int8(x, q, scale, bias, out, False)
    want = (x.astype(np.float64) @ q.T.astype(np.float64)) * 0.5
    np.testing.assert_allclose(out, want, rtol=1e-4)
    rows = np.stack([x, -x, x])  # the few-rows kernel (-N), each row quantized on its own
    out_rows = np.empty((3, 3), np.float32)
    kernels_rows.matmul_int8(rows, q, scale, bias, out_rows, False)
    np.testing.assert_allclose(out_rows, np.stack([want, -want, want]), rtol=1e-4)
    x[:] = 1e3  # all one sign: the largest sum there is
    k.matvec_int8(x, q, scale, bias, out, False)
    np.testing.assert_allclose(out, np.full(3, sign * 127 * 1e3 * n_in * 0.5), rtol=1e-4)
    kernels_rows.matmul_int8(np.stack([x] * 9), q, scale, bias, (out_rows := np.empty((9, 3), np.float32)), False)
    np.testing.assert_allclose(out_rows, np.full((9, 3), sign * 127 * 1e3 * n_in * 0.5), rtol=1e-4)


@pytest.mark.parametrize("n_in", [32, 768, 40])
def test_the_bfloat16_dot_product_kernel(n_in):
    """matvec_bf16 (AVX-512 BF16 where the CPU has it) is the exact product of the bfloat16 weights
    with the input rounded to bfloat16, summed in float32; an input not a multiple of 32 long takes
    the plain kernel."""
    k = load_kernels()
    torch.manual_seed(n_in)
    w, x = torch.randn(50, n_in).to(torch.bfloat16), torch.randn(n_in)
    scale, bias = np.full(50, 2.0, np.float32), np.random.default_rng(0).normal(size=50).astype(np.float32)
    out = np.empty(50, np.float32)
    k.matvec_bf16(x.numpy(), bits(w), scale, bias, out, False)
    rounded = x.to(torch.bfloat16) if k.BF16_DOT and n_in % 32 == 0 else x
    want = (rounded.double() @ w.double().t()) * 2 + torch.from_numpy(bias).double()
    torch.testing.assert_close(torch.from_numpy(out).double(), want, atol=1e-4, rtol=1e-5)


def test_int4_weights_widen_to_exactly_what_they_store():
    """A long prompt multiplies int4 weights widened to bfloat16 (kernels.widen_int4): they are
    the stored codes times their scales plus their offsets, rounded once."""
    torch.manual_seed(1)
    layer = Int4Linear(torch.randn(48, 96), None)
    if not layer.arrays:
        pytest.skip("the int4 decode kernel's codes exist on a CPU with AVX-512 BF16")
    want = dequantize_groups(layer.codes, layer.group_scales.float(), layer.group_offsets.float(), torch.float32)
    assert torch.equal(layer.dense(torch.float32), want.to(torch.bfloat16).float())


AVX2_ONLY = ",".join(["-avx512f", "-avx512bw", "-avx512dq", "-avx512vl", "-avx512cd", "-avx512bf16", "-avx512vnni",
                      "-avx512vbmi", "-avx512vbmi2", "-avx512ifma", "-avx512bitalg", "-avx512vpopcntdq", "-avx512fp16",
                      "+avx2", "+fma", "+avx", "+f16c", "+bmi2"])


def test_every_kernel_runs_on_a_cpu_without_avx512(tmp_path):
    """Compiled for a CPU with AVX2 but no AVX-512 (numba's own target override), every kernel picks
    its portable form and still equals torch's product: an x86 intrinsic the CPU lacks would abort
    the whole process in LLVM (the int8 few-rows tile did, for ``-N`` with ``--dtype int8``)."""
    import os
    import subprocess
    import sys

    env = os.environ | {"NUMBA_CPU_FEATURES": AVX2_ONLY, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    probe = "from chatgpt_cli import intrinsics as i; print(i.BF16_DOT, i.INT16_MADD, i.PERMUTE)"
    features = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    assert features == "False False False\n"  # the kernels compile for that CPU
    tests = ("each_kernel_equals or fused_attention or fused_decode_step or fused_step_of_a_batch "
             "or never_overflow or few_rows_kernels_equal")
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", tests],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]  # 0: tests ran, none failed


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_fused_steps_kernels_load_with_the_engine(tiny_dir, dtype, monkeypatch):
    """The engine loads the decode step's kernels when it is built, not at the first token: every
    signature the step then calls is one loaded there."""
    from chatgpt_cli import fused

    loaded = []
    for name in ("embed", "block_step", "head_step"):
        kernel = getattr(fused, name)

        def compile_(sig, kernel=kernel, name=name, compile_=kernel.compile):
            loaded.append((name, tuple(sig)))
            return compile_(sig)
        monkeypatch.setattr(kernel, "compile", compile_)
    engine = Engine(load_model(tiny_dir, dtype=dtype).model)
    assert isinstance(engine.decode, fused.FusedDecoder)
    assert [name for name, _ in loaded] == ["embed", "block_step", "head_step"]
    called = []
    for name in ("embed", "block_step", "head_step"):
        kernel = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, kernel=kernel, name=name: (
            called.append((name, tuple(numba.typeof(x) for x in a))), kernel(*a))[1])
    with torch.inference_mode():
        list(engine.generate([464, 2068, 7586], 3, SamplingOptions(temperature=0)))
    assert called and set(called) <= set(loaded)

"""CPU kernels for generating tokens: one row times a matrix, compiled by numba.

Decoding multiplies one vector (or the few rows of ``-N`` samples) by every weight matrix, so its
speed is how fast the weights stream from memory. Each product here is the plain dot product of an
input row with one row of the weight, a weight row per output, the weight rows split over the
threads (``prange``); numba's LLVM vectorizes the inner loop (``fastmath`` lets it reorder the
sum). Several input rows at once (``-N``) are kernels_rows.py's, the attention over the KV cache
kernels_attend.py's. Each kernel is written once for every form of stored weight
(numba compiles one version per form; int4 runs torch's own int4 kernel, see layers.py):

- float32 rows;
- bfloat16 rows, as their 16 bits (uint16): a bfloat16 is the top half of a float32, so shifting
  the bits 16 places up gives the float32;
- int8 rows: w[n, k] = q[n, k] * s[n], one float32 scale per row (float rows pass scales of 1);
  one row of input is then quantized to int16 and multiplied in integers (``matvec_int8``).

On a CPU with AVX-512 BF16, bfloat16 rows multiply in its dot-product instruction
(``matvec_bf16``); ``product`` picks each form's fastest kernel.

``widen`` turns one stored weight into a float32 as the loop reads it. The KV cache is float32 or
bfloat16 bits in the same way. fused.py builds the whole decode step of a block from these.

Compiled code is cached on disk, so only the first run on a machine (or of a new version) compiles
(compiled.py: where, and how the cache and the compiler are kept safe from interruptions).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import extending, prange, types

from chatgpt_cli.compiled import kernel  # it sets numba's cache folder
from chatgpt_cli.intrinsics import BF16_DOT, _dot_bf16, _dot_f32
from chatgpt_cli.intrinsics_int4 import _dot_int4, _dot_int4_pairs

GELU_C = math.sqrt(2.0 / math.pi)
jit = kernel(parallel=True, fastmath=True)
# The inputs' preparation (rounding, quantizing, zero padding) is compiled on its own, never inlined
# into the parallel kernels: there numba turns each array expression and allocation (np.zeros,
# np.abs(x).max()) into a parallel loop of its own, a hand-off to the other thread and back for a
# few microseconds of work (an 8-row 768-wide bfloat16 product spent 14 of its 94 us so).
serial = kernel(fastmath=True)


@extending.intrinsic
def _as_float32(typingctx, bits):
    """The float32 whose 32 bits are ``bits`` (a uint32)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@extending.intrinsic
def _as_uint32(typingctx, value):
    """The 32 bits of the float32 ``value``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@kernel(inline="always")
def to_bf16(value):
    """float32 -> bfloat16 bits (uint16), rounded to the nearest even like torch."""
    bits = _as_uint32(np.float32(value))
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@kernel(inline="always")
def bf16(bits):
    """bfloat16 bits (uint16) -> float32: the bits become the top half of the float32's."""
    return _as_float32(np.uint32(bits) << np.uint32(16))


def widen(value):
    """One stored weight or cached value -> float32 (bfloat16 bits, int8 codes, float32)."""


@extending.overload(widen, inline="always")
def _widen(value):
    if value == types.uint16:
        return lambda value: bf16(value)
    return lambda value: np.float32(value)


def stored(value, like):
    """A float32 -> the form of the array ``like`` (a bfloat16 or float32 cache)."""


@extending.overload(stored, inline="always")
def _stored(value, like):
    if like.dtype == types.uint16:
        return lambda value, like: to_bf16(value)
    return lambda value, like: np.float32(value)


@extending.intrinsic
def _int32(typingctx, value):
    """``value`` as a 32-bit integer (numba's own integer arithmetic would widen to 64 bits)."""
    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], types.int32)
    return types.int32(value), codegen


@extending.intrinsic
def _multiply_add(typingctx, acc, a, b):
    """acc + a * b in 32-bit integers, a int16 and b int8: a loop of these vectorizes into the
    CPU's 16-bit integer dot-product instructions (vpmaddwd; vpdpwssd with AVX-512 VNNI)."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.add(args[0], builder.mul(builder.sext(args[1], i32), builder.sext(args[2], i32)))
    return types.int32(types.int32, types.int16, types.int8), codegen


@kernel(inline="always", fastmath=True)
def exp_approx(x):
    """e^x for a float32 x, written out so that a loop of it vectorizes (16 at a time, against one
    call of the C library's expf each): x clamped to [-87, 88] (a normal float32's range), x = k ln 2
    + r with |r| <= ln 2 / 2, e^r by Cephes' degree-7 polynomial (relative error ~1e-7), 2^k put
    straight into the exponent bits."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(1.442695041) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)  # ln 2 in two parts
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + np.float32(1.0)) * _as_float32(np.uint32((np.int32(k) + np.int32(127)) << np.int32(23)))


@kernel(inline="always", fastmath=True)
def apply_gelu(out):
    """GPT-2's tanh GELU on every value of ``out`` (C-contiguous), in place, after a product:
    0.5 y (1 + tanh(u)) = y / (1 + e^(-2u)), u = sqrt(2 / pi) (y + 0.044715 y^3), a loop that
    vectorizes (libm's tanhf, one call per value inside the product's loop, cost 2.5 ms of an
    8-row step of GPT-2 124M)."""
    flat = out.reshape(out.size)
    for i in range(flat.shape[0]):
        y = flat[i]
        u = np.float32(GELU_C) * (y + np.float32(0.044715) * y * y * y)
        flat[i] = y / (np.float32(1.0) + exp_approx(np.float32(-2.0) * u))


@jit
def matvec(x, w, scale, bias, out, gelu):
    """out[n] = (x . w[n]) * scale[n] + bias[n]: x (K,) float32, w (N, K) in any stored form."""
    for n in prange(w.shape[0]):
        acc = np.float32(0.0)
        for k in range(w.shape[1]):
            acc += x[k] * widen(w[n, k])
        out[n] = acc * scale[n] + bias[n]
    if gelu:
        apply_gelu(out)


@jit
def matvec_f32(x, w, scale, bias, out, gelu):
    """``matvec`` for float32 weights: each row's dot product 32 values a step, the weights read
    ahead into the L2 cache (``_dot_f32``)."""
    if w.shape[1] % 32:
        matvec(x, w, scale, bias, out, gelu)
        return
    for n in prange(w.shape[0]):
        out[n] = _dot_f32(w, n, x) * scale[n] + bias[n]
    if gelu:
        apply_gelu(out)


@kernel(inline="always")
def largest_magnitude(x):
    """max |x| of a float32 vector (NaN if one is), as integers: a float's bits with the sign cleared
    order as the magnitudes do, and an integer maximum vectorizes (LLVM leaves a float maximum a
    scalar loop: 0.5 against 0.05 us for 800 values)."""
    bits = x.view(np.int32)
    top = np.int32(0)
    for k in range(bits.shape[0]):
        top = max(top, bits[k] & np.int32(0x7FFFFFFF))
    return _as_float32(np.uint32(top))


@serial
def quantize16(x, n_in):
    """x (K,) float32 -> int16 codes and their scale, x ~ codes * scale. The codes stay small enough
    (|code| <= (2^31 - 1) / (127 n_in)) that a sum of n_in code times int8 products fits 32 bits:
    15 bits of the vector's largest value for n_in = 768, 12 for 3072 (int8 weights have 8)."""
    limit = min(32767, (2**31 - 1) // (127 * n_in))
    top = largest_magnitude(x)
    scale = top / np.float32(limit) if top > 0 else np.float32(1.0)
    inverse = np.float32(1.0) / scale
    codes = np.empty(x.shape[0], np.int16)
    for k in range(x.shape[0]):
        codes[k] = np.int16(np.rint(x[k] * inverse))
    return codes, scale


@jit
def matvec_int8(x, q, scale, bias, out, gelu):
    """``matvec`` for int8 weights, in integers: x is quantized to int16 (``quantize16``), each
    row's dot product summed exactly in 32 bits, then scaled back: (xq . q[n]) * xs * scale[n]."""
    xq, xs = quantize16(x, q.shape[1])
    for n in prange(q.shape[0]):
        acc = _int32(0)
        for k in range(q.shape[1]):
            acc = _multiply_add(acc, xq[k], q[n, k])
        out[n] = np.float32(acc) * (xs * scale[n]) + bias[n]
    if gelu:
        apply_gelu(out)


@kernel(inline="always")
def rounded(x):
    """x (K,) float32 -> its bfloat16 bits, as the AVX-512 BF16 kernels read their input."""
    xb = np.empty(x.shape[0], np.uint16)
    for k in range(x.shape[0]):
        xb[k] = to_bf16(x[k])
    return xb


@jit
def matvec_bf16(x, w, scale, bias, out, gelu):
    """``matvec`` for bfloat16 weights on a CPU with AVX-512 BF16: x rounded to bfloat16 once, each
    row's dot product in the CPU's bfloat16 dot-product instruction (``_dot_bf16``)."""
    if w.shape[1] % 32:
        matvec(x, w, scale, bias, out, gelu)
        return
    xb = rounded(x)
    for n in prange(w.shape[0]):
        out[n] = _dot_bf16(w, n, xb) * scale[n] + bias[n]
    if gelu:
        apply_gelu(out)


@kernel(inline="always")
def pair_order(xb):
    """xb (K,) in the order ``_dot_int4_pairs`` reads it: per pair of groups of 32, the first
    16 of each group, then the last 16 of each."""
    xp = np.empty_like(xb)
    for p in range(xb.shape[0] // 64):
        for j in range(16):
            xp[64 * p + j] = xb[64 * p + j]
            xp[64 * p + 16 + j] = xb[64 * p + 32 + j]
            xp[64 * p + 32 + j] = xb[64 * p + 16 + j]
            xp[64 * p + 48 + j] = xb[64 * p + 48 + j]
    return xp


@serial
def group_sums(xb, n_groups):
    """The sums of bfloat16 inputs xb (K,), 32 by 32: (n_groups,) float32."""
    sums = np.empty(n_groups, np.float32)
    for g in range(n_groups):  # a sum per group, each a loop that vectorizes (one index k // 32 did not)
        total = np.float32(0.0)
        for j in range(32):
            total += bf16(xb[32 * g + j])
        sums[g] = total
    return sums


@kernel(inline="always")
def group_offset(scales, offsets, n, g):
    """Weight row n's group g term per unit of input: m - 128 s (the codes are read as 128 + q)."""
    return bf16(offsets[n, g]) - np.float32(128.0) * bf16(scales[n, g])


@jit
def matvec_int4(x, codes, groups, bias, out, gelu):
    """out[n] = x . w[n] + bias[n] for int4 weights w = q * s + m in groups of 32 (``groups`` =
    (s, m), bfloat16 bits (N, K/32)), on a CPU with AVX-512 BF16: x rounded to bfloat16 once,
    each group's codes times x in ``_dot_int4``, then the offsets: sum_g (m - 128 s) * sum(x_g)."""
    scales, offsets = groups
    xb = rounded(x)
    n_groups = scales.shape[1]
    x_sums = group_sums(xb, n_groups)
    even = n_groups % 2 == 0
    xp = pair_order(xb) if even else xb
    for n in prange(codes.shape[0]):
        rest = np.float32(0.0)
        for g in range(n_groups):
            rest += group_offset(scales, offsets, n, g) * x_sums[g]
        dot = _dot_int4_pairs(codes, n, xp, scales) if even else _dot_int4(codes, n, xb, scales)
        out[n] = dot + rest + bias[n]
    if gelu:
        apply_gelu(out)


@jit
def widen_int4(codes, groups, out):
    """The int4 weights w = q * s + m of ``codes`` (N, K/2) as bfloat16 bits out (N, K): for a
    prompt's many rows, which then multiply in oneDNN's bfloat16 product."""
    scales, offsets = groups
    for n in prange(codes.shape[0]):
        for g in range(scales.shape[1]):
            s, m = bf16(scales[n, g]), bf16(offsets[n, g])
            for j in range(16):
                byte = codes[n, 16 * g + j]
                out[n, 32 * g + j] = to_bf16(np.float32(byte & 15) * s + m)
                out[n, 32 * g + 16 + j] = to_bf16(np.float32(byte >> 4) * s + m)


def product(x, w, scale, bias, out, gelu):
    """out = x W^T * scale + bias for one row x, in the form's fastest kernel here."""


@extending.overload(product, inline="always")
def _product(x, w, scale, bias, out, gelu):
    if w.dtype == types.int8:
        return lambda x, w, scale, bias, out, gelu: matvec_int8(x, w, scale, bias, out, gelu)
    if w.dtype == types.uint8:  # int4 codes, two a byte (only built where BF16_DOT)
        return lambda x, w, scale, bias, out, gelu: matvec_int4(x, w, scale, bias, out, gelu)
    if w.dtype == types.uint16 and BF16_DOT:
        return lambda x, w, scale, bias, out, gelu: matvec_bf16(x, w, scale, bias, out, gelu)
    if w.dtype == types.float32:
        return lambda x, w, scale, bias, out, gelu: matvec_f32(x, w, scale, bias, out, gelu)
    return lambda x, w, scale, bias, out, gelu: matvec(x, w, scale, bias, out, gelu)


@kernel(fastmath=True)
def one_row(x, w, scale, bias, out, gelu):
    """``product``, called from Python (layers.py)."""
    product(x, w, scale, bias, out, gelu)

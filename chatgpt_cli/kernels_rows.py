"""CPU kernels for a few input rows at once (the rows of ``-N`` samples, short prompts): each weight
read from memory once for all the rows, the sums of several rows kept side by side.

- ``matmul``, any stored form (kernels.widen): two weight rows by four input rows at a time;
- ``matmul_tiles``, float32, and bfloat16 on a CPU with AVX-512 BF16: four weight rows by four
  input rows at a time in vector multiply-adds or its dot-product instruction
  (intrinsics._tile_f32, _tile_bf16), the weights prefetched ahead;
- ``matmul_int8``: the same in 16-bit integers (intrinsics._tile_int8), each input row quantized
  on its own (kernels.quantize16), exact 32-bit sums;
- ``matmul_int4``: each 4-bit weight row decoded once for four input rows (intrinsics_int4._tile_int4).

``rows_product`` picks the form's kernel (one row: kernels.product); fused.py's step calls it.
"""

from __future__ import annotations

import numpy as np
from numba import extending, prange, types

from chatgpt_cli.compiled import kernel
from chatgpt_cli.intrinsics import BF16_DOT, TILE, _tile_bf16, _tile_f32, _tile_int8
from chatgpt_cli.intrinsics_int4 import INT4_TILE, _tile_int4
from chatgpt_cli.kernels import (
    apply_gelu,
    group_offset,
    group_sums,
    jit,
    pair_order,
    product,
    quantize16,
    rounded,
    serial,
    widen,
)

# Two weight rows times four input rows at a time: eight sums side by side, each weight and each
# input value loaded once for all of them (x is padded with zero rows to a multiple of four).

@kernel(inline="always")
def padded4(x):
    """x (M, K) with zero rows added up to a multiple of four."""
    x4 = np.zeros(((x.shape[0] + 3) // 4 * 4, x.shape[1]), np.float32)
    x4[:x.shape[0]] = x
    return x4


@kernel(inline="always")
def put4(out, m, n, sums, scale, bias):
    """out[m + i, n] = sums[i] * scale + bias for the rows of x that exist (not the padding)."""
    for i in range(4):
        if m + i < out.shape[0]:
            out[m + i, n] = sums[i] * scale + bias


@jit
def matmul(x, w, scale, bias, out, gelu):
    """out[m, n] = (x[m] . w[n]) * scale[n] + bias[n]: x (M, K) a few rows, w (N, K) any form."""
    x4, (n_out, n_in) = padded4(x), w.shape
    for p in prange((n_out + 1) // 2):
        n0, n1 = 2 * p, min(2 * p + 1, n_out - 1)  # an odd last row pairs with itself
        for m in range(0, x4.shape[0], 4):
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            for k in range(n_in):
                u, v = widen(w[n0, k]), widen(w[n1, k])
                a0 += x4[m, k] * u
                a1 += x4[m + 1, k] * u
                a2 += x4[m + 2, k] * u
                a3 += x4[m + 3, k] * u
                b0 += x4[m, k] * v
                b1 += x4[m + 1, k] * v
                b2 += x4[m + 2, k] * v
                b3 += x4[m + 3, k] * v
            put4(out, m, n0, (a0, a1, a2, a3), scale[n0], bias[n0])
            put4(out, m, n1, (b0, b1, b2, b3), scale[n1], bias[n1])
    if gelu:
        apply_gelu(out)


def tile_input(x, w):
    """x (M, K) float32 as the tiles of w's form read it: bfloat16 bits (rounded once) or float32,
    with zero rows added up to a multiple of ``TILE``."""


@extending.overload(tile_input, inline="always")
def _tile_input(x, w):
    if w.dtype == types.uint16:
        def bfloat16_rows(x, w):
            xt = np.zeros(((x.shape[0] + TILE - 1) // TILE * TILE, w.shape[1]), np.uint16)
            for m in range(x.shape[0]):
                xt[m] = rounded(x[m])
            return xt
        return bfloat16_rows

    def float32_rows(x, w):
        xt = np.zeros(((x.shape[0] + TILE - 1) // TILE * TILE, w.shape[1]), np.float32)
        xt[:x.shape[0]] = x
        return xt
    return float32_rows


def tile(w, n, xt, m):
    """w[n .. n + 3] each with xt[m .. m + 3] in w's form's tile (16 sums, w[n]'s first)."""


@extending.overload(tile, inline="always")
def _tile(w, n, xt, m):
    if w.dtype == types.uint16:
        return lambda w, n, xt, m: _tile_bf16(w, n, xt, m)
    if w.dtype == types.int8:
        return lambda w, n, xt, m: _tile_int8(w, n, xt, m)
    return lambda w, n, xt, m: _tile_f32(w, n, xt, m)


@kernel(inline="always")
def put(out, sums, n, m, n_w, n_x, x_scale, scale, bias):
    """out[m + i, n + a] = sums[a * TILE + i] * (x_scale[m + i] * scale[n + a]) + bias[n + a] for
    the first n_w weight rows and n_x input rows of a tile."""
    for a in range(n_w):
        for i in range(n_x):
            out[m + i, n + a] = np.float32(sums[a * TILE + i]) * (x_scale[m + i] * scale[n + a]) + bias[n + a]


@kernel(inline="always")
def tiled(w, xt, n_rows, x_scale, scale, bias, out):
    """out[m, n] = (xt[m] . w[n]) * (x_scale[m] * scale[n]) + bias[n] for the first n_rows rows of
    xt (padded with zero rows to a multiple of ``TILE``), a tile of four weight rows by four
    input rows at a time. A whole tile's sums are put with constant bounds (the loops unrolled:
    124M's 768-wide products for 8 rows 1.15-1.2x faster than with the bounds of a tile at the edge)."""
    for p in prange((w.shape[0] + TILE - 1) // TILE):
        n = p * TILE
        for m in range(0, n_rows, TILE):
            sums = tile(w, n, xt, m)
            if n + TILE <= w.shape[0] and m + TILE <= n_rows:
                put(out, sums, n, m, TILE, TILE, x_scale, scale, bias)
            else:  # the last rows of either
                put(out, sums, n, m, min(TILE, w.shape[0] - n), min(TILE, n_rows - m), x_scale, scale, bias)


@serial
def tile_rows(x, w):
    """x as the tiles read it (``tile_input``) and each row's scale (1: the rows are not quantized)."""
    return tile_input(x, w), np.ones(x.shape[0], np.float32)


@serial
def quantized_rows(x, n_in):
    """Each row of x (M, K) quantized to int16 on its own (``quantize16``): the codes, with zero rows
    added up to a multiple of ``TILE``, and each row's scale."""
    xq = np.zeros(((x.shape[0] + TILE - 1) // TILE * TILE, n_in), np.int16)
    xs = np.zeros(xq.shape[0], np.float32)
    for m in range(x.shape[0]):
        xq[m], xs[m] = quantize16(x[m], n_in)
    return xq, xs


@serial
def int4_rows(x, n_groups):
    """Each row of x (M, K) rounded to bfloat16 in pair order (``pair_order``) and its sums group by
    group (``group_sums``), with zero rows added up to a multiple of ``INT4_TILE``."""
    padded = (x.shape[0] + INT4_TILE - 1) // INT4_TILE * INT4_TILE
    xp = np.zeros((padded, x.shape[1]), np.uint16)
    x_sums = np.zeros((padded, n_groups), np.float32)
    for m in range(x.shape[0]):
        xb = rounded(x[m])
        x_sums[m] = group_sums(xb, n_groups)
        xp[m] = pair_order(xb)
    return xp, x_sums


@jit
def matmul_tiles(x, w, scale, bias, out, gelu):
    """``matmul`` for float32 weights, and bfloat16 ones on a CPU with AVX-512 BF16: x in the form's
    input (``tile_input``), then each weight row read once for all the input rows (``tiled``: 32
    products a step into 16 sums for each weight row and input row, vector multiply-adds or
    ``vdpbf16ps``)."""
    if w.shape[1] % 32:
        matmul(x, w, scale, bias, out, gelu)
        return
    xt, ones = tile_rows(x, w)
    tiled(w, xt, x.shape[0], ones, scale, bias, out)
    if gelu:
        apply_gelu(out)


@jit
def matmul_int8(x, q, scale, bias, out, gelu):
    """``matmul`` for int8 weights, in integers: each row of x quantized to int16 (``quantize16``),
    then each weight row read once for all the input rows, exact 32-bit sums (``tiled``)."""
    n_in, n_rows = q.shape[1], x.shape[0]
    if n_in % 32:
        matmul(x, q, scale, bias, out, gelu)
        return
    xq, xs = quantized_rows(x, n_in)
    tiled(q, xq, n_rows, xs, scale, bias, out)
    if gelu:
        apply_gelu(out)


@kernel(inline="always")
def offsets_times_sums(scales, offsets, x_sums, n, m):
    """sum over groups g of (m[n, g] - 128 s[n, g]) * x_sums[m + i, g] for the ``INT4_TILE`` (4) input
    rows i of a tile, each group's factor computed once for the four (once per row, 124M's int4
    products of 8 rows took 1.1x the time)."""
    r0 = r1 = r2 = r3 = np.float32(0.0)
    for g in range(scales.shape[1]):
        c = group_offset(scales, offsets, n, g)
        r0 += c * x_sums[m, g]
        r1 += c * x_sums[m + 1, g]
        r2 += c * x_sums[m + 2, g]
        r3 += c * x_sums[m + 3, g]
    return r0, r1, r2, r3


@jit
def matmul_int4(x, codes, groups, bias, out, gelu):
    """``kernels.matvec_int4`` for a few rows of x, each 4-bit weight row decoded once for
    ``INT4_TILE`` input rows (``_tile_int4``); rows of an odd number of groups go one at a time."""
    scales, offsets = groups
    n_rows, n_groups = x.shape[0], scales.shape[1]
    if n_groups % 2:
        for m in range(n_rows):
            product(x[m], codes, groups, bias, out[m], gelu)
        return
    xp, x_sums = int4_rows(x, n_groups)
    for n in prange(codes.shape[0]):
        for m in range(0, n_rows, INT4_TILE):
            sums, rests = _tile_int4(codes, n, xp, m, scales), offsets_times_sums(scales, offsets, x_sums, n, m)
            if m + INT4_TILE <= n_rows:  # constant bounds: the loop unrolled
                for i in range(INT4_TILE):
                    out[m + i, n] = sums[i] + rests[i] + bias[n]
            else:
                for i in range(n_rows - m):
                    out[m + i, n] = sums[i] + rests[i] + bias[n]
    if gelu:
        apply_gelu(out)


def rows_product(x, w, scale, bias, out, gelu):
    """out = x W^T * scale + bias for the rows of x (M, K), in the form's fastest kernel here."""


@extending.overload(rows_product, inline="always")
def _rows_product(x, w, scale, bias, out, gelu):
    if w.dtype == types.uint8:  # int4 codes (only built where BF16_DOT)
        tiles = matmul_int4
    elif (w.dtype == types.uint16 and BF16_DOT) or w.dtype == types.float32:
        tiles = matmul_tiles
    elif w.dtype == types.int8:
        tiles = matmul_int8
    else:
        tiles = matmul

    def rows(x, w, scale, bias, out, gelu):
        if x.shape[0] == 1:
            product(x[0], w, scale, bias, out[0], gelu)
        else:
            tiles(x, w, scale, bias, out, gelu)
    return rows


@kernel(fastmath=True)
def few_rows(x, w, scale, bias, out, gelu):
    """``rows_product``, called from Python (layers.py)."""
    rows_product(x, w, scale, bias, out, gelu)

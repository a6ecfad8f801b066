"""The int4 dot products in LLVM IR, as numba intrinsics (kernels.py and kernels_rows.py call them;
the other forms are intrinsics.py's). Each 4-bit code q is read as the bfloat16 whose bits are
``0x4300 | q``, exactly 128 + q, so the codes go into AVX-512 BF16's dot-product instruction with no
conversion; built only where the CPU has it (``intrinsics.BF16_DOT``).
"""

from __future__ import annotations

from llvmlite import ir
from numba import extending, types
from numba.core import cgutils

from chatgpt_cli.intrinsics import AHEAD, PAIRS, SUMS, _declare, _rows, _sum_lanes, prefetch_l2


def _int4_pointers(context, builder, signature, args):
    """For (codes, n, x, scales): row n's codes, x's data, row n's scales, the groups in a row."""
    codes, x, scales = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 3))
    n_groups = builder.extract_value(scales.shape, 1)
    row = builder.gep(codes.data, [builder.mul(args[1], builder.extract_value(codes.shape, 1))])
    return row, x.data, builder.gep(scales.data, [builder.mul(args[1], n_groups)]), n_groups


@extending.intrinsic
def _dot_int4(typingctx, codes, n, xb, scales):
    """sum over groups g of scales[n, g] * (row n's codes of group g . xb's), each code q read as
    the bfloat16 128 + q, in AVX-512 BF16's dot-product instruction.

    codes (N, K/2) uint8 as ``layers.quantize_groups`` packs them (byte j of a group: weight j in
    the low nibble, weight j + 16 in the high one); xb (K,) and scales (N, K/32) bfloat16 bits. The
    bfloat16 whose bits are 0x4300 | q is exactly 128 + q: no conversion, and the 128 times the
    group's input sum is taken off by the caller. Each group's 16 partial sums are scaled and kept
    in 16 lanes: no sum across lanes until the end of the row.
    """
    def codegen(context, builder, signature, args):
        row, x_data, scale_row, n_groups = _int4_pointers(context, builder, signature, args)
        i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
        sums, pairs = SUMS, PAIRS
        dot = _declare(builder, "llvm.x86.avx512bf16.dpbf16ps.512", sums, (sums, pairs, pairs))
        fma = _declare(builder, "llvm.fma.v16f32", sums, (sums, sums, sums))
        acc = cgutils.alloca_once_value(builder, ir.Constant(sums, None))
        with cgutils.for_range(builder, n_groups) as loop:
            g = loop.index
            packed = builder.load(builder.bitcast(builder.gep(row, [builder.mul(g, ir.Constant(i64, 16))]),
                                                  ir.VectorType(ir.IntType(8), 16).as_pointer()), align=1)
            wide = builder.zext(packed, ir.VectorType(i16, 16))
            low = builder.and_(wide, ir.Constant(ir.VectorType(i16, 16), [15] * 16))  # weights 0..15
            high = builder.lshr(wide, ir.Constant(ir.VectorType(i16, 16), [4] * 16))  # weights 16..31
            both = builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(i32, 32), list(range(32))))
            weights = builder.bitcast(builder.or_(both, ir.Constant(ir.VectorType(i16, 32), [0x4300] * 32)), pairs)
            x = builder.load(builder.bitcast(builder.gep(x_data, [builder.mul(g, ir.Constant(i64, 32))]),
                                             ir.VectorType(i16, 32).as_pointer()), align=2)
            d = builder.call(dot, [ir.Constant(sums, None), builder.bitcast(x, pairs), weights])
            bits = builder.shl(builder.zext(builder.load(builder.gep(scale_row, [g])), i32), ir.Constant(i32, 16))
            scale = builder.bitcast(bits, ir.FloatType())
            spread = builder.shuffle_vector(builder.insert_element(ir.Constant(sums, None), scale, ir.Constant(i32, 0)),
                                            ir.Constant(sums, None), ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            builder.store(builder.call(fma, [d, spread, builder.load(acc)]), acc)
        return _sum_lanes(builder, builder.load(acc))
    return types.float32(codes, n, xb, scales), codegen


def _int4_pair_dots(builder, row, scale_row, n_groups, x_rows, ahead=0):
    """The scaled dot products of one row of int4 codes (``row``, its scales ``scale_row``) with each
    input row in x_rows (pair order), two groups a step: the 32 bytes of groups g and g + 1 widen to
    32 16-bit lanes at once and become bfloat16 once for all the input rows. With ``ahead``, the
    codes that many bytes on are prefetched."""
    i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    words = ir.VectorType(i16, 32)
    dot = _declare(builder, "llvm.x86.avx512bf16.dpbf16ps.512", SUMS, (SUMS, PAIRS, PAIRS))
    fma = _declare(builder, "llvm.fma.v16f32", SUMS, (SUMS, SUMS, SUMS))
    accs = [cgutils.alloca_once_value(builder, ir.Constant(SUMS, None)) for _ in x_rows]
    bias = ir.Constant(words, [0x4300] * 32)
    with cgutils.for_range(builder, builder.udiv(n_groups, ir.Constant(i64, 2))) as loop:
        p = loop.index
        if ahead:  # the codes ``ahead`` bytes on
            prefetch_l2(builder, builder.gep(row, [builder.add(builder.mul(p, ir.Constant(i64, 32)),
                                                               ir.Constant(i64, ahead))]))
        packed = builder.load(builder.bitcast(builder.gep(row, [builder.mul(p, ir.Constant(i64, 32))]),
                                              ir.VectorType(ir.IntType(8), 32).as_pointer()), align=1)
        wide = builder.zext(packed, words)
        low = builder.bitcast(builder.or_(builder.and_(wide, ir.Constant(words, [15] * 32)), bias), PAIRS)
        high = builder.bitcast(builder.or_(builder.lshr(wide, ir.Constant(words, [4] * 32)), bias), PAIRS)
        two = builder.load(builder.bitcast(builder.gep(scale_row, [builder.mul(p, ir.Constant(i64, 2))]),
                                           ir.VectorType(i16, 2).as_pointer()), align=2)
        two = builder.bitcast(builder.shl(builder.zext(two, ir.VectorType(i32, 2)),
                                          ir.Constant(ir.VectorType(i32, 2), [16, 16])),
                              ir.VectorType(ir.FloatType(), 2))
        spread = builder.shuffle_vector(two, two, ir.Constant(ir.VectorType(i32, 16), [0] * 8 + [1] * 8))
        for acc, x_row in zip(accs, x_rows, strict=True):
            x_at = builder.gep(x_row, [builder.mul(p, ir.Constant(i64, 64))])
            x_low = builder.load(builder.bitcast(x_at, words.as_pointer()), align=2)
            x_high = builder.load(builder.bitcast(builder.gep(x_at, [ir.Constant(i64, 32)]), words.as_pointer()),
                                  align=2)
            d = builder.call(dot, [ir.Constant(SUMS, None), builder.bitcast(x_low, PAIRS), low])
            d = builder.call(dot, [d, builder.bitcast(x_high, PAIRS), high])
            builder.store(builder.call(fma, [d, spread, builder.load(acc)]), acc)
    return [_sum_lanes(builder, builder.load(acc)) for acc in accs]


@extending.intrinsic
def _dot_int4_pairs(typingctx, codes, n, xp, scales):
    """``_dot_int4`` two groups at a time, for rows of an even number of groups: half the work.

    The 32 bytes of groups g and g + 1 widen to 32 16-bit lanes at once; their low nibbles are
    weights 0..15 of both groups, their high nibbles weights 16..31, so ``xp`` holds the input
    in that order (``pair_order``): per pair of groups, x_g[0:16], x_g+1[0:16], x_g[16:32],
    x_g+1[16:32]. Two dot-product instructions then leave group g's partial sums in lanes 0..7
    and group g + 1's in lanes 8..15, scaled by both scales at once.
    """
    def codegen(context, builder, signature, args):
        row, x_data, scale_row, n_groups = _int4_pointers(context, builder, signature, args)
        return _int4_pair_dots(builder, row, scale_row, n_groups, [x_data])[0]
    return types.float32(codes, n, xp, scales), codegen


INT4_TILE = 4  # input rows per int4 weight row decoded (``_tile_int4``)


@extending.intrinsic
def _tile_int4(typingctx, codes, n, xp, m, scales):
    """``_dot_int4_pairs`` of row n's codes with the ``INT4_TILE`` rows m, m + 1, ... of xp (M, K),
    each in pair order: each 4-bit weight read from memory once for all the rows (a step of ``-N``)."""
    def codegen(context, builder, signature, args):
        codes_arr, x_arr, scales_arr = (context.make_array(signature.args[i])(context, builder, args[i])
                                        for i in (0, 2, 4))
        n_groups, n_in = builder.extract_value(scales_arr.shape, 1), builder.extract_value(x_arr.shape, 1)
        row = builder.gep(codes_arr.data, [builder.mul(args[1], builder.extract_value(codes_arr.shape, 1))])
        scale_row = builder.gep(scales_arr.data, [builder.mul(args[1], n_groups)])
        x_rows = _rows(builder, x_arr.data, args[3], INT4_TILE, n_in)
        sums = _int4_pair_dots(builder, row, scale_row, n_groups, x_rows, ahead=AHEAD // 2)  # bytes: AHEAD codes
        return context.make_tuple(builder, signature.return_type, sums)
    return types.UniTuple(types.float32, INT4_TILE)(codes, n, xp, m, scales), codegen

"""Dot products written in LLVM IR, as numba intrinsics (kernels.py and kernels_rows.py call them).

LLVM's vectorizer never emits ``vdpbf16ps`` (32 bfloat16 products added into 16 float32 sums in
one instruction), nor keeps eight input rows' sums side by side for one weight row read, nor
prefetches, so these write the LLVM IR of the dot products themselves: a loop over the row 32
values at a time, 16 sums kept side by side, added up at the end (``_dots``; float32, bfloat16,
16-bit integer and int4 steps), one row or a tile of rows at a time, the weights prefetched into
the L2 cache where that measured faster. An x86 instruction named here is used only where the
CPU numba compiles for has it (``BF16_DOT``, ``INT16_MADD``); kernels.py picks plain loops
elsewhere.
"""

from __future__ import annotations

import llvmlite.binding
from llvmlite import ir
from numba import extending, types
from numba.core import cgutils, config


def target_features() -> str:
    """The CPU features numba compiles for: its ``NUMBA_CPU_FEATURES`` override where set (which also
    lets a test compile for a CPU without AVX-512), else this host's."""
    host = llvmlite.binding.get_host_cpu_features().flatten
    return config.CPU_FEATURES if config.CPU_FEATURES is not None else host()


# Each x86 intrinsic below is used only where the CPU has it; LLVM aborts the process on one it lacks.
BF16_DOT = "+avx512bf16" in target_features()  # vdpbf16ps: the bfloat16 and int4 kernels
INT16_MADD = "+avx512bw" in target_features()  # vpmaddwd on 512 bits: the int8 few-rows tile


class _BFloat(ir.Type):
    """LLVM's bfloat type (llvmlite has no name for it)."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, _BFloat)

    def __hash__(self) -> int:
        return hash("bfloat")


SUMS, PAIRS = ir.VectorType(ir.FloatType(), 16), ir.VectorType(_BFloat(), 32)  # vdpbf16ps's operands


def _declare(builder, name: str, result, arguments):
    """The LLVM intrinsic ``name`` (result type, argument types), declared in the module being built."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, list(arguments)), name)


def _sum_lanes(builder, v):
    """The sum of the 16 lanes (float32 or int32) of v, added pairwise: 8, 4, 2, 1."""
    width, add = 16, builder.fadd if isinstance(v.type.element, ir.FloatType) else builder.add
    while width > 1:
        width //= 2
        lanes = ir.VectorType(ir.IntType(32), width)
        v = add(builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(width)))),
                         builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(width, 2 * width)))))
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def prefetch_l2(builder, address) -> None:
    """Ask for the cache line at ``address`` (any pointer) to be read into the L2 cache, not L1
    (locality 2, prefetcht1): the kernels prefetch kilobytes ahead of where they read, and lines
    fetched that far into L1 pushed out the ones in use (a few-rows product of 124M 1.45x slower,
    the attention over a long cache 1.1-1.2x, on an AMD EPYC)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    prefetch = _declare(builder, "llvm.prefetch.p0", ir.VoidType(), (i8p, i32, i32, i32))  # (address, read,
    builder.call(prefetch, [builder.bitcast(address, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2),  # locality,
                            ir.Constant(i32, 1)])  # data)


def _rows(builder, data, first, count, n_in):
    """Pointers to rows first, first + 1, ... of a C-contiguous (rows, n_in) array's data."""
    return [builder.gep(data, [builder.mul(builder.add(first, ir.Constant(first.type, i)), n_in)])
            for i in range(count)]


def _dots(builder, w_rows, x_rows, n_in, step, ahead=0):
    """The dot products of every weight row in w_rows with every row in x_rows (n_in values each,
    n_in a multiple of 32), 32 products a step per pair into 16 sums each, each weight and input
    vector loaded once a step for all the pairs: ``step(builder, w, x_at, acc)`` is one such step
    (w the loaded weights, x_at a pointer to the 32 inputs). With ``ahead``, the weights that many
    values on are prefetched. Returns the sums as [weight row][input row]."""
    zero = step.zero
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(zero, None)) for _ in x_rows] for _ in w_rows]
    with cgutils.for_range(builder, builder.udiv(n_in, ir.Constant(n_in.type, 32))) as loop:
        at = builder.mul(loop.index, ir.Constant(n_in.type, 32))
        for w_row, row_accs in zip(w_rows, accs, strict=True):
            if ahead:
                prefetch_l2(builder, builder.gep(w_row, [builder.add(at, ir.Constant(at.type, ahead))]))
            w = step.weights(builder, builder.gep(w_row, [at]))
            for acc, row in zip(row_accs, x_rows, strict=True):
                builder.store(step(builder, w, builder.gep(row, [at]), builder.load(acc)), acc)
    return [[_sum_lanes(builder, builder.load(acc)) for acc in row_accs] for row_accs in accs]


class _BF16Step:
    """32 bfloat16 weights times 32 bfloat16 inputs into 16 float32 sums: ``vdpbf16ps``."""

    zero = SUMS

    @staticmethod
    def weights(builder, at):
        return builder.bitcast(builder.load(builder.bitcast(at, ir.VectorType(ir.IntType(16), 32).as_pointer()),
                                            align=1), PAIRS)

    def __call__(self, builder, w, x_at, acc):
        dot = _declare(builder, "llvm.x86.avx512bf16.dpbf16ps.512", SUMS, (SUMS, PAIRS, PAIRS))
        return builder.call(dot, [acc, w, self.weights(builder, x_at)])


class _Int8Step:
    """32 int8 weights (widened to 16 bits) times 32 int16 inputs into 16 int32 sums: ``vpmaddwd``
    and an add, which LLVM fuses into ``vpdpwssd`` on a CPU with AVX-512 VNNI."""

    zero = ir.VectorType(ir.IntType(32), 16)

    @staticmethod
    def weights(builder, at):
        codes = builder.load(builder.bitcast(at, ir.VectorType(ir.IntType(8), 32).as_pointer()), align=1)
        return builder.sext(codes, ir.VectorType(ir.IntType(16), 32))

    def __call__(self, builder, w, x_at, acc):
        words = ir.VectorType(ir.IntType(16), 32)
        x = builder.load(builder.bitcast(x_at, words.as_pointer()), align=1)
        if INT16_MADD:
            madd = _declare(builder, "llvm.x86.avx512.pmaddw.d.512", self.zero, (words, words))
            return builder.add(acc, builder.call(madd, [w, x]))
        # elsewhere the same sums written out: 32 products in 32 bits, each even one added to the
        # odd one beside it (the pattern LLVM turns into vpmaddwd on AVX2)
        wide = ir.VectorType(ir.IntType(32), 32)
        products = builder.mul(builder.sext(w, wide), builder.sext(x, wide))
        lanes = ir.VectorType(ir.IntType(32), 16)
        even, odd = (builder.shuffle_vector(products, products, ir.Constant(lanes, list(range(i, 32, 2))))
                     for i in (0, 1))
        return builder.add(acc, builder.add(even, odd))


class _F32Step:
    """32 float32 weights (two vectors) times 32 float32 inputs into 16 float32 sums: two ``vfmadd``."""

    zero = SUMS

    @staticmethod
    def weights(builder, at):
        return [builder.load(builder.bitcast(builder.gep(at, [ir.Constant(ir.IntType(64), i)]), SUMS.as_pointer()),
                             align=4) for i in (0, 16)]

    def __call__(self, builder, w, x_at, acc):
        fma = _declare(builder, "llvm.fma.v16f32", SUMS, (SUMS, SUMS, SUMS))
        x = self.weights(builder, x_at)
        return builder.call(fma, [w[1], x[1], builder.call(fma, [w[0], x[0], acc])])


TILE = 8  # the few-rows kernel's input rows per weight row read: eight sums side by side
AHEAD = 4096  # and how many weights ahead of them it prefetches (16 KB of float32, 8 of bfloat16, 4 of int8, 2 of int4)
LONG_ROWS = 1536  # longer rows: eight input rows (24 KB and more) no longer fit the L1 cache beside the weights


def _one_row(step, ahead, about):
    """An intrinsic (w, n, x) -> w[n] . x for (N, K) weights and one row x (K,), K a multiple of 32,
    a step's 32 products into 16 float32 sums, added up at the end; the weights ``ahead`` values on
    prefetched (0: none, the CPU's own prefetcher keeps up)."""
    def dot(typingctx, w, n, x):
        def codegen(context, builder, signature, args):
            w_arr = context.make_array(signature.args[0])(context, builder, args[0])
            x_arr = context.make_array(signature.args[2])(context, builder, args[2])
            n_in = builder.extract_value(w_arr.shape, 1)
            row = _rows(builder, w_arr.data, args[1], 1, n_in)
            return _dots(builder, row, [x_arr.data], n_in, step, ahead=ahead)[0][0]
        return types.float32(w, n, x), codegen
    dot.__doc__ = about
    return extending.intrinsic(dot)


_dot_bf16 = _one_row(_BF16Step(), 0, """bfloat16 bits w and xb in AVX-512 BF16's dot-product instruction
    (vdpbf16ps): the weights go from memory into the instruction with nothing to widen them first.""")
_dot_f32 = _one_row(_F32Step(), AHEAD, """float32 w and x, two vector multiply-adds a step; the prefetch
    into L2 reads a float32 matrix 1.1x faster than the plain loop numba vectorizes (124M's
    products 17.3 -> 15.5 ms, 32 GB/s, this machine's read bandwidth; AMD EPYC).""")


def _tile(step, result, about):
    """Two intrinsics for a few input rows, each weight vector loaded once for all of them, and the
    weights ``AHEAD`` values on prefetched ((N, K) and (M, K) C-contiguous, K a multiple of 32):

    - (w, n, x, m) -> the ``TILE`` dot products of w[n] with x[m], x[m + 1], ...;
    - (w, n0, n1, x, m) -> w[n0] and w[n1] each with x[m .. m + 3] (8 sums, w[n0]'s first), for
      rows longer than ``LONG_ROWS``: four input rows stay in the L1 cache, and two weight rows a
      step halve the input loads per product."""
    def tile(typingctx, w, n, x, m):
        def codegen(context, builder, signature, args):
            w_arr = context.make_array(signature.args[0])(context, builder, args[0])
            x_arr = context.make_array(signature.args[2])(context, builder, args[2])
            n_in = builder.extract_value(w_arr.shape, 1)
            dots = _dots(builder, _rows(builder, w_arr.data, args[1], 1, n_in),
                         _rows(builder, x_arr.data, args[3], TILE, n_in), n_in, step, ahead=AHEAD)[0]
            return context.make_tuple(builder, signature.return_type, dots)
        return types.UniTuple(result, TILE)(w, n, x, m), codegen

    def pair(typingctx, w, n0, n1, x, m):
        def codegen(context, builder, signature, args):
            w_arr = context.make_array(signature.args[0])(context, builder, args[0])
            x_arr = context.make_array(signature.args[3])(context, builder, args[3])
            n_in = builder.extract_value(w_arr.shape, 1)
            w_rows = [_rows(builder, w_arr.data, args[i], 1, n_in)[0] for i in (1, 2)]
            dots = _dots(builder, w_rows, _rows(builder, x_arr.data, args[4], 4, n_in), n_in, step, ahead=AHEAD)
            return context.make_tuple(builder, signature.return_type, dots[0] + dots[1])
        return types.UniTuple(result, 8)(w, n0, n1, x, m), codegen
    tile.__doc__ = pair.__doc__ = about
    return extending.intrinsic(tile), extending.intrinsic(pair)


_tile_bf16, _pair_bf16 = _tile(_BF16Step(), types.float32, """bfloat16 bits w and x. Eight dot products
    per weight vector keep the CPU busy long enough that its own prefetcher falls behind the
    weights' stream from memory, hence the prefetch: 1.3-1.6x faster on 124M's products for 8 rows
    into L1, and 1.45x faster again into L2 only (prefetcht1: lines that far ahead, fetched into
    L1, pushed out the input rows and the weights in use; 124M's 8-row products 16.2 -> 9.9 ms,
    one row 7.6, AMD EPYC).""")
_tile_int8, _pair_int8 = _tile(_Int8Step(), types.int32, """int8 weights w, int16 inputs x: the exact int32 sums.""")
_tile_f32, _pair_f32 = _tile(_F32Step(), types.float32, """float32 w and x.""")


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

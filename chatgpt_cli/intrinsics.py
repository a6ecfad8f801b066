"""Dot products written in LLVM IR, as numba intrinsics (kernels.py and kernels_rows.py call them).

LLVM's vectorizer never emits ``vdpbf16ps`` (32 bfloat16 products added into 16 float32 sums in
one instruction), nor keeps a tile of four weight rows by four input rows' sums side by side, nor
prefetches, so these write the LLVM IR of the dot products themselves: a loop over the row 32
values at a time, 16 sums kept side by side, added up at the end (``_dots``; float32, bfloat16
and 16-bit integer steps; int4's are intrinsics_int4.py's), one row or a tile of rows at a time,
the weights prefetched into the L2 cache where that measured faster. An x86 instruction named
here is used only where the CPU numba compiles for has it (``BF16_DOT``, ``INT16_MADD``, ``PERMUTE``);
kernels.py picks plain loops elsewhere.
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
PERMUTE = "+avx512f" in target_features()  # vpermps: int4 KV codes to floats by a table of 16


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


def sum_across(builder, vectors):
    """A power of two vectors of 16 lanes (at most 16) -> one vector whose lane j is the sum of the
    lanes of vectors[j]: two vectors' halves added into one vector holding both (their lane groups
    side by side), and so on, then the last vector's groups each added up. Each sum is added in
    ``_sum_lanes``'s order (lanes i and i + 8, then i + 4, ...): the same result, bit for bit."""
    add = builder.fadd if isinstance(vectors[0].type.element, ir.FloatType) else builder.add
    i32, width, level = ir.IntType(32), 16, list(vectors)  # width: lanes per vector's group
    while len(level) > 1:  # pairs of vectors (A, B) -> A's groups then B's, each half as wide
        groups, width = 16 // width, width // 2
        low = [g * 2 * width + j for g in range(groups) for j in range(width)]
        low += [16 + i for i in low]
        level = [add(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 16), low)),
                     builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 16), [i + width for i in low])))
                 for a, b in zip(level[::2], level[1::2], strict=True)]
    v = level[0]
    while width > 1:  # the last vector's groups, each added up within itself
        groups, width = 16 // width, width // 2
        low = [g * 2 * width + j for g in range(groups) for j in range(width)]
        lanes = ir.VectorType(i32, len(low))
        v = add(builder.shuffle_vector(v, v, ir.Constant(lanes, low)),
                builder.shuffle_vector(v, v, ir.Constant(lanes, [i + width for i in low])))
    return v


def sums_of_lanes(builder, vectors):
    """``sum_across``'s sums one by one: a 4x4 tile's 16 sums in 31 shuffle-and-add pairs where one
    vector at a time took 64 (a tile of 124M's head 1.04x faster, the 320-wide bundled model's
    1.1x)."""
    v = sum_across(builder, vectors)
    return [builder.extract_element(v, ir.Constant(ir.IntType(32), i)) for i in range(len(vectors))]


def prefetch_l2(builder, address) -> None:
    """Ask for the cache line at ``address`` (any pointer) to be read into the L2 cache, not L1
    (locality 2, prefetcht1): the kernels prefetch kilobytes ahead of where they read, and lines
    fetched that far into L1 pushed out the ones in use (a few-rows product of 124M 1.45x slower,
    the attention over a long cache 1.1-1.2x, on an AMD EPYC)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    prefetch = _declare(builder, "llvm.prefetch.p0", ir.VoidType(), (i8p, i32, i32, i32))  # (address, read,
    builder.call(prefetch, [builder.bitcast(address, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2),  # locality,
                            ir.Constant(i32, 1)])  # data)


def in_order(builder) -> None:
    """A fence for the compiler only: LLVM may not move a memory access across it (an empty
    statement of assembly that says it touches memory; no instruction comes of it). Where a kernel
    reads a run of rows side by side (the attention's 16 keys), LLVM interleaves their loads to hide
    their arithmetic's latency: the first line of every row, then the second... A fence after each
    row keeps the reads in the order of memory, which the CPU's prefetchers stream faster: the
    attention over 800 positions read from memory took 0.86x the time in float32, 0.93x in bfloat16
    (AMD EPYC; a plain sum over the cache read in each order: 22 and 28 GB/s)."""
    statement = ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}", side_effect=True)
    builder.call(statement, [])


def _rows(builder, data, first, count, n_in):
    """Pointers to rows first, first + 1, ... of a C-contiguous (rows, n_in) array's data."""
    return [builder.gep(data, [builder.mul(builder.add(first, ir.Constant(first.type, i)), n_in)])
            for i in range(count)]


def not_zero(value) -> bool:
    """Whether an LLVM value may be other than 0 (any value not the constant 0)."""
    return not (isinstance(value, ir.Constant) and value.constant == 0)


def _dots(builder, w_rows, x_rows, n_in, step, ahead=0, every_line=True):
    """The dot products of every weight row in w_rows with every row in x_rows (n_in values each,
    n_in a multiple of 32), 32 products a step per pair into 16 sums each, each weight and input
    vector loaded once a step for all the pairs: ``step(builder, w, x_at, acc)`` is one such step
    (w the loaded weights, x_at a pointer to the 32 inputs). With ``ahead``, the weights that many
    values on are prefetched: each cache line of them (``step.line`` values), or with
    ``every_line=False`` one line a step. Returns the sums as [weight row][input row]."""
    zero = step.zero
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(zero, None)) for _ in x_rows] for _ in w_rows]
    ahead = ir.Constant(n_in.type, ahead) if isinstance(ahead, int) else ahead
    with cgutils.for_range(builder, builder.udiv(n_in, ir.Constant(n_in.type, 32))) as loop:
        at = builder.mul(loop.index, ir.Constant(n_in.type, 32))
        for w_row, row_accs in zip(w_rows, accs, strict=True):
            for line in range(0, 32, step.line if every_line else 32) if not_zero(ahead) else ():
                later = builder.add(at, builder.add(ahead, ir.Constant(at.type, line)))
                prefetch_l2(builder, builder.gep(w_row, [later]))
            w = step.weights(builder, builder.gep(w_row, [at]))
            for acc, row in zip(row_accs, x_rows, strict=True):
                builder.store(step(builder, w, builder.gep(row, [at]), builder.load(acc)), acc)
    sums = sums_of_lanes(builder, [builder.load(acc) for row_accs in accs for acc in row_accs])
    return [sums[i * len(x_rows):(i + 1) * len(x_rows)] for i in range(len(w_rows))]


class _BF16Step:
    """32 bfloat16 weights times 32 bfloat16 inputs into 16 float32 sums: ``vdpbf16ps``."""

    zero, line = SUMS, 32  # (values in a 64-byte cache line)

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

    zero, line = ir.VectorType(ir.IntType(32), 16), 64

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

    zero, line = SUMS, 16

    @staticmethod
    def load(builder, at):
        """The 32 float32 values at ``at`` as two vectors (weights and inputs alike)."""
        return [builder.load(builder.bitcast(builder.gep(at, [ir.Constant(ir.IntType(64), i)]), SUMS.as_pointer()),
                             align=4) for i in (0, 16)]

    weights = load

    def __call__(self, builder, w, x_at, acc):
        fma = _declare(builder, "llvm.fma.v16f32", SUMS, (SUMS, SUMS, SUMS))
        x = self.load(builder, x_at)
        return builder.call(fma, [w[1], x[1], builder.call(fma, [w[0], x[0], acc])])


TILE = 4  # the few-rows kernel's tile: four weight rows by four input rows, sixteen sums side by side
AHEAD = 4096  # how many weights ahead the kernels prefetch (16 KB of float32, 8 of bfloat16, 4 of int8, 2 of int4)
TILE_AHEAD = 8192  # the tiles: at least this many, a whole number of tiles (all four weight streams ahead)


def _one_row(step, ahead, about):
    """An intrinsic (w, n, x) -> w[n] . x for (N, K) weights and one row x (K,), K a multiple of 32,
    a step's 32 products into 16 float32 sums, added up at the end; the weights ``ahead`` values on
    prefetched, one cache line a step (0: none, the CPU's own prefetcher keeps up). For float32,
    one line of the two a step reads: prefetching both took 1.43x the time (124M's products, AMD
    EPYC); the CPU's own prefetcher fetches the other."""
    def dot(typingctx, w, n, x):
        def codegen(context, builder, signature, args):
            w_arr = context.make_array(signature.args[0])(context, builder, args[0])
            x_arr = context.make_array(signature.args[2])(context, builder, args[2])
            n_in = builder.extract_value(w_arr.shape, 1)
            row = _rows(builder, w_arr.data, args[1], 1, n_in)
            return _dots(builder, row, [x_arr.data], n_in, step, ahead=ahead, every_line=False)[0][0]
        return types.float32(w, n, x), codegen
    dot.__doc__ = about
    return extending.intrinsic(dot)


_dot_bf16 = _one_row(_BF16Step(), 0, """bfloat16 bits w and xb in AVX-512 BF16's dot-product instruction
    (vdpbf16ps): the weights go from memory into the instruction with nothing to widen them first.""")
_dot_f32 = _one_row(_F32Step(), AHEAD, """float32 w and x, two vector multiply-adds a step; the prefetch
    into L2 reads a float32 matrix 1.1x faster than the plain loop numba vectorizes (124M's
    products 17.3 -> 15.5 ms, 32 GB/s, this machine's read bandwidth; AMD EPYC).""")


def _tile(step, result, about):
    """An intrinsic (w, n, x, m) -> w[n .. n + 3] each with x[m .. m + 3]: ``TILE`` weight rows by
    ``TILE`` input rows, 16 sums (w[n]'s first), each weight vector loaded once for the four input
    rows and each input vector once for the four weight rows ((N, K) and (M, K) C-contiguous, K a
    multiple of 32; weight rows past the last are read as the last, their sums unused).

    Each weight row prefetches its own stream a whole number of tiles ahead (at least
    ``TILE_AHEAD`` values), so every line is asked for once, by the stream that will read it.
    Against one weight row by eight input rows (9 vector loads for 8 products), two by eight and
    two by four, on 124M's shapes for 8 rows (AMD EPYC, one process, in turn), four by four was
    as fast or faster on every shape and form: in cache, bfloat16 150 -> 194 G multiply-adds a
    second on c_attn and 92 -> 187 on the MLP's projection, int8 117 -> 192, float32 47 -> 83;
    12 layers' products streamed from memory, bfloat16 6.7 -> 5.7 ms, int8 4.8 -> 4.0, float32
    12.0 -> 9.6. The sums are the same, bit for bit."""
    def tile(typingctx, w, n, x, m):
        def codegen(context, builder, signature, args):
            w_arr = context.make_array(signature.args[0])(context, builder, args[0])
            x_arr = context.make_array(signature.args[2])(context, builder, args[2])
            n_in = builder.extract_value(w_arr.shape, 1)
            one = ir.Constant(n_in.type, 1)
            last = builder.sub(builder.extract_value(w_arr.shape, 0), one)
            rows = [builder.add(args[1], ir.Constant(n_in.type, i)) for i in range(TILE)]
            rows = [builder.select(builder.icmp_signed("<", r, last), r, last) for r in rows]
            span = builder.mul(n_in, ir.Constant(n_in.type, TILE))  # values in a tile's weight rows
            tiles = builder.udiv(builder.add(ir.Constant(n_in.type, TILE_AHEAD), builder.sub(span, one)), span)
            dots = _dots(builder, [_rows(builder, w_arr.data, r, 1, n_in)[0] for r in rows],
                         _rows(builder, x_arr.data, args[3], TILE, n_in), n_in, step, ahead=builder.mul(tiles, span))
            return context.make_tuple(builder, signature.return_type, [s for row in dots for s in row])
        return types.UniTuple(result, TILE * TILE)(w, n, x, m), codegen
    tile.__doc__ = about
    return extending.intrinsic(tile)


_tile_bf16 = _tile(_BF16Step(), types.float32, """bfloat16 bits w and x. Several dot products per
    weight vector keep the CPU busy long enough that its own prefetcher falls behind the weights'
    stream from memory, hence the prefetch: 1.3-1.6x faster on 124M's products for 8 rows into L1,
    and 1.45x faster again into L2 only (prefetcht1: lines that far ahead, fetched into L1, pushed
    out the input rows and the weights in use; 124M's 8-row products 16.2 -> 9.9 ms, one row 7.6,
    AMD EPYC, measured with the tile of one weight row by eight input rows).""")
_tile_int8 = _tile(_Int8Step(), types.int32, """int8 weights w, int16 inputs x: the exact int32 sums.""")
_tile_f32 = _tile(_F32Step(), types.float32, """float32 w and x.""")

"""One new token's attention over the KV cache on a CPU, compiled by numba (fused.py's step calls it).

Per row b and head h, with the new key and value first written at ``pos``:

    scores = q K^T / sqrt(hs)      weights = softmax(scores)      out = weights V

over the keys 0..pos. Both passes read the whole cache of the head, so at long context they are
most of what a token costs beyond the products. Written as plain loops (other head sizes), each
key's score ends in a sum across the 16 lanes of a vector and each value's products go through
an array in memory: LLVM's code then spends ~20 cycles a key, far from what the cache's bytes
cost. For heads of 64 values (every GPT-2 size) the two passes are written in LLVM IR instead:

- ``_key_scores``: 16 keys at a time, each key's 64 products in 4 vectors, the 16 keys' sums
  then added across lanes together (``intrinsics.sum_across``: 15 shuffle-and-add steps for 16 keys);
- ``_weighted_values``: the 64 output values held in 4 vectors (two sets, for even and odd keys,
  so that the additions do not wait on each other), each value row loaded once.

Both read the cache in memory's order, a key or value row after the other (``intrinsics.in_order``).

The cache is float32, bfloat16 bits (the top half of a float32: widened by a shift), int8 codes
(``--dtype int8`` and ``auto``) or int4 codes two a byte (``--dtype int4``), the codes with a
float32 scale per position and head: at 800 tokens the attention reads the cache's bytes as fast
as memory delivers them, so its size is what a long context costs.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import extending, prange, types
from numba.core import cgutils

from chatgpt_cli.compiled import kernel
from chatgpt_cli.intrinsics import PERMUTE, _declare, _sum_lanes, in_order, prefetch_l2, sum_across
from chatgpt_cli.kernels import exp_approx, jit
from chatgpt_cli.kernels_cache import cached, position_scale, store

HEAD = 64  # the head size the LLVM IR passes are written for (GPT-2's, at every size)
LANES = 16  # float32 values in an AVX-512 vector
VEC, INDEX = ir.VectorType(ir.FloatType(), LANES), ir.IntType(64)
WORDS = ir.VectorType(ir.IntType(32), LANES)
FORMS = {types.uint16: "bf16", types.int8: "int8", types.uint8: "int4"}  # by the cache's dtype; else "f32"


def _cache_at(context, builder, signature, args):
    """For (cache, scales, b, h, ...): a function t -> a pointer to cache[b, h, t, 0] and the cache's form."""
    cache = context.make_array(signature.args[0])(context, builder, args[0])
    head = _positions_of(builder, cache, args[2], args[3])
    form = FORMS.get(signature.args[0].dtype, "f32")
    row = ir.Constant(INDEX, HEAD // 2 if form == "int4" else HEAD)  # elements a position

    def at(t):
        return builder.gep(cache.data, [builder.mul(builder.add(head, t), row)])
    return at, form


def _positions_of(builder, array, b, h):
    """The index of position 0 of row b, head h in an array (B, nh, max_len, ...): (b * nh + h) * max_len."""
    n_head, max_len = (builder.extract_value(array.shape, i) for i in (1, 2))
    return builder.mul(builder.add(builder.mul(b, n_head), h), max_len)


def _splat(value: int):
    return ir.Constant(WORDS, [value] * LANES)


def _load16(builder, at, form: str):
    """16 cached values from ``at`` as float32: bfloat16 bits are shifted into a float32's top half,
    int8 codes converted (their scale is applied by the caller, once per key)."""
    if form == "f32":
        return builder.load(builder.bitcast(at, VEC.as_pointer()), align=4)
    if form == "int8":
        codes = builder.load(builder.bitcast(at, ir.VectorType(ir.IntType(8), LANES).as_pointer()), align=1)
        return builder.sitofp(codes, VEC)
    words = builder.load(builder.bitcast(at, ir.VectorType(ir.IntType(16), LANES).as_pointer()), align=2)
    return builder.bitcast(builder.shl(builder.zext(words, WORDS), _splat(16)), VEC)


def _load_row(builder, at, form: str) -> list:
    """One position's 64 cached values from ``at`` as four float32 vectors (values 0-15, 16-31,
    32-47, 48-63). int4: the row's 32 bytes hold values 0-31 in their low nibbles and 32-63 in
    their high ones, each code c stored as c + 8 (0-15); two loads of 16 bytes give all four, each
    byte widened to a 32-bit lane. With AVX-512 a nibble becomes its code as a float in one
    instruction, ``vpermps`` looking it up in a table of the 16 codes (the instruction reads only an
    index's low 4 bits, so the low nibble needs no mask): the attention over 800 int4 positions took
    0.78x the time of masking, subtracting 8 and converting (hot in cache, in one process in turn)."""
    if form != "int4":
        return [_load16(builder, _offset(builder, at, LANES * i), form) for i in range(HEAD // LANES)]
    bytes16 = ir.VectorType(ir.IntType(8), LANES).as_pointer()
    halves = [builder.zext(builder.load(builder.bitcast(_offset(builder, at, LANES * i), bytes16), align=1), WORDS)
              for i in range(2)]  # bytes 0-15, 16-31
    high = [builder.lshr(w, _splat(4)) for w in halves]
    if PERMUTE:
        lookup = _declare(builder, "llvm.x86.avx512.permvar.sf.512", VEC, (VEC, WORDS))
        codes = ir.Constant(VEC, [float(c - 8) for c in range(16)])
        return [builder.call(lookup, [codes, n]) for n in halves + high]
    low = [builder.and_(w, _splat(15)) for w in halves]
    return [builder.sitofp(builder.sub(n, _splat(8)), VEC) for n in low + high]


def _offset(builder, at, i: int):
    return builder.gep(at, [ir.Constant(INDEX, i)])


def _head_at(context, builder, array_type, array, b, h):
    """A pointer to array[b, h, 0] of a (B, nh, 64) float32 array (a query, an output)."""
    arr = context.make_array(array_type)(context, builder, array)
    n_head = builder.extract_value(arr.shape, 1)
    return builder.gep(arr.data, [builder.mul(builder.add(builder.mul(b, n_head), h), ir.Constant(INDEX, HEAD))])


AHEAD = {"f32": 32, "bf16": 64, "int8": 64, "int4": 128}  # positions ahead whose lines are prefetched: 8, 8, 4, 4 KB
LINE = {"f32": 16, "bf16": 32, "int8": 64, "int4": 128}  # values of each form in a 64-byte cache line


def _prefetch(builder, at, t, form: str):
    """Ask for the cache lines of position t + AHEAD: the cache is read a head at a time, one stream
    per thread, and the CPU's own prefetcher keeps too few lines in flight to read it at memory's pace
    (into L2: with lines prefetched into L1, the attention at 800 positions took 1.1-1.2x the time)."""
    later = at(builder.add(t, ir.Constant(INDEX, AHEAD[form])))
    for i in range(0, HEAD, LINE[form]):
        prefetch_l2(builder, _offset(builder, later, i))


def _dot_key(builder, fma, q, at, form):
    """16 partial sums of q . key (the key's 64 values from ``at``), in one vector; the key's reads
    come before the next key's (``in_order``)."""
    key = _load_row(builder, at, form)
    acc = builder.fmul(q[0], key[0])
    for i in range(1, HEAD // LANES):
        acc = builder.call(fma, [q[i], key[i], acc])
    in_order(builder)
    return acc


def _position_scales(context, builder, signature, args, form):
    """For (cache, scales, b, h, ...): a function t -> a pointer to scales[b, h, t] (codes' forms; None otherwise)."""
    if form not in ("int8", "int4"):
        return None
    scales = context.make_array(signature.args[1])(context, builder, args[1])
    head = _positions_of(builder, scales, args[2], args[3])
    return lambda t: builder.gep(scales.data, [builder.add(head, t)])


def _scaled(builder, value, scale_at, t, factor):
    """value * scales[b, h, t] (codes' forms) * factor, for 16 positions from t (a vector) or one."""
    if scale_at is not None:
        at = scale_at(t)
        scale = builder.load(builder.bitcast(at, VEC.as_pointer()), align=4) if value.type == VEC else builder.load(at)
        value = builder.fmul(value, scale)
    return builder.fmul(value, factor)


@extending.intrinsic
def _key_scores(typingctx, cache, scales, b, h, n, q, factor, scores):
    """scores[t] = q[b, h] . cache[b, h, t] * scales[b, h, t] (codes' forms) * factor for t < n, and
    returns their maximum (NaN if one is NaN, as numpy's): cache (B, nh, max_len, 64) float32,
    bfloat16 bits or int8 codes (int4: (B, nh, max_len, 32) bytes), scales (B, nh, max_len) float32,
    q (B, nh, 64) float32, scores (>= n,) float32; 16 keys a step, the rest one at a time. The
    scaling and the maximum come with the keys' pass: as passes of their own over the scores they
    cost 0.8 us a head at 800 positions (the maximum a scalar loop), 60 us a 124M token."""
    def codegen(context, builder, signature, args):
        at, form = _cache_at(context, builder, signature, args)
        scale_at = _position_scales(context, builder, signature, args, form)
        fma = _declare(builder, "llvm.fma.v16f32", VEC, (VEC, VEC, VEC))
        top16 = _declare(builder, "llvm.maximum.v16f32", VEC, (VEC, VEC))
        top1 = _declare(builder, "llvm.maximum.f32", ir.FloatType(), (ir.FloatType(), ir.FloatType()))
        q_at = _head_at(context, builder, signature.args[5], args[5], args[2], args[3])
        q = [_load16(builder, _offset(builder, q_at, LANES * i), "f32") for i in range(HEAD // LANES)]
        factor = args[6]
        spread = builder.shuffle_vector(builder.insert_element(ir.Constant(VEC, None), factor, ir.Constant(INDEX, 0)),
                                        ir.Constant(VEC, None), ir.Constant(WORDS, [0] * LANES))
        out = context.make_array(signature.args[7])(context, builder, args[7]).data
        top = cgutils.alloca_once_value(builder, ir.Constant(VEC, [float("-inf")] * LANES))
        blocks = builder.udiv(args[4], ir.Constant(INDEX, LANES))
        with cgutils.for_range(builder, blocks) as loop:
            first = builder.mul(loop.index, ir.Constant(INDEX, LANES))
            for j in range(LANES):
                _prefetch(builder, at, builder.add(first, ir.Constant(INDEX, j)), form)
            dots = [_dot_key(builder, fma, q, at(builder.add(first, ir.Constant(INDEX, j))), form)
                    for j in range(LANES)]
            sixteen = _scaled(builder, sum_across(builder, dots), scale_at, first, spread)
            builder.store(sixteen, builder.bitcast(builder.gep(out, [first]), VEC.as_pointer()), align=4)
            builder.store(builder.call(top16, [builder.load(top), sixteen]), top)
        most = _largest_lane(builder, builder.load(top), top1)
        best = cgutils.alloca_once_value(builder, most)
        done = builder.mul(blocks, ir.Constant(INDEX, LANES))
        with cgutils.for_range(builder, builder.sub(args[4], done)) as loop:
            t = builder.add(done, loop.index)
            one = _scaled(builder, _sum_lanes(builder, _dot_key(builder, fma, q, at(t), form)), scale_at, t, factor)
            builder.store(one, builder.gep(out, [t]))
            builder.store(builder.call(top1, [builder.load(best), one]), best)
        return builder.load(best)
    return types.float32(cache, scales, b, h, n, q, types.float32, scores), codegen


def _largest_lane(builder, v, maximum):
    """The largest of v's 16 lanes (NaN if one is NaN)."""
    most = builder.extract_element(v, ir.Constant(INDEX, 0))
    for i in range(1, LANES):
        most = builder.call(maximum, [most, builder.extract_element(v, ir.Constant(INDEX, i))])
    return most


@extending.intrinsic
def _weighted_values(typingctx, cache, scales, b, h, n, weights, factor, out):
    """out[b, h] = sum over t < n of weights[t] * scales[b, h, t] (codes' forms) * factor *
    cache[b, h, t]: cache (B, nh, max_len, 64) float32, bfloat16 bits or int8 codes (int4: (B, nh,
    max_len, 32) bytes), scales (B, nh, max_len), weights (>= n,) float32, out (B, nh, 64) float32."""
    def codegen(context, builder, signature, args):
        at, form = _cache_at(context, builder, signature, args)
        scale_at = _position_scales(context, builder, signature, args, form)
        fma = _declare(builder, "llvm.fma.v16f32", VEC, (VEC, VEC, VEC))
        w = context.make_array(signature.args[5])(context, builder, args[5]).data
        out_at = _head_at(context, builder, signature.args[7], args[7], args[2], args[3])
        parts = HEAD // LANES
        sets = [[cgutils.alloca_once_value(builder, ir.Constant(VEC, None)) for _ in range(parts)] for _ in range(2)]

        def add_value(accs, t):  # accs += weights[t] * scale * factor * cache[b, h, t]
            _prefetch(builder, at, t, form)
            weight = _scaled(builder, builder.load(builder.gep(w, [t])), scale_at, t, args[6])
            one = builder.insert_element(ir.Constant(VEC, None), weight, ir.Constant(INDEX, 0))
            spread = builder.shuffle_vector(one, ir.Constant(VEC, None), ir.Constant(WORDS, [0] * LANES))
            for acc, value in zip(accs, _load_row(builder, at(t), form), strict=True):
                builder.store(builder.call(fma, [spread, value, builder.load(acc)]), acc)
            in_order(builder)  # this position's reads before the next one's

        pairs = builder.udiv(args[4], ir.Constant(INDEX, 2))
        with cgutils.for_range(builder, pairs) as loop:
            t = builder.mul(loop.index, ir.Constant(INDEX, 2))
            add_value(sets[0], t)
            add_value(sets[1], builder.add(t, ir.Constant(INDEX, 1)))
        with builder.if_then(builder.icmp_unsigned("!=", builder.mul(pairs, ir.Constant(INDEX, 2)), args[4])):
            add_value(sets[0], builder.sub(args[4], ir.Constant(INDEX, 1)))
        for i in range(parts):
            total = builder.fadd(builder.load(sets[0][i]), builder.load(sets[1][i]))
            builder.store(total, builder.bitcast(_offset(builder, out_at, LANES * i), VEC.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(cache, scales, b, h, n, weights, types.float32, out), codegen


@kernel(inline="always", fastmath=True)
def exponentials(scores, top):
    """scores (n,) -> e^(scores - top) in place; returns their sum (softmax's weights are these over
    it, which the values' pass applies). A loop that vectorizes (kernels.exp_approx: 16 at a time,
    against one call of the C library's expf per key)."""
    total = np.float32(0.0)
    for t in range(scores.shape[0]):
        e = exp_approx(scores[t] - top)
        scores[t] = e
        total += e
    return total


@jit
def attend(q, k_new, v_new, k_cache, v_cache, k_scale, v_scale, pos, out):
    """One new token's attention; its key and value are first written at ``pos`` in the cache.

    q, k_new, v_new, out (B, nh, hs) float32; k_cache, v_cache (B, nh, max_len, hs), float32,
    bfloat16 bits (half the bytes to read per token), int8 codes (a quarter) or int4 codes ((B, nh,
    max_len, hs/2) bytes: an eighth) whose scales per position are k_scale, v_scale (B, nh, max_len)
    (unused otherwise). Per row and head:
    out = softmax(q K^T / sqrt(hs)) V over the keys 0..pos.
    """
    rows, n_head, hs = q.shape
    factor = np.float32(1.0 / math.sqrt(hs))
    for bh in prange(rows * n_head):
        b, h = bh // n_head, bh % n_head
        store(k_cache, k_scale, b, h, pos, k_new)
        store(v_cache, v_scale, b, h, pos, v_new)
        scores = np.empty(pos + 1, dtype=np.float32)  # q . key_t / sqrt(hs), each key's scale applied
        if hs == HEAD:
            top = _key_scores(k_cache, k_scale, b, h, pos + 1, q, factor, scores)
        else:
            top = np.float32(-np.inf)
            for t in range(pos + 1):
                acc = np.float32(0.0)
                for d in range(hs):
                    acc += q[b, h, d] * cached(k_cache, b, h, t, d)
                scores[t] = acc * position_scale(k_cache, k_scale, b, h, t) * factor
                top = np.maximum(top, scores[t])  # NaN if one is NaN
        weights = scores
        inverse = np.float32(1.0) / exponentials(weights, top)  # softmax: these over their sum
        if hs == HEAD:
            _weighted_values(v_cache, v_scale, b, h, pos + 1, weights, inverse, out)
        else:
            acc_v = np.zeros(hs, dtype=np.float32)
            for t in range(pos + 1):
                weight = weights[t] * position_scale(v_cache, v_scale, b, h, t) * inverse
                for d in range(hs):
                    acc_v[d] += weight * cached(v_cache, b, h, t, d)
            out[b, h] = acc_v

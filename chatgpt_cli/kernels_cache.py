"""The KV cache's forms in numba: how the attention (kernels_attend.py) writes a new key or value
into the cache and reads one value or one position's scale back, for every form kvcache.py keeps:
float32, bfloat16 bits, int8 codes, int4 codes two a byte (uint8), the codes with a float32 scale
per position and head. Each is an overload chosen by the cache's dtype when the kernel compiles.
"""

from __future__ import annotations

import numpy as np
from numba import extending, types

from chatgpt_cli import kvcache
from chatgpt_cli.compiled import kernel
from chatgpt_cli.kernels import stored, widen

LIMIT = {getattr(types, str(t).removeprefix("torch.")): limit for t, limit in kvcache.LIMIT.items()}  # numba's names


def store(cache, scales, b, h, pos, new):
    """Write new[b, h] (hs,) float32 into cache[b, h, pos]: as float32, as bfloat16 bits, or as codes
    c = round(value / scale) with scales[b, h, pos] = max |value| / limit (int8: limit 127; int4:
    7, c + 8 stored in a nibble, value d of the first half in byte d's low nibble, of the second in
    byte d - hs/2's high one), as kvcache.quantize_vectors and pack_nibbles compute them, to the bit."""


@kernel(inline="always")
def _code(value, inverse, limit):
    return min(max(round(value * inverse), -limit), limit)


@extending.overload(store)
def _store(cache, scales, b, h, pos, new):
    if cache.dtype in LIMIT:
        limit, nibbles = LIMIT[cache.dtype], cache.dtype == types.uint8

        def quantized(cache, scales, b, h, pos, new):
            top = np.float32(0.0)
            for d in range(new.shape[2]):
                top = max(top, abs(new[b, h, d]))
            scale = np.float32(1.0)  # a vector of zeros keeps a harmless scale
            if top > 0:
                scale = top * np.float32(1.0 / limit)
            inverse = np.float32(1.0) / scale
            scales[b, h, pos] = scale
            if nibbles:
                half = cache.shape[3]
                for d in range(half):
                    low, high = _code(new[b, h, d], inverse, limit), _code(new[b, h, half + d], inverse, limit)
                    cache[b, h, pos, d] = np.uint8((low + 8) | ((high + 8) << 4))
            else:
                for d in range(new.shape[2]):
                    cache[b, h, pos, d] = np.int8(_code(new[b, h, d], inverse, limit))
        return quantized

    def plain(cache, scales, b, h, pos, new):
        for d in range(new.shape[2]):
            cache[b, h, pos, d] = stored(new[b, h, d], cache)
    return plain


def cached(cache, b, h, t, d):
    """Value d of cache[b, h, t] as float32 (int8 and int4: its code, unscaled)."""


@extending.overload(cached, inline="always")
def _cached(cache, b, h, t, d):
    if cache.dtype == types.uint8:
        def nibble(cache, b, h, t, d):
            half = cache.shape[3]
            byte = np.int32(cache[b, h, t, d % half])
            return np.float32(((byte >> (4 * (d // half))) & 15) - 8)  # the second half: the high nibble
        return nibble
    return lambda cache, b, h, t, d: widen(cache[b, h, t, d])


def position_scale(cache, scales, b, h, t):
    """scales[b, h, t] for int8 and int4 codes, 1 for other forms (whose scales array is empty)."""


@extending.overload(position_scale, inline="always")
def _position_scale(cache, scales, b, h, t):
    if cache.dtype in LIMIT:
        return lambda cache, scales, b, h, t: scales[b, h, t]
    return lambda cache, scales, b, h, t: np.float32(1.0)

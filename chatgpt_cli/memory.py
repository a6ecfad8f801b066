"""Resident memory while loading: large temporary blocks go straight back to the OS.

Converting and packing weights allocates and frees many blocks of a few megabytes. glibc's malloc
serves blocks of that size from its heap once a few have been freed (its threshold adapts), and
the holes they leave stay resident: about 40 MB on GPT-2 small. While loading, blocks of 1 MB and
more are mapped and unmapped on their own; afterwards the thresholds go to what glibc adapts to
anyway (32 MB, trimming past 64 MB), so prefill reuses its large buffers as before.
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def _mallopt():
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


@contextmanager
def large_blocks_returned() -> Iterator[None]:
    mallopt = _mallopt()
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 64 << 20)

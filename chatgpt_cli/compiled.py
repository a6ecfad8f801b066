"""How the CPU kernels are compiled: numba's ``njit``, cached on disk, safe to interrupt.

Compiled code is cached under $XDG_CACHE_HOME/chatgpt-cli/numba, in a folder named by a hash of
the kernels' source files (``SOURCES``: numba checks only the file a cached function is in, so code
compiled against an older version of a kernel it calls would otherwise still be loaded), so only
the first run on a machine (or of a new version) compiles. Importing this module sets it
(numba.config.CACHE_DIR, and NUMBA_CACHE_DIR's root for the processes it starts).

``kernel`` is numba's ``njit`` with two of numba's faults closed:

- **A cache entry that is not what it says.** numba writes a new entry's index, then its data
  file, under a file number taken from the index as it read it: two first runs compiling a kernel
  for two signatures at once can both take number 1, and the index then names the other
  signature's machine code (a wrong result, or a crash in every later run until the cache is
  deleted by hand). Each entry now holds the key it was saved under (signature, CPU, bytecode); one
  whose key is not the one asked for is compiled again and saved over.
- **A Ctrl-C inside the compiler.** It left LLVM's objects half built: "free(): double free
  detected" and the process gone. Compiling holds SIGINT and SIGTERM (``interrupts_held``) and
  lets them in when the kernel is in; fused.py holds them over its decode step too.
"""

from __future__ import annotations

import _signal
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_DIR = os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatgpt-cli" / "numba"))
SOURCES = ("compiled.py", "kernels.py", "kernels_rows.py", "kernels_attend.py", "kernels_cache.py", "intrinsics.py",
           "intrinsics_int4.py", "fused.py")

import numba  # noqa: E402
from numba.core.caching import FunctionCache, IndexDataCacheFile  # noqa: E402


def source_hash() -> str:
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in SOURCES)).hexdigest()[:16]


numba.config.CACHE_DIR = str(Path(CACHE_DIR) / source_hash())  # also when numba was imported before this module

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM inside the block wait until the block is done, then arrive as the
    process's handlers take them (Ctrl-C: a KeyboardInterrupt). Blocks may nest: the outermost lets
    them in.

    A signal's Python handler runs wherever the main thread next runs Python code, and numba runs
    some in the middle of compiling and of a call into a kernel (it unpickles a typed list's class
    to unbox the list, an array's class to box a returned array): a KeyboardInterrupt raised in a
    call came out as "TypeError: can't unbox a List as a <NULL>", a traceback instead of a stopped
    reply (1 Ctrl-C in ~150 at a small model's tokens). Only Python handlers are held (an ignored or
    default signal does what it did), and only on the main thread: no other thread runs them.
    ``_signal`` is the C module ``signal`` wraps: without its enum conversions, holding costs ~1.5
    us, not ~15."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = [(s, _signal.signal(s, lambda number, frame: caught.append(number)))
            for s in HELD if callable(_signal.getsignal(s))]
    try:
        yield
    finally:
        for s, previous in held:
            _signal.signal(s, previous)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


class KeyedCacheFile(IndexDataCacheFile):
    """numba's index and data files, each data file holding the key (signature, CPU, bytecode) it
    was saved under; loading checks it."""

    def save(self, key, data) -> None:
        super().save(key, (key, data))

    def load(self, key):
        try:
            entry = super().load(key)
        except Exception:  # noqa: BLE001 (a damaged file, an older format: compiled again)
            return None
        if not (isinstance(entry, tuple) and len(entry) == 2 and entry[0] == key):
            return None  # another signature's code, or none: compiled again, and saved over it
        return entry[1]


class KeyedCache(FunctionCache):
    """numba's per-function disk cache over ``KeyedCacheFile``s."""

    def __init__(self, py_func: Callable) -> None:
        super().__init__(py_func)
        self._cache_file.__class__ = KeyedCacheFile


def kernel(**options) -> Callable[[Callable], numba.core.registry.CPUDispatcher]:
    """``numba.njit(cache=True, error_model="numpy", **options)`` (numpy's error model: NaN and inf
    flow on as in torch), its disk cache ``KeyedCache``, its compiling under ``interrupts_held``."""
    options = {"cache": True, "error_model": "numpy", **options}

    def decorate(func: Callable) -> numba.core.registry.CPUDispatcher:
        dispatcher = numba.njit(**options)(func)
        if options["cache"]:
            dispatcher._cache = KeyedCache(dispatcher.py_func)
        compile_ = dispatcher.compile  # numba calls it for each new signature, from Python or a caller

        def compile_held(sig):
            with interrupts_held():
                return compile_(sig)
        dispatcher.compile = compile_held
        return dispatcher
    return decorate

"""compiled.py: signals held while compiling and in a block, and a disk cache that checks its entries."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from numba import extending

from chatgpt_cli.compiled import interrupts_held, kernel


def test_a_sigint_in_a_held_block_arrives_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran on")
    assert done == ["the block ran on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_reaches_its_handler_after_the_outermost_block():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: got.append(number))
    try:
        with interrupts_held():
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)  # both wait; each arrives once
            assert got == []
            got.append("inner done")
        pytest.fail("no KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
    finally:
        handler = signal.signal(signal.SIGTERM, previous)
    assert got == ["inner done", signal.SIGTERM]
    assert callable(handler) and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with interrupts_held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def _poke():
    pass


@extending.overload(_poke)
def _poke_typed():
    os.kill(os.getpid(), signal.SIGINT)  # runs while numba compiles a caller: a Ctrl-C mid-compile
    return lambda: None


@kernel(cache=False)  # compiled in every run of the tests
def _poked(x):
    _poke()
    return x + 1


def test_a_ctrl_c_while_a_kernel_compiles_arrives_when_it_is_compiled():
    """A Ctrl-C inside numba's compiler left LLVM's objects half built (a double free): compiling holds
    it, and it arrives once the kernel is in; the kernel then runs."""
    with pytest.raises(KeyboardInterrupt):
        _poked(np.int64(1))
    assert len(_poked.signatures) == 1
    assert _poked(np.int64(1)) == 2


MODULE = """
from chatgpt_cli.compiled import kernel


@kernel()
def doubled_sum(x):
    return x.sum() * 2
"""

STEP = """
import sys
import numpy as np
from numba.core.caching import IndexDataCacheFile

sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "racing":  # the other process's save lands between this one's reading and writing
    IndexDataCacheFile._load_index = lambda self: {}  # the index as read before the other's save
    def overwritten(self, name, data):  # the other's data file, written after this one's
        raise SystemExit(3)
    IndexDataCacheFile._save_data = overwritten
import cached_module
x = np.arange(5, dtype=np.int64) if sys.argv[3] == "int" else np.array([1.5, 2.25, 3.0])
print(repr(float(cached_module.doubled_sum(x))))
"""


def test_a_cache_entry_for_another_signature_is_compiled_again(tmp_path):
    """numba writes a new entry's index, then its data, under a file number taken from the index as it
    read it: two first runs compiling a kernel for two signatures at once can both take number 1, and
    the index then names the other signature's code (loading it crashes every later run). Here
    the index says floats -> file 1 while file 1 holds the ints' code; the entry's key is checked on
    load and the kernel compiled again."""
    (tmp_path / "cached_module.py").write_text(MODULE)
    env = os.environ | {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}

    def step(mode, kind):
        return subprocess.run([sys.executable, "-c", STEP, str(tmp_path), mode, kind], env=env,
                              capture_output=True, text=True, timeout=300)

    assert step("run", "int").stdout.strip() == "20.0"  # the ints' code in file 1
    assert step("racing", "float").returncode == 3  # the index: floats -> file 1
    run = step("run", "float")
    assert run.returncode == 0 and run.stdout.strip() == "13.5", run.stderr[-2000:]
    assert step("run", "float").stdout.strip() == "13.5"  # saved over file 1
    assert step("run", "int").stdout.strip() == "20.0"  # compiled again, under a new number

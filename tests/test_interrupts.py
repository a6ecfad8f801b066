"""Signals at any moment of generation: only KeyboardInterrupt comes out, and the engine still works.

A Ctrl-C or SIGTERM landing while numba ran Python code inside a call into a kernel (unboxing the
fused step's typed list) came out as "TypeError: can't unbox a List as a <NULL>": a traceback and
exit status 1 instead of "interrupted" (CI caught it once in the chat's Ctrl-C test, once in the
SIGTERM one). interrupted.py generates in its own process while another hails signals at it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("interrupted.py")


@pytest.mark.parametrize(("dtype", "path"), [("float32", "fused"), ("bfloat16", "fused"), ("int8", "fused"),
                                             ("int4", "fused"), ("auto", "fused"), ("float32", "torch"),
                                             ("int8", "torch")])
def test_a_hail_of_signals_while_generating_raises_only_keyboard_interrupt(tiny_dir, dtype, path):
    run = subprocess.run([sys.executable, str(SCRIPT), str(tiny_dir), dtype, "2.5", *(["torch"] * (path == "torch"))],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert set(result["came_out"]) == {"KeyboardInterrupt"}, result["came_out"]
    assert result["came_out"]["KeyboardInterrupt"] > 200 and result["tokens"] > 20, result
    assert result["same_after"], "greedy output changed after the interrupts"
    if path == "fused" and dtype != "int4":  # int4's fused step needs AVX-512 BF16
        assert result["fused"]

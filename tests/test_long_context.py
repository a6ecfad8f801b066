"""benchmarks/long_context.py runs (its figures are timings, printed, not tested)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_long_context_script_times_both_positions(capsys):
    spec = importlib.util.spec_from_file_location("long_context", ROOT / "benchmarks" / "long_context.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["long_context"] = module
    spec.loader.exec_module(module)
    sys.argv = ["long_context.py", "--dtypes", "float32", "--tokens", "2"]
    module.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ")
    name, dtype, short, _, _, _, long, *_, ratio = lines[1].split()
    assert (name, dtype) == ("gpt2", "float32") and float(short) > 0 and float(long) > 0 and float(ratio) > 0

"""What -N costs: the wall time of N samples decoded as one batch against one sample.

    python benchmarks/samples_cost.py                      # the bundled model, auto precision
    python benchmarks/samples_cost.py --random gpt2 --dtypes auto,float32,int8,int4

For each model and precision: one prompt ("Once upon a time"), 64 new tokens per sample (past
end-of-text), `complete`'s default sampling (temperature 0.8, no top-k) and chat's (top-k 40,
top-p 0.95), best of --runs (the sizes taken in turn); prints the seconds for -N 1 (`complete`'s
streaming path, the one a single sample takes) and -N 8 (and 4, 16) and each ratio to -N 1. A
timing: run it on a quiet machine. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatgpt_cli.bench import cpu_name, random_model  # noqa: E402
from chatgpt_cli.completion import samples  # noqa: E402
from chatgpt_cli.generate import Engine  # noqa: E402
from chatgpt_cli.resources import shipped  # noqa: E402
from chatgpt_cli.sampling import SamplingOptions  # noqa: E402
from chatgpt_cli.tokenizer import Tokenizer  # noqa: E402
from chatgpt_cli.weights import load_model  # noqa: E402

SAMPLING = {"complete's default (t 0.8)": dict(temperature=0.8),
            "chat's (t 0.7, top-k 40, top-p 0.95)": dict(temperature=0.7, top_k=40, top_p=0.95)}


def cost(engine: Engine, ids: list[int], n: int, tokens: int, options: SamplingOptions, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        if n == 1:  # what `complete` runs for one sample: the streaming path
            for _ in engine.generate(ids, tokens, options, stop_at_eot=False):
                pass
        else:
            for _ in samples(engine, Tokenizer(), ids, options, n, tokens, ignore_eos=True):
                pass
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", help="random weights of a GPT-2 size (gpt2, gpt2-medium, ...), not the bundled model")
    ap.add_argument("--dtypes", default="auto")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", default="1,4,8,16")
    args = ap.parse_args()
    ns = [int(n) for n in args.n.split(",")]
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| model | precision | sampling | " + " | ".join(f"-N {n}" for n in ns) + " |")
    print("|---|---|---|" + "---|" * len(ns))
    ids = Tokenizer().encode("Once upon a time")
    for dtype in args.dtypes.split(","):
        if args.random:
            model, name = random_model(args.random, dtype), f"{args.random} (random weights)"
            precision = dtype
        else:
            loaded = load_model(shipped("weights"), dtype=dtype)
            model, name, precision = loaded.model, "bundled", loaded.precision
        engine = Engine(model)
        for label, settings in SAMPLING.items():
            options = SamplingOptions(seed=0, **settings)
            cost(engine, ids, max(ns), 4, options, 1)  # warm-up: kernels, oneDNN's packed weights
            seconds = {n: float("inf") for n in ns}
            for _ in range(args.runs):  # the sizes alternate: a machine whose speed drifts moves them alike
                for n in ns:
                    seconds[n] = min(seconds[n], cost(engine, ids, n, args.tokens, options, 1))
            cells = [f"{seconds[n]:.2f} s" + ("" if n == 1 else f" ({seconds[n] / seconds[1]:.2f}x)") for n in ns]
            print(f"| {name} | {precision} | {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

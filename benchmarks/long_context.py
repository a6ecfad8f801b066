"""What a long context costs a decoded token: decode after 800 positions over decode after 8.

    python benchmarks/long_context.py                                  # 124M, every CPU precision
    python benchmarks/long_context.py --random gpt2-medium --dtypes float32,int8 --tokens 100

One process per run, random weights, 800 positions in the KV cache (a prompt's prefill), then the
decode step timed at positions 8 + i and 800 + i in turn, token by token (i cycling through 24
positions): this VM's memory speed drifts by the minute, and taken in turn both positions see
the same minutes, where runs of one after the other can land on either side of a target. Prints
the median milliseconds a token at each and their ratio (tokens per second after 800 over after 8;
the project's target is at least 0.85). A timing: run it on a quiet machine. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatgpt_cli.bench import GPT2_SHAPES, cpu_name, random_model  # noqa: E402
from chatgpt_cli.generate import Engine, prefill  # noqa: E402


@torch.inference_mode()
def ratio(size: str, dtype: str, tokens: int, short: int = 8, long: int = 800) -> tuple[float, float]:
    """Median seconds of a decode step after ``short`` and after ``long`` positions, in turn."""
    torch.manual_seed(0)
    model = random_model(size, dtype)
    engine = Engine(model)
    ids = torch.randint(0, model.config.vocab_size, (long + 24,), generator=torch.Generator().manual_seed(0)).tolist()
    prefill(model, ids[:long], 0)
    times: dict[int, list[float]] = {short: [], long: []}
    for i in range(tokens):
        for start in (short, long):
            t0 = time.perf_counter()
            engine.decode(ids[i % 24], start + i % 24)
            times[start].append(time.perf_counter() - t0)
    return statistics.median(times[short]), statistics.median(times[long])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", default="gpt2", choices=list(GPT2_SHAPES), help="GPT-2 size (random weights)")
    ap.add_argument("--dtypes", default="float32,bfloat16,int8,int4,auto", help="precisions, comma-separated")
    ap.add_argument("--tokens", type=int, default=200, help="tokens timed at each position")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    for dtype in args.dtypes.split(","):
        t_short, t_long = ratio(args.random, dtype, args.tokens)
        print(f"{args.random} {dtype:8s} {t_short * 1e3:6.2f} ms after 8, {t_long * 1e3:6.2f} ms after 800: "
              f"ratio {t_short / t_long:.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Measuring the engine: prefill and decode speed, time to first token, load time, peak memory.

Benchmarks are measurements, not tests: run them on a quiet machine and compare ratios taken in
the same run (benchmarks/ holds the comparison with transformers).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from chatgpt_cli import hugepages
from chatgpt_cli.generate import Engine, prefill, sync
from chatgpt_cli.layers import Linear
from chatgpt_cli.model import GPT, GPTConfig
from chatgpt_cli.precision import Scheme, choose_scheme
from chatgpt_cli.sampling import SamplingOptions

# (n_layer, n_head, n_embd) of the four GPT-2 sizes; all have a 1024-token window.
GPT2_SHAPES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
               "gpt2-xl": (48, 25, 1600)}


def cpu_name() -> str:
    """The CPU's model name, for the benchmarks' figures (/proc/cpuinfo; else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_model(name: str, dtype: str | torch.dtype | Scheme = "float32", device: str | torch.device = "cpu") -> GPT:
    """A GPT-2 of that size with random weights (for measuring speed without a download), in a
    precision as ``--dtype`` names it (or its Scheme), as if loaded from a float32 file."""
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    scheme = dtype if isinstance(dtype, Scheme) else choose_scheme(dtype, torch.float32, device)
    n_layer, n_head, n_embd = GPT2_SHAPES[name]
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device=device, dtype=scheme.storage)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen) if p.dim() == 2 else p.fill_(1.0)
    model.eval().requires_grad_(False)
    return scheme.apply(model)


@dataclass(frozen=True)
class BenchResult:
    prefill_tokens: int
    prefill_tok_s: float
    decode_tok_s_short: float  # after an 8-token prompt
    decode_tok_s_long: float  # after a long prompt
    long_context: int
    time_to_first_token_s: float
    peak_memory_mb: float
    huge_pages: float | None = None  # the share of the streamed weights in 2 MB pages (None: unknown)

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def decode_rate(engine: Engine, prompt: list[int], n: int) -> float:
    greedy = SamplingOptions(temperature=0)
    engine.cached = []  # measure from a cold cache
    for _ in engine.generate(prompt, n + 1, greedy, stop_at_eot=False):  # the first comes from the prefill
        pass
    return engine.stats.decode_tok_s


@torch.inference_mode()
def measure(model: GPT, runs: int = 3, new_tokens: int = 32, prefill_len: int = 512,
            long_context: int = 800) -> BenchResult:
    """Median of several runs of each measurement, on random token ids."""
    device = model.transformer.wte.weight.device
    window = model.config.n_positions
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (window,), generator=gen).tolist()
    prefill_len = min(prefill_len, window - 1)
    long_context = max(8, min(long_context, window - new_tokens - 2))
    engine = Engine(model)
    decode_rate(engine, ids[:8], 4)  # warm up

    def timed(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    prefill_s = statistics.median(timed(lambda: prefill(model, ids[:prefill_len], 0)) for _ in range(runs))

    def first_token() -> None:
        engine.cached = []  # a cold cache: the whole prompt runs
        next(iter(engine.generate(ids[:8], 1, SamplingOptions(0))))

    ttft = statistics.median(timed(first_token) for _ in range(runs))
    # short and long runs alternate: a machine whose speed drifts moves both medians alike
    pairs = [(decode_rate(engine, ids[:8], new_tokens), decode_rate(engine, ids[:long_context], new_tokens))
             for _ in range(runs)]
    short, long = (statistics.median(rates) for rates in zip(*pairs, strict=True))
    return BenchResult(prefill_len, prefill_len / prefill_s, short, long, long_context, ttft, peak_memory_mb(device),
                       weights_in_huge_pages(model))


def weights_in_huge_pages(model: GPT) -> float | None:
    """The share of the weights the CPU decode step streams (each product's stored matrix) that
    lies in huge pages (hugepages.py); None where there are none or it cannot be read."""
    arrays = [m.arrays[0] for m in model.modules() if isinstance(m, Linear) and m.arrays]
    return hugepages.share((a.ctypes.data, a.nbytes) for a in arrays) if arrays else None

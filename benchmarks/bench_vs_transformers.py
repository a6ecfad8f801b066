"""chatgpt-cli against Hugging Face transformers on the same GPT-2-shaped weights, in one run.

    python benchmarks/bench_vs_transformers.py [--size gpt2] [--tokens 48] [--runs 3] [--device cuda]

Prints decode tok/s (after an 8-token and an 800-token prompt) and 512-token prefill tok/s for
both engines at float32 and bfloat16 (and ours at float16 and int8 on a CPU, float16 on a GPU),
with the ratios the performance issue asks about, and each decode speed as a fraction of the
memory-bandwidth bound (the device's read bandwidth, measured here, over the bytes of weights one
token reads). Both engines' decode rates are wall-clock, sampling included: (time for n tokens -
time for 1) / (n - 1), the device synchronised before each clock reading. Random weights (seeded):
speed does not depend on the values. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatgpt_cli.bench import GPT2_SHAPES, measure  # noqa: E402
from chatgpt_cli.generate import Engine, sync  # noqa: E402
from chatgpt_cli.sampling import SamplingOptions  # noqa: E402
from chatgpt_cli.weights import load_model  # noqa: E402

DEVICE = torch.device("cpu")


def hf_model(size: str, out: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd = GPT2_SHAPES[size]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).eval()
    model.save_pretrained(out)
    return model


def wall_rate(generate_k, n: int) -> float:
    """Decode tok/s of a generate(k tokens) call: (time for n tokens - time for 1) / (n - 1)."""

    def gen(k: int) -> float:
        sync(DEVICE)
        t0 = time.perf_counter()
        generate_k(k)
        sync(DEVICE)
        return time.perf_counter() - t0

    return (n - 1) / (gen(n) - gen(1))


@torch.inference_mode()
def hf_decode_rate(model, prompt: list[int], n: int) -> float:
    """Decode tok/s with transformers' generate."""
    x = torch.tensor([prompt], device=DEVICE)
    return wall_rate(lambda k: model.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                              pad_token_id=0), n)


def our_decode_rate(engine: Engine, prompt: list[int], n: int) -> float:
    """Decode tok/s of our engine, timed as transformers' is (a cold cache each run)."""

    def gen(k: int) -> None:
        engine.cached = []
        for _ in engine.generate(prompt, k, SamplingOptions(temperature=0), stop_at_eot=False):
            pass

    return wall_rate(gen, n)


@torch.inference_mode()
def hf_prefill_rate(model, ids: list[int], last_only: bool) -> float:
    x = torch.tensor([ids], device=DEVICE)
    sync(DEVICE)
    t0 = time.perf_counter()
    model(x, logits_to_keep=1) if last_only else model(x)
    sync(DEVICE)
    return len(ids) / (time.perf_counter() - t0)


def read_bandwidth() -> float:
    """Bytes per second the device streams from memory: the best of 5 passes over 1 GiB."""
    x = torch.ones(2**28, device=DEVICE)  # float32, 1 GiB: far bigger than any cache
    best = float("inf")
    for _ in range(5):
        sync(DEVICE)
        t0 = time.perf_counter()
        torch.dot(x, x)  # reads x once
        sync(DEVICE)
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="gpt2", choices=list(GPT2_SHAPES))
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}", flush=True)
    ours_dtypes = ("float32", "bfloat16", "float16") + (("int8",) if DEVICE.type == "cpu" else ())
    ids = torch.randint(0, 50257, (1024,), generator=torch.Generator().manual_seed(1)).tolist()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_model(args.size, Path(tmp))
        for dtype in ("float32", "bfloat16"):
            ref = hf.to(device=DEVICE, dtype=getattr(torch, dtype))
            hf_decode_rate(ref, ids[:8], 4)  # warm up
            rows[f"transformers {dtype}"] = (
                statistics.median(hf_decode_rate(ref, ids[:8], args.tokens) for _ in range(args.runs)),
                statistics.median(hf_decode_rate(ref, ids[:800], args.tokens) for _ in range(args.runs)),
                statistics.median(hf_prefill_rate(ref, ids[:512], False) for _ in range(args.runs)),
                statistics.median(hf_prefill_rate(ref, ids[:512], True) for _ in range(args.runs)))
            print(f"{'transformers ' + dtype:24s} done", flush=True)
        del hf, ref
        for dtype in ours_dtypes:
            loaded = load_model(tmp, dtype=dtype, device=args.device)
            engine = Engine(loaded.model)
            our_decode_rate(engine, ids[:8], 4)  # warm up
            r = measure(loaded.model, runs=args.runs, new_tokens=args.tokens)
            rows[f"chatgpt-cli {dtype}"] = (
                statistics.median(our_decode_rate(engine, ids[:8], args.tokens) for _ in range(args.runs)),
                statistics.median(our_decode_rate(engine, ids[:800], args.tokens) for _ in range(args.runs)),
                r.prefill_tok_s, None)
            print(f"{'chatgpt-cli ' + dtype:24s} done ({loaded.scheme.kernels}; bench's decode timing "
                  f"{r.decode_tok_s_short:.1f} / {r.decode_tok_s_long:.1f} tok/s)", flush=True)
            del loaded, engine
    bandwidth = read_bandwidth()
    n_layer, _, n_embd = GPT2_SHAPES[args.size]
    n_params = 50257 * n_embd + 1024 * n_embd + n_layer * 12 * n_embd * n_embd  # all a token reads, near enough
    base = rows["transformers float32"][0]
    print(f"\n{args.size} on {args.device}, batch 1; decode ratios are against transformers float32 decode "
          f"({base:.1f} tok/s); "
          f"memory read bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'engine':24s} {'decode@8':>9s} {'decode@800':>11s} {'ratio':>6s} {'of bound':>8s} {'long/short':>10s} "
          f"{'prefill512':>11s} {'(last only)':>11s}")
    for name, (short, long, pre, pre_last) in rows.items():
        last = f"{pre_last:11.0f}" if pre_last else f"{'':11s}"
        bound = bandwidth / (n_params * BYTES_PER_WEIGHT[name.split()[-1]])  # tok/s if weights streamed at full speed
        print(f"{name:24s} {short:9.1f} {long:11.1f} {short / base:5.2f}x {short / bound:8.0%} {long / short:10.2f} "
              f"{pre:11.0f} {last}")
    for dtype in ("float32", "bfloat16"):
        ours, theirs = rows[f"chatgpt-cli {dtype}"][2], rows[f"transformers {dtype}"]
        print(f"prefill {dtype}: chatgpt-cli / transformers = {ours / theirs[2]:.2f}x "
              f"(/ transformers computing only the last logits: {ours / theirs[3]:.2f}x)")


if __name__ == "__main__":
    main()

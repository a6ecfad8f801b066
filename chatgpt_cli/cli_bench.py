"""The `bench` command: speed and memory of a model, dtype and device (rendering only)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer

from chatgpt_cli.cli_options import DeviceOpt, DtypeOpt, ModelOpt
from chatgpt_cli.cli_plumbing import guarded, load, pages, write_out
from chatgpt_cli.errors import UsageError


def bench(
    model: ModelOpt = None,
    random: Annotated[Optional[str], typer.Option(help=(
        "Benchmark random weights of a GPT-2 size instead: gpt2, gpt2-medium, gpt2-large or gpt2-xl."))] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    runs: Annotated[int, typer.Option(help="Runs of each measurement (the median is shown).")] = 3,
    tokens: Annotated[int, typer.Option(help="Tokens decoded per run.")] = 32,
    prefill_len: Annotated[int, typer.Option("--prefill", help="Prompt length for the prefill measurement.")] = 512,
    threads: Annotated[Optional[int], typer.Option(help=(
        "CPU threads (default: torch's choice, one per physical core; OMP_NUM_THREADS works too)."))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Measure prefill and decode speed, time to first token, load time and peak memory."""
    with guarded():
        if runs < 1 or tokens < 1 or prefill_len < 1 or (threads is not None and threads < 1):
            raise UsageError("--runs, --tokens, --prefill and --threads must be >= 1")
        import torch

        if threads is not None:
            torch.set_num_threads(threads)

        from chatgpt_cli.bench import GPT2_SHAPES, measure, random_model
        from chatgpt_cli.precision import DTYPE_CHOICES, DTYPES, choose_scheme
        from chatgpt_cli.weights import resolve_device

        t0 = time.perf_counter()
        if random is not None:
            if random not in GPT2_SHAPES:
                raise UsageError(f"--random {random!r}: choose {', '.join(GPT2_SHAPES)}")
            if dtype not in DTYPES and dtype not in ("auto", "int8", "int4"):
                raise UsageError(f"--dtype {dtype!r}: choose {DTYPE_CHOICES}")
            dev = resolve_device(device)
            scheme = choose_scheme(dtype, torch.float32, dev)  # as if from a float32 file
            net = random_model(random, scheme, dev)
            name, what = f"random {random}", "random weights (no load)"
        else:
            loaded = load(model, dtype, device, verbose=False)
            net, dev, scheme = loaded.model, loaded.device, loaded.scheme
            name, what = ", ".join(map(str, loaded.files)), "load"
        dt = scheme.precision
        load_s = time.perf_counter() - t0
        result = measure(net, runs=runs, new_tokens=tokens, prefill_len=prefill_len)
        info = {"model": name, "dtype": dt, "kernels": scheme.kernels, "device": str(dev),
                "threads": torch.get_num_threads(),
                "load_s": round(load_s, 3), **result.as_dict()}
        if as_json:
            write_out(json.dumps(info) + "\n")
            return
        from chatgpt_cli.render import print_table

        rows = [("kernels", scheme.kernels), (f"{what} time", f"{load_s:.2f} s"),
                (f"prefill ({result.prefill_tokens} tokens)", f"{result.prefill_tok_s:.1f} tok/s"),
                ("decode after 8 tokens", f"{result.decode_tok_s_short:.1f} tok/s"),
                (f"decode after {result.long_context} tokens", f"{result.decode_tok_s_long:.1f} tok/s"),
                ("time to first token (8-token prompt)", f"{result.time_to_first_token_s * 1000:.1f} ms"),
                ("peak memory", f"{result.peak_memory_mb:.0f} MB")]
        if result.huge_pages is not None:
            rows.append(("weights in 2 MB pages", pages(result.huge_pages)))
        print_table(f"{name} · {dt} · {dev} · {info['threads']} threads · median of {runs}",
                    [("measure", "left"), ("value", "right")], rows)


def register(app: typer.Typer) -> None:
    app.command()(bench)

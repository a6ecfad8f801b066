"""chatgpt-cli against llama.cpp (llama-cpp-python) on the same GPT-2 weights, in one run.

    pip install '.[bench]'      # with CMAKE_ARGS="-DGGML_NATIVE=ON": builds llama.cpp for this CPU
    python benchmarks/bench_vs_llamacpp.py --random gpt2 [--threads N] [--json out.json]
    python benchmarks/bench_vs_llamacpp.py --model path/to/gpt2 [--dtypes float32,int8]

GGUF files are written from the same safetensors (f32, f16; q8_0 and q4_0 made from the f16 file
by llama.cpp's own quantizer), then llama.cpp's f32 logits are checked against ours in float32.
Each pair is then timed, same threads, median of --runs: decode tok/s after 8 prompt tokens and
after 800 (80% of a smaller window), and prefill tok/s of 512 tokens. Every engine and precision
runs in a subprocess of its own (llama.cpp's spinning thread pool would slow ours otherwise).
With --rounds R every pair is measured R times in turn (on a shared machine whose speed drifts by
minutes, one round can catch one engine slow): each figure is then the median over the rounds and
each ratio's range is shown beside it. Prints the machine, then a markdown table of ours /
llama.cpp = ratio. Not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_workers import BenchError  # noqa: E402

# ours --dtype -> the llama.cpp file it is compared with
PAIRS = {"float32": "f32", "bfloat16": "f16", "int8": "q8_0", "auto": "f16", "int4": "q4_0"}
QUANTIZED = ("q8_0", "q4_0")  # made by llama.cpp's quantizer from the f16 file
WORKER = ROOT / "benchmarks" / "bench_workers.py"
TINY = (2, 2, 128, 256)  # n_layer, n_head, n_embd, window: for a smoke run
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
PROMPT = "The quick brown fox jumps over the lazy dog. In 1905, Einstein published four papers that"
INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install ".[bench]" in the repository (llama.cpp builds for ~10 min)'


def run_worker(kind: str, spec: dict) -> dict:
    """Run a measurement in a fresh process (bench_workers.py), its threads set in the environment too."""
    threads = str(spec.get("threads", 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    proc = subprocess.run([sys.executable, str(WORKER), kind, json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"the {kind} worker failed ({spec.get('dtype') or spec.get('gguf', '')}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the machine -----------------------------------------------------------------------------

def machine() -> dict:
    """CPU model, the flags that matter here, versions and core count."""
    from importlib.metadata import PackageNotFoundError, version

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if not name or name == platform.machine():
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
            name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), name)
        except OSError:
            pass
    versions = {}
    for pkg in ("torch", "llama-cpp-python", "gguf", "numba"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": name, "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count(), "versions": versions}


def read_bandwidth_gbs(threads: int, mib: int = 1024) -> float:
    """GB/s this machine streams from memory: the best of 5 reads of a buffer far bigger than any cache."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**18)  # float32
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


# ---- files: the model, its GGUF forms, the faithfulness check -------------------------------

def write_random(size: str, out: Path, seed: int) -> Path:
    """GPT-2-shaped random weights as a float32 HF directory; biases and norms random too, so the
    faithfulness check sees every tensor."""
    import torch

    from chatgpt_cli.bench import GPT2_SHAPES
    from chatgpt_cli.model import GPT, GPTConfig, init_weights
    from chatgpt_cli.weights import save_model

    n_layer, n_head, n_embd, window = TINY if size == "tiny" else (*GPT2_SHAPES[size], 1024)
    model = init_weights(GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=window)), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return save_model(model, out)


def gguf_files(model: Path, work: Path, wanted: set[str], threads: int) -> tuple[dict[str, Path], int]:
    """Write the GGUF files the chosen rows need; (paths by type, the model's window)."""
    from gguf_gpt2 import read_checkpoint, write_gguf

    tensors, config = read_checkpoint(model)
    if config.vocab_size != 50257:
        raise BenchError(f"{model}: vocab_size {config.vocab_size}; only GPT-2's tokenizer (50257) is supported")
    paths = {}
    for kind in ("f32", "f16"):
        if kind in wanted or (kind == "f16" and wanted & set(QUANTIZED)):
            paths[kind] = write_gguf(tensors, config, work / f"model-{kind}.gguf", half=kind == "f16")
            print(f"wrote {paths[kind]} ({paths[kind].stat().st_size / 2**20:.0f} MiB)", flush=True)
    for kind in QUANTIZED:
        if kind in wanted:
            paths[kind] = work / f"model-{kind}.gguf"
            run_worker("quantize", {"src": str(paths["f16"]), "dst": str(paths[kind]), "type": kind,
                                    "threads": threads})
            print(f"wrote {paths[kind]} ({paths[kind].stat().st_size / 2**20:.0f} MiB, llama.cpp's quantizer: "
                  f"{tensor_types(paths[kind])})", flush=True)
    return paths, config.n_positions


def tensor_types(path: Path) -> str:
    """What the quantizer made of the blocks and of the unembedding (it keeps some in more bits)."""
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    head = types.get("output.weight", types["token_embd.weight"])
    return f"blocks {types['blk.0.ffn_up.weight']}, unembedding {head}"


def faithfulness(model: Path, f32: Path, work: Path, threads: int) -> tuple[float, float]:
    """Max |llama.cpp f32 logit - ours float32| over every position of a short prompt, and max |logit|."""
    import numpy as np
    import torch

    from chatgpt_cli.tokenizer import Tokenizer
    from chatgpt_cli.weights import load_model

    ids = Tokenizer().encode(PROMPT)
    out = work / "llama-logits.npy"
    run_worker("logits", {"gguf": str(f32), "ids": ids, "out": str(out), "threads": threads})
    theirs = np.load(out)
    net = load_model(model, dtype="float32", device="cpu").model
    with torch.inference_mode():
        ours = net(torch.tensor([ids]))[0].float().numpy()
    return float(np.abs(ours - theirs).max()), float(np.abs(ours).max())


# ---- the table ---------------------------------------------------------------------------------

def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def cell(ours: float | None, theirs: float | None) -> str:
    ratio = f" = {ours / theirs:.2f}" if ours and theirs else ""
    return f"{fmt(ours)} / {fmt(theirs)}{ratio}"


def markdown_table(rows: list[dict], short: int, long: int, prefill: int) -> str:
    """One line per pair: ours / llama.cpp = ratio, decode after `short` and `long` tokens, prefill."""
    lines = [f"| ours `--dtype` | llama.cpp | decode after {short} | decode after {long} | prefill {prefill} |",
             "|---|---|---|---|---|"]
    for r in rows:
        ours, theirs = r.get("ours") or {}, r.get("llama") or {}
        name, precision = r["dtype"], ours.get("precision", "")
        if precision.startswith(name):
            name = precision  # "int8 (bfloat16 activations)"
        elif precision:
            name += f" ({precision})"  # "auto (bfloat16)"
        elif ours.get("skipped"):
            name += " (not in this engine)"
        ranges = r.get("ratios") or {}
        lines.append(f"| {name} | {r['gguf']} | " + " | ".join(
            cell(ours.get(k), theirs.get(k)) + (f" ({min(ranges[k]):.2f}-{max(ranges[k]):.2f})" if k in ranges else "")
            for k in ("short", "long", "prefill")) + " |")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="GPT-2 safetensors file or Hugging Face directory")
    src.add_argument("--random", choices=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"],
                     help="random weights of that shape (tiny: 2 layers, 128 wide, 256-token window)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both engines (default: all cores)")
    ap.add_argument("--dtypes", default=",".join(PAIRS), help=f"rows, comma-separated, of {', '.join(PAIRS)}")
    ap.add_argument("--runs", type=int, default=3, help="repeats of each measurement (the median is shown)")
    ap.add_argument("--rounds", type=int, default=1, help=(
        "measure every pair this many times in turn: the medians over the rounds, each ratio's range beside it"))
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per run")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 8 tokens, 1 run")
    ap.add_argument("--flash-attn", action="store_true",
                    help="llama.cpp with flash attention (off by default in llama-cpp-python)")
    ap.add_argument("--tolerance", type=float, default=1e-2, help="largest logit difference the GGUF may show")
    ap.add_argument("--workdir", help="keep the model and GGUF files here (default: a temporary directory)")
    ap.add_argument("--json", dest="json_out", help="write every figure to this file")
    args = ap.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if bad := [d for d in args.dtypes if d not in PAIRS]:
        ap.error(f"--dtypes {','.join(bad)}: choose from {', '.join(PAIRS)}")
    if args.threads < 1 or args.runs < 1 or args.rounds < 1 or args.tokens < 2:
        ap.error("--threads, --runs and --rounds must be >= 1, --tokens >= 2")
    if args.quick:
        args.runs, args.tokens = 1, 8
    return args


def bench(args: argparse.Namespace, work: Path) -> dict:
    import torch

    info = machine() | {"read_bandwidth_gbs": read_bandwidth_gbs(args.threads), "threads": args.threads,
                        "runs": args.runs, "tokens": args.tokens, "flash_attn": args.flash_attn}
    print(f"CPU: {info['cpu']} ({info['cores']} cores; {' '.join(info['flags']) or 'none of ' + ' '.join(FLAGS)}), "
          f"memory read {info['read_bandwidth_gbs']:.1f} GB/s; {args.threads} threads; "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v), flush=True)
    model = write_random(args.random, work / f"random-{args.random}", args.seed) if args.random else Path(args.model)
    info["model"] = f"random {args.random} (seed {args.seed})" if args.random else str(model)
    wanted = {PAIRS[d] for d in args.dtypes}
    paths, window = gguf_files(model, work, wanted | {"f32"}, args.threads)
    diff, scale = faithfulness(model, paths["f32"], work, args.threads)
    info |= {"logit_max_abs_diff": diff, "logit_max_abs": scale}
    print(f"faithfulness: llama.cpp f32 logits vs ours float32, max abs difference {diff:.2e} "
          f"(logits up to {scale:.3g} in size)", flush=True)
    if diff > args.tolerance:
        raise BenchError(f"the GGUF file is not faithful: logits differ by up to {diff:.2e}, over --tolerance "
                         f"{args.tolerance:g} (logits up to {scale:.3g} in size)")
    ids = torch.randint(0, 50257, (window,), generator=torch.Generator().manual_seed(0)).tolist()  # as measure's
    prefill, long = min(512, window - 1), min(800, int(window * 0.8))
    common = {"threads": args.threads, "runs": args.runs, "tokens": args.tokens, "prefill": prefill, "long": long,
              "flash_attn": args.flash_attn}
    rounds: list[list[dict]] = []
    for r in range(args.rounds):  # each round measures every pair again: a drifting machine moves all rounds alike
        theirs: dict[str, dict] = {}
        rows = []
        for dtype in args.dtypes:
            gguf = PAIRS[dtype]
            ours = run_worker("ours", {**common, "model": str(model), "dtype": dtype})
            if "skipped" in ours and r == 0:
                print(f"ours {dtype}: skipped ({ours['skipped']})", flush=True)
            if gguf not in theirs:
                theirs[gguf] = run_worker("llama", {**common, "gguf": str(paths[gguf]), "ids": ids})
            rows.append({"dtype": dtype, "gguf": gguf, "ours": ours, "llama": theirs[gguf]})
            print(f"{'round ' + str(r + 1) + ': ' if args.rounds > 1 else ''}{dtype:8s} vs {gguf:4s}: "
                  + ", ".join(f"{k} {cell(ours.get(k), theirs[gguf][k])}" for k in ("short", "long", "prefill"))
                  + (f", ours in 2 MB pages {ours['huge_pages']:.0%}" if ours.get("huge_pages") is not None else ""),
                  flush=True)
        rounds.append(rows)
    return {**info, "short_context": 8, "long_context": long, "prefill_tokens": prefill, "rounds": len(rounds),
            "rows": combine(rounds)}


def combine(rounds: list[list[dict]]) -> list[dict]:
    """One row per pair: each figure the median over the rounds, and each ratio's range (``ratios``)."""
    if len(rounds) == 1:
        return rounds[0]
    out = []
    for same in zip(*rounds, strict=True):
        row = {"dtype": same[0]["dtype"], "gguf": same[0]["gguf"], "ours": dict(same[0]["ours"]),
               "llama": dict(same[0]["llama"]), "ratios": {}}
        for k in ("short", "long", "prefill"):
            ours = [r["ours"][k] for r in same if k in r["ours"]]
            theirs = [r["llama"][k] for r in same]
            row["llama"][k] = statistics.median(theirs)
            if ours:
                row["ours"][k] = statistics.median(ours)
                row["ratios"][k] = [a / b for a, b in zip(ours, theirs, strict=True)]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [pkg for pkg, mod in (("llama-cpp-python", "llama_cpp"), ("gguf", "gguf"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"error: {' and '.join(missing)} not installed; install the bench extra: {INSTALL}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
            work = Path(args.workdir or tmp)
            work.mkdir(parents=True, exist_ok=True)
            result = bench(args, work)
    except Exception as e:  # a benchmark script: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    rounds = f" x {args.rounds} rounds (ratio's range in brackets)" if args.rounds > 1 else ""
    title = (f"{result['model']}, batch 1, {args.threads} threads, median of {args.runs}{rounds}, {result['cpu']}; "
             f"llama.cpp flash attention {'on' if args.flash_attn else 'off'}; tok/s, ours / llama.cpp = ratio")
    print(f"\n{title}\n\n" + markdown_table(result["rows"], 8, result["long_context"], result["prefill_tokens"]))
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

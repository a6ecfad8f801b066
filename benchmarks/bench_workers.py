"""The measurements of bench_vs_llamacpp.py, each run in a process of its own:

    python benchmarks/bench_workers.py ours|llama|logits|quantize SPEC_JSON

prints one line of JSON. A process per engine and precision: llama.cpp's thread pool keeps
spinning after a call and would slow whatever runs beside it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_FTYPES = {"q8_0": 7, "q4_0": 2}  # llama_ftype: LLAMA_FTYPE_MOSTLY_Q8_0, LLAMA_FTYPE_MOSTLY_Q4_0


class BenchError(Exception):
    pass


def ours_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from chatgpt_cli.bench import measure
    from chatgpt_cli.errors import UsageError
    from chatgpt_cli.weights import load_model

    try:
        loaded = load_model(spec["model"], dtype=spec["dtype"], device="cpu")
    except UsageError as e:  # a precision this engine does not have (yet)
        return {"skipped": str(e)}
    r = measure(loaded.model, runs=spec["runs"], new_tokens=spec["tokens"], prefill_len=spec["prefill"],
                long_context=spec["long"])
    if (r.prefill_tokens, r.long_context) != (spec["prefill"], spec["long"]):
        raise BenchError(f"measured {r.prefill_tokens}/{r.long_context} tokens, not {spec['prefill']}/{spec['long']}")
    return {"precision": loaded.precision, "short": r.decode_tok_s_short, "long": r.decode_tok_s_long,
            "prefill": r.prefill_tok_s, "huge_pages": r.huge_pages}


def llama(spec: dict, **kw):
    import llama_cpp

    n = spec["threads"]
    return llama_cpp.Llama(spec["gguf"], n_threads=n, n_threads_batch=n, flash_attn=spec.get("flash_attn", False),
                           verbose=False, **kw)


def llama_worker(spec: dict) -> dict:
    """The same measurements as chatgpt_cli.bench.measure: only the forward passes are timed."""
    import llama_cpp
    import numpy as np

    ids, steps = spec["ids"], spec["tokens"] - 1  # as ours: the last sampled token is not run
    llm = llama(spec, n_ctx=len(ids), n_batch=512, n_ubatch=512)

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(logits.argmax())

    def decode_rate(prompt: list[int], n: int) -> float:
        llm.reset()  # a cold cache: eval clears the cache from position 0 on
        llm.eval(prompt)
        token, seconds = next_token(), 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            llm.eval([token])
            seconds += time.perf_counter() - t0
            token = next_token()
        return n / seconds

    def prefill_rate() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids[:spec["prefill"]])
        return spec["prefill"] / (time.perf_counter() - t0)

    decode_rate(ids[:8], 4)  # warm up
    runs = range(spec["runs"])
    prefill = statistics.median(prefill_rate() for _ in runs)
    pairs = [(decode_rate(ids[:8], steps), decode_rate(ids[:spec["long"]], steps)) for _ in runs]  # alternating
    short, long = (statistics.median(rates) for rates in zip(*pairs, strict=True))
    return {"prefill": prefill, "short": short, "long": long}


def logits_worker(spec: dict) -> dict:
    import numpy as np

    llm = llama(spec, n_ctx=max(64, len(spec["ids"])), n_batch=512, logits_all=True)
    llm.eval(spec["ids"])
    np.save(spec["out"], np.array(llm.scores[:len(spec["ids"])], dtype=np.float32))
    return {}


def quantize_worker(spec: dict) -> dict:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[spec["type"]]
    params.nthread = spec["threads"]
    if llama_cpp.llama_model_quantize(spec["src"].encode(), spec["dst"].encode(), ctypes.byref(params)) != 0:
        raise BenchError(f"llama_model_quantize to {spec['type']} failed")
    return {}


WORKERS = {"ours": ours_worker, "llama": llama_worker, "logits": logits_worker, "quantize": quantize_worker}


if __name__ == "__main__":
    print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))))

"""Every command on a CUDA GPU, on the bundled model: it runs (exit 0, no traceback), and where the
output is deterministic it is the CPU's, byte for byte (float32 on both). Skipped without a GPU
(benchmarks/gpu_check.sh runs it on one); the engine's own GPU tests are in test_model.py."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from chatgpt_cli.cli import app

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SAMPLING = ["--top-k", "40", "--top-p", "0.9", "--min-p", "0.05", "--repeat-penalty", "1.3", "--repeat-last-n", "-1",
            "--frequency-penalty", "0.5", "--presence-penalty", "0.3", "--no-repeat-ngram", "3",
            "--logit-bias", "13=-inf"]


def invoke(*args: str, input: str | None = None) -> str:
    r = CliRunner().invoke(app, list(args), input=input)
    assert r.exit_code == 0, (args, r.output)
    assert "Traceback" not in r.output
    return r.stdout


def on_both(*args: str, input: str | None = None) -> tuple[str, str]:
    return tuple(invoke(*args, "--device", device, "--dtype", "float32", input=input) for device in ("cuda", "cpu"))


@pytest.mark.parametrize("args", [
    ["complete", "The weather today", "-t", "0", "-n", "24"],
    ["complete", "The weather today", "-t", "0", "-n", "24", *SAMPLING],
    ["complete", "The weather today", "-t", "0", "-n", "12", "-N", "3"],
    ["complete", "The weather today", "-t", "0.8", "--seed", "7", "-n", "24", *SAMPLING],
    ["complete", "The weather today", "-t", "0.8", "--seed", "7", "-n", "12", "-N", "3", *SAMPLING],
])
def test_generation_on_the_gpu_prints_the_cpus_text(args):
    gpu, cpu = on_both(*args)
    assert gpu == cpu and gpu.strip()


def test_json_with_logprobs_on_the_gpu():
    gpu, cpu = (json.loads(out) for out in on_both("complete", "Hello", "-t", "0", "-n", "8", "-N", "2", "--json",
                                                  "--logprobs", "3"))
    for g, c in zip(gpu["choices"], cpu["choices"], strict=True):
        assert g["text"] == c["text"] and g["tokens"] == c["tokens"] and g["finish_reason"] == c["finish_reason"]
        assert g["logprobs"]["token_logprobs"] == pytest.approx(c["logprobs"]["token_logprobs"], abs=1e-3)


@pytest.mark.parametrize("args", [
    ["next", "The cat sat on the", *SAMPLING[:6]],
    ["next", "The cat sat on the", "--json"],
    ["attention", "The cat sat on the mat"],
    ["score", "-"],
    ["explain", "The cat sat on the"],
    ["info"],
])
def test_inspection_commands_run_on_the_gpu(args):
    gpu, cpu = on_both(*args, input="The cat sat on the mat. It was happy.\n")
    assert gpu.strip() and cpu.strip()


def test_chat_on_the_gpu_answers_each_turn():
    out = invoke("chat", "--device", "cuda", "-t", "0", "-n", "16", "--no-log", input="Hello\nWho are you?\n")
    assert out.strip()


@pytest.mark.parametrize("dtype", ["auto", "bfloat16", "float16", "int8", "int4"])
def test_every_dtype_completes_on_the_gpu(dtype):
    assert invoke("complete", "The weather today", "--device", "cuda", "--dtype", dtype, "-n", "16", "-N", "2",
                  "--seed", "1").strip()

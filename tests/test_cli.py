"""The command line, through typer's runner and through real subprocess pipes."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.tokenizer import Tokenizer

runner = CliRunner()
TOK = Tokenizer()


def run(*args, input=None, env=None):
    return runner.invoke(app, list(args), input=input, env=env)


def cli(*args, input=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "chatgpt_cli", *args], input=input, capture_output=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def greedy_reference(hf, text, n):
    ids = TOK.encode(text)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=50256,
                          eos_token_id=50256)[0, len(ids):].tolist()
    if 50256 in out:
        out = out[:out.index(50256)]
    return TOK.decode(out)


def test_complete_greedy_prints_exactly_the_reference_decode(tiny_dir, tiny_hf):
    r = run("complete", "The meaning of life is", "-m", str(tiny_dir), "-t", "0", "-n", "25")
    assert r.exit_code == 0, r.output
    expected = greedy_reference(tiny_hf, "The meaning of life is", 25)
    assert r.stdout == expected + ("" if expected.endswith("\n") else "\n")
    assert r.stderr == ""


def test_stdin_is_the_prompt(tiny_dir):
    a = run("complete", "Hello there", "-m", str(tiny_dir), "-t", "0", "-n", "8")
    b = run("complete", "-m", str(tiny_dir), "-t", "0", "-n", "8", input="Hello there")
    c = run("complete", "-", "-m", str(tiny_dir), "-t", "0", "-n", "8", input="Hello there")
    assert a.exit_code == b.exit_code == c.exit_code == 0
    assert a.stdout == b.stdout == c.stdout != ""


def test_stdin_then_prompt_through_a_real_pipe(tiny_dir):
    joined = cli("complete", "Hello there", "-m", str(tiny_dir), "-t", "0", "-n", "8", input=b"")
    both = cli("complete", " there", "-m", str(tiny_dir), "-t", "0", "-n", "8", input=b"Hello")
    assert both.returncode == 0, both.stderr
    assert both.stdout == joined.stdout != b""


def test_same_seed_same_text(tiny_dir):
    args = ["complete", "Once upon a time", "-m", str(tiny_dir), "-n", "20", "--seed", "7", "-t", "1.2"]
    a, b = run(*args), run(*args)
    c = run(*args[:-3], "--seed", "8", "-t", "1.2")
    assert a.stdout == b.stdout and a.stdout != c.stdout


def test_stop_string_is_not_printed(tiny_dir):
    full = run("complete", "Hi", "-m", str(tiny_dir), "-t", "0", "-n", "30").stdout
    stop = full[10:14]
    out = run("complete", "Hi", "-m", str(tiny_dir), "-t", "0", "-n", "30", "--stop", stop).stdout
    assert stop not in out
    assert full.startswith(out.rstrip("\n"))


def test_empty_prompt_samples_unconditionally(tiny_dir):
    r = run("complete", "", "-m", str(tiny_dir), "-n", "5", "--seed", "1", input="")
    assert r.exit_code == 0 and r.stdout.strip() != ""


def test_non_utf8_stdin_is_replaced_not_fatal(tiny_dir):
    r = cli("complete", "-m", str(tiny_dir), "-n", "3", "-t", "0", input=b"\xff\xfe caf\xe9 ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout


def test_overlong_prompt_keeps_the_end_with_a_warning(tiny_dir):
    r = run("complete", "word " * 500, "-m", str(tiny_dir), "-n", "4", "-t", "0")
    assert r.exit_code == 0
    assert "warning: the prompt is 501 tokens and the model's window is 64: keeping its last 60 tokens" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["-t", "-1"], "error: temperature must be a number >= 0, not -1.0"),
    (["-k", "-2"], "error: top-k must be >= 0 (0 = off), not -2"),
    (["--top-p", "0"], "error: top-p must be in (0, 1] (1 = off), not 0.0"),
    (["--top-p", "1.5"], "error: top-p must be in (0, 1] (1 = off), not 1.5"),
    (["-n", "-1"], "error: --max-tokens must be >= 0, not -1"),
    (["--dtype", "int3"], "error: --dtype 'int3': choose auto, float32, bfloat16, float16, int8 or int4"),
])
def test_bad_option_values_exit_2_with_one_line(tiny_dir, args, message):
    r = run("complete", "x", "-m", str(tiny_dir), *args)
    assert r.exit_code == 2
    assert r.stderr == message + "\n"


def test_missing_model_exits_1_with_one_line(tmp_path):
    r = run("complete", "x", "-m", str(tmp_path / "nope"))
    assert r.exit_code == 1
    assert r.stderr == f"error: model not found: {tmp_path / 'nope'}\n"


def test_model_from_environment(tiny_dir):
    r = run("info", env={"CHATGPT_CLI_MODEL": str(tiny_dir)})
    assert r.exit_code == 0 and "parameters" in r.stdout and str(tiny_dir) in r.stdout


def test_tokenize():
    assert run("tokenize", "Hello world").stdout == "15496 995\n"
    assert run("tokenize", input="Hello world").stdout == "15496 995\n"
    r = run("tokenize", "Hi 😀", "--verbose")
    assert r.stdout.splitlines()[0] == " ".join(map(str, TOK.encode("Hi 😀")))
    assert "'Hi'" in r.stdout and "\\xf0" in r.stdout  # the emoji's bytes are split across tokens


def test_info(tiny_dir, tiny_hf):
    r = run("info", "-m", str(tiny_dir))
    assert r.exit_code == 0
    rows = {line[:28].strip(): line[28:].strip() for line in r.stdout.splitlines()}
    n_params = sum(p.numel() for p in tiny_hf.parameters())  # lm_head is tied, counted once
    assert rows["parameters"] == f"{n_params:,}"
    assert rows["layers (n_layer)"] == "2" and rows["heads (n_head)"] == "2" and rows["width (n_embd)"] == "32"
    assert rows["context window (n_positions)"] == "64" and rows["unembedding"] == "tied to wte"
    from chatgpt_cli.layers import native_bf16

    auto = "bfloat16" if native_bf16(torch.device("cpu")) else "float32"  # --dtype auto, precision.py
    assert rows["dtype"] == auto and rows["device"] == "cpu" and rows["kernels"].startswith(f"{auto} numba")


def test_closed_stdout_ends_quietly(tiny_dir):
    p = subprocess.Popen([sys.executable, "-m", "chatgpt_cli", "complete", "x", "-m", str(tiny_dir), "-n", "100000",
                          "--ignore-eos"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    p.stdout.read(1)
    p.stdout.close()
    assert p.wait(timeout=60) == 0
    assert p.stderr.read() == b""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_output_and_exits_130(tiny_dir, sig):
    p = subprocess.Popen([sys.executable, "-m", "chatgpt_cli", "complete", "x", "-m", str(tiny_dir), "-n", "100000",
                          "--ignore-eos"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    first = p.stdout.read(1)
    time.sleep(0.3)
    p.send_signal(sig)
    out, errs = p.communicate(timeout=60)
    assert p.returncode == 130
    assert first + out != b""
    assert errs.decode().strip() == "interrupted"


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom chatgpt_cli.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    app(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("False")
    assert "chatgpt-cli 0." in r.stdout


def test_bench_runs_and_reports(tiny_dir):
    import json

    r = run("bench", "-m", str(tiny_dir), "--dtype", "float32", "--runs", "1", "--tokens", "4", "--prefill", "16",
            "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("prefill_tok_s", "decode_tok_s_short", "decode_tok_s_long", "time_to_first_token_s",
                "peak_memory_mb", "load_s"):
        assert data[key] > 0
    assert data["dtype"] == "float32" and data["device"] == "cpu" and data["prefill_tokens"] == 16
    assert data["kernels"].startswith("float32 numba")
    table = run("bench", "-m", str(tiny_dir), "--runs", "1", "--tokens", "4", "--prefill", "16")
    assert "decode after 8 tokens" in table.stdout and "tok/s" in table.stdout
    import torch

    before = torch.get_num_threads()
    one = json.loads(run("bench", "-m", str(tiny_dir), "--runs", "1", "--tokens", "4", "--prefill", "16",
                         "--threads", "1", "--json").stdout)
    torch.set_num_threads(before)
    assert one["threads"] == 1
    assert run("bench", "--threads", "0").stderr.startswith("error: --runs, --tokens, --prefill and --threads")
    bad = run("bench", "--random", "gpt5")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --random 'gpt5': choose gpt2, gpt2-medium")


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_from_the_command_line(tiny_dir, dtype):
    import json

    info = run("info", "-m", str(tiny_dir), "--dtype", dtype)
    assert info.exit_code == 0 and f"dtype                         {dtype} (float32 activations)\n" in info.stdout
    from chatgpt_cli.layers import load_kernels

    int4 = "int4: numba decode step" if load_kernels().BF16_DOT else "int4: torch's int4 kernel"
    kernels = {"int8": "int8 numba decode step", "int4": int4}[dtype]
    assert f"kernels                       {kernels}" in info.stdout
    assert f"; {dtype} KV cache\n" in info.stdout  # keys and values as int8 codes, or int4 codes two a byte
    r = run("complete", "-m", str(tiny_dir), "--dtype", dtype, "-t", "0", "-n", "5", "Hello")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == run("complete", "-m", str(tiny_dir), "--dtype", dtype, "-t", "0", "-n", "5", "Hello").stdout
    assert len(r.stdout.strip()) > 0
    data = json.loads(run("bench", "-m", str(tiny_dir), "--dtype", dtype, "--runs", "1", "--tokens", "4",
                          "--prefill", "16", "--json").stdout)
    assert data["dtype"] == f"{dtype} (float32 activations)" and data["decode_tok_s_short"] > 0
    assert data["kernels"].startswith(kernels)

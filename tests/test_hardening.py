"""Bad input, faults and signals: one clear line and the right exit status, never a traceback.
Property tests (hypothesis) for streaming, stop strings and sampling; a fuzz test of the loader."""

import io
import json
import os
import signal
import struct
import subprocess
import sys

import pytest
import torch
from conftest import hf_model, write_file, write_hf_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.errors import ChatGPTCliError
from chatgpt_cli.sampling import SamplingOptions, make_generator, sample, top_k_filter, top_p_filter
from chatgpt_cli.streaming import TextStream
from chatgpt_cli.tokenizer import Tokenizer
from chatgpt_cli.weights import load_model

TOK = Tokenizer()
runner = CliRunner()


def run(*args, input=None, env=None):
    return runner.invoke(app, list(args), input=input, env=env)


def assert_one_line_error(r, code, start):
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert r.stderr.startswith(start) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


# --- options at and past their bounds ------------------------------------------------------
@pytest.mark.parametrize("args", [["-t", "0"], ["-k", "0"], ["-k", "1"], ["--top-p", "1"], ["--top-p", "0.0001"],
                                  ["-n", "0"], ["-n", "1"], ["--seed", "0"], ["--seed", str(2**63 - 1)]])
def test_options_at_their_bounds_work(tiny_dir, args):
    r = run("complete", "Hi", "-m", str(tiny_dir), *args)
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("args,start", [
    (["-t", "-0.001"], "error: temperature"), (["-t", "inf"], "error: temperature"),
    (["-k", "-1"], "error: top-k"), (["--top-p", "-0.5"], "error: top-p"), (["--top-p", "1.0001"], "error: top-p"),
    (["--seed", "-1"], "error: seed"), (["--seed", str(2**63)], "error: seed"),
    (["--device", "tpu"], "error: --device 'tpu'"), (["--dtype", "fp8"], "error: --dtype"),
])
def test_options_past_their_bounds_exit_2(tiny_dir, args, start):
    assert_one_line_error(run("complete", "Hi", "-m", str(tiny_dir), *args), 2, start)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_dir):
    assert_one_line_error(run("complete", "Hi", "-m", str(tiny_dir), "--device", "cuda"), 2,
                          "error: --device cuda: no CUDA GPU is available")


def test_unknown_template_is_a_clear_error(tiny_dir):
    assert_one_line_error(run("chat", "-m", str(tiny_dir), "--template", "nope", input="hi\n"), 2,
                          "error: unknown template 'nope'")


def test_chat_setting_out_of_range_is_a_clear_error(tiny_dir):
    assert_one_line_error(run("chat", "-m", str(tiny_dir), "--top-p", "2", input="hi\n"), 2, "error: top-p")


def test_no_default_model_says_how_to_pass_one(tmp_path, monkeypatch):
    monkeypatch.setattr("chatgpt_cli.cli_plumbing.shipped", lambda name: tmp_path)
    monkeypatch.delenv("CHATGPT_CLI_MODEL", raising=False)
    assert_one_line_error(run("complete", "Hi"), 1, "error: no model given and no default model installed: "
                                                    "pass --model FILE_OR_DIR or set CHATGPT_CLI_MODEL")


# --- weights through the CLI ------------------------------------------------------------------
def test_bad_weights_through_the_cli(tmp_path, tiny_file):
    (tmp_path / "trunc.safetensors").write_bytes(tiny_file.read_bytes()[:1000])
    (tmp_path / "model.bin").write_bytes(b"\x80\x04junk")
    assert_one_line_error(run("info", "-m", str(tmp_path / "trunc.safetensors")), 1, "error: ")
    assert_one_line_error(run("complete", "x", "-m", str(tmp_path / "model.bin")), 1, "error: ")
    assert "only safetensors files are loaded" in run("info", "-m", str(tmp_path / "model.bin")).stderr


def test_nan_weights_give_a_one_line_warning(tmp_path):
    ref = hf_model(n_layer=1, n_head=1, n_embd=64, n_positions=8, vocab_size=50257)
    with torch.no_grad():
        ref.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
    path = write_file(ref, tmp_path / "n.safetensors")
    r = run("info", "-m", str(path))
    assert r.exit_code == 0
    assert r.stderr == f"warning: transformer.h.0.mlp.c_fc.weight in {path} contains NaN or infinite values\n"


# --- input --------------------------------------------------------------------------------
def test_special_token_text_is_ordinary(tiny_dir):
    r = run("complete", "<|endoftext|><|endoftext|>", "-m", str(tiny_dir), "-n", "3", "-t", "0")
    assert r.exit_code == 0


def test_huge_stdin_is_capped_with_a_clear_message(tiny_dir):
    r = subprocess.run([sys.executable, "-m", "chatgpt_cli", "complete", "-m", str(tiny_dir), "-n", "1"],
                       input=b"x" * (100 * 1024 * 1024), capture_output=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.decode() == ("error: standard input is larger than 16 MB; pass a shorter text "
                                 "(only the last part of a long text fits the window anyway)\n")


def test_stdout_to_a_file_has_no_ansi_codes(tiny_dir, tmp_path):
    out = tmp_path / "out.txt"
    with out.open("wb") as f:
        r = subprocess.run([sys.executable, "-m", "chatgpt_cli", "chat", "-m", str(tiny_dir), "-n", "5"],
                           input=b"hello\n/show\n", stdout=f, stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0
    assert b"\x1b" not in out.read_bytes() and b"\x1b" not in r.stderr


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory):
    """Big enough that a long prompt's prefill takes a noticeable time."""
    return write_hf_dir(hf_model(n_layer=12, n_head=8, n_embd=512, n_positions=1024, seed=2),
                        tmp_path_factory.mktemp("slow"))


def test_sigint_during_prefill(slow_model_dir):
    p = subprocess.Popen([sys.executable, "-m", "chatgpt_cli", "complete", "-m", str(slow_model_dir), "-n", "5",
                          "--verbose", "word " * 1000], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    line = p.stderr.readline()  # "loaded ...": the prefill starts now
    assert line.startswith(b"loaded")
    p.send_signal(signal.SIGINT)
    out, errs = p.communicate(timeout=60)
    assert p.returncode == 130, errs
    assert errs.decode().strip() == "interrupted"


def test_unwritable_history_file_warns_once_and_chat_works(tiny_dir, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    blocker = tmp_path / "data"
    blocker.write_text("a file where a folder should be")
    child = pexpect.spawn(sys.executable, ["-m", "chatgpt_cli", "chat", "-m", str(tiny_dir), "-n", "3"],
                          env={**os.environ, "XDG_DATA_HOME": str(blocker), "PROMPT_TOOLKIT_NO_CPR": "1"},
                          timeout=60, encoding="utf-8")
    child.logfile_read = log = io.StringIO()
    child.expect(">")
    child.sendline("hello")
    child.expect("tok/s")
    child.expect(">")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert log.getvalue().count("warning: cannot use the history file") == 1


# --- property tests -------------------------------------------------------------------------
token_ids = st.lists(st.integers(0, 50255), max_size=40)


@settings(max_examples=200, deadline=None)
@given(token_ids)
def test_streamed_text_equals_the_whole_decode(ids):
    s = TextStream(TOK)
    assert "".join([s.push(i) for i in ids] + [s.finish()]) == TOK.decode(ids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_ids, st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3))
def test_stop_strings_never_printed_and_output_is_a_prefix(ids, stops):
    s = TextStream(TOK, stops)
    printed = ""
    for i in ids:
        printed += s.push(i)
        assert not any(stop in printed for stop in stops)
        if s.stopped:
            break
    printed += s.finish()
    full = TOK.decode(ids)
    assert full.startswith(printed)
    assert not any(stop in printed for stop in stops)
    if not s.stopped:
        assert printed == full


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.floats(0.05, 1.0), st.floats(0.1, 3.0), st.integers(0, 2**32))
def test_samples_stay_inside_top_k_and_top_p(k, p, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, generator=gen) * 3
    allowed = torch.isfinite(top_p_filter(top_k_filter(logits / temperature, k), p))
    opts = SamplingOptions(temperature=temperature, top_k=k, top_p=p)
    g = make_generator(seed)
    for _ in range(20):
        assert allowed[sample(logits, opts, g)]
    assert allowed.sum() <= k


# --- fuzzing the loader -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    ref = hf_model(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=30)
    path = write_file(ref, d / "base.safetensors", metadata={"n_head": "2"})
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return Base(d, json.loads(data[8:8 + n]), data[8 + n:])


class Base(tuple):
    """(folder, header, tensor bytes), with a short repr for hypothesis' reports."""

    def __new__(cls, *items):
        return super().__new__(cls, items)

    def __repr__(self) -> str:
        return "fuzz_base"


def mutate_header(draw_header, mutation, key_index, value):
    header = json.loads(json.dumps(draw_header))
    names = sorted(k for k in header if k != "__metadata__")
    name = names[key_index % len(names)]
    if mutation == "dtype":
        header[name]["dtype"] = value
    elif mutation == "shape":
        header[name]["shape"] = value
    elif mutation == "offsets":
        header[name]["data_offsets"] = value
    elif mutation == "drop":
        del header[name]
    elif mutation == "rename":
        header[str(value)] = header.pop(name)
    elif mutation == "metadata":
        header["__metadata__"] = value
    return header


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                           max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["dtype", "shape", "offsets", "drop", "rename", "metadata"]), st.integers(0, 100),
       json_values | st.lists(st.integers(-5, 40), max_size=3) | st.sampled_from(["F32", "F16", "I64", "BOOL", "X"]),
       st.integers(-3, 3), st.binary(max_size=8))
def test_fuzzed_headers_load_or_raise_our_error(fuzz_base, mutation, key_index, value, size_delta, junk):
    d, header, data = fuzz_base
    mutated = json.dumps(mutate_header(header, mutation, key_index, value)).encode()
    n = len(mutated) + size_delta
    blob = struct.pack("<Q", max(n, 0)) + mutated + data + junk
    path = d / "case.safetensors"
    path.write_bytes(blob)
    try:
        load_model(path)
    except ChatGPTCliError:
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["n_layer", "n_head", "n_embd", "n_positions", "n_ctx", "vocab_size",
                                        "layer_norm_epsilon", "activation_function"]), json_values, max_size=4))
def test_fuzzed_configs_load_or_raise_our_error(fuzz_base, tmp_path_factory, overrides):
    d, _, _ = fuzz_base
    case = tmp_path_factory.mktemp("cfg")
    (case / "model.safetensors").write_bytes((d / "base.safetensors").read_bytes())
    config = {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 8, "vocab_size": 30} | overrides
    (case / "config.json").write_text(json.dumps(config))
    try:
        load_model(case)
    except ChatGPTCliError:
        pass

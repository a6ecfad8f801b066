"""The llama.cpp benchmark's own logic, without llama.cpp: GGUF names and layout, the tokenizer
metadata, the table, the message when the bench extra is missing."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chatgpt_cli.model import GPT, GPTConfig, init_weights

ROOT = Path(__file__).resolve().parents[1]
GENUINE = ROOT.parent / "shared" / "tokenizer" / "gpt2"  # the original GPT-2 files, where present


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = load("bench_vs_llamacpp")
gg = load("gguf_gpt2")


def tiny_tensors(vocab: int = 50257) -> dict[str, torch.Tensor]:
    model = init_weights(GPT(GPTConfig(vocab_size=vocab, n_positions=16, n_embd=8, n_layer=2, n_head=2)))
    return dict(model.state_dict())


def test_tensor_names_and_layout():
    tensors = tiny_tensors(vocab=10)
    out = dict(gg.gguf_tensors(tensors, half=True))
    blocks = ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
    assert set(out) == {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"} | {
        f"blk.{i}.{b}.{kind}" for i in range(2) for b in blocks for kind in ("weight", "bias")}
    qkv = out["blk.1.attn_qkv.weight"]
    assert qkv.shape == (24, 8) and qkv.dtype == np.float16  # (out, in): GGUF's ne = {n_embd, 3 n_embd}
    np.testing.assert_array_equal(qkv, tensors["transformer.h.1.attn.c_attn.weight"].t().numpy().astype(np.float16))
    assert out["blk.0.ffn_down.weight"].shape == (8, 32) and out["token_embd.weight"].shape == (10, 8)
    assert out["blk.0.ffn_up.bias"].dtype == np.float32 and out["output_norm.weight"].dtype == np.float32
    assert gg.gguf_name("lm_head.weight") == "output.weight"
    with pytest.raises(ValueError):
        gg.gguf_name("transformer.h.0.attn.bias")


@pytest.mark.skipif(not (GENUINE / "vocab.bpe").exists(), reason="the original GPT-2 tokenizer files are not here")
def test_vocab_equals_the_original_files():
    import json

    tokens, types, merges = gg.gpt2_vocab()
    encoder = json.loads((GENUINE / "encoder.json").read_text(encoding="utf-8"))
    assert tokens == sorted(encoder, key=encoder.get)
    assert merges == [ln for ln in (GENUINE / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if ln]
    assert types.count(gg.TOKEN_CONTROL) == 1 and types[50256] == gg.TOKEN_CONTROL


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf (the bench extra) is not installed")
def test_gguf_file_reads_back(tmp_path):
    import gguf

    tensors = tiny_tensors()
    config = GPTConfig(n_positions=16, n_embd=8, n_layer=2, n_head=2)
    reader = gguf.GGUFReader(gg.write_gguf(tensors, config, tmp_path / "m.gguf", half=True))
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == 4 + 2 * 12 and "output.weight" not in by_name  # tied: llama.cpp reuses token_embd
    qkv = by_name["blk.0.attn_qkv.weight"]
    assert list(qkv.shape) == [8, 24] and qkv.tensor_type == gguf.GGMLQuantizationType.F16  # ne order
    assert by_name["blk.0.attn_qkv.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt2"


def test_markdown_table():
    rows = [{"dtype": "float32", "gguf": "f32", "ours": {"precision": "float32", "short": 43.04, "long": 39.2,
                                                         "prefill": 849.4},
             "llama": {"short": 86.0, "long": 75.0, "prefill": 1148.0}},
            {"dtype": "auto", "gguf": "f16", "ours": {"precision": "bfloat16", "short": 160.0, "long": 150.0,
                                                      "prefill": 3000.0},
             "llama": {"short": 160.0, "long": 120.0, "prefill": 1500.0}},
            {"dtype": "int8", "gguf": "q8_0", "ours": {"precision": "int8 (bfloat16 activations)", "short": 168.4,
                                                       "long": 89.0, "prefill": 2908.0},
             "llama": {"short": 221.0, "long": 171.0, "prefill": 1084.0}},
            {"dtype": "int4", "gguf": "q4_0", "ours": {"skipped": "no int4"},
             "llama": {"short": 285.0, "long": 201.0, "prefill": 1000.0}}]
    assert bench.markdown_table(rows, 8, 800, 512) == "\n".join([
        "| ours `--dtype` | llama.cpp | decode after 8 | decode after 800 | prefill 512 |",
        "|---|---|---|---|---|",
        "| float32 | f32 | 43 / 86 = 0.50 | 39.2 / 75 = 0.52 | 849 / 1148 = 0.74 |",
        "| auto (bfloat16) | f16 | 160 / 160 = 1.00 | 150 / 120 = 1.25 | 3000 / 1500 = 2.00 |",
        "| int8 (bfloat16 activations) | q8_0 | 168 / 221 = 0.76 | 89 / 171 = 0.52 | 2908 / 1084 = 2.68 |",
        "| int4 (not in this engine) | q4_0 | — / 285 | — / 201 | — / 1000 |"])


def test_rounds_take_the_median_and_show_each_ratios_range():
    def row(short, theirs):
        return {"dtype": "int8", "gguf": "q8_0", "ours": {"precision": "int8", "short": short, "long": 1.0,
                                                          "prefill": 1.0},
                "llama": {"short": theirs, "long": 1.0, "prefill": 2.0}}

    rows = bench.combine([[row(100.0, 100.0)], [row(150.0, 100.0)], [row(90.0, 120.0)]])
    assert rows[0]["ours"]["short"] == 100.0 and rows[0]["llama"]["short"] == 100.0
    assert rows[0]["ratios"]["short"] == [1.0, 1.5, 0.75]
    assert bench.markdown_table(rows, 8, 800, 512).splitlines()[-1] == (
        "| int8 | q8_0 | 100 / 100 = 1.00 (0.75-1.50) | 1 / 1 = 1.00 (1.00-1.00) | 1 / 2 = 0.50 (0.50-0.50) |")


def test_missing_extra_is_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert bench.main(["--random", "tiny", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: llama-cpp-python") and err.count("\n") == 1
    assert 'not installed; install the bench extra: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install ".[bench]"' in err


def test_bad_dtypes_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--random", "tiny", "--dtypes", "float32,int3"])
    assert e.value.code == 2
    assert "--dtypes int3: choose from float32, bfloat16, int8, auto, int4" in capsys.readouterr().err

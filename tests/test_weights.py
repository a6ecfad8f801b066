"""Loading is strict: every bad file gets a WeightsError that names what is wrong. Never unpickled."""

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import hf_model, write_file
from safetensors.torch import save_file

from chatgpt_cli.errors import UsageError, WeightsError
from chatgpt_cli.weights import load_model, save_model


def test_missing_path(tmp_path):
    with pytest.raises(WeightsError, match="model not found"):
        load_model(tmp_path / "nope")


def test_directory_without_weights(tmp_path):
    with pytest.raises(WeightsError, match="no weights in"):
        load_model(tmp_path)


def test_truncated_file(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_model(tmp_path / "t.safetensors")


@pytest.mark.parametrize("content", [b"", b"abc", b"garbage" * 100, struct.pack("<Q", 2**60) + b"{}"])
def test_garbage_and_huge_header_length(tmp_path, content):
    (tmp_path / "g.safetensors").write_bytes(content)
    with pytest.raises(WeightsError):
        load_model(tmp_path / "g.safetensors")


def test_non_float_tensor(tmp_path):
    save_file({"transformer.wte.weight": torch.zeros(10, 4, dtype=torch.int32)}, str(tmp_path / "i.safetensors"))
    with pytest.raises(WeightsError, match="non-float dtype I32"):
        load_model(tmp_path / "i.safetensors")


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_hf):
    state = {k: v.clone() for k, v in tiny_hf.state_dict().items() if k != "lm_head.weight"}
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.h.0.extra.weight"] = torch.zeros(3)
    state["transformer.h.0.attn.c_proj.weight"] = torch.zeros(32, 31)
    save_file(state, str(tmp_path / "m.safetensors"), metadata={"n_head": "2"})
    with pytest.raises(WeightsError) as e:
        load_model(tmp_path / "m.safetensors")
    msg = str(e.value)
    assert "transformer.h.1.mlp.c_fc.bias" in msg
    assert "transformer.h.0.extra.weight" in msg
    assert "transformer.h.0.attn.c_proj.weight has shape (32, 31), expected (32, 32)" in msg


def test_config_that_contradicts_the_tensors(tmp_path, tiny_dir):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_layer"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="missing .*transformer.h.2"):
        load_model(d)


def test_sharded_directory(tmp_path, tiny_hf):
    state = {k: v.clone() for k, v in tiny_hf.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(keys)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf.config.to_dict()))
    loaded = load_model(tmp_path, dtype="float32")
    idx = torch.randint(0, 50257, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), tiny_hf(idx).logits, atol=1e-4, rtol=1e-4)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsError, match="missing: model-00002-of-00002"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_pickles_are_refused_never_opened(tmp_path, name):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    (tmp_path / name).write_bytes(pickle.dumps(Boom()))
    with pytest.raises(WeightsError, match="only safetensors"):
        load_model(tmp_path / name)
    with pytest.raises(WeightsError, match="only safetensors"):
        load_model(tmp_path)


def test_pickle_with_safetensors_name_is_refused(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_model(tmp_path / "x.safetensors")


def test_nan_weights_warn(tmp_path):
    ref = hf_model(n_layer=1, n_head=1, n_embd=64, n_positions=8, vocab_size=50)
    with torch.no_grad():
        ref.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="NaN"):
        load_model(write_file(ref, tmp_path / "n.safetensors"))


def test_dtype_and_device_options(tiny_dir):
    assert load_model(tiny_dir, dtype="bfloat16").dtype == torch.bfloat16
    auto = load_model(tiny_dir)  # auto: bfloat16 where the CPU has it natively (precision.py), else float32
    assert auto.dtype == (torch.bfloat16 if auto.scheme.name == "bfloat16" else torch.float32)
    with pytest.raises(UsageError, match="--dtype"):
        load_model(tiny_dir, dtype="float8")
    with pytest.raises(UsageError, match="--device"):
        load_model(tiny_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            load_model(tiny_dir, device="cuda")


def test_weights_are_memory_mapped_not_copied(tiny_file):
    plain = load_model(tiny_file, dtype="float32", fast=False).model
    w = plain.transformer.h[0].mlp.c_fc.weight
    assert not w.untyped_storage().resizable()  # a view of the mapped file, not an owned buffer
    fast = load_model(tiny_file, dtype="float32").model  # its matrices laid out anew (hugepages.py)
    wte = fast.transformer.wte.weight  # tied: one copy, which the lookup and the unembedding both read
    assert fast.lm_head.weight.data_ptr() == wte.data_ptr()


def test_save_then_load_round_trip_and_transformers_loads_it(tmp_path, tiny_dir):
    transformers = pytest.importorskip("transformers")
    model = load_model(tiny_dir, dtype="float32", fast=False).model
    save_model(model, tmp_path / "out", dtype=torch.float16)
    with pytest.raises(UsageError, match="fast=False"):  # layers converted for speed are not GPT-2's layout
        save_model(load_model(tiny_dir, dtype="float32").model, tmp_path / "no")
    again = load_model(tmp_path / "out", dtype="float16", fast=False)  # as saved; plain layers, made float32 below
    assert again.dtype == torch.float16
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").float().eval()
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(again.model.float()(idx), ref(idx).logits, atol=1e-3, rtol=1e-3)


def test_16_bit_weights_get_the_fast_layers_and_the_same_logits(tiny_dir):
    from chatgpt_cli.layers import BFloat16Linear
    from chatgpt_cli.model import Conv1D

    full = load_model(tiny_dir, dtype="float32").model
    unconverted = load_model(tiny_dir, dtype="float16", fast=False).model
    assert isinstance(unconverted.transformer.h[0].mlp.c_fc, Conv1D)
    half = load_model(tiny_dir, dtype="float16").model
    brain = load_model(tiny_dir, dtype="bfloat16").model
    assert isinstance(brain.transformer.h[0].mlp.c_fc, BFloat16Linear) and isinstance(brain.lm_head, BFloat16Linear)
    plain = load_model(tiny_dir, dtype="bfloat16", fast=False).model
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        for model in (half, unconverted, brain, plain):
            torch.testing.assert_close(model(idx).float(), full(idx), atol=0.05, rtol=0.05)
        torch.testing.assert_close(brain(idx), plain(idx).float(), atol=0.02, rtol=0.02)


def mapped_rss_kb(path) -> int:
    """Resident kilobytes of this process's mappings of path (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_released_pages_leave_memory_and_come_back_on_reading(tmp_path):
    from chatgpt_cli.checkpoint import Mapped, read_safetensors

    path = tmp_path / "big.safetensors"
    save_file({"a": torch.arange(2 << 20, dtype=torch.float32), "b": torch.ones(10)}, str(path))
    tensors, _, mm = read_safetensors(path)
    total = float(tensors["a"].sum())
    assert mapped_rss_kb(path) >= 8000  # all 8 MB read in
    Mapped([mm]).release(tensors["a"])
    assert mapped_rss_kb(path) < 100
    assert float(tensors["a"].sum()) == total and float(tensors["b"].sum()) == 10.0  # read back from the file

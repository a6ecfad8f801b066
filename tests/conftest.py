"""Shared fixtures: tiny random-weight GPT-2 models written in tmp dirs (no network, ever)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def logs_db(tmp_path_factory, monkeypatch) -> Path:
    """Every test (and every subprocess it starts) logs to its own tmp database, never to the real home."""
    path = tmp_path_factory.mktemp("logs") / "db" / "logs.db"
    monkeypatch.setenv("CHATGPT_CLI_LOGS_DB", str(path))
    monkeypatch.delenv("CHATGPT_CLI_NO_LOG", raising=False)
    return path


def hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                     vocab_size=vocab_size, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make LayerNorms and biases non-trivial too
        for _name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def write_hf_dir(model, path: Path) -> Path:
    """A Hugging Face style directory, as save_pretrained writes it (safetensors)."""
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_file(model, path: Path, prefix: bool = True, with_mask_buffers: bool = False,
               metadata: dict | None = None) -> Path:
    """A single .safetensors file with or without the 'transformer.' prefix (original GPT-2 layout)."""
    state = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = k if prefix else k.removeprefix("transformer.")
        state[name] = v.contiguous().clone()
    if with_mask_buffers:
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            state[("transformer." if prefix else "") + f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n))[None, None]
            state[("transformer." if prefix else "") + f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile (or load from numba's disk cache) the CPU kernels once, before any test: subprocess
    tests with timings (Ctrl-C) then never wait for a first compile."""
    from chatgpt_cli.precision import warm_up

    warm_up()


@pytest.fixture(scope="session")
def tiny_hf():
    return hf_model()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_hf) -> Path:
    return write_hf_dir(tiny_hf, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory, tiny_hf) -> Path:
    return write_file(tiny_hf, tmp_path_factory.mktemp("tinyfile") / "tiny.safetensors", metadata={"n_head": "2"})


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())

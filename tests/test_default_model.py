"""The bundled model in weights/: loads here and in transformers, and is the default."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.weights import load_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "model.safetensors").is_file(), reason="no bundled model")


def test_bundled_model_fits_the_budget_and_is_gpt2_shaped():
    assert sum(f.stat().st_size for f in WEIGHTS.iterdir()) <= 60 * 10**6
    loaded = load_model(WEIGHTS, dtype="float16")  # as stored
    assert loaded.config.vocab_size == 50257 and loaded.model.tied
    assert loaded.dtype == torch.float16
    assert loaded.config.n_positions == 512  # chats fill 256 tokens after three or four exchanges


def test_transformers_loads_it_and_agrees():
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(WEIGHTS)).float().eval()
    ours = load_model(WEIGHTS, dtype="float32").model
    idx = torch.tensor([[464, 3290, 318, 257, 1332, 13]])
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), ref(idx).logits, atol=1e-3, rtol=1e-3)


def test_it_is_the_default_for_complete_and_chat(monkeypatch):
    monkeypatch.delenv("CHATGPT_CLI_MODEL", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["complete", "User: Hello!\nAI Assistant:", "-t", "0", "-n", "12", "--stop", "\n"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip()
    r = runner.invoke(app, ["chat", "-t", "0", "-n", "30"], input="Hi! How are you today?\n")
    assert r.exit_code == 0, r.stderr
    reply = r.stdout.strip()
    assert reply and "User:" not in reply  # a reply that stops at the next turn


def test_asked_who_it_is_it_says_it_is_an_ai_without_placeholders(monkeypatch):
    import re

    monkeypatch.delenv("CHATGPT_CLI_MODEL", raising=False)
    r = CliRunner().invoke(app, ["chat", "-t", "0", "-n", "40"], input="Who are you?\n")
    assert r.exit_code == 0, r.stderr
    assert re.search(r"\b(AI|assistant|language model)\b", r.stdout), r.stdout
    assert not re.search(r"[\[(<](user|name)", r.stdout, re.IGNORECASE), r.stdout

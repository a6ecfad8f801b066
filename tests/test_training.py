"""The default model's training script runs end to end on a tiny configuration."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED

from chatgpt_cli.weights import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (SHARED / "corpus").is_dir(), reason="needs ../shared/corpus")
def test_train_script_runs_a_few_steps_and_exports(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_default.py"), "--tiny", "--steps", "3",
                        "--eval-every", "2", "--out", str(tmp_path / "w")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "val_loss" in r.stdout
    meta = json.loads((tmp_path / "w" / "training.json").read_text())
    assert meta["settings"]["seed"] == 1337 and meta["val_loss"] > 0
    loaded = load_model(tmp_path / "w")
    assert loaded.config.vocab_size == 50257 and loaded.model.tied  # tied unembedding


@pytest.mark.skipif(not (SHARED / "corpus").is_dir(), reason="needs ../shared/corpus")
def test_training_data_is_deterministic_and_in_the_chat_template():
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_default

    a_train, a_val = train_default.build_data(SHARED / "corpus", 1337)
    b_train, b_val = train_default.build_data(SHARED / "corpus", 1337)
    assert a_train == b_train and a_val == b_val
    assert not set(a_val) & set(a_train)  # the validation split is kept apart
    dialogue = next(d for d in a_val if "User:" in d)
    assert dialogue.startswith("What follows is an interaction between a user and a helpful AI assistant:\nUser: ")
    assert "\nAI Assistant: " in dialogue

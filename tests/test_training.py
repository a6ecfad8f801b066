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
def test_training_data_is_in_the_chat_template_balanced_and_free_of_placeholders():
    # determinism is checked on a small corpus in test_build_data.py; the whole corpus is built once here
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_data
    import train_default

    train, val = train_default.build_split(SHARED / "corpus", 1337)
    assert not {d for _, d in val} & {d for _, d in train}  # the validation split is kept apart
    dialogue = next(d for s, d in val if s == "sgd")
    assert dialogue.startswith("What follows is an interaction between a user and a helpful AI assistant:\nUser: ")
    assert "\nAI Assistant: " in dialogue
    assert not [d for _, d in train + val if build_data.placeholders(d)]
    size: dict[str, int] = {}
    for source, doc in train:
        size[source] = size.get(source, 0) + len(doc)
    assert max(size.values()) < 0.25 * sum(size.values())  # no source dominates
    assert size["identity"] > 0.08 * sum(size.values())

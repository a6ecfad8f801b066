"""Where the shipped data lives: weights/ and prompts/ at the top of the repository, or inside the
installed package (the wheel carries them as chatgpt_cli/weights and chatgpt_cli/prompts)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The shipped folder ``name`` ('weights' or 'prompts')."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name

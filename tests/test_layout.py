"""The import direction (CLI -> chat/generate -> model) and the CLI's own layout, kept by tests."""

import ast
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from chatgpt_cli.cli_options import OFF, SAMPLING, sampling_options

PACKAGE = Path(__file__).resolve().parents[1] / "chatgpt_cli"


def imports(path: Path) -> set[str]:
    """The modules a file imports (``from chatgpt_cli import x`` counts as chatgpt_cli.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "chatgpt_cli":
                found |= {f"chatgpt_cli.{a.name}" for a in node.names}
    return found


def top_level(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def modules() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in PACKAGE.glob("*.py")}


def test_nothing_below_the_cli_imports_a_cli_module():
    for name, deps in modules().items():
        if name.startswith("cli") or name == "__main__":
            continue
        assert not [d for d in deps if d.startswith("chatgpt_cli.cli")], name


def test_command_modules_are_imported_by_cli_py_only():
    mods = modules()
    commands = {n for n in mods if n.startswith("cli_") and "def register(" in (PACKAGE / f"{n}.py").read_text()}
    assert {"cli_complete", "cli_chat", "cli_inspect"} <= commands
    for name, deps in mods.items():
        importers = {d.removeprefix("chatgpt_cli.") for d in deps} & commands
        assert name == "cli" or not importers, (name, importers)
    assert commands <= {d.removeprefix("chatgpt_cli.") for d in mods["cli"]}
    for name in commands:  # and they register on the app they are given, not on an import of cli.py
        assert "chatgpt_cli.cli" not in mods[name], name


def test_rendering_imports_only_rich_and_options_only_typer():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert top_level(imports(PACKAGE / "render.py")) - stdlib == {"rich"}
    assert top_level(imports(PACKAGE / "cli_options.py")) - stdlib == {"typer"}


def test_repl_and_generate_do_not_import_typer():
    code = ("import sys\nimport chatgpt_cli.repl, chatgpt_cli.generate, chatgpt_cli.insight, chatgpt_cli.render\n"
            "print(sorted(m for m in sys.modules if m == 'typer' or m.startswith('chatgpt_cli.cli')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_sampling_group_is_one_definition_passed_as_one_dict():
    app = typer.Typer()
    seen = {}

    @app.command()
    @sampling_options(temperature=0.5, top_k=3, top_p=0.9)
    def cmd(name: str = "x", sampling: dict | None = None, last: int = 0) -> None:
        seen.update(sampling, name=name, last=last)

    r = CliRunner().invoke(app, ["--top-k", "7", "-t", "0", "--last", "2", "--min-p", "0.1"])
    assert r.exit_code == 0, r.output
    assert seen == {"temperature": 0.0, "top_k": 7, "top_p": 0.9, "name": "x", "last": 2, "min_p": 0.1,
                    **{k: v for k, v in OFF.items() if k != "min_p"}}
    assert set(seen) == set(SAMPLING) | {"name", "last"}

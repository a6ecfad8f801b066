"""The command line: the app, its version flag, and the entry point. A thin layer over the library.

Each command module (cli_*.py) declares its commands and registers them here; they share option
declarations (cli_options.py), the edge plumbing (cli_plumbing.py) and rendering (render.py).
torch is imported only inside the commands that run a model, so --help and --version are quick.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from chatgpt_cli import (
    __version__,
    cli_bench,
    cli_chat,
    cli_complete,
    cli_explain,
    cli_info,
    cli_inspect,
    cli_logs,
    cli_serve,
)
from chatgpt_cli.cli_edge import OneLineErrors
from chatgpt_cli.cli_plumbing import err, quiet_broken_pipe

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Chat with and generate text from GPT-2 models, locally.")


def version_callback(value: bool) -> None:
    if value:
        print(f"chatgpt-cli {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Chat with and generate text from GPT-2 models, locally."""


for module in (cli_complete, cli_info, cli_bench, cli_chat, cli_logs, cli_inspect, cli_explain, cli_serve):
    module.register(app)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except BrokenPipeError:
        quiet_broken_pipe()
        sys.exit(0)
    except KeyboardInterrupt:  # outside any command (while importing, say)
        err("\ninterrupted")
        sys.exit(130)

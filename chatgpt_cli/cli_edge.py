"""The command line's outer edge: what comes in (arguments) and what goes out (usage errors, help
metavars, output that cannot be written) is made safe here, before and after any command runs."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click
from typer.core import TyperArgument, TyperGroup, TyperOption

from chatgpt_cli.errors import ChatGPTCliError, UsageError


def clean_argv(argv: list[str]) -> list[str]:
    """Arguments with bytes that are not UTF-8 replaced (U+FFFD), so no text holds a lone surrogate;
    an argument naming a file that exists is kept as given, so such files still open."""
    out = []
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            if not os.path.lexists(arg):
                arg = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        out.append(arg)
    return out


def one_line(e: click.ClickException) -> str:
    """A click/typer usage error as one line, naming the command; no guessed suggestions."""
    if isinstance(e, click.NoSuchOption):
        message = f"no such option: {e.option_name}"
        close = [p for p in (e.possibilities or []) if p.startswith(e.option_name) or e.option_name.startswith(p)]
        if close:
            message += f" (did you mean {' or '.join(sorted(close))}?)"
    else:
        message = e.format_message()
    message = " ".join(message.split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        message += f"; see {ctx.command_path} --help"
    return message


class OneLineErrors(TyperGroup):
    """The app's group: usage errors come out as one line, `error: ...`, exit 2 (not a boxed panel)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "chatgpt-cli", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click.ClickException as e:
            sys.stderr.write(f"error: {one_line(e)}\n")
            if not standalone_mode:
                raise
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            sys.stderr.write("\ninterrupted\n")
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _metavar(self, ctx: click.Context) -> str | None:
    """--help shows FLOAT, INTEGER, TEXT, PATH for values, nothing for flags (not <bool>, <list[str]>)."""
    if isinstance(self, TyperOption) and (self.is_flag or self.count):
        return None
    if self.metavar is not None:
        return self.metavar
    label = (self.display_type(ctx) or "").strip("<>").removeprefix("list[").removesuffix("]")
    name = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN", "path": "PATH",
            "Path": "PATH"}.get(label, label.upper())
    return name + ("..." if getattr(self, "multiple", False) else "")


TyperOption.display_type_rich = _metavar
TyperArgument.display_type_rich = _metavar


def cannot_write(e: OSError) -> ChatGPTCliError:
    """stdout on a full disk, closed, or otherwise unwritable: one line, exit 1."""
    silence_stdout()
    return ChatGPTCliError(f"cannot write output: {e.strerror or e}")


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, so Python's flush at exit does not fail once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def stdout_usable() -> bool:
    if sys.stdout is None:
        return False
    try:
        os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return True


def finite(x: float) -> float | None:
    """A number for JSON: NaN and infinities (not JSON) become null."""
    return x if math.isfinite(x) else None


def png_target(path: Path, layer: str, head: int) -> Path:
    """Where `attention --png` writes: a directory gets a file named after the layer and head; the
    extension must be one matplotlib writes (none: .png)."""
    if layer == "all":
        raise UsageError("--png draws one head's map: give --layer N (not 'all')")
    if path.is_dir():
        path = path / f"attention-layer{layer}-head{head}.png"
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChatGPTCliError("--png needs matplotlib: pip install 'chatgpt-cli[plot]'") from None
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise UsageError(f"--png {path.name}: matplotlib cannot write .{path.suffix[1:]} files; "
                         f"use one of {', '.join('.' + f for f in sorted(formats))}")
    return path


def ascii_int(value: str) -> int | None:
    """An ASCII decimal number, or None ('٣' and '²' are digits to str.isdigit, not to users)."""
    return int(value) if value.isascii() and value.isdigit() else None


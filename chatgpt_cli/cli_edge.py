"""The command line's outer edge, before any command runs: arguments that are not UTF-8, usage
errors from click/typer as one line (`error: ...`, exit 2), and readable metavars in --help."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

try:  # typer 0.2x carries its own copy of click; older ones use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors


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


def one_line(e: click_errors.ClickException) -> str:
    """A click/typer usage error as one line, naming the command; no guessed suggestions."""
    if isinstance(e, click_errors.NoSuchOption):
        message = f"no such option: {e.option_name}"
        close = [p for p in (e.possibilities or []) if p.startswith(e.option_name) or e.option_name.startswith(p)]
        if close:
            message += f" (did you mean {' or '.join(sorted(close))}?)"
    else:
        message = e.format_message()
    message = " ".join(message.split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click_errors.UsageError) and ctx is not None:
        message += f"; see {ctx.command_path} --help"
    return message


class OneLineErrors(TyperGroup):
    """The app's group: usage errors come out as one line, `error: ...`, exit 2 (not a boxed panel)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not stdout_usable():
            sys.stderr.write("error: cannot write output: standard output is closed\n")
            sys.exit(1)
        args = clean_argv(sys.argv[1:] if args is None else list(args))
        try:
            rv = super().main(args=args, prog_name=prog_name or "chatgpt-cli", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click_errors.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # no command given: the help was printed
                sys.exit(e.exit_code)
            sys.stderr.write(f"error: {one_line(e)}\n")
            if not standalone_mode:
                raise
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.stderr.write("\ninterrupted\n")
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _metavar(self, ctx: Any) -> str | None:
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


def stdout_usable() -> bool:
    """False when stdout was closed before the start (`>&-`); a stream with no descriptor is fine."""
    if sys.stdout is None:
        return False
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: a test runner's buffer
        return True
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

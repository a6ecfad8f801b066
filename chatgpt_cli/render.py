"""Terminal rendering: the console, probability colours, tables, heat maps and progress bars.

Imports only rich: the values shown are computed elsewhere (insight.py, bench.py) and passed in
as plain numbers and lists. ``tok`` is anything with ``token_bytes(id) -> bytes``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

MAX_MAP_TOKENS = 48  # a terminal heat map wider than this is unreadable


class WriteFailed(Exception):
    """stdout could not be written (a full disk, a closed descriptor); the message says why."""


class _Checked:
    """A stream whose failed writes raise BrokenPipeError (the reader left) or WriteFailed."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            raise WriteFailed(getattr(e, "strerror", None) or str(e)) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _Console(Console):
    def on_broken_pipe(self) -> None:  # rich's own exits with status 1; the CLI's edge handles it
        raise BrokenPipeError


def console(stderr: bool = False, highlight: bool = False) -> Console:
    """A console that honours NO_COLOR, for stdout (or stderr); write failures raise (see _Checked)."""
    return _Console(file=_Checked(sys.stderr if stderr else sys.stdout), highlight=highlight,
                    color_system=None if os.environ.get("NO_COLOR") else "auto")


def shown(tok, token: int) -> str:
    """A token's text, quoted, with invisible and partial characters made visible."""
    return repr(tok.token_bytes(token).decode("utf-8", errors="backslashreplace"))


def prob_style(p: float) -> str:
    """Red for unlikely tokens through yellow to green for near-certain ones."""
    p = min(max(p, 0.0), 1.0)
    red, green = (255, int(510 * p)) if p < 0.5 else (int(510 * (1 - p)), 255)
    return f"rgb({red},{green},0)"


def print_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]],
                out: Console | None = None) -> None:
    """A titled table; columns are (name, justify)."""
    table = Table(title=title)
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    (out or console()).print(table)


def print_alternatives(out: Console, tok, recorder) -> None:
    """The tokens a generation picked, each with the most likely alternatives at its step.

    ``recorder`` is an insight.StepRecorder: ``alternatives`` and ``steps`` (picked, prob, candidates).
    """
    rows = [[str(step), f"{shown(tok, picked)} {p:.3f}",
             *[f"{'> ' if c.token == picked else ''}{shown(tok, c.token)} {c.sampled_prob:.3f}" for c in alts]]
            for step, (picked, p, alts) in enumerate(recorder.steps, 1)]
    headers = ["step", "picked", *[f"#{i + 1}" for i in range(recorder.alternatives)]]
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(headers)]
    shown_columns, used = 2, 1 + sum(w + 3 for w in widths[:2])  # each column: its cells, padding, a border
    while shown_columns < len(headers) and used + widths[shown_columns] + 3 <= out.width:
        used += widths[shown_columns] + 3
        shown_columns += 1
    table = Table(title="Alternatives at each step (probability after temperature / top-k / top-p)")
    for i, h in enumerate(headers[:shown_columns]):
        table.add_column(h, justify="right" if i == 0 else "left", overflow="fold")
    for r in rows:
        table.add_row(*r[:shown_columns])
    out.print(table)
    if shown_columns < len(headers):
        out.print(f"(showing {shown_columns - 2} of {recorder.alternatives} alternatives: the terminal is "
                  f"{out.width} columns wide)", style="dim")


def show_heat_map(weights: list[list[float]], labels: list[str], title: str) -> None:
    """Attention weights (query rows, key columns) as coloured cells; the masked future dimmed."""
    out = console()
    names = [f"{i:>2} {elide(repr(label), 14)}" for i, label in enumerate(labels)]
    fit = max(1, (out.width - max(len(n) for n in names + ["query \\ key "])) // 3)  # cells are 3 wide
    n = min(len(labels), MAX_MAP_TOKENS, fit)
    if n < len(labels):
        out.print(f"(showing the last {n} of {len(labels)} tokens: what fits {out.width} columns)", style="dim")
    first = len(labels) - n
    out.print(title, style="bold")
    table = Table(show_lines=False, box=None, padding=(0, 0))
    table.add_column("query \\ key ", justify="right", no_wrap=True)
    for j in range(first, len(labels)):
        table.add_column(str(j)[-3:], justify="center", width=3, no_wrap=True)
    for i in range(first, len(labels)):
        cells = []
        for j, w in enumerate(weights[i][first:], first):
            if j > i:
                cells.append("[dim] · [/dim]")  # masked: a token never sees the future
            else:
                level = int(round(w * 9))
                cells.append(f"[on rgb({int(255 * w)},{int(80 * w)},{int(255 * (1 - w) * 0.3)})]{level:^3}[/]")
        table.add_row(names[i], *cells)
    out.print(table)
    out.print("cells: attention weight x 9, rounded (row sums to 1); · = masked (a key in the future)", style="dim")


def show_attention_summary(summary: list[list[tuple[int, float]]], labels: list[str]) -> None:
    """summary[layer][i] = (the key token i attends most to, its weight)."""
    table = Table(title="Where each token attends most (mean over heads), by layer")
    table.add_column("token")
    for layer in range(len(summary)):
        table.add_column(f"L{layer}")
    for i, label in enumerate(labels):
        cells = [f"{labels[j]!r} {w:.2f}" for j, w in (summary[layer][i] for layer in range(len(summary)))]
        table.add_row(f"{i} {label!r}", *cells)
    console().print(table)


def elide(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr; yields ``advance(n)``."""
    from rich.progress import Progress

    with Progress(console=console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)

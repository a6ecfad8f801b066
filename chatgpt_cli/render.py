"""Terminal rendering: the console, probability colours, tables, heat maps and progress bars.

Imports only rich: the values shown are computed elsewhere (insight.py, bench.py) and passed in
as plain numbers and lists. ``tok`` is anything with ``token_bytes(id) -> bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

MAX_MAP_TOKENS = 48  # a terminal heat map wider than this is unreadable


def console(stderr: bool = False, highlight: bool = False) -> Console:
    """A console that honours NO_COLOR."""
    return Console(stderr=stderr, highlight=highlight, color_system=None if os.environ.get("NO_COLOR") else "auto")


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
    table = Table(title="Alternatives at each step (probability after temperature / top-k / top-p)")
    table.add_column("step", justify="right")
    table.add_column("picked")
    for i in range(recorder.alternatives):
        table.add_column(f"#{i + 1}")
    for step, (picked, p, alts) in enumerate(recorder.steps, 1):
        cells = [f"{'> ' if c.token == picked else ''}{shown(tok, c.token)} {c.sampled_prob:.3f}" for c in alts]
        table.add_row(str(step), f"{shown(tok, picked)} {p:.3f}", *cells)
    out.print(table)


def show_heat_map(weights: list[list[float]], labels: list[str], title: str) -> None:
    """Attention weights (query rows, key columns) as coloured cells; the masked future dimmed."""
    out = console()
    if len(labels) > MAX_MAP_TOKENS:
        out.print(f"(showing the last {MAX_MAP_TOKENS} of {len(labels)} tokens)", style="dim")
        weights = [row[-MAX_MAP_TOKENS:] for row in weights[-MAX_MAP_TOKENS:]]
        labels = labels[-MAX_MAP_TOKENS:]
    out.print(title, style="bold")
    table = Table(show_lines=False, box=None, padding=(0, 0))
    table.add_column("query \\ key", justify="right", no_wrap=True)
    for j in range(len(labels)):
        table.add_column(str(j), justify="center", width=3)
    for i, row in enumerate(weights):
        cells = []
        for j, w in enumerate(row):
            if j > i:
                cells.append("[dim] · [/dim]")  # masked: a token never sees the future
            else:
                level = int(round(w * 9))
                cells.append(f"[on rgb({int(255 * w)},{int(80 * w)},{int(255 * (1 - w) * 0.3)})]{level:^3}[/]")
        table.add_row(f"{i:>2} {labels[i]!r}", *cells)
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


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr; yields ``advance(n)``."""
    from rich.progress import Progress

    with Progress(console=console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)

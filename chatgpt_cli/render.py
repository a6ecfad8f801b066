"""Terminal rendering: the console, probability colours, tables, heat maps and progress bars.

Imports only rich: the values shown are computed elsewhere (insight.py, bench.py, explain.py) and passed in
as plain numbers and lists. ``tok`` is anything with ``token_bytes(id) -> bytes``.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

MAX_MAP_TOKENS = 48  # a terminal heat map wider than this is unreadable
TOKENS_SHOWN = 12  # explain: a long text lists this many tokens at each end
EMBEDDINGS_SHOWN = 3  # ... and the embeddings of this many


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


# `explain`: the report in sections, plain text, each line at most `width` columns.

def piece(tok, token: int, width: int = 12) -> str:
    """A token's text quoted; a piece of a UTF-8 character as its bytes; long ones cut short."""
    raw = tok.token_bytes(token)
    try:
        shown = repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        shown = repr(raw)
    return shown if len(shown) <= width else shown[:width - 2] + "…" + shown[-1]


def fit(lines: list[str], width: int) -> str:
    return "".join((line if len(line) <= width else line[:width - 1] + "…") + "\n" for line in lines)


def wrap(words: list[str], width: int, indent: str = "  ") -> list[str]:
    lines, line = [], indent
    for word in words:
        if len(line) + len(word) + 2 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += word + "  "
    return lines + [line.rstrip()] if line.strip() else lines


def para(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent="   ", subsequent_indent="   ", break_on_hyphens=False)


def values(v) -> str:
    return " ".join(f"{x:+.4f}" for x in v.first)


def explanation(e, tok, precision: str, width: int, section: str | None = None) -> str:
    """The report, one section or all, each line at most ``width`` columns."""
    views = {"tokens": tokens_view, "embeddings": embeddings_view, "attention": attention_view,
             "lens": lens_view, "softmax": softmax_view, "cost": cost_view}
    parts = [views[name](e, tok, precision, width) for name in ((section,) if section else views)]
    return "\n".join(fit(lines, width) for lines in parts)


def tokens_view(e, tok, precision: str, width: int) -> list[str]:
    T = len(e.ids)
    lines = [f"1. Tokens: {T} of the {e.config.n_positions}-token window (GPT-2's byte-level BPE)"]
    if e.dropped:
        lines.append(f"   (the {e.dropped} tokens before the window are not seen)")
    words = [f"{p}:{piece(tok, i, 24)}={i}" for p, i in enumerate(e.ids)]
    if T > 2 * TOKENS_SHOWN:
        words = words[:TOKENS_SHOWN] + [f"({T - 2 * TOKENS_SHOWN} more)"] + words[-TOKENS_SHOWN:]
    return lines + wrap(words, width)


def embeddings_view(e, tok, precision: str, width: int) -> list[str]:
    lines = [f"2. Embeddings: the token's row of wte + its position's row of wpe, {e.config.n_embd} values",
             f"   {'#':>4}  {'token':<14}  {'vector':<10} {'|x|':>7}  first values"]
    rows = e.embeddings
    hidden = len(rows) - 2 * EMBEDDINGS_SHOWN
    if hidden > 0:
        rows = rows[:EMBEDDINGS_SHOWN] + [None] + rows[-EMBEDDINGS_SHOWN:]
    for m in rows:
        if m is None:
            lines.append(f"   ({hidden} tokens not shown here; --json lists them all)")
            continue
        name = f"wte[{m.token}]"
        lines += [f"   {m.pos:>4}  {piece(tok, m.token):<14}  {name:<10} {m.wte.norm:7.3f}  {values(m.wte)}",
                  f"   {'':>4}  {'':<14}  {f'wpe[{m.pos}]':<10} {m.wpe.norm:7.3f}  {values(m.wpe)}",
                  f"   {'':>4}  {'':<14}  {'sum':<10} {m.total.norm:7.3f}  {values(m.total)}"]
    return lines + ["   the sums are the residual stream entering block 0"]


def keys_cell(tok, keys) -> str:
    return "  ".join(f"{piece(tok, k.token, 10)}@{k.pos} {k.weight:.3f}" for k in keys)


def attention_view(e, tok, precision: str, width: int) -> list[str]:
    c, T = e.config, len(e.ids)
    hs, last = c.head_dim, e.ids[-1]
    lines = [f"3. Attention in each block, for the last token {piece(tok, last)} (position {T - 1})",
             *para(f"Per head ({c.n_head} heads of {hs}): q 1x{hs} (this token's query), K and V {T}x{hs} "
                   f"(keys and values of tokens 0..{T - 1}); weights = softmax(q K^T / sqrt({hs})), 1x{T}; "
                   f"output = weights V, 1x{hs}; the heads side by side ({c.n_embd}) go through c_proj. "
                   "The causal mask: a query sees its own token and the ones before it, never a later one "
                   f"(the last token sees all {T}).", width),
             f"   block  {'head  ' if len(e.layers[0].attention) > 1 else ''}"
             f"keys attended most{'' if len(e.layers[0].attention) > 1 else f' (mean over the {c.n_head} heads)'}"]
    for layer in e.layers:
        for f in layer.attention:
            head = "" if f.head is None else f"{f.head:>4}  "
            lines.append(f"   {layer.layer:>5}  {head}{keys_cell(tok, f.keys)}")
    return lines


def lens_view(e, tok, precision: str, width: int) -> list[str]:
    lines = ["4. The prediction forming, block by block: the logit lens (ln_f and the",
             "   unembedding applied to the last position's residual stream after each block)",
             "   block  top tokens (probability)"]
    for layer in e.layers:
        lines.append(f"   {layer.layer:>5}  " + "  ".join(f"{piece(tok, r.token)} {prob(r.prob)}" for r in layer.top))
    return lines + [f"   the final answer {piece(tok, e.top)} is first the top token after block {e.first_top_layer}"
                    f" (of 0..{e.config.n_layer - 1})"]


def softmax_view(e, tok, precision: str, width: int) -> list[str]:
    o, ch = e.options, e.chosen
    lines = [f"5. Unembedding and softmax: {e.config.n_embd} values -> {e.config.vocab_size:,} logits -> probabilities",
             f"   {'#':>3}  {'token':<14} {'id':>6} {'logit':>9} {'prob':>8} {'sampled':>8}"]
    for n, cand in enumerate(e.next, 1):
        lines.append(f"   {n:>3}  {piece(tok, cand.token):<14} {cand.token:>6} {cand.logit:>9.3f} {cand.prob:>8.4f}"
                     f" {cand.sampled_prob:>8.4f}")
    chosen = f"{piece(tok, ch.token)} ({ch.token})"
    if ch.greedy:
        return lines + para(f"temperature 0: greedy, the top token {chosen}, probability {ch.prob:.4f}", width)
    how = f"seed {o.seed}" if o.seed is not None else "no --seed: a fresh draw each run"
    return lines + para(f"temperature {o.temperature}, top-k {o.top_k}, top-p {o.top_p} leave {ch.kept:,} tokens "
                        f"({100 * ch.kept_mass:.1f}% of the probability before them); sampled ({how}): {chosen}, "
                        f"probability {ch.sampled_prob:.4f} after them, {ch.prob:.4f} before.", width)


def prob(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def cost_view(e, tok, precision: str, width: int) -> list[str]:
    k, C, L = e.cost, e.cost.n_embd, e.cost.n_layer
    T, W = k.context, k.window
    rows = [("matrix products", f"{L} blocks x 12 x {C}^2", k.n_layer * k.block_products),
            ("unembedding", f"{C} x {k.vocab_size:,}", k.unembedding),
            ("attention", f"{L} blocks x 2 x {T} keys x {C}", k.attention), ("total", "", k.total)]
    lines = [f"6. Cost of this token: multiply-adds at a context of {T} (window {W})"]
    lines += [f"   {name:<16} {how:<32} {n:>16,}" for name, how, n in rows]
    lines += para("Per block: q,k,v 3C^2 + attention output C^2 + MLP 8C^2 = 12C^2; attention: q.K and "
                  "weights.V over the keys so far, in every head.", width)
    lines += para(f"Attention grows with the context T: per new token, with the KV cache, linearly "
                  f"(2 x {L} x T x {C}: {k.attention_for(W):,} at the full window); a whole sequence at once, "
                  f"or each token without the cache, quadratically ({L} x {C} x T(T+1): "
                  f"{k.sequence_attention(T):,} for these {T} tokens, {k.sequence_attention(W):,} for {W}).", width)
    lines += para(f"Weights read for this token: {size(k.weight_bytes)} ({precision}), plus {size(k.kv_bytes)} "
                  f"of KV cache: {k.total / (k.weight_bytes + k.kv_bytes):.2f} multiply-adds per byte. Processors "
                  "do far more per byte they can read, so decode waits on memory bandwidth: fewer bytes per "
                  "weight, faster tokens.", width)
    return lines

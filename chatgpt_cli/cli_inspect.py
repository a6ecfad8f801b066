"""Commands that look inside the model: `next`, `attention`, `score`, and the --show-probs and
--alternatives views of generation. Rendering only; the computations live in insight.py."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from chatgpt_cli.cli import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    app,
    guarded,
    load,
    prompt_text,
    read_stdin,
    write_out,
)
from chatgpt_cli.errors import ChatGPTCliError, UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
MAX_MAP_TOKENS = 48  # a terminal heat map wider than this is unreadable


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, color_system=None if os.environ.get("NO_COLOR") else "auto")


def shown(tok, token: int) -> str:
    """A token's text, quoted, with invisible and partial characters made visible."""
    return repr(tok.token_bytes(token).decode("utf-8", errors="backslashreplace"))


def prob_style(p: float) -> str:
    """Red for unlikely tokens through yellow to green for near-certain ones."""
    p = min(max(p, 0.0), 1.0)
    red, green = (255, int(510 * p)) if p < 0.5 else (int(510 * (1 - p)), 255)
    return f"rgb({red},{green},0)"


@dataclass
class StepRecorder:
    """on_step hook for generation: what each token's distribution looked like."""

    alternatives: int
    temperature: float
    top_k: int
    top_p: float
    steps: list[tuple[int, float, list]] = field(default_factory=list)  # (picked, its prob, candidates)

    def __call__(self, logits, token: int) -> None:
        from chatgpt_cli.insight import candidates
        from chatgpt_cli.sampling import probabilities

        p = float(probabilities(logits, self.temperature, self.top_k, self.top_p)[token])
        alts = candidates(logits, self.alternatives, self.temperature, self.top_k, self.top_p) \
            if self.alternatives else []
        self.steps.append((token, p, alts))

    @property
    def last_prob(self) -> float:
        return self.steps[-1][1] if self.steps else 1.0


def print_alternatives(out: Console, tok, recorder: StepRecorder) -> None:
    table = Table(title="Alternatives at each step (probability after temperature / top-k / top-p)")
    table.add_column("step", justify="right")
    table.add_column("picked")
    for i in range(recorder.alternatives):
        table.add_column(f"#{i + 1}")
    for step, (picked, p, alts) in enumerate(recorder.steps, 1):
        cells = [f"{'> ' if c.token == picked else ''}{shown(tok, c.token)} {c.sampled_prob:.3f}" for c in alts]
        table.add_row(str(step), f"{shown(tok, picked)} {p:.3f}", *cells)
    out.print(table)


@app.command("next")
def next_token(
    text: Annotated[Optional[str], typer.Argument(help="The text so far; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option("--top", "-n", help="How many tokens to list.")] = 10,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """The next-token distribution after TEXT: token, id, logit, probability, cumulative."""
    with guarded():
        from chatgpt_cli.insight import candidates, next_token_logits
        from chatgpt_cli.sampling import check_options
        from chatgpt_cli.tokenizer import EOT, Tokenizer

        check_options(temperature, top_k, top_p)
        if top < 1:
            raise UsageError(f"--top must be >= 1, not {top}")
        loaded = load(model, dtype, device, verbose=False)
        tok = Tokenizer()
        ids = tok.encode(prompt_text(text)) or [EOT]
        cands = candidates(next_token_logits(loaded.model, ids), top, temperature, top_k, top_p)
        rows, cumulative = [], 0.0
        for c in cands:
            cumulative += c.prob
            rows.append({"token": tok.token_bytes(c.token).decode("utf-8", errors="replace"), "id": c.token,
                         "logit": round(c.logit, 4), "prob": round(c.prob, 6), "cumulative": round(cumulative, 6),
                         "sampled_prob": round(c.sampled_prob, 6)})
        if as_json:
            write_out(json.dumps({"text_tokens": len(ids), "temperature": temperature, "top_k": top_k,
                                  "top_p": top_p, "candidates": rows}, ensure_ascii=False) + "\n")
            return
        table = Table(title=f"Next token after {len(ids)} tokens")
        for name, justify in [("#", "right"), ("token", "left"), ("id", "right"), ("logit", "right"),
                              ("prob", "right"), ("cumulative", "right"),
                              (f"sampled (t={temperature}, k={top_k}, p={top_p})", "right")]:
            table.add_column(name, justify=justify)
        for i, (c, r) in enumerate(zip(cands, rows, strict=True), 1):
            table.add_row(str(i), shown(tok, c.token), str(c.token), f"{c.logit:.3f}", f"{c.prob:.4f}",
                          f"{r['cumulative']:.4f}", f"{c.sampled_prob:.4f}")
        console().print(table)


@app.command()
def attention(
    text: Annotated[Optional[str], typer.Argument(help="The text; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    layer: Annotated[str, typer.Option(help="Layer number (from 0), or 'all' for a summary.")] = "0",
    head: Annotated[int, typer.Option(help="Head number (from 0).")] = 0,
    png: Annotated[Optional[Path], typer.Option(help="Also save the heat map as a PNG (needs matplotlib).")] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """The attention weights of one head as a heat map (query rows, key columns; the mask above)."""
    with guarded():
        from chatgpt_cli.insight import attention_maps
        from chatgpt_cli.tokenizer import Tokenizer

        loaded = load(model, dtype, device, verbose=False)
        c = loaded.config
        if layer != "all" and not (layer.isdigit() and int(layer) < c.n_layer):
            raise UsageError(f"--layer must be 0..{c.n_layer - 1} or 'all', not {layer!r}")
        if not 0 <= head < c.n_head:
            raise UsageError(f"--head must be 0..{c.n_head - 1}, not {head}")
        tok = Tokenizer()
        ids = tok.encode(prompt_text(text))[-c.n_positions:]
        if not ids:
            raise UsageError("no text to look at")
        maps = attention_maps(loaded.model, ids)  # (n_layer, n_head, T, T)
        labels = [tok.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
        if layer == "all":
            show_summary(maps, labels, as_json)
            return
        weights = maps[int(layer), head]
        if png:
            save_png(weights, labels, png, f"layer {layer}, head {head}")
        if as_json:
            write_out(json.dumps({"layer": int(layer), "head": head, "tokens": labels,
                                  "weights": [[round(w, 6) for w in row] for row in weights.tolist()]},
                                 ensure_ascii=False) + "\n")
            return
        show_heat_map(weights, labels, f"Attention, layer {layer}, head {head}")


def show_heat_map(weights, labels: list[str], title: str) -> None:
    out = console()
    if len(labels) > MAX_MAP_TOKENS:
        out.print(f"(showing the last {MAX_MAP_TOKENS} of {len(labels)} tokens)", style="dim")
        weights, labels = weights[-MAX_MAP_TOKENS:, -MAX_MAP_TOKENS:], labels[-MAX_MAP_TOKENS:]
    out.print(title, style="bold")
    table = Table(show_lines=False, box=None, padding=(0, 0))
    table.add_column("query \\ key", justify="right", no_wrap=True)
    for j in range(len(labels)):
        table.add_column(str(j), justify="center", width=3)
    for i, row in enumerate(weights.tolist()):
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


def show_summary(maps, labels: list[str], as_json: bool) -> None:
    mean = maps.mean(dim=1)  # (n_layer, T, T): averaged over heads
    best = mean.argmax(dim=-1)  # (n_layer, T)
    if as_json:
        write_out(json.dumps({"tokens": labels, "layers": [
            [{"attends_most_to": int(j), "weight": round(float(mean[layer_, i, j]), 6)} for i, j in enumerate(row)]
            for layer_, row in enumerate(best.tolist())]}, ensure_ascii=False) + "\n")
        return
    table = Table(title="Where each token attends most (mean over heads), by layer")
    table.add_column("token")
    for layer_ in range(maps.shape[0]):
        table.add_column(f"L{layer_}")
    for i, label in enumerate(labels):
        cells = []
        for layer_ in range(maps.shape[0]):
            j = int(best[layer_, i])
            cells.append(f"{labels[j]!r} {float(mean[layer_, i, j]):.2f}")
        table.add_row(f"{i} {label!r}", *cells)
    console().print(table)


def save_png(weights, labels: list[str], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChatGPTCliError("--png needs matplotlib: pip install 'chatgpt-cli[plot]'") from None
    size = max(4.0, 0.35 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    masked = weights.clone()
    masked[masked == 0] = float("nan")
    ax.imshow(masked.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise ChatGPTCliError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


@app.command()
def score(
    file: Annotated[Optional[str], typer.Argument(help="A text file; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    per_token: Annotated[bool, typer.Option("--per-token", help="List each token's probability.")] = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """The mean loss (nats/token) and perplexity of a text, windowed over the context."""
    with guarded():
        import math

        from chatgpt_cli.tokenizer import Tokenizer

        if file in (None, "-"):
            text = read_stdin()
        else:
            try:
                text = Path(file).read_bytes().decode("utf-8", errors="replace")
            except OSError as e:
                raise ChatGPTCliError(f"cannot read {file}: {e.strerror}") from None
        loaded = load(model, dtype, device, verbose=False)
        tok = Tokenizer()
        ids = tok.encode(text)
        if len(ids) < 2:
            raise UsageError("the text needs at least two tokens to be scored")
        long_text = len(ids) > loaded.config.n_positions
        result = run_score(loaded.model, ids, show_progress=sys.stderr.isatty() and long_text)
        if as_json:
            data = {"tokens": len(ids), "scored": result.n_tokens, "mean_loss": result.mean_loss,
                    "perplexity": result.perplexity}
            if per_token:
                pairs = zip(ids[1:], result.token_logprobs, strict=True)
                data["per_token"] = [{"token": tok.token_bytes(i).decode("utf-8", errors="replace"), "id": i,
                                      "prob": math.exp(lp)} for i, lp in pairs]
            write_out(json.dumps(data, ensure_ascii=False) + "\n")
            return
        if per_token:
            table = Table(title="Probability of each token given the ones before it")
            for name in ("#", "token", "id", "prob", "loss (nats)"):
                table.add_column(name, justify="left" if name == "token" else "right")
            for n, (i, lp) in enumerate(zip(ids[1:], result.token_logprobs, strict=True), 1):
                table.add_row(str(n), shown(tok, i), str(i), f"{math.exp(lp):.4f}", f"{-lp:.3f}")
            console().print(table)
        write_out(f"tokens: {len(ids)} ({result.n_tokens} scored)\nmean loss: {result.mean_loss:.4f} nats/token\n"
                  f"perplexity: {result.perplexity:.3f}\n")


def run_score(model, ids: list[int], show_progress: bool):
    from chatgpt_cli.insight import score as score_text

    if not show_progress:
        return score_text(model, ids)
    from rich.progress import Progress

    with Progress(console=console(stderr=True), transient=True) as progress:
        task = progress.add_task("scoring", total=len(ids) - 1)
        return score_text(model, ids, progress=lambda n: progress.advance(task, n))

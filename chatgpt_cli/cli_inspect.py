"""Commands that look inside the model: `next`, `attention` and `score`.

The computations live in insight.py, the tables and heat maps in render.py.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from chatgpt_cli.cli_options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, sampling_options
from chatgpt_cli.cli_plumbing import err, guarded, load, prompt_text, read_stdin, write_out
from chatgpt_cli.errors import ChatGPTCliError, UsageError


@sampling_options(temperature=1.0, top_k=0, top_p=1.0)
def next_token(
    text: Annotated[Optional[str], typer.Argument(help="The text so far; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option("--top", "-n", help="How many tokens to list.")] = 10,
    sampling: dict[str, Any] | None = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """The next-token distribution after TEXT: token, id, logit, probability, cumulative."""
    with guarded():
        from chatgpt_cli.insight import candidates, next_token_logits
        from chatgpt_cli.sampling import adjust, from_cli
        from chatgpt_cli.tokenizer import EOT, Tokenizer

        tok = Tokenizer()
        o = from_cli(sampling or {}, tok.encode, tok.n_vocab)
        if top < 1:
            raise UsageError(f"--top must be >= 1, not {top}")
        loaded = load(model, dtype, device, verbose=False)
        ids = tok.encode(prompt_text(text)) or [EOT]
        logits = next_token_logits(loaded.model, ids)[:tok.n_vocab]
        cands = candidates(logits, top, o.temperature, o.top_k, o.top_p, o.min_p,
                           adjusted=adjust(logits, ids[-loaded.config.n_positions:], o))
        rows, cumulative = [], 0.0
        for c in cands:
            cumulative += c.prob
            rows.append({"token": tok.token_bytes(c.token).decode("utf-8", errors="replace"), "id": c.token,
                         "logit": finite(c.logit, 4), "prob": finite(c.prob, 6), "cumulative": finite(cumulative, 6),
                         "sampled_prob": finite(c.sampled_prob, 6)})
        if as_json:
            write_out(json.dumps({"text_tokens": len(ids), "temperature": o.temperature, "top_k": o.top_k,
                                  "top_p": o.top_p, "candidates": rows}, ensure_ascii=False, allow_nan=False) + "\n")
            return
        from chatgpt_cli.render import print_table, shown

        columns = [("#", "right"), ("token", "left"), ("id", "right"), ("logit", "right"), ("prob", "right"),
                   ("cumulative", "right"), (f"sampled (t={o.temperature}, k={o.top_k}, p={o.top_p})", "right")]
        print_table(f"Next token after {len(ids)} tokens", columns, [
            (str(i), shown(tok, c.token), str(c.token), f"{c.logit:.3f}", f"{c.prob:.4f}", f"{r['cumulative']:.4f}",
             f"{c.sampled_prob:.4f}") for i, (c, r) in enumerate(zip(cands, rows, strict=True), 1)])


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
        from chatgpt_cli.insight import attention_maps, attention_summary
        from chatgpt_cli.render import show_attention_summary, show_heat_map
        from chatgpt_cli.tokenizer import Tokenizer

        loaded = load(model, dtype, device, verbose=False)
        c = loaded.config
        if layer != "all" and not (layer.isascii() and layer.isdigit() and int(layer) < c.n_layer):
            raise UsageError(f"--layer must be 0..{c.n_layer - 1} or 'all', not {layer!r}")
        if not 0 <= head < c.n_head:
            raise UsageError(f"--head must be 0..{c.n_head - 1}, not {head}")
        if png is not None:
            png = png_target(png, layer, head)
        tok = Tokenizer()
        ids = tok.encode(prompt_text(text))[-c.n_positions:]
        if not ids:
            raise UsageError("no text to look at")
        maps = attention_maps(loaded.model, ids)  # (n_layer, n_head, T, T)
        labels = [tok.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
        if layer == "all":
            summary = attention_summary(maps)
            if as_json:
                write_out(json.dumps({"tokens": labels, "layers": [
                    [{"attends_most_to": j, "weight": round(w, 6)} for j, w in row] for row in summary]},
                    ensure_ascii=False) + "\n")
            else:
                show_attention_summary(summary, labels)
            return
        weights = maps[int(layer), head]
        if png:
            save_png(weights, labels, png, f"layer {layer}, head {head}")
            err(f"(saved the heat map to {png})")
        if as_json:
            write_out(json.dumps({"layer": int(layer), "head": head, "tokens": labels,
                                  "weights": [[round(w, 6) for w in row] for row in weights.tolist()]},
                                 ensure_ascii=False) + "\n")
            return
        show_heat_map(weights.tolist(), labels, f"Attention, layer {layer}, head {head}")


def finite(x: float, digits: int) -> float | None:
    """A number for JSON: NaN and infinities (which JSON has not) become null."""
    return round(x, digits) if math.isfinite(x) else None


def png_target(path: Path, layer: str, head: int) -> Path:
    """Where `attention --png` writes: into a directory, a file named after the layer and head; the
    extension must be one matplotlib writes (none: .png). Checked before the model runs."""
    if layer == "all":
        raise UsageError("--png draws one head's map: give --layer N, not 'all'")
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
        raise UsageError(f"--png {path.name}: matplotlib cannot write {path.suffix} files; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    return path


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
    except (OSError, ValueError) as e:
        raise ChatGPTCliError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)


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

        from chatgpt_cli.insight import score as score_text
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
        if sys.stderr.isatty() and len(ids) > loaded.config.n_positions:
            from chatgpt_cli.render import progress_bar

            with progress_bar("scoring", len(ids) - 1) as advance:
                result = score_text(loaded.model, ids, progress=advance)
        else:
            result = score_text(loaded.model, ids)
        if as_json:
            data = {"tokens": len(ids), "scored": result.n_tokens, "mean_loss": result.mean_loss,
                    "perplexity": result.perplexity}
            if per_token:
                pairs = zip(ids[1:], result.token_logprobs, strict=True)
                data["per_token"] = [{"token": tok.token_bytes(i).decode("utf-8", errors="replace"), "id": i,
                                      "prob": math.exp(lp)} for i, lp in pairs]
            write_out(json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n")
            return
        if per_token:
            from chatgpt_cli.render import print_table, shown

            columns = [(name, "left" if name == "token" else "right") for name in ("#", "token", "id", "prob",
                                                                                   "loss (nats)")]
            print_table("Probability of each token given the ones before it", columns, [
                (str(n), shown(tok, i), str(i), f"{math.exp(lp):.4f}", f"{-lp:.3f}")
                for n, (i, lp) in enumerate(zip(ids[1:], result.token_logprobs, strict=True), 1)])
        write_out(f"tokens: {len(ids)} ({result.n_tokens} scored)\nmean loss: {result.mean_loss:.4f} nats/token\n"
                  f"perplexity: {result.perplexity:.3f}\n")


def register(app: typer.Typer) -> None:
    app.command("next")(next_token)
    app.command()(attention)
    app.command()(score)

"""The `tokenize` and `info` commands: a text's token ids, a model's files and shape."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from chatgpt_cli.cli_options import DeviceOpt, DtypeOpt, ModelOpt
from chatgpt_cli.cli_plumbing import guarded, load, pages, read_stdin, write_out


def tokenize(
    text: Annotated[Optional[str], typer.Argument(help="Text to tokenize; '-' or none reads stdin.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show each token's text.")] = False,
) -> None:
    """Print the GPT-2 token ids of TEXT, space-separated."""
    with guarded():
        from chatgpt_cli.tokenizer import Tokenizer

        tok = Tokenizer()
        ids = tok.encode(read_stdin() if text in (None, "-") else text)
        write_out(" ".join(map(str, ids)) + "\n")
        if verbose:
            for i in ids:
                piece = tok.token_bytes(i)
                try:
                    shown = repr(piece.decode("utf-8"))
                except UnicodeDecodeError:  # part of a character: show the bytes
                    shown = repr(piece)
                write_out(f"{i:>6}  {shown}\n")


def info(model: ModelOpt = None, dtype: DtypeOpt = "auto", device: DeviceOpt = "auto") -> None:
    """Show the model's files, config, size, dtype and device."""
    with guarded():
        loaded = load(model, dtype, device, verbose=False)
        c = loaded.config
        size = sum(f.stat().st_size for f in loaded.files)
        rows = [("files", ", ".join(map(str, loaded.files))), ("size on disk", f"{size / 1e6:.1f} MB"),
                ("parameters", f"{loaded.n_params:,}"), ("layers (n_layer)", str(c.n_layer)),
                ("heads (n_head)", str(c.n_head)), ("width (n_embd)", str(c.n_embd)),
                ("context window (n_positions)", str(c.n_positions)), ("vocabulary (vocab_size)", str(c.vocab_size)),
                ("layer_norm_epsilon", str(c.layer_norm_epsilon)),
                ("unembedding", "tied to wte" if loaded.model.tied else "own lm_head.weight"),
                ("dtype", loaded.precision), ("kernels", loaded.scheme.kernels),
                ("quality", loaded.scheme.quality), ("device", str(loaded.device))]
        from chatgpt_cli.bench import weights_in_huge_pages

        share = weights_in_huge_pages(loaded.model)
        if share is not None:
            rows.append(("weights in 2 MB pages", pages(share)))
        width = max(len(k) for k, _ in rows)
        write_out("".join(f"{k:<{width}}  {v}\n" for k, v in rows))


def register(app: typer.Typer) -> None:
    app.command()(tokenize)
    app.command()(info)

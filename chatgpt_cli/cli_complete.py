"""The `complete` command: continue a prompt, streaming the text to stdout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from chatgpt_cli.cli_options import (
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    ModelOpt,
    NoLogOpt,
    SeedOpt,
    ShowProbsOpt,
    StopOpt,
    VerboseOpt,
    sampling_options,
)
from chatgpt_cli.cli_plumbing import err, guarded, handle_sigterm, load, model_path, prompt_text, write_out
from chatgpt_cli.errors import UsageError

if TYPE_CHECKING:
    from chatgpt_cli.history import Exchange
    from chatgpt_cli.sampling import SamplingOptions
    from chatgpt_cli.weights import LoadedModel


@sampling_options(temperature=0.8, top_k=0, top_p=1.0)
def complete(
    prompt: Annotated[Optional[str], typer.Argument(help="Text to continue; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 200,
    sampling: dict[str, Any] | None = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Go on past end-of-text.")] = False,
    show_probs: ShowProbsOpt = False,
    alternatives: Annotated[int, typer.Option(help="After the text, list the N most likely tokens of each step.")] = 0,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
    no_log: NoLogOpt = False,
) -> None:
    """Continue a prompt; the generated text streams to stdout."""
    handle_sigterm()
    with guarded():
        if max_tokens < 0:
            raise UsageError(f"--max-tokens must be >= 0, not {max_tokens}")
        if alternatives < 0:
            raise UsageError(f"--alternatives must be >= 0, not {alternatives}")
        from chatgpt_cli.sampling import SamplingOptions

        options = SamplingOptions(**(sampling or {}), seed=seed)
        text = prompt_text(prompt)
        loaded = load(model, dtype, device, verbose)
        from chatgpt_cli.chatlog import log_completion, open_log

        log, on_end = open_log(no_log, err), None
        if log is not None:
            settings = {**(sampling or {}), "max_tokens": max_tokens, "seed": seed, "stop": stop or [],
                        "ignore_eos": ignore_eos}
            on_end = lambda exchanges: log_completion(log, err, str(model_path(model).resolve()), loaded.files,
                                                      settings, exchanges)
        run_completion(loaded, text, options, max_tokens=max_tokens, stop=stop or [], ignore_eos=ignore_eos,
                       verbose=verbose, show_probs=show_probs, alternatives=alternatives, on_end=on_end)


def run_completion(loaded: LoadedModel, text: str, options: SamplingOptions, *, max_tokens: int,
                   stop: list[str], ignore_eos: bool = False, verbose: bool = False, show_probs: bool = False,
                   alternatives: int = 0, on_end: Callable[[list[Exchange]], None] | None = None) -> None:
    """Generate from text and stream it to stdout (coloured by probability with show_probs on a terminal).

    ``on_end`` (the log) gets the prompt and the text when generation ends, also when it is cut short.
    """
    from chatgpt_cli.generate import Engine
    from chatgpt_cli.history import Exchange
    from chatgpt_cli.streaming import TextStream
    from chatgpt_cli.tokenizer import Tokenizer

    tok = Tokenizer()
    ids = tok.encode(text)
    engine = Engine(loaded.model)
    room = engine.room(max_tokens)
    if len(ids) > room:
        err(f"warning: the prompt is {len(ids)} tokens and the model's window is {engine.window}: "
            f"keeping its last {room} tokens")
        ids = ids[-room:]
    stream = TextStream(tok, stop)
    recorder, painter = None, None
    if show_probs or alternatives:
        from chatgpt_cli.insight import StepRecorder
        from chatgpt_cli.render import console

        recorder = StepRecorder(options, alternatives)
        painter = console() if show_probs and sys.stdout.isatty() else None
    t0 = time.perf_counter()
    first, n, finish = None, 0, "interrupted"
    try:
        for token in engine.generate(ids, max_tokens, options, stop_at_eot=not ignore_eos, on_step=recorder):
            n += 1
            if first is None:
                first = time.perf_counter() - t0
            if token == tok.eot and not ignore_eos:
                finish = "end"
                break
            piece = stream.push(token)
            if painter is not None:
                from chatgpt_cli.render import prob_style

                painter.print(piece, style=prob_style(recorder.last_prob), end="", markup=False)
                sys.stdout.flush()
            else:
                write_out(piece)
            if stream.stopped:
                finish = "stop"
                break
        else:
            finish = "length"
        write_out(stream.finish())
    finally:
        if on_end is not None:
            on_end([Exchange(text, stream.text, len(ids), n, finish, None if first is None else first * 1000,
                             engine.stats.decode_tok_s or None)])
        if stream.text and not stream.text.endswith("\n"):
            write_out("\n")
    if recorder is not None and alternatives:
        from chatgpt_cli.render import console, print_alternatives

        print_alternatives(console(), tok, recorder)
    if verbose:
        s = engine.stats
        err(f"prompt {s.prompt_tokens} tokens, prefill {s.prefill_tokens / max(s.prefill_seconds, 1e-9):.1f} tok/s; "
            f"first token after {first or 0:.3f}s; {s.decode_tokens + 1 if first else 0} tokens generated, "
            f"decode {s.decode_tok_s:.1f} tok/s")


def register(app: typer.Typer) -> None:
    app.command()(complete)

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
    JsonOpt,
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

MAX_SAMPLES = 128

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
    num_samples: Annotated[int, typer.Option("--num-samples", "-N", help=(
        "Generate N samples of the prompt together (one prefill, one batch); each is printed when it ends, "
        "the samples separated by a line ---."))] = 1,
    as_json: JsonOpt = False,
    logprobs: Annotated[int, typer.Option("--logprobs", help=(
        "With --json: each token's log-probability and the K most likely tokens at its step (0..20)."))] = 0,
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
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise UsageError(f"--num-samples must be in [1, {MAX_SAMPLES}], not {num_samples}")
        if not 0 <= logprobs <= 20:
            raise UsageError(f"--logprobs must be in [0, 20], not {logprobs}")
        if logprobs and not as_json:
            raise UsageError("--logprobs needs --json")
        if (show_probs or alternatives) and (num_samples > 1 or as_json):
            raise UsageError("--show-probs and --alternatives show one streamed sample: not with -N > 1 or --json")
        from chatgpt_cli.sampling import from_cli
        from chatgpt_cli.tokenizer import Tokenizer

        options = from_cli(sampling or {}, Tokenizer().encode, Tokenizer.n_vocab, seed=seed)
        text = prompt_text(prompt)
        loaded = load(model, dtype, device, verbose)
        from chatgpt_cli.chatlog import log_completion, open_log

        log, on_end = open_log(no_log, err), None
        if log is not None:
            settings = {**(sampling or {}), "max_tokens": max_tokens, "seed": seed, "stop": stop or [],
                        "ignore_eos": ignore_eos}
            on_end = lambda exchanges: log_completion(log, err, str(model_path(model).resolve()), loaded.files,
                                                      settings, exchanges)
        if num_samples == 1 and not as_json:
            run_completion(loaded, text, options, max_tokens=max_tokens, stop=stop or [], ignore_eos=ignore_eos,
                           verbose=verbose, show_probs=show_probs, alternatives=alternatives, on_end=on_end)
        else:
            run_samples(loaded, text, options, num_samples, max_tokens=max_tokens, stop=stop or [],
                        ignore_eos=ignore_eos, verbose=verbose, as_json=as_json, logprobs=logprobs, on_end=on_end)


def run_completion(loaded: LoadedModel, text: str, options: SamplingOptions, *, max_tokens: int,
                   stop: list[str], ignore_eos: bool = False, verbose: bool = False, show_probs: bool = False,
                   alternatives: int = 0, on_end: Callable[[list[Exchange]], None] | None = None) -> None:
    """Generate from text and stream it to stdout (coloured by probability with show_probs on a terminal).

    ``on_end`` (the log) gets the prompt and the text when generation ends, also when it is cut short.
    """
    from chatgpt_cli.history import Exchange
    from chatgpt_cli.streaming import TextStream

    tok, engine, ids = prepare(loaded, text, max_tokens)
    stream = TextStream(tok, stop)
    recorder, painter = None, None
    if show_probs or alternatives:
        from chatgpt_cli.insight import StepRecorder
        from chatgpt_cli.render import console

        recorder = StepRecorder(options, alternatives)
        painter = console() if show_probs and sys.stdout.isatty() else None
    t0 = time.perf_counter()
    first, n, finish = None, 0, "interrupted"
    shown = ""  # what has been written: the log holds no more than that, even when cut short mid-token
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
            shown += piece
            if stream.stopped:
                finish = "stop"
                break
        else:
            finish = "length"
        write_out(stream.finish())
        shown = stream.text
    finally:
        if on_end is not None:
            on_end([Exchange(text, shown, len(ids), n, finish, None if first is None else first * 1000,
                             engine.stats.decode_tok_s or None)])
        if shown and not shown.endswith("\n"):
            write_out("\n")
    if recorder is not None and alternatives:
        from chatgpt_cli.render import console, print_alternatives

        print_alternatives(console(), tok, recorder)
    if verbose:
        s = engine.stats
        err(f"prompt {s.prompt_tokens} tokens, prefill {s.prefill_tokens / max(s.prefill_seconds, 1e-9):.1f} tok/s; "
            f"first token after {first or 0:.3f}s; {n} tokens generated, "
            f"decode {s.decode_tok_s:.1f} tok/s")


def prepare(loaded: LoadedModel, text: str, max_tokens: int):
    """The tokenizer, an engine, and the prompt's tokens cut to the window (with a warning)."""
    from chatgpt_cli.generate import Engine
    from chatgpt_cli.tokenizer import Tokenizer

    tok = Tokenizer()
    ids = tok.encode(text)
    engine = Engine(loaded.model)
    room = engine.room(max_tokens)
    if len(ids) > room:
        err(f"warning: the prompt is {len(ids)} tokens and the model's window is {engine.window}: "
            f"keeping its last {room} tokens")
        ids = ids[-room:]
    return tok, engine, ids


def run_samples(loaded: LoadedModel, text: str, options: SamplingOptions, n: int, *, max_tokens: int,
                stop: list[str], ignore_eos: bool = False, verbose: bool = False, as_json: bool = False,
                logprobs: int = 0, on_end: Callable[[list[Exchange]], None] | None = None) -> None:
    """n samples decoded as one batch: each printed as it ends, then a line ---; or one JSON document.

    ``on_end`` (the log) gets one exchange per sample that ended.
    """
    import json

    from chatgpt_cli.completion import Timings, samples
    from chatgpt_cli.completion import as_json as json_document
    from chatgpt_cli.history import Exchange

    tok, engine, ids = prepare(loaded, text, max_tokens)
    timings = Timings()
    found = []
    try:
        for s in samples(engine, tok, ids, options, n, max_tokens, stop, ignore_eos, logprobs, timings):
            if not as_json:  # each sample on lines of its own, a line --- between two
                write_out(("---\n" if found else "") + s.text + ("" if s.text.endswith("\n") else "\n"))
            found.append(s)
    finally:
        if on_end is not None and found:
            finish = {"eos": "end"}  # the log's name for it, as chat's
            on_end([Exchange(text, s.text, len(ids), len(s.tokens), finish.get(s.finish_reason, s.finish_reason),
                             timings.first_token_s * 1000 or None, timings.decode_tok_s or None) for s in found])
    if as_json:
        name = str(loaded.files[0].parent if len(loaded.files) > 1 else loaded.files[0])
        write_out(json.dumps(json_document(tok, name, len(engine.fit(ids)), found, timings, logprobs),
                             ensure_ascii=False) + "\n")
    if verbose:
        s = engine.stats
        err(f"prompt {s.prompt_tokens} tokens; {n} samples; first token after {timings.first_token_s:.3f}s; "
            f"{s.decode_tokens} tokens decoded in batch, {s.decode_tok_s:.1f} tok/s")


def register(app: typer.Typer) -> None:
    app.command()(complete)

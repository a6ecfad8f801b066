"""The command line: a thin layer over the library. Errors become one line on stderr at this edge.

torch is imported only inside the commands that run a model, so --help and --version are quick.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from chatgpt_cli import __version__
from chatgpt_cli.errors import ChatGPTCliError, UsageError
from chatgpt_cli.resources import shipped

if TYPE_CHECKING:
    from chatgpt_cli.weights import LoadedModel

STDIN_CAP = 16 * 1024 * 1024  # bytes of piped input read at most
ENV_MODEL = "CHATGPT_CLI_MODEL"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Chat with and generate text from GPT-2 models, locally.")


def version_callback(value: bool) -> None:
    if value:
        print(f"chatgpt-cli {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Chat with and generate text from GPT-2 models, locally."""


# Options shared by the commands that run a model.
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help=(
    f"A .safetensors file or a model directory. Default: ${ENV_MODEL}, else the bundled model."))]
DtypeOpt = Annotated[str, typer.Option(help=(
    "auto (16-bit weights in bfloat16 on a CPU that has it natively, else float32; float32 weights as "
    "stored, but in 16 bits on a CUDA GPU), float32, bfloat16, float16, or int8 (int8 weights, bfloat16 "
    "activations)."))]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy; higher = more random.")]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Sample from the k most likely tokens (0 = off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Sample from the smallest set with this much "
                                                       "probability (1 = off).")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed for a reproducible run.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="End at this text (repeatable; not printed).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Timings and details on stderr.")]
ShowProbsOpt = Annotated[bool, typer.Option("--show-probs", help=(
    "On a terminal, colour each token by the probability it was sampled with (red unlikely, green likely)."))]


def err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@contextmanager
def guarded() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and the right exit status."""
    try:
        yield
    except ChatGPTCliError as e:
        err(f"error: {e}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while leaving changes nothing
        err("\ninterrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        quiet_broken_pipe()
        raise typer.Exit(0) from None


def quiet_broken_pipe() -> None:
    """The reader went away (`| head`): stop quietly, without Python's complaint at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def model_path(model: str | None) -> Path:
    if model:
        return Path(model)
    if os.environ.get(ENV_MODEL):
        return Path(os.environ[ENV_MODEL])
    default = shipped("weights")
    if (default / "model.safetensors").is_file():
        return default
    raise ChatGPTCliError(f"no model given and no default model installed: pass --model FILE_OR_DIR "
                          f"or set {ENV_MODEL}")


def load(model: str | None, dtype: str, device: str, verbose: bool) -> LoadedModel:
    t0 = time.perf_counter()
    from chatgpt_cli.memory import large_blocks_returned
    from chatgpt_cli.weights import load_model

    with warnings.catch_warnings(record=True) as caught, large_blocks_returned():
        warnings.simplefilter("always")
        loaded = load_model(model_path(model), dtype=dtype, device=device)
    for w in caught:
        err(f"warning: {w.message}")
    if verbose:
        err(f"loaded {', '.join(map(str, loaded.files))} ({loaded.n_params:,} parameters, "
            f"{loaded.precision}, {loaded.device}) in {time.perf_counter() - t0:.2f}s")
    return loaded


def read_stdin() -> str:
    data = sys.stdin.buffer.read(STDIN_CAP + 1)
    if len(data) > STDIN_CAP:
        raise ChatGPTCliError(f"standard input is larger than {STDIN_CAP // (1024 * 1024)} MB; "
                              "pass a shorter text (only the last part of a long text fits the window anyway)")
    return data.decode("utf-8", errors="replace")


def prompt_text(prompt: str | None) -> str:
    """PROMPT; with no PROMPT (or '-') stdin; with both piped stdin and PROMPT, stdin then PROMPT."""
    if prompt in (None, "-"):
        return "" if sys.stdin.isatty() else read_stdin()
    if not sys.stdin.isatty() and not sys.stdin.closed and has_stdin_data():
        return read_stdin() + prompt
    return prompt


def has_stdin_data() -> bool:
    """True when stdin is a pipe or a file (read to its end), not a terminal, /dev/null or a socket."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode)


def write_out(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


@app.command()
def complete(
    prompt: Annotated[Optional[str], typer.Argument(help="Text to continue; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 200,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Go on past end-of-text.")] = False,
    show_probs: ShowProbsOpt = False,
    alternatives: Annotated[int, typer.Option(help="After the text, list the N most likely tokens of each step.")] = 0,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Continue a prompt; the generated text streams to stdout."""
    handle_sigterm()
    with guarded():
        if max_tokens < 0:
            raise UsageError(f"--max-tokens must be >= 0, not {max_tokens}")
        if alternatives < 0:
            raise UsageError(f"--alternatives must be >= 0, not {alternatives}")
        from chatgpt_cli.sampling import check_options

        check_options(temperature, top_k, top_p, seed)
        text = prompt_text(prompt)
        loaded = load(model, dtype, device, verbose)
        run_completion(loaded, text, max_tokens, temperature, top_k, top_p, seed, stop or [], ignore_eos, verbose,
                       show_probs, alternatives)


def run_completion(loaded: LoadedModel, text: str, max_tokens: int, temperature: float, top_k: int, top_p: float,
                   seed: int | None, stop: list[str], ignore_eos: bool, verbose: bool,
                   show_probs: bool = False, alternatives: int = 0) -> None:
    from chatgpt_cli.generate import Engine
    from chatgpt_cli.sampling import SamplingOptions
    from chatgpt_cli.streaming import TextStream
    from chatgpt_cli.tokenizer import Tokenizer

    tok = Tokenizer()
    ids = tok.encode(text)
    engine = Engine(loaded.model)
    room = engine.window - min(max_tokens, engine.window // 2)
    if len(ids) > room:
        err(f"warning: the prompt is {len(ids)} tokens and the model's window is {engine.window}: "
            f"keeping its last {room} tokens")
        ids = ids[-room:]
    options = SamplingOptions(temperature, top_k, top_p, seed)
    stream = TextStream(tok, stop)
    recorder, painter = None, None
    if show_probs or alternatives:
        from chatgpt_cli.cli_inspect import StepRecorder, console, prob_style

        recorder = StepRecorder(alternatives, temperature, top_k, top_p)
        painter = console() if show_probs and sys.stdout.isatty() else None
    t0 = time.perf_counter()
    first = None
    try:
        for token in engine.generate(ids, max_tokens, options, stop_at_eot=not ignore_eos, on_step=recorder):
            if first is None:
                first = time.perf_counter() - t0
            if token == tok.eot and not ignore_eos:
                break
            piece = stream.push(token)
            if painter is not None:
                painter.print(piece, style=prob_style(recorder.last_prob), end="", markup=False)
                sys.stdout.flush()
            else:
                write_out(piece)
            if stream.stopped:
                break
        write_out(stream.finish())
    finally:
        if stream.text and not stream.text.endswith("\n"):
            write_out("\n")
    if recorder is not None and alternatives:
        from chatgpt_cli.cli_inspect import console, print_alternatives

        print_alternatives(console(), tok, recorder)
    if verbose:
        s = engine.stats
        err(f"prompt {s.prompt_tokens} tokens, prefill {s.prefill_tokens / max(s.prefill_seconds, 1e-9):.1f} tok/s; "
            f"first token after {first or 0:.3f}s; {s.decode_tokens + 1 if first else 0} tokens generated, "
            f"decode {s.decode_tok_s:.1f} tok/s")


@app.command()
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


@app.command()
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
                ("unembedding", "tied to wte" if loaded.model.lm_head is None else "own lm_head.weight"),
                ("dtype", loaded.precision), ("device", str(loaded.device))]
        width = max(len(k) for k, _ in rows)
        write_out("".join(f"{k:<{width}}  {v}\n" for k, v in rows))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except BrokenPipeError:
        quiet_broken_pipe()
        sys.exit(0)
    except KeyboardInterrupt:  # outside any command (while importing, say)
        err("\ninterrupted")
        sys.exit(130)


# The other commands live beside this file; importing them registers them on `app`.
from chatgpt_cli import cli_bench, cli_chat, cli_inspect  # noqa: E402,F401

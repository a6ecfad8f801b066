"""What every command needs at the edge: errors as one line, loading the model, stdin, stdout.

torch is imported only inside ``load``, so --help and --version stay quick.
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
from typing import TYPE_CHECKING

import typer

from chatgpt_cli.cli_options import ENV_MODEL
from chatgpt_cli.errors import ChatGPTCliError, OutputError, UsageError, WeightsError
from chatgpt_cli.render import WriteFailed
from chatgpt_cli.resources import shipped

if TYPE_CHECKING:
    from chatgpt_cli.weights import LoadedModel

STDIN_CAP = 16 * 1024 * 1024  # bytes of piped input read at most


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
    except WriteFailed as e:  # rich could not write a table: a full disk, a closed descriptor
        quiet_broken_pipe()
        err(f"error: cannot write output: {e}")
        raise typer.Exit(1) from None


def quiet_broken_pipe() -> None:
    """The reader went away (`| head`), or stdout failed: stop quietly, without Python's complaint
    at exit (its last flush goes to /dev/null)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def model_path(model: str | None) -> Path:
    if model is not None:
        if not model.strip():
            raise UsageError("--model is empty: give a .safetensors file or a model directory")
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
    from chatgpt_cli.weights import check_usable, load_model

    path = model_path(model)
    try:
        with warnings.catch_warnings(record=True) as caught, large_blocks_returned():
            warnings.simplefilter("always")
            loaded = load_model(path, dtype=dtype, device=device)
        check_usable(loaded.config, path)
    except WeightsError as e:
        if model is None and os.environ.get(ENV_MODEL):  # say where the path came from
            raise WeightsError(f"{e} (from ${ENV_MODEL})") from None
        raise
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
    try:
        sys.stdout.buffer.write(text.encode("utf-8", errors="replace"))
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError, AttributeError) as e:  # a full disk, a closed or odd stdout
        quiet_broken_pipe()
        raise OutputError(f"cannot write output: {getattr(e, 'strerror', None) or e}") from None


def pages(share: float) -> str:
    """The share of the weights in huge pages, and why where it is low."""
    from chatgpt_cli.hugepages import setting

    if share >= 0.5:
        return f"{share:.0%}"
    why = "transparent huge pages are off" if setting() == "never" else "Linux gave too few"
    return f"{share:.0%} ({why}: decode is slower, see README)"

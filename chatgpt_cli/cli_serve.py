"""The `serve` command: an OpenAI-compatible API for the model (serve.py), on the optional [serve] extra."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from chatgpt_cli.cli_options import DeviceOpt, DtypeOpt, ModelOpt, VerboseOpt
from chatgpt_cli.cli_plumbing import err, guarded, load
from chatgpt_cli.errors import ChatGPTCliError, UsageError
from chatgpt_cli.resources import shipped

INSTALL_HINT = "serve needs FastAPI and uvicorn: pip install 'chatgpt-cli[serve]'"


def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (any other than 127.0.0.1 exposes the model).")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHATGPT_CLI_API_KEY", show_envvar=True, help=(
        "Require this key (Authorization: Bearer KEY) on /v1 requests."))] = None,
    template: Annotated[str, typer.Option(help="The chat template: a name (default, qa) or a .toml file.")] = (
        "default"),
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help=(
        "Allow browser pages from this origin (repeatable; none by default)."))] = None,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait while one runs (then 429).")] = 16,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    with guarded():
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise ChatGPTCliError(INSTALL_HINT) from None
        if not 0 <= port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, not {port}")
        if max_queue < 0:
            raise UsageError(f"--max-queue must be >= 0, not {max_queue}")
        from chatgpt_cli.template import load_template

        tmpl = load_template(template)
        loaded = load(model, dtype, device, verbose)
        from chatgpt_cli.serve import bind, build, run, security_warning
        from chatgpt_cli.serve_app import ServeConfig

        first = loaded.files[0]
        name = "bundled" if first.parent == shipped("weights") else (
            first.parent.name if len(loaded.files) > 1 or first.name == "model.safetensors" else first.stem)
        warning = security_warning(host, api_key)
        if warning:
            err(warning)
        where = f"[{host}]" if ":" in host else host
        banner = lambda p: (f"chatgpt-cli serve: {name} ({loaded.n_params:,} parameters, {loaded.precision}, "
                            f"{loaded.device}) at http://{where}:{p}/v1 · Ctrl-C stops")
        config = ServeConfig(name, tmpl, api_key or None, tuple(cors_origin or ()))
        try:
            sock = bind(host, port)
        except OSError as e:  # the port is taken, the address is not this machine's
            raise ChatGPTCliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        run(build(loaded.model, config, host, port, max_queue, banner), sock)


def register(app: typer.Typer) -> None:
    app.command()(serve)

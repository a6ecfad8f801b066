"""Running the API server: one engine worker, the app, and uvicorn, with a clean stop on Ctrl-C / SIGTERM.

On a signal the server stops taking connections, waiting requests get 503, the running one is cut
short at its next token with a proper end (finish_reason "length", then [DONE]), and it exits 0.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable

import uvicorn

from chatgpt_cli.generate import Engine
from chatgpt_cli.model import GPT
from chatgpt_cli.serve_app import ServeConfig, create_app
from chatgpt_cli.serve_engine import Worker

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def log_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Server(uvicorn.Server):
    """uvicorn's server that also closes the worker when told to stop, and says where it listens."""

    def __init__(self, config: uvicorn.Config, worker: Worker, banner: Callable[[int], str] | None) -> None:
        super().__init__(config)
        self.worker, self.banner = worker, banner

    def handle_exit(self, sig: int, frame) -> None:
        self.worker.close(timeout=0)  # cut the running job: its handler then ends its response
        super().handle_exit(sig, frame)

    @property
    def port(self) -> int:
        return self.servers[0].sockets[0].getsockname()[1] if self.servers else 0

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.banner is not None:
            log_line(self.banner(self.port))


def build(model: GPT, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, max_waiting: int = 16,
          banner: Callable[[int], str] | None = None, log: Callable[[str], None] = log_line) -> Server:
    """The server for this model (not yet running): ``run()`` it, or ``serve()`` it in a thread."""
    worker = Worker(Engine(model), max_waiting=max_waiting)
    app = create_app(worker, config, log)
    uv = uvicorn.Config(app, host=host, port=port, log_config=None, log_level="warning", access_log=False,
                        lifespan="off", timeout_graceful_shutdown=5)
    return Server(uv, worker, banner)


def security_warning(host: str, api_key: str | None) -> str | None:
    if host in LOCAL_HOSTS or api_key:
        return None
    return (f"warning: listening on {host} without an API key: anyone who can reach this machine can use it "
            "(pass --api-key or set CHATGPT_CLI_API_KEY)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (OSError when the address is taken or not this machine's)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def run(server: Server, sock: socket.socket) -> None:
    """Serve on sock until Ctrl-C or SIGTERM; then close the worker and return."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # uvicorn installs its own handlers while serving, then raises the signal again (ignored here)
        server.run(sockets=[sock])
    finally:
        server.worker.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log_line("stopped")

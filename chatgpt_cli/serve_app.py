"""The OpenAI-compatible HTTP API: FastAPI routes over the engine worker (serve_engine.py).

    GET  /health                 GET /v1/models
    POST /v1/completions         POST /v1/chat/completions   (stream: server-sent events, then [DONE])

Every error, ours or the framework's, is OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
The outer ASGI layer (``Guard``) checks the API key, caps the body size and logs one line per request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from chatgpt_cli.errors import ChatGPTCliError
from chatgpt_cli.serve_engine import Busy, Closing, Done, Failed, Job, Worker
from chatgpt_cli.serve_render import Renderer
from chatgpt_cli.serve_schema import (
    BadField,
    ChatBody,
    CompletionBody,
    chat_pieces,
    completion_prompts,
    parse,
    to_request,
)
from chatgpt_cli.template import Template

MAX_BODY = 1024 * 1024  # bytes


@dataclass(frozen=True)
class ServeConfig:
    model_id: str
    template: Template
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body: int = MAX_BODY


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


class Guard:
    """ASGI layer: API key (constant-time), body size limit (413), one log line per request."""

    def __init__(self, app, config: ServeConfig, log: Callable[[str], None]) -> None:
        self.app, self.config, self.log = app, config, log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, state = time.perf_counter(), [0], scope.setdefault("state", {})

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_logged)
        finally:
            self.log(f'{scope["method"]} {scope["path"]} {status[0] or "-"} '
                     f'{state.get("tokens", 0)} tokens {(time.perf_counter() - t0) * 1000:.0f} ms')

    async def _guarded(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.config.api_key
        if key and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return await error_response(401, "Incorrect API key provided.", code="invalid_api_key")(
                    scope, receive, send)
        too_big = error_response(413, f"the request body is larger than {self.config.max_body} bytes",
                                 code="request_too_large")
        length = headers.get("content-length", "0")
        if length.isascii() and length.isdigit() and int(length) > self.config.max_body:
            return await too_big(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.config.max_body:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: waits for the client to go away

        await self.app(scope, replay, send)


def create_app(worker: Worker, config: ServeConfig, log: Callable[[str], None] = print) -> Guard:
    app = FastAPI(title="chatgpt-cli", docs_url=None, redoc_url=None, openapi_url=None)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    tok, window = worker.tokenizer, worker.engine.window

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)

    @app.exception_handler(ChatGPTCliError)
    async def bad_request(request: Request, exc: ChatGPTCliError) -> JSONResponse:
        return error_response(400, str(exc), param=getattr(exc, "param", None), code=getattr(exc, "code", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log(f"error: {type(exc).__name__}: {exc}")
        return error_response(500, "internal error (logged on the server)", "server_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": config.model_id, "busy": worker.running is not None,
                "waiting": worker.waiting, "tokens_run": worker.tokens_run}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": 0,
                                            "owned_by": "chatgpt-cli"}]}

    def fit(prompts: list[list[int]], max_tokens: int | None, default: int | None) -> int:
        for ids in prompts:
            if len(ids) >= window:
                raise BadField("messages" if default is None else "prompt",
                               f"This model's maximum context length is {window} tokens, however your prompt is "
                               f"{len(ids)} tokens (at least one token must be left to generate).",
                               code="context_length_exceeded")
        if max_tokens is not None:
            return max_tokens
        return default if default is not None else window - max(len(ids) for ids in prompts)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(await request.body(), CompletionBody)
        if body.suffix:
            raise BadField("suffix", "suffix is not supported")
        if body.best_of not in (None, body.n or 1):
            raise BadField("best_of", "best_of must equal n (or be left out)")
        prompts = completion_prompts(body.prompt, tok.encode)
        max_tokens = fit(prompts, body.max_tokens, 16)
        req = replace(to_request(body, prompts, max_tokens, body.logprobs),
                      prompt_logprobs=bool(body.echo) and body.logprobs is not None)
        echo = [tok.decode(p) for p in prompts] if body.echo else None
        return await respond(request, req, body, "text_completion", echo=echo)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse(await request.body(), ChatBody)
        pieces = chat_pieces(config.template, body.messages)
        prompt = [i for piece in pieces for i in tok.encode(piece)]
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if asked == 0:
            raise BadField("max_tokens", "max_tokens: must be at least 1 for a chat completion")
        max_tokens = fit([prompt], asked, None)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        req = to_request(body, [prompt], max_tokens, logprobs, config.template.stop, config.template.sampling)
        return await respond(request, req, body, "chat.completion")

    async def respond(request: Request, req, body, kind: str, echo: list[str] | None = None):
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: object) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = Job(req, emit)
        try:
            worker.submit(job)
        except Busy as e:
            return error_response(429, str(e), "rate_limit_error", code="queue_full")
        except Closing as e:
            return error_response(503, str(e), "server_error", code="shutting_down")
        render = Renderer(kind, config.model_id, f"{'chatcmpl' if kind != 'text_completion' else 'cmpl'}-"
                          f"{uuid.uuid4().hex[:24]}", int(time.time()), tok, req.n, echo,
                          req.logprobs is not None)
        state = request.scope["state"]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, events, render, include_usage, state),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        watcher = asyncio.ensure_future(watch_disconnect(request, job))
        try:
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    return error_response(event.status, event.message, "server_error")
                render.add(event)
                if isinstance(event, Done):
                    state["tokens"] = event.prompt_tokens + event.completion_tokens
                    return render.whole()
        finally:
            job.cancelled.set()
            watcher.cancel()

    async def stream(job: Job, events: asyncio.Queue, render, include_usage: bool, state: dict) -> AsyncIterator[str]:
        try:
            for chunk in render.opening():
                yield sse(chunk)
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    yield sse(error_body(event.message, "server_error"))
                    break
                if isinstance(event, Done):
                    state["tokens"] = event.prompt_tokens + event.completion_tokens
                    if include_usage:
                        yield sse(render.usage_chunk(event))
                    break
                chunk = render.chunk(event)
                if chunk is not None:
                    yield sse(chunk)
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client went away, or the stream ended: no more tokens either way

    return Guard(app, config, log)


async def watch_disconnect(request: Request, job: Job) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


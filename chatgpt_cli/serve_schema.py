"""The request bodies of the OpenAI API as strict pydantic models, and their mapping onto the engine.

Unknown fields, wrong types and out-of-range values are refused (400) as OpenAI refuses them.
``to_request`` is the one place that turns the API's sampling fields into the engine's options.
"""

from __future__ import annotations

import json
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chatgpt_cli.errors import UsageError
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.serve_engine import Request
from chatgpt_cli.template import Template

MAX_TOKENS = 65536  # the most tokens one request may ask for
VOCAB = 50257


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(Strict):
    include_usage: Optional[bool] = None


class Sampling(Strict):
    """The fields completions and chat completions share (None means: the default)."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    n: Optional[int] = Field(None, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**63)
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # extensions, as llama.cpp and vLLM accept them
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4:
            raise BadField("stop", "stop: at most 4 stop sequences")
        return tuple(s for s in stops if s)


class CompletionBody(Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: Optional[bool] = None
    best_of: Optional[int] = Field(None, ge=1, le=16)
    suffix: Optional[str] = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ResponseFormat(Strict):
    type: Literal["text"]


class ChatBody(Sampling):
    messages: list[Message]
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS)
    response_format: Optional[ResponseFormat] = None


class BadField(UsageError):
    """A request the API refuses: 400 with ``param`` and ``code``."""

    def __init__(self, param: str | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


def is_type_tag(loc: object) -> bool:
    """pydantic names a union's member in an error's location ('str', 'list[int]'): not a field."""
    return isinstance(loc, str) and (loc in ("str", "int", "float", "bool") or "[" in loc)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse(raw: bytes, model: type[Strict]) -> Strict:
    """A request body -> its model, or BadField with OpenAI's wording of what is wrong."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except ValueError as e:  # includes bad UTF-8
        raise BadField(None, f"We could not parse the JSON body of your request ({e}).") from None
    if not isinstance(data, dict):
        raise BadField(None, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = max(e.errors(include_url=False), key=lambda err: len(err["loc"]))  # in a union: the deepest
        param = ".".join(str(p) for p in first["loc"] if not is_type_tag(p)) or None
        if first["type"] == "extra_forbidden":
            raise BadField(param, f"Unrecognized request argument supplied: {param}") from None
        if first["type"] == "missing":
            raise BadField(param, f"you must provide '{param}'") from None
        raise BadField(param, f"{param}: {first['msg']} (got {str(first.get('input'))[:60]!r})") from None


def logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit() and int(key) < VOCAB):
            raise BadField("logit_bias", f"logit_bias: keys must be token ids from 0 to {VOCAB - 1}, not {key[:20]!r}")
        if not -100 <= value <= 100:
            raise BadField("logit_bias", f"logit_bias: values must be between -100 and 100, not {value}")
        out.append((int(key), value))
    return tuple(out)


def to_request(body: Sampling, prompts: list[list[int]], max_tokens: int, logprobs: int | None,
               extra_stop: tuple[str, ...] = (), defaults: tuple[tuple[str, float], ...] = ()) -> Request:
    """The API's sampling fields -> the engine's request. OpenAI's defaults (temperature 1, top_p 1),
    and for the processors ``defaults`` (a chat template's [sampling]) where the body says nothing."""
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p < 1e-6 or temperature < 1e-6:  # the most likely token (sampling.py's filters fail on tiny values)
        temperature, top_p = 0.0, 1.0
    seed = None if body.seed is None else body.seed % 2**63
    given = {"repeat_penalty": body.repetition_penalty, "frequency_penalty": body.frequency_penalty,
             "presence_penalty": body.presence_penalty, "min_p": body.min_p}
    processors = {**dict(defaults), **{k: v for k, v in given.items() if v is not None}}
    for name in ("repeat_last_n", "no_repeat_ngram"):  # counts (a template's TOML may say 3.0)
        if name in processors:
            processors[name] = int(processors[name])
    options = SamplingOptions(temperature, max(body.top_k or 0, 0), top_p, seed, **processors,
                              logit_bias=logit_bias(body.logit_bias))
    return Request(prompts, max_tokens, options, n=body.n or 1, stop=extra_stop + body.stops(), logprobs=logprobs)


def completion_prompts(prompt: str | list, encode) -> list[list[int]]:
    """The prompt field (a text, texts, token ids, or lists of them) as token lists."""
    if isinstance(prompt, str):
        return [encode(prompt)]
    if not prompt:
        raise BadField("prompt", "prompt: must not be an empty list")
    if all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = [encode(p) if isinstance(p, str) else p for p in prompt]
    if len(prompts) > 16:
        raise BadField("prompt", "prompt: at most 16 prompts in one request")
    for ids in prompts:
        if any(not 0 <= i < VOCAB for i in ids):
            raise BadField("prompt", f"prompt: token ids must be between 0 and {VOCAB - 1}")
    return prompts


def chat_pieces(template: Template, messages: list[Message]) -> list[str]:
    """The conversation as the pieces of text the model continues, ending with the assistant's label."""
    if not messages:
        raise BadField("messages", "messages: must contain at least one message")
    pieces = [] if messages[0].role in ("system", "developer") else [template.render_system(template.system)]
    for m in messages:
        render = {"system": template.render_system, "developer": template.render_system,
                  "user": template.render_user, "assistant": template.render_reply}[m.role]
        pieces.append(render(m.text()))
    return pieces + [template.assistant_prefix]

"""Option declarations shared by the commands; imports only typer, so --help stays quick.

The sampling options are one group (``sampling_options``): a command that takes them gets them
all, with one definition each, and receives their values as a single dict, ``sampling``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

ENV_MODEL = "CHATGPT_CLI_MODEL"

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help=(
    f"A .safetensors file or a model directory. Default: ${ENV_MODEL}, else the bundled model."))]
DtypeOpt = Annotated[str, typer.Option(help=(
    "auto (bfloat16 on a CPU that has it natively, else float32; on a CUDA GPU 16 bits), float32 (exact, "
    "token for token with transformers), bfloat16, float16, int8 or int4 (quantized weights; see info)."))]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed for a reproducible run.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="End at this text (repeatable; not printed).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Timings and details on stderr.")]
ShowProbsOpt = Annotated[bool, typer.Option("--show-probs", help=(
    "On a terminal, colour each token by the probability it was sampled with (red unlikely, green likely)."))]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
NoLogOpt = Annotated[bool, typer.Option("--no-log", help="Do not keep this session in the conversation log.")]

# The sampling group: name -> its declaration. Each command chooses the defaults.
SAMPLING: dict[str, Any] = {
    "temperature": Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy; higher = more random.")],
    "top_k": Annotated[int, typer.Option("--top-k", "-k", help="Sample from the k most likely tokens (0 = off).")],
    "top_p": Annotated[float, typer.Option("--top-p", help="Sample from the smallest set with this much "
                                                           "probability (1 = off).")],
    "repeat_penalty": Annotated[float, typer.Option("--repeat-penalty", help=(
        "Divide the positive logits of recently seen tokens by this (multiply the negative ones); 1 = off."))],
    "repeat_last_n": Annotated[int, typer.Option("--repeat-last-n", help=(
        "How many recent tokens the repeat, frequency and presence penalties look at (-1 = all, 0 = off)."))],
    "frequency_penalty": Annotated[float, typer.Option("--frequency-penalty", help=(
        "Subtract this times a token's count in that window from its logit (-2..2; 0 = off)."))],
    "presence_penalty": Annotated[float, typer.Option("--presence-penalty", help=(
        "Subtract this from the logit of every token in that window (-2..2; 0 = off)."))],
    "no_repeat_ngram": Annotated[int, typer.Option("--no-repeat-ngram", help=(
        "Never repeat an n-gram of this size from the context (0 = off)."))],
    "min_p": Annotated[float, typer.Option("--min-p", help=(
        "Drop tokens less likely than this times the most likely one (0 = off)."))],
    "logit_bias": Annotated[Optional[list[str]], typer.Option("--logit-bias", help=(
        "TOKEN=BIAS, repeatable: add BIAS to a token's logit (TOKEN an id or a one-token text; "
        "BIAS -100..100, or -inf / ban)."))],
}
# What a command gets for the options it does not set a default for: each processor off.
OFF: dict[str, Any] = {"repeat_penalty": 1.0, "repeat_last_n": 64, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                       "no_repeat_ngram": 0, "min_p": 0.0, "logit_bias": None}


def sampling_options(**defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the sampling group in place of its ``sampling`` parameter.

    ``defaults`` sets the options' defaults (temperature, top_k and top_p must be given; the others
    are off unless set); the command is called with ``sampling={name: value, ...}``.
    """
    defaults = {**OFF, **defaults}
    if set(defaults) != set(SAMPLING):
        raise TypeError(f"sampling_options needs defaults for exactly {', '.join(SAMPLING)}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        group = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name],
                                   annotation=annotation) for name, annotation in SAMPLING.items()]
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            params += group if p.name == "sampling" else [p]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            sampling = {name: kwargs.pop(name) for name in SAMPLING}
            return fn(sampling=sampling, **kwargs)

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return wrap

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
    "auto (16-bit weights in bfloat16 on a CPU that has it natively, else float32; float32 weights as "
    "stored, but in 16 bits on a CUDA GPU), float32, bfloat16, float16, or int8 (int8 weights, bfloat16 "
    "activations)."))]
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
}


def sampling_options(**defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the sampling group in place of its ``sampling`` parameter.

    ``defaults`` sets each option's default (all of them must be given); the command is called
    with ``sampling={name: value, ...}``.
    """
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

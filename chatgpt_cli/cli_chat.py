"""The `chat` command: the conversation (chat.py) on a terminal or over a pipe (repl.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

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
from chatgpt_cli.cli_plumbing import err, guarded, handle_sigterm, load, model_path
from chatgpt_cli.errors import UsageError


# the processors default to the template's [sampling] table, else off
@sampling_options(temperature=0.7, top_k=40, top_p=0.95, repeat_penalty=None, repeat_last_n=None,
                  frequency_penalty=None, presence_penalty=None, no_repeat_ngram=None, min_p=None)
def chat(
    ctx: typer.Context,
    model: ModelOpt = None,
    continue_: Annotated[bool, typer.Option("--continue", "-c", help=(
        "Continue the latest logged chat: its template, system prompt, settings and transcript."))] = False,
    cid: Annotated[Optional[str], typer.Option("--cid", metavar="ID", help="Continue the logged chat ID.")] = None,
    no_log: NoLogOpt = False,
    template: Annotated[str, typer.Option(help="A template name (default, qa) or a .toml file.")] = "default",
    system: Annotated[Optional[str], typer.Option(help="Replace the template's system prompt.")] = None,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help=(
        "Print the exact text the model sees (and its token count) before each reply."))] = False,
    max_tokens: MaxTokensOpt = 120,
    sampling: dict[str, Any] | None = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    show_probs: ShowProbsOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Chat with the model: interactive on a terminal; over a pipe, one turn per input line.

    The repeat, frequency, presence, n-gram and min-p options default to the template's.
    """
    handle_sigterm()
    with guarded():
        from chatgpt_cli.chat import Chat, Settings
        from chatgpt_cli.chatlog import ChatRecorder, find, open_log
        from chatgpt_cli.history import open_existing
        from chatgpt_cli.sampling import parse_logit_bias
        from chatgpt_cli.template import load_template
        from chatgpt_cli.tokenizer import Tokenizer

        explicit = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        resumed = None
        if continue_ or cid is not None:  # what is given on the command line wins over what is restored
            if continue_ and cid is not None:
                raise UsageError("give --continue or --cid, not both")
            resumed = find(open_existing(), cid, continue_)
            template = template if "template" in explicit else resumed.template
            system = system if "system" in explicit else resumed.system
            if "model" not in explicit and resumed.model and Path(resumed.model).exists():
                model = resumed.model
        tmpl = load_template(template)
        given = {k: v for k, v in (sampling or {}).items() if v is not None}
        given["logit_bias"] = parse_logit_bias(given.get("logit_bias", ()), Tokenizer().encode, Tokenizer.n_vocab)
        values = {**dict(tmpl.sampling), **given, "max_tokens": max_tokens, "seed": seed}
        if resumed is not None:
            values.update({k: v for k, v in resumed.settings.items() if k not in explicit})
        settings = Settings(**values)
        if resumed is not None and resumed.stop is not None and "stop" not in explicit:
            tmpl = replace(tmpl, stop=tuple(resumed.stop))
        if stop:  # extra stop strings, beside the template's own
            tmpl = replace(tmpl, stop=tmpl.stop + tuple(s for s in stop if s))
        loaded = load(model, dtype, device, verbose)
        from chatgpt_cli.generate import Engine
        from chatgpt_cli.repl import PlainOutput, run_piped, run_terminal

        session = Chat(Engine(loaded.model), tmpl, settings, system=system, show_prompt=show_prompt)
        if resumed is not None:
            session.turns, session.first_in_window = resumed.turns, resumed.first_in_window
            err(f"(continuing conversation {resumed.cid}: {len(resumed.turns)} exchange(s))")
        log = open_log(no_log, err)
        if log is not None:
            session.log = ChatRecorder(log, err, str(model_path(model).resolve()), loaded.files,
                                       *((resumed.cid, len(resumed.turns)) if resumed else ()))
        if sys.stdin.isatty() and sys.stdout.isatty():
            from chatgpt_cli.render import console

            banner = (f"chatgpt-cli chat · {loaded.files[0].parent if len(loaded.files) > 1 else loaded.files[0]} · "
                      f"template {tmpl.name} · /help for commands · Ctrl-D to leave")
            if show_probs:
                from chatgpt_cli.insight import StepRecorder

                session.on_step = StepRecorder(settings.sampling())
            # NO_COLOR: no colour, and no other styling either
            run_terminal(session, console(highlight=True), banner)
        else:
            lines = (raw.decode("utf-8", errors="replace") for raw in sys.stdin.buffer)
            run_piped(session, lines, PlainOutput(sys.stdout, sys.stderr))


def register(app: typer.Typer) -> None:
    app.command()(chat)

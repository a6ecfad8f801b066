"""The chat's two faces: an interactive REPL on a terminal, and plain line-by-line chat over a pipe."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from rich.console import Console

from chatgpt_cli.chat import COMMANDS, Chat
from chatgpt_cli.errors import ChatGPTCliError, OutputError
from chatgpt_cli.render import prob_style

CONTINUE = "... "


class PlainOutput:
    """Piped: replies alone on stdout, one per line(s); notes and errors on stderr; no colour."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self._started = False
        self._space = ""  # trailing whitespace, held until more text follows it

    def _write(self, stream: TextIO, text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:  # a full disk: one line at the edge, not a traceback
            raise OutputError(f"cannot write output: {getattr(e, 'strerror', None) or e}") from None

    def reply_text(self, text: str) -> None:
        """Print the reply as it streams, without its leading and trailing whitespace."""
        if not self._started:  # the reply's first token usually starts with a space
            text = text.lstrip()
            self._started = bool(text)
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body):]
        self._write(self.out, body)

    def reply_end(self, footer: str, cut_short: bool) -> None:
        self._started, self._space = False, ""
        self._write(self.out, "\n")
        if cut_short:
            self._write(self.err, "(cut short)\n")

    def no_reply(self) -> None:
        """An input line that got no reply still gets its (empty) output line: lines stay aligned."""
        self.reply_end("", False)

    def info(self, text: str) -> None:
        self._write(self.err, text + "\n")

    def error(self, text: str) -> None:
        self._write(self.err, f"error: {text}\n")


class TerminalOutput:
    """A terminal: the label in bold, the reply streamed as sampled, a dim footer after it."""

    def __init__(self, console: Console, label: str, colour_by=None) -> None:
        self.console, self.label, self.colour_by = console, label, colour_by
        self._started = False

    def reply_text(self, text: str) -> None:
        if not self._started:
            self.console.print(self.label, style="bold cyan", end="", markup=False, highlight=False)
            self._started = True
        recorder = self.colour_by
        if recorder is not None and recorder.steps:
            self.console.print(text, style=prob_style(recorder.last_prob), end="", markup=False,
                               highlight=False)
        else:
            sys.stdout.write(text)
        sys.stdout.flush()

    def reply_end(self, footer: str, cut_short: bool) -> None:
        if not self._started:
            self.reply_text("")
        self._started = False
        sys.stdout.write("\n")
        if cut_short:
            self.console.print("[cut short]", style="yellow", markup=False, highlight=False)
        self.console.print(footer, style="dim", markup=False, highlight=False)

    def no_reply(self) -> None:
        pass

    def info(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False, highlight=False)

    def error(self, text: str) -> None:
        self.console.print(f"error: {text}", style="red", markup=False, highlight=False)


def handle(chat: Chat, message: str, out) -> bool:
    """One input: blank is skipped, a /command runs, anything else is a user turn. False: leave.

    "//" sends a message that starts with "/". An unknown /command is answered on stderr, and
    over a pipe with an empty output line, so replies keep lining up with the input lines."""
    if not message.strip():
        return True
    if message.startswith("/") and not message.startswith("//"):
        name = message.split(maxsplit=1)[0]
        if name not in COMMANDS and name not in ("/exit", "/quit"):
            out.error(f"unknown command {name}; /help lists them (start a message with // to send a /)")
            out.no_reply()
            return True
        return chat.command(message, out)
    try:
        chat.say(message.removeprefix("/"), out)
    except OutputError:
        raise
    except ChatGPTCliError as e:  # the conversation so far is kept
        out.error(str(e))
        out.no_reply()
    return True


def run_piped(chat: Chat, lines: TextIO, out: PlainOutput) -> None:
    """Each non-empty input line is one user turn (or a /command)."""
    for raw in lines:
        if not handle(chat, raw.rstrip("\r\n"), out):
            return


def history_file() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "chatgpt-cli" / "history"


def make_history(console: Console):
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    class SafeFileHistory(FileHistory):
        warned = False

        def store_string(self, string: str) -> None:
            try:
                super().store_string(string)
            except OSError as e:
                if not self.warned:
                    console.print(f"warning: cannot write the history file {self.filename}: {e.strerror}; "
                                  "history is kept for this session only", style="yellow", markup=False)
                    SafeFileHistory.warned = True

    path = history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)  # what you typed is as private as what /save writes
        return SafeFileHistory(str(path))
    except OSError as e:
        console.print(f"warning: cannot use the history file {path}: {e.strerror}; "
                      "history is kept for this session only", style="yellow", markup=False)
        return InMemoryHistory()


def read_message(session) -> str:
    """One message: a line; a trailing backslash continues it; a \"\"\" line opens a block until \"\"\"."""
    first = session.prompt("> ")
    lines: list[str] = []
    try:
        if first.strip() == '"""':  # Ctrl-D inside the block ends it (it does not leave the chat)
            while (line := session.prompt(CONTINUE)).strip() != '"""':
                lines.append(line)
            return "\n".join(lines)
        lines = [first]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(session.prompt(CONTINUE))
    except EOFError:
        pass
    return "\n".join(lines)


def run_terminal(chat: Chat, console: Console, banner: str) -> None:
    from prompt_toolkit import PromptSession

    session = PromptSession(history=make_history(console))
    out = TerminalOutput(console, chat.template.assistant_prefix, colour_by=chat.on_step)
    console.print(banner, style="dim", markup=False, highlight=False)
    interrupts = 0
    while True:
        try:
            message = read_message(session)
        except KeyboardInterrupt:  # what was typed is abandoned: not kept in the history file
            interrupts += 1
            if interrupts >= 2:
                break
            console.print("(Ctrl-C again, Ctrl-D or /exit to leave)", style="dim")
            continue
        except EOFError:
            break
        interrupts = 0
        try:
            if not handle(chat, message, out):
                break
        except KeyboardInterrupt:
            out.reply_end("", cut_short=True)

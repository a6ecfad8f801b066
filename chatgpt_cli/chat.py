"""A conversation with a model that only continues text: the transcript, its commands, its replies.

The transcript is rendered with a template (template.py) and encoded piece by piece, so that each
turn's tokens are a prefix of the next turn's: the engine then runs only the new tokens. Terminal
and pipe handling live in repl.py; this module writes through a small ``Output`` interface.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

from chatgpt_cli.errors import ChatGPTCliError, UsageError
from chatgpt_cli.generate import prompt_room
from chatgpt_cli.history import Exchange
from chatgpt_cli.sampling import SamplingOptions, make_generator, parse_logit_bias
from chatgpt_cli.streaming import TextStream
from chatgpt_cli.template import Template, load_template
from chatgpt_cli.tokenizer import EOT, Tokenizer

SCHEMA = "chatgpt-cli/chat-v1"
HELP = """Commands:
  /help                 this list
  /reset                start over (keeps the system prompt and settings)
  /system TEXT          replace the system prompt (and start over)
  /set NAME VALUE       temperature, top_k, top_p, max_tokens, seed ("/set seed none" unseeds),
                        repeat_penalty, repeat_last_n, frequency_penalty, presence_penalty,
                        no_repeat_ngram, min_p, logit_bias TOKEN=BIAS ("/set logit_bias none" clears)
  /show                 settings, template and context used
  /retry                sample the last reply again
  /undo                 drop the last exchange
  /save FILE            save the conversation as JSON (never over an existing file)
  /save! FILE           save, replacing FILE if it exists
  /load FILE            load a conversation saved with /save
  /exit                 leave (or Ctrl-D)
A message that starts with / is sent by doubling it: //etc/hosts is a file? sends /etc/hosts ..."""


@dataclass(frozen=True)
class Settings:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    max_tokens: int = 120
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram: int = 0
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        """As strict as the command-line options: a saved file with a float seed or a boolean
        temperature is refused, not carried to the next reply."""
        for name in ("temperature", "top_p", "repeat_penalty", "frequency_penalty", "presence_penalty", "min_p"):
            value = getattr(self, name)
            if not is_number(value):
                raise UsageError(f"{name} must be a number, not {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("top_k", "max_tokens", "seed", "repeat_last_n", "no_repeat_ngram"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool)) and not (name == "seed" and value is None):
                raise UsageError(f"{name} must be a whole number, not {value!r}")
        object.__setattr__(self, "logit_bias", self.sampling().logit_bias)  # checks them all, and JSON lists -> tuples
        if self.max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, not {self.max_tokens}")

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(**{f.name: getattr(self, f.name) for f in fields(SamplingOptions)})


SETTING_KINDS = {"temperature": float, "top_k": int, "top_p": float, "max_tokens": int, "seed": int,
                 "repeat_penalty": float, "repeat_last_n": int, "frequency_penalty": float, "presence_penalty": float,
                 "no_repeat_ngram": int, "min_p": float, "logit_bias": str}


def is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:  # an int too large for a float
        return False
    return True


@dataclass
class Turn:
    user: str
    reply: str
    cut_short: bool = False


class Output(Protocol):
    def reply_text(self, text: str) -> None: ...  # a piece of the streamed reply
    def reply_end(self, footer: str, cut_short: bool) -> None: ...
    def info(self, text: str) -> None: ...  # command output, notes (dim on a terminal)
    def error(self, text: str) -> None: ...


class Recorder(Protocol):  # what chatlog.ChatRecorder offers: the conversation log kept in step
    def exchange(self, chat: Chat, exchange: Exchange) -> None: ...  # chat.turns[-1] just ended
    def dropped(self, chat: Chat) -> None: ...  # exchanges past len(chat.turns) are gone (/undo)
    def restarted(self, chat: Chat) -> None: ...  # a new conversation (/reset, /system, /load)
    def changed(self, chat: Chat) -> None: ...  # new settings (/set)


class Engine(Protocol):  # what generate.Engine offers the chat
    window: int
    def generate(self, prompt: list[int], max_new_tokens: int, options: SamplingOptions,
                 generator=None, stop_at_eot: bool = True, on_step=None): ...


@dataclass
class Chat:
    engine: Engine
    template: Template
    settings: Settings = field(default_factory=Settings)
    system: str | None = None  # None: the template's
    turns: list[Turn] = field(default_factory=list)
    show_prompt: bool = False
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    on_step: Callable | None = None  # sees each token's logits (the --show-probs view)
    log: Recorder | None = None  # the conversation log, if any

    def __post_init__(self) -> None:
        if self.system is None:
            self.system = self.template.system
        self.generator = make_generator(self.settings.seed)
        self.first_in_window = 0  # exchanges before this one did not fit the last prompt (but are kept)
        self._encoded: dict[tuple[int, str, str], list[int]] = {}  # each exchange's tokens, encoded once

    # --- the transcript -------------------------------------------------------------------
    def history(self, turns: list[Turn]) -> list[str]:
        """The system prompt and the finished exchanges, as pieces of text."""
        t = self.template
        pieces = [t.render_system(self.system)]
        for turn in turns:
            pieces += [t.render_user(turn.user), t.render_reply(turn.reply)]
        return pieces

    def transcript(self, turns: list[Turn], message: str) -> list[str]:
        """The pieces of text the model sees for the next reply, ending with the assistant's label."""
        return self.history(turns) + [self.template.render_user(message), self.template.assistant_prefix]

    def encode(self, pieces: list[str]) -> list[int]:
        return [i for piece in pieces for i in self.tokenizer.encode(piece)]

    def turn_ids(self, turn: Turn) -> list[int]:
        key = (id(self.template), turn.user, turn.reply)
        if key not in self._encoded:
            self._encoded[key] = self.encode([self.template.render_user(turn.user),
                                              self.template.render_reply(turn.reply)])
        return self._encoded[key]

    def window_start(self, budget: int) -> int:
        """The first exchange of the longest run of latest exchanges that fits in budget tokens.

        Each exchange is encoded once and the run grows from the newest: linear in the exchanges."""
        start, used = len(self.turns), 0
        while start > 0 and used + len(self.turn_ids(self.turns[start - 1])) <= budget:
            start -= 1
            used += len(self.turn_ids(self.turns[start]))
        return start

    @property
    def room(self) -> int:
        """Prompt tokens at most: the window less room for the reply."""
        return prompt_room(self.engine.window, self.settings.max_tokens)

    def fit(self, message: str, out: Output) -> list[int]:
        """Tokens for the next reply: the system prompt, the latest exchanges that fit, the message.

        The oldest whole exchanges are dropped when the window is too small (they come back when
        they fit again); the user's message is always there: the system prompt is cut before it."""
        room = self.room
        head = self.encode([self.template.render_system(self.system)])
        tail = self.encode([self.template.render_user(message), self.template.assistant_prefix])
        start = self.window_start(room - len(head) - len(tail))
        if start > self.first_in_window:
            out.info(f"(the conversation outgrew the {self.engine.window}-token window: the model no longer sees "
                     f"the oldest {start} exchange(s); the system prompt is kept, and /save keeps them all)")
        self.first_in_window = start
        ids = head + [i for turn in self.turns[start:] for i in self.turn_ids(turn)] + tail
        if len(ids) > room and len(tail) >= room:
            ids = tail[-room:]
            out.info(f"(the message is too long for the window: kept its last {room} tokens, "
                     "without the system prompt)")
        elif len(ids) > room:
            keep = room - len(tail)
            ids = head[:keep] + tail
            out.info(f"(the system prompt is too long for the window: kept its first {keep} of {len(head)} tokens)")
        return ids

    def context(self) -> tuple[int, int]:
        """(exchanges the model sees, tokens they take with the system prompt, at most the window)."""
        head = len(self.encode([self.template.render_system(self.system)]))
        start = self.window_start(self.room - head)
        used = head + sum(len(self.turn_ids(t)) for t in self.turns[start:])
        return len(self.turns) - start, min(used, self.engine.window)

    # --- replies ----------------------------------------------------------------------------
    def say(self, message: str, out: Output) -> Turn:
        ids = self.fit(message, out)
        if self.show_prompt:
            out.info(f"--- prompt ({len(ids)} tokens) ---\n{self.tokenizer.decode(ids)}\n---")
        stream = TextStream(self.tokenizer, self.template.stop)
        t0, n, cut, finish, first = time.perf_counter(), 0, False, "length", None
        try:
            for token in self.engine.generate(ids, self.settings.max_tokens, self.settings.sampling(),
                                              self.generator, on_step=self.on_step):
                n += 1
                first = first or time.perf_counter()
                if token == EOT:
                    finish = "end"
                    break
                out.reply_text(stream.push(token))
                if stream.stopped:
                    finish = "stop"
                    break
            out.reply_text(stream.finish(keep_partial_stop=False))
        except KeyboardInterrupt:
            cut, finish = True, "interrupted"
        end = time.perf_counter()
        seconds = end - t0
        turn = Turn(message, stream.text.strip(), cut)
        self.turns.append(turn)
        out.reply_end(f"{n} tokens · {n / seconds if seconds else 0:.1f} tok/s · "
                      f"context {self.context()[1]}/{self.engine.window}", cut)
        if self.log is not None:
            self.log.exchange(self, Exchange(
                message, turn.reply, len(ids), n, finish, None if first is None else (first - t0) * 1000,
                (n - 1) / (end - first) if first is not None and n > 1 and end > first else None,
                self.first_in_window))
        return turn

    # --- commands ---------------------------------------------------------------------------
    def command(self, line: str, out: Output) -> bool:
        """Run a /command; False means leave."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("/exit", "/quit"):
                return False
            handler = COMMANDS.get(name)
            if handler is None:
                out.error(f"unknown command {name}; /help lists them")
            else:
                handler(self, arg, out)
        except ChatGPTCliError as e:
            out.error(str(e))
        return True

    def cmd_help(self, arg: str, out: Output) -> None:
        out.info(HELP)

    def cmd_reset(self, arg: str, out: Output) -> None:
        self.turns, self.first_in_window = [], 0
        self.restarted()
        out.info("(conversation cleared)")

    def cmd_system(self, arg: str, out: Output) -> None:
        if not arg:
            raise UsageError(f"usage: /system TEXT (now: {self.system!r})")
        self.system, self.turns, self.first_in_window = arg, [], 0
        self.restarted()
        out.info("(system prompt replaced; conversation cleared)")

    def cmd_set(self, arg: str, out: Output) -> None:
        key, _, value = arg.partition(" ")
        kinds = SETTING_KINDS
        if key not in kinds or not value.strip():
            raise UsageError(f"usage: /set {'|'.join(kinds)} VALUE")
        try:
            if key == "logit_bias":  # adds one TOKEN=BIAS; none clears them
                parsed = () if value.strip().lower() == "none" else self.settings.logit_bias + parse_logit_bias(
                    [value.strip()], self.tokenizer.encode, self.tokenizer.n_vocab)
            else:
                parsed = None if key == "seed" and value.strip().lower() == "none" else kinds[key](value)
        except ValueError:
            raise UsageError(f"/set {key}: {value.strip()!r} is not a valid {kinds[key].__name__}") from None
        self.settings = replace(self.settings, **{key: parsed})
        if key == "seed":
            self.generator = make_generator(parsed)
        if self.log is not None:
            self.log.changed(self)
        out.info(f"({key} = {parsed})")

    def cmd_show(self, arg: str, out: Output) -> None:
        s = self.settings
        seen, used = self.context()
        out.info(f"template: {self.template.name} ({self.template.description})\n"
                 f"system: {self.system}\n"
                 f"temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, "
                 f"max_tokens {s.max_tokens}, seed {s.seed}\n"
                 f"repeat_penalty {s.repeat_penalty}, repeat_last_n {s.repeat_last_n}, "
                 f"frequency_penalty {s.frequency_penalty}, presence_penalty {s.presence_penalty}, "
                 f"no_repeat_ngram {s.no_repeat_ngram}, min_p {s.min_p}, logit_bias {list(s.logit_bias)}\n"
                 f"exchanges: {len(self.turns)} ({seen} in the window); "
                 f"context used: {used}/{self.engine.window} tokens")

    def cmd_retry(self, arg: str, out: Output) -> None:
        if not self.turns:
            raise UsageError("nothing to retry yet")
        last = self.turns.pop()
        self.say(last.user, out)

    def cmd_undo(self, arg: str, out: Output) -> None:
        if not self.turns:
            raise UsageError("nothing to undo")
        self.turns.pop()
        if self.log is not None:
            self.log.dropped(self)
        out.info("(last exchange dropped)")

    def cmd_save(self, arg: str, out: Output, force: bool = False) -> None:
        if not arg:
            raise UsageError("usage: /save FILE (or /save! FILE to replace it)")
        path = Path(arg).expanduser()
        if not force and os.path.lexists(path):
            raise UsageError(f"{arg} exists; nothing saved (/save! {arg} replaces it)")
        save_json(path, self.to_json())
        out.info(f"(saved {len(self.turns)} exchange(s) to {arg})")

    def cmd_load(self, arg: str, out: Output) -> None:
        if not arg:
            raise UsageError("usage: /load FILE")
        self.load_json(read_json(Path(arg).expanduser()))
        self.restarted()
        out.info(f"(loaded {len(self.turns)} exchange(s) from {arg})")

    def restarted(self) -> None:
        if self.log is not None:
            self.log.restarted(self)

    # --- files ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"schema": SCHEMA, "template": self.template.name, "system": self.system,
                "settings": asdict(self.settings), "turns": [asdict(t) for t in self.turns]}

    def load_json(self, data: object) -> None:
        """Replace the conversation with a saved one; on any error nothing changes."""
        try:
            assert isinstance(data, dict) and data.get("schema") == SCHEMA
            template = load_template(str(data["template"]))
            assert isinstance(data["system"], str)
            settings = Settings(**data["settings"])
            turns = [Turn(str(t["user"]), str(t["reply"]), bool(t.get("cut_short", False))) for t in data["turns"]]
            assert all(isinstance(t["user"], str) and isinstance(t["reply"], str) for t in data["turns"])
        except (AssertionError, KeyError, TypeError, AttributeError) as e:
            raise ChatGPTCliError(f"not a chatgpt-cli chat file ({type(e).__name__}: {e})"
                                  if str(e) else "not a chatgpt-cli chat file") from None
        self.template, self.system, self.settings, self.turns = template, data["system"], settings, turns
        self.first_in_window, self._encoded = 0, {}
        self.generator = make_generator(settings.seed)


COMMANDS = {f"/{name[4:]}": fn for name, fn in vars(Chat).items() if name.startswith("cmd_")}
COMMANDS["/save!"] = lambda chat, arg, out: chat.cmd_save(arg, out, force=True)


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_bytes().decode("utf-8", errors="replace"))
    except FileNotFoundError:
        raise ChatGPTCliError(f"no such file: {path}") from None
    except (OSError, json.JSONDecodeError, RecursionError) as e:
        raise ChatGPTCliError(f"cannot read {path}: {e}") from None


def save_json(path: Path, data: dict) -> None:
    """Write atomically (a temporary file, then rename) and readable by the owner only."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:  # lone surrogates: replaced
                json.dump(data, f, indent=2, ensure_ascii=False)
                f.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ChatGPTCliError(f"cannot save to {path}: {e.strerror or e}") from None

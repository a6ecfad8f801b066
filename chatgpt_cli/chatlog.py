"""The conversation log kept in step with a chat (and a completion), and a logged chat brought back.

A failure of the log never costs a reply: it is reported once, through ``warn``, and the session
goes on unlogged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from chatgpt_cli.chat import Chat, Settings, Turn
from chatgpt_cli.errors import UsageError
from chatgpt_cli.history import Exchange, Log, LogError, db_path, logging_state

Warn = Callable[[str], None]


def open_log(no_log: bool, warn: Warn) -> Log | None:
    """The log to write to, or None (turned off, or unusable: then one warning)."""
    on, _ = logging_state(no_log)
    if not on:
        return None
    try:
        return Log(db_path())
    except LogError as e:
        warn(f"warning: {e}; not logging this session")
        return None


class Sink:
    """Writes to the log until the first failure; after it, one warning and nothing more."""

    def __init__(self, log: Log | None, warn: Warn) -> None:
        self.log, self.warn = log, warn

    def write(self, fn: Callable[[Log], None]) -> bool:
        if self.log is None:
            return False
        try:
            with self.log.transaction():
                fn(self.log)
            return True
        except (sqlite3.Error, OSError, LogError) as e:
            self.warn(f"warning: cannot write to the conversation log {self.log.path}: {e}; "
                      "not logging the rest of this session")
            self.log.close()
            self.log = None
            return False

    def weights_hash(self, files: Sequence[Path]) -> str | None:
        """Computed before a transaction, not inside one, so other chats are not kept waiting."""
        try:
            return self.log.weights_hash(files) if self.log is not None and files else None
        except (sqlite3.Error, OSError):
            return None  # the write that follows reports a broken log


def chat_settings(chat: Chat) -> dict:
    return {**asdict(chat.settings), "stop": list(chat.template.stop)}


class ChatRecorder(Sink):
    """The chat's Recorder: each exchange in its own transaction; /undo and /retry reflected."""

    def __init__(self, log: Log | None, warn: Warn, model: str | None, files: Sequence[Path] = (),
                 cid: str | None = None, synced: int = 0) -> None:
        super().__init__(log, warn)
        self.model, self.files = model, list(files)
        self.cid, self.synced = cid, synced  # the conversation, and how many of chat.turns it holds
        self.hash: str | None = None

    def exchange(self, chat: Chat, exchange: Exchange) -> None:
        index = len(chat.turns) - 1
        if self.cid is None and self.hash is None:
            self.hash = self.weights_hash(self.files)

        def write(log: Log) -> None:
            if self.cid is None:
                self.cid = log.start("chat", self.model, self.hash, chat.template.source or chat.template.name,
                                     chat.system, chat_settings(chat))
                self.synced = 0
            first = min(self.synced, index)
            earlier = [Exchange(t.user, t.reply, finish="interrupted" if t.cut_short else None)
                       for t in chat.turns[first:index]]  # loaded with /load: not yet in the log
            log.put(self.cid, first, [*earlier, exchange], chat_settings(chat), chat.first_in_window)

        cid = self.cid
        if self.write(write):
            self.synced = index + 1
        else:
            self.cid = cid

    def dropped(self, chat: Chat) -> None:
        if self.cid is not None and self.write(lambda log: log.put(self.cid, len(chat.turns), [], None,
                                                                     chat.first_in_window)):
            self.synced = min(self.synced, len(chat.turns))

    def restarted(self, chat: Chat) -> None:
        self.cid, self.synced = None, 0

    def changed(self, chat: Chat) -> None:
        if self.cid is not None:
            self.write(lambda log: log.touch(self.cid, chat_settings(chat)))


def log_completion(log: Log | None, warn: Warn, model: str, files: Sequence[Path], settings: dict,
                   exchanges: Sequence[Exchange]) -> None:
    """A completion: a conversation of one exchange (one per sample with -N)."""
    sink = Sink(log, warn)
    digest = sink.weights_hash(files)
    sink.write(lambda db: db.put(db.start("complete", model, digest, settings=settings), 0, exchanges))


@dataclass
class Resumed:
    """A logged chat, as it was when it stopped."""

    cid: str
    model: str | None
    template: str
    system: str
    settings: dict  # Settings fields
    stop: list[str]
    turns: list[Turn]
    first_in_window: int


def find(log: Log | None, cid: str | None, latest: bool) -> Resumed:
    """The chat to continue: --cid ID, or with -c the latest one."""
    if log is None:
        raise UsageError(f"no conversation log at {db_path()}: nothing to continue")
    if cid is None and latest:
        cid = log.latest("chat")
        if cid is None:
            raise UsageError(f"no chat conversation in {log.path} to continue")
    conv = log.conversation(str(cid))
    if conv is None:
        raise UsageError(f"no conversation {cid} in {log.path} (`chatgpt-cli logs` lists them)")
    if conv["source"] != "chat":
        raise UsageError(f"conversation {cid} is a completion, not a chat")
    rows = log.exchanges(conv["id"])
    settings = dict(conv["settings"])
    stop = settings.pop("stop", None)
    known = {f for f in Settings.__dataclass_fields__}
    return Resumed(conv["id"], conv["model"], conv["template"] or "default", conv["system"] or "",
                   {k: v for k, v in settings.items() if k in known}, stop,
                   [Turn(r["prompt"], r["reply"], r["finish"] == "interrupted") for r in rows],
                   min(conv["context_start"], len(rows)))


def to_save_format(conv: dict, exchanges: list[dict]) -> dict:
    """A logged chat in /save's format, so that /load reads it."""
    from chatgpt_cli.chat import SCHEMA

    settings = {k: v for k, v in conv["settings"].items() if k in Settings.__dataclass_fields__}
    return {"schema": SCHEMA, "template": conv["template"], "system": conv["system"], "settings": settings,
            "turns": [asdict(Turn(e["prompt"], e["reply"], e["finish"] == "interrupted")) for e in exchanges]}

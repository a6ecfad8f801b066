"""The conversation log: every chat and completion kept in a local SQLite database.

One file (``logs.db``; WAL mode, a busy timeout so that several chats can write at once, the
schema version in ``PRAGMA user_version`` with forward migrations), readable by its owner only.
Each exchange is written in its own transaction when its reply ends, so a crash loses at most
the reply being generated. Every failure is a ``LogError``: the chat decides what to do with it.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from datetime import datetime, timezone
from pathlib import Path

from chatgpt_cli.errors import ChatGPTCliError

ENV_DB = "CHATGPT_CLI_LOGS_DB"
ENV_NO_LOG = "CHATGPT_CLI_NO_LOG"
BUSY_TIMEOUT_MS = 5000

# Each migration takes the schema from version i to i + 1; a database is brought forward one step at a time.
MIGRATIONS: list[tuple[str, ...]] = [
    (  # 1: conversations and their exchanges
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY, started TEXT NOT NULL, updated TEXT NOT NULL, model TEXT, weights_hash TEXT,
            template TEXT, system TEXT, settings TEXT NOT NULL DEFAULT '{}', context_start INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL CHECK (source IN ('chat', 'complete')))""",
        "CREATE INDEX conversations_updated ON conversations (source, updated)",
        """CREATE TABLE exchanges (
            id INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, prompt TEXT NOT NULL, reply TEXT NOT NULL, prompt_tokens INTEGER,
            reply_tokens INTEGER, finish TEXT, first_token_ms REAL, decode_tok_s REAL, context_start INTEGER,
            time TEXT NOT NULL, UNIQUE (conversation_id, idx))""",
    ),
    (  # 2: full-text search over prompts and replies, kept in step by triggers; a cache of weights hashes
        "CREATE VIRTUAL TABLE exchanges_fts USING fts5(prompt, reply, content='exchanges', content_rowid='id')",
        """CREATE TRIGGER exchanges_ai AFTER INSERT ON exchanges BEGIN
            INSERT INTO exchanges_fts (rowid, prompt, reply) VALUES (new.id, new.prompt, new.reply); END""",
        """CREATE TRIGGER exchanges_ad AFTER DELETE ON exchanges BEGIN
            INSERT INTO exchanges_fts (exchanges_fts, rowid, prompt, reply)
            VALUES ('delete', old.id, old.prompt, old.reply); END""",
        """CREATE TRIGGER exchanges_au AFTER UPDATE ON exchanges BEGIN
            INSERT INTO exchanges_fts (exchanges_fts, rowid, prompt, reply)
            VALUES ('delete', old.id, old.prompt, old.reply);
            INSERT INTO exchanges_fts (rowid, prompt, reply) VALUES (new.id, new.prompt, new.reply); END""",
        "INSERT INTO exchanges_fts (exchanges_fts) VALUES ('rebuild')",
        "CREATE TABLE weights_hashes (path TEXT, size INTEGER, mtime_ns INTEGER, hash TEXT, PRIMARY KEY (path))",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


class LogError(ChatGPTCliError):
    """The log cannot be opened, read or written (corrupt, locked, unwritable, from a newer version)."""


@dataclass(frozen=True)
class Exchange:
    prompt: str
    reply: str
    prompt_tokens: int | None = None
    reply_tokens: int | None = None
    finish: str | None = None  # end (end-of-text), stop (a stop string), length, interrupted
    first_token_ms: float | None = None
    decode_tok_s: float | None = None
    context_start: int | None = None  # the first exchange the model still saw (older ones left the window)


def db_path() -> Path:
    """$CHATGPT_CLI_LOGS_DB, else $XDG_DATA_HOME/chatgpt-cli/logs.db (default ~/.local/share/...)."""
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB]).expanduser()
    return data_dir() / "logs.db"


def data_dir() -> Path:
    """chatgpt-cli's own directory: $XDG_DATA_HOME/chatgpt-cli, by default ~/.local/share/chatgpt-cli."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "chatgpt-cli"


def off_marker(path: Path) -> Path:
    """The setting kept beside the database: while this file exists (`logs off`), nothing is logged."""
    return path.with_name(path.stem + ".off")


def logging_state(no_log: bool = False, path: Path | None = None) -> tuple[bool, str]:
    """Whether to log, and why not: --no-log, $CHATGPT_CLI_NO_LOG, or `logs off`."""
    path = path or db_path()
    if no_log:
        return False, "--no-log"
    if os.environ.get(ENV_NO_LOG, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return False, f"{ENV_NO_LOG} is set"
    if off_marker(path).exists():
        return False, f"`chatgpt-cli logs off` ({off_marker(path)} exists)"
    return True, ""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 characters that sort by time."""
    n = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    return "".join(CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))


class Log:
    """An open log. ``create=False`` opens only an existing file (for reading commands)."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = path
        try:
            if create:
                self._prepare(path)
            elif not path.is_file():
                raise LogError(f"no conversation log at {path}")
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except OSError as e:
            raise LogError(f"cannot create the conversation log {path}: {e.strerror or e}") from None
        except sqlite3.Error as e:
            raise LogError(f"cannot open the conversation log {path}: {e}") from None
        try:
            self.db.row_factory = sqlite3.Row
            for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "foreign_keys = ON", "secure_delete = ON"):
                self.db.execute(f"PRAGMA {pragma}")
            self._migrate()
        except sqlite3.Error as e:
            self.db.close()
            raise LogError(f"cannot use the conversation log {path}: {e}") from None
        except LogError:
            self.db.close()
            raise

    @staticmethod
    def _prepare(path: Path) -> None:
        """The directory 0700 and the file 0600 (SQLite gives its -wal and -shm files the file's mode)."""
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
        if path.parent == data_dir() and path.parent.stat().st_mode & 0o077:
            path.parent.chmod(0o700)  # our own directory: the line-editing history may have made it first
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)

    def _migrate(self) -> None:
        version = self.version()
        if version > SCHEMA_VERSION:
            raise LogError(f"the conversation log {self.path} has schema version {version}, newer than this "
                           f"chatgpt-cli knows ({SCHEMA_VERSION}); upgrade chatgpt-cli")
        if version == SCHEMA_VERSION:
            return
        if self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise LogError(f"the conversation log {self.path} cannot be put in WAL mode")
        with self.transaction():
            version = self.version()  # another process may have migrated it meanwhile
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- writing ------------------------------------------------------------------------------
    def start(self, source: str, model: str | None = None, weights_hash: str | None = None,
              template: str | None = None, system: str | None = None, settings: dict | None = None) -> str:
        """A new conversation (inside the caller's transaction, or on its own); its id."""
        cid, t = new_id(), now()
        self.db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                        (cid, t, t, model, weights_hash, template, system, json.dumps(settings or {}), source))
        return cid

    def put(self, cid: str, first: int, exchanges: Sequence[Exchange], settings: dict | None = None,
            context_start: int | None = None) -> None:
        """Exchanges from index ``first`` on become ``exchanges`` (a retry replaces, an undo drops)."""
        self.db.execute("DELETE FROM exchanges WHERE conversation_id = ? AND idx >= ?", (cid, first))
        self.db.executemany("INSERT INTO exchanges (conversation_id, idx, prompt, reply, prompt_tokens, reply_tokens, "
                            "finish, first_token_ms, decode_tok_s, context_start, time) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(cid, first + i, *astuple(e), now()) for i, e in enumerate(exchanges)])
        self.touch(cid, settings, context_start)

    def touch(self, cid: str, settings: dict | None = None, context_start: int | None = None) -> None:
        """Mark the conversation updated; with its settings and first exchange in the window as they are now."""
        self.db.execute("UPDATE conversations SET updated = ?, settings = coalesce(?, settings), "
                        "context_start = coalesce(?, context_start) WHERE id = ?",
                        (now(), None if settings is None else json.dumps(settings), context_start, cid))

    def remove(self, cid: str) -> bool:
        """Delete a conversation and its exchanges, leaving no trace of their text in the file."""
        with self.transaction():
            gone = self.db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount > 0
            if gone:
                self.db.execute("INSERT INTO exchanges_fts (exchanges_fts) VALUES ('optimize')")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return gone

    def weights_hash(self, files: Sequence[Path]) -> str:
        """The first 12 hex digits of the SHA-256 of the weights files, cached by path, size and mtime."""
        import hashlib

        key = "\n".join(str(f.resolve()) for f in files)
        stats = [f.stat() for f in files]
        size, mtime = sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)
        row = self.db.execute("SELECT hash FROM weights_hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                              (key, size, mtime)).fetchone()
        if row:
            return row[0]
        h = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        digest = h.hexdigest()[:12]
        self.db.execute("INSERT OR REPLACE INTO weights_hashes VALUES (?, ?, ?, ?)", (key, size, mtime, digest))
        return digest

    # --- reading ------------------------------------------------------------------------------
    def conversations(self, limit: int | None = None) -> list[dict]:
        """The most recently updated first, each with its number of exchanges and its first prompt."""
        rows = self.db.execute(
            "SELECT c.*, (SELECT count(*) FROM exchanges e WHERE e.conversation_id = c.id) AS turns, "
            "(SELECT prompt FROM exchanges e WHERE e.conversation_id = c.id ORDER BY idx LIMIT 1) AS first_prompt "
            "FROM conversations c ORDER BY updated DESC, id DESC LIMIT ?", (-1 if limit is None else limit,))
        return [conversation_dict(r) for r in rows]

    def conversation(self, cid: str) -> dict | None:
        row = self.db.execute("SELECT * FROM conversations WHERE id = ?", (cid,)).fetchone()
        return None if row is None else conversation_dict(row)

    def exchanges(self, cid: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM exchanges WHERE conversation_id = ? ORDER BY idx", (cid,))]

    def latest(self, source: str = "chat") -> str | None:
        row = self.db.execute("SELECT id FROM conversations WHERE source = ? ORDER BY updated DESC, id DESC LIMIT 1",
                              (source,)).fetchone()
        return row[0] if row else None

    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Exchanges matching an FTS5 query, best first, each with a snippet ([marked] hits)."""
        try:
            rows = self.db.execute(
                "SELECT e.conversation_id, e.idx, e.time, snippet(exchanges_fts, -1, '[', ']', '…', 12) AS snippet "
                "FROM exchanges_fts JOIN exchanges e ON e.id = exchanges_fts.rowid "
                "WHERE exchanges_fts MATCH ? ORDER BY rank LIMIT ?", (query, limit)).fetchall()
        except sqlite3.OperationalError as e:
            raise LogError(f"bad search {query!r}: {e} (see the SQLite FTS5 query syntax)") from None
        return [dict(r) for r in rows]

    def counts(self) -> dict:
        by_source = dict(self.db.execute("SELECT source, count(*) FROM conversations GROUP BY source").fetchall())
        return {"chat": by_source.get("chat", 0), "complete": by_source.get("complete", 0),
                "exchanges": self.db.execute("SELECT count(*) FROM exchanges").fetchone()[0]}


def conversation_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["settings"] = json.loads(d["settings"] or "{}")
    return d


def open_existing(path: Path | None = None) -> Log | None:
    """The log for reading, or None when there is no database yet."""
    path = path or db_path()
    return Log(path, create=False) if path.is_file() else None

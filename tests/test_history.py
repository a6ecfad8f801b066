"""The conversation log as a library: schema, migrations, FTS in step, and a chat kept in step with it."""

import io
import json
import sqlite3
import stat
from dataclasses import asdict

import pytest

from chatgpt_cli import history
from chatgpt_cli.chat import Chat, Settings, Turn
from chatgpt_cli.chatlog import ChatRecorder, find, to_save_format
from chatgpt_cli.history import SCHEMA_VERSION, Exchange, Log, LogError, db_path, new_id
from chatgpt_cli.repl import PlainOutput, run_piped
from chatgpt_cli.template import load_template
from chatgpt_cli.tokenizer import EOT, Tokenizer

TOK = Tokenizer()


class ScriptedEngine:
    """Stands in for the model: each reply is the next scripted text; the prompts it saw are kept."""

    def __init__(self, replies, window=1024, interrupt_at=None):
        self.replies, self.window, self.prompts, self.interrupt_at = list(replies), window, [], interrupt_at

    def generate(self, prompt, max_new_tokens, options, generator=None, stop_at_eot=True, on_step=None):
        self.prompts.append(list(prompt))
        for i, token in enumerate((TOK.encode(self.replies.pop(0)) + [EOT])[:max_new_tokens]):
            if i == self.interrupt_at:
                raise KeyboardInterrupt
            yield token


def piped(chat, text):
    out, err = io.StringIO(), io.StringIO()
    run_piped(chat, io.StringIO(text), PlainOutput(out, err))
    return out.getvalue(), err.getvalue()


def logged_chat(path, replies, warnings=None, settings=None, **kw):
    chat = Chat(ScriptedEngine(replies, **kw), load_template("default"), settings or Settings())
    chat.log = ChatRecorder(Log(path), (warnings if warnings is not None else []).append, "model-x")
    return chat


def rows(path, cid=None):
    log = Log(path)
    cid = cid or log.latest()
    return [(e["prompt"], e["reply"], e["finish"]) for e in log.exchanges(cid)]


def test_path_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATGPT_CLI_LOGS_DB", str(tmp_path / "x.db"))
    assert db_path() == tmp_path / "x.db"
    monkeypatch.delenv("CHATGPT_CLI_LOGS_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert db_path() == tmp_path / "data" / "chatgpt-cli" / "logs.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert db_path() == tmp_path / "home" / ".local" / "share" / "chatgpt-cli" / "logs.db"


def test_schema_wal_busy_timeout_and_owner_only_files(tmp_path):
    path = tmp_path / "new" / "dir" / "logs.db"
    log = Log(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = log.db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == history.BUSY_TIMEOUT_MS
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert {"conversations", "exchanges", "exchanges_fts", "exchanges_ai", "exchanges_ad", "exchanges_au"} <= tables
    with log.transaction():
        log.put(log.start("chat", settings={"temperature": 0.5}), 0, [Exchange("hello", "world")])
    wal = path.with_name("logs.db-wal")
    assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_ids_sort_by_time():
    import time

    ids = []
    for _ in range(3):
        ids.append(new_id())
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 3 and all(len(i) == 26 for i in ids)


def test_a_version_1_database_is_migrated_forward(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in history.MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO conversations VALUES ('c1', 't', 't', NULL, NULL, NULL, NULL, '{}', 0, 'chat')")
    db.execute("INSERT INTO exchanges (conversation_id, idx, prompt, reply, time) "
               "VALUES ('c1', 0, 'old zebra', 'x', 't')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    log = Log(path)
    assert log.version() == 2
    assert [h["conversation_id"] for h in log.search("zebra")] == ["c1"]  # the index was built from what was there


def test_a_newer_schema_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LogError, match=r"schema version 99, newer than this chatgpt-cli knows \(2\)"):
        Log(path)
    assert path.read_bytes() == before


def test_full_text_index_follows_inserts_replacements_and_deletes(tmp_path):
    log = Log(tmp_path / "l.db")
    with log.transaction():
        cid = log.start("chat")
        log.put(cid, 0, [Exchange("tell me about penguins", "they swim"), Exchange("and owls", "they fly")])
    hits = log.search("penguins")
    assert [(h["conversation_id"], h["idx"]) for h in hits] == [(cid, 0)]
    assert hits[0]["snippet"] == "tell me about [penguins]"
    assert [h["idx"] for h in log.search("they")] in ([0, 1], [1, 0])
    with log.transaction():
        log.put(cid, 1, [Exchange("and owls", "they hoot")])  # a retry replaces the reply
    assert log.search("fly") == [] and len(log.search("hoot")) == 1
    with pytest.raises(LogError, match="bad search"):
        log.search('"unbalanced')
    assert log.remove(cid) and not log.remove(cid)
    assert log.search("penguins") == [] and log.exchanges(cid) == []  # the exchanges went with it
    assert log.db.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 0


def test_each_exchange_is_logged_with_its_figures(logs_db):
    chat = logged_chat(logs_db, [" Hello there.", " Four.\nUser: fake"])
    chat.settings = Settings(temperature=0.2, max_tokens=50, seed=3)
    piped(chat, "Hi\nWhat is 2+2?\n")
    log = Log(logs_db)
    (conv,) = log.conversations()
    assert conv["source"] == "chat" and conv["template"] == "default" and conv["model"] == "model-x"
    assert conv["system"] == chat.system and conv["turns"] == 2 and conv["first_prompt"] == "Hi"
    assert conv["settings"] == json.loads(json.dumps({**asdict(chat.settings), "stop": ["\nUser:"]}))
    assert {k: conv["settings"][k] for k in ("temperature", "top_k", "max_tokens", "seed")} == {
        "temperature": 0.2, "top_k": 40, "max_tokens": 50, "seed": 3}
    first, second = log.exchanges(conv["id"])
    assert (first["prompt"], first["reply"], first["finish"], first["idx"]) == ("Hi", "Hello there.", "end", 0)
    assert first["prompt_tokens"] == len(chat.engine.prompts[0])
    assert first["reply_tokens"] == len(TOK.encode(" Hello there.")) + 1  # and the end-of-text
    assert first["first_token_ms"] >= 0 and first["decode_tok_s"] > 0
    assert (second["reply"], second["finish"]) == ("Four.", "stop")


def test_cut_short_replies_are_logged_and_marked(logs_db):
    chat = logged_chat(logs_db, [" one two three four"], interrupt_at=2)
    out, err = piped(chat, "go\n")
    assert err == "(cut short)\n"
    assert rows(logs_db) == [("go", "one two", "interrupted")]
    assert find(Log(logs_db), None, True).turns == [Turn("go", "one two", True)]


def test_undo_retry_reset_system_and_load_are_reflected(logs_db, tmp_path):
    chat = logged_chat(logs_db, [" a", " b", " b2", " c", " d", " e", " f"])
    piped(chat, "one\ntwo\n/retry\nthree\n/undo\n")
    log = Log(logs_db)
    first = log.latest()
    assert rows(logs_db, first) == [("one", "a", "end"), ("two", "b2", "end")]
    piped(chat, "/reset\nfour\n")  # a new conversation
    second = log.latest()
    assert second != first and rows(logs_db, second) == [("four", "d", "end")]
    piped(chat, "/system Be terse.\nfive\n")
    third = log.latest()
    assert third not in (first, second) and rows(logs_db, third) == [("five", "e", "end")]
    assert log.conversation(third)["system"] == "Be terse."
    saved = tmp_path / "s.json"
    saved.write_text(json.dumps(to_save_format(log.conversation(first), log.exchanges(first))))
    piped(chat, f"/load {saved}\nsix\n")  # the loaded turns and the new one: a fourth conversation
    fourth = log.latest()
    assert rows(logs_db, fourth) == [("one", "a", None), ("two", "b2", None), ("six", "f", "end")]
    assert rows(logs_db, first) == [("one", "a", "end"), ("two", "b2", "end")]  # untouched
    assert len(log.conversations()) == 4


def test_resuming_shows_the_model_exactly_the_tokens_of_an_uninterrupted_chat(logs_db):
    replies = [" Hello!", " Fine.", " Blue, because it is calm.", " Bye!", " Later."]
    settings = Settings(max_tokens=10)
    long = "What is your favourite colour, and why, and since when, and does it ever change, and would you paint it?"
    script = f"Hi\nHow are you?\n{long}\n/undo\n/set temperature 0.3\n"
    # a small window: the long message pushes the first exchange out of what the model sees, and after
    # /undo it comes back; a resumed chat must show the model the same tokens at every step
    straight = Chat(ScriptedEngine(replies, window=74), load_template("default"), settings)
    piped(straight, script + "Ok\nAgain\n")

    before = logged_chat(logs_db, replies[:3], settings=settings, window=74)
    piped(before, script)
    for i, message in ((3, "Ok"), (4, "Again")):  # stopped there, then after one more exchange
        resumed = find(Log(logs_db), None, True)
        chat = Chat(ScriptedEngine([replies[i]], window=74), load_template(resumed.template),
                    Settings(**resumed.settings), system=resumed.system)
        chat.turns, chat.first_in_window = resumed.turns, resumed.first_in_window
        chat.log = ChatRecorder(Log(logs_db), [].append, "model-x", cid=resumed.cid, synced=len(resumed.turns))
        piped(chat, message + "\n")
        assert chat.engine.prompts == [straight.engine.prompts[i]]
    assert chat.settings == straight.settings  # /set came back too
    assert chat.turns == straight.turns
    assert len(Log(logs_db).conversations()) == 1  # new exchanges went to the same conversation


def test_a_write_failure_warns_once_and_the_chat_goes_on(logs_db):
    warnings = []
    chat = logged_chat(logs_db, [" a", " b", " c"], warnings)
    piped(chat, "one\n")
    holder = sqlite3.connect(logs_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    chat.log.log.db.execute("PRAGMA busy_timeout = 50")
    out, err = piped(chat, "two\nthree\n")
    holder.execute("ROLLBACK")
    assert out == "b\nc\n"  # every reply
    assert len(warnings) == 1 and "database is locked; not logging the rest of this session" in warnings[0]
    assert rows(logs_db) == [("one", "a", "end")]


def test_our_own_directory_is_made_private_but_no_other_is_touched(monkeypatch, tmp_path):
    monkeypatch.delenv("CHATGPT_CLI_LOGS_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "data" / "chatgpt-cli").mkdir(parents=True, mode=0o755)  # the line-editing history made it
    (tmp_path / "data" / "chatgpt-cli").chmod(0o755)
    Log(db_path()).close()
    assert stat.S_IMODE((tmp_path / "data" / "chatgpt-cli").stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    Log(shared / "mine.db").close()  # a path of the user's choosing: only the file is made private
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "mine.db").stat().st_mode) == 0o600

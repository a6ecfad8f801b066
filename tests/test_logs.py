"""The conversation log from the command line: `logs`, `chat -c/--cid`, turning it off, and every fault."""

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from chatgpt_cli import history
from chatgpt_cli.chat import Chat
from chatgpt_cli.cli import app
from chatgpt_cli.history import Log
from chatgpt_cli.repl import PlainOutput
from chatgpt_cli.template import load_template

runner = CliRunner()


def run(*args, input=None, env=None):
    return runner.invoke(app, list(args), input=input, env=env)


def chat(model, text, *args, env=None):
    return run("chat", "-m", str(model), "-t", "0", "-n", "4", *args, input=text, env=env)


def only(log):
    (conv,) = log.conversations()
    return conv, log.exchanges(conv["id"])


def test_logs_on_a_missing_then_an_empty_database(logs_db):
    for args in (["logs"], ["logs", "search", "x"], ["logs", "show", "X"], ["logs", "rm", "X"]):
        r = run(*args)
        assert (r.exit_code, r.stdout, r.stderr) == (0, f"no conversations logged yet (no database at {logs_db})\n", "")
    assert not logs_db.exists()  # reading creates nothing
    assert run("logs", "status").stdout == f"logging: on\ndatabase: {logs_db} (not created yet)\n"
    Log(logs_db).close()
    r = run("logs")
    assert (r.exit_code, r.stdout) == (0, f"no conversations logged yet ({logs_db} is empty)\n")
    assert run("logs", "search", "x").stdout == "no match for 'x'\n"


def test_a_chat_is_logged_listed_shown_and_searched(tiny_dir, logs_db, tmp_path):
    r = chat(tiny_dir, "Hello there\n\nWhat now?\n")
    assert r.exit_code == 0 and r.stderr == ""
    conv, exchanges = only(Log(logs_db))
    assert [e["prompt"] for e in exchanges] == ["Hello there", "What now?"]
    assert "".join(e["reply"] + "\n" for e in exchanges) == r.stdout
    assert conv["model"] == str(tiny_dir.resolve()) and len(conv["weights_hash"]) == 12
    assert conv["settings"]["temperature"] == 0 and conv["settings"]["max_tokens"] == 4

    listed = run("logs").stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith(conv["id"] + "  ") and listed[0].endswith("  2  Hello there")
    (item,) = json.loads(run("logs", "--json").stdout)
    assert (item["id"], item["turns"], item["first_prompt"], item["source"]) == (conv["id"], 2, "Hello there", "chat")

    shown = run("logs", "show", conv["id"]).stdout
    assert shown.endswith(f"\n\nUser: Hello there\nAssistant: {exchanges[0]['reply']}\n\n"
                          f"User: What now?\nAssistant: {exchanges[1]['reply']}\n")
    saved = tmp_path / "c.json"
    saved.write_text(run("logs", "show", conv["id"], "--json").stdout)
    loaded = Chat(None, load_template("qa"))
    loaded.cmd_load(str(saved), PlainOutput(io.StringIO(), io.StringIO()))  # /load reads it
    assert [(t.user, t.reply) for t in loaded.turns] == [(e["prompt"], e["reply"]) for e in exchanges]
    assert loaded.template.name == "default" and loaded.settings.max_tokens == 4

    hits = run("logs", "search", "now").stdout.splitlines()
    assert len(hits) == 1 and hits[0].startswith(f"{conv['id']} #2  ") and hits[0].endswith("What [now]?")
    r = run("logs", "search", '"unbalanced')
    assert r.exit_code == 1 and r.stderr.startswith("error: bad search") and r.stderr.count("\n") == 1


def test_logs_n_and_rm_leave_no_trace_of_the_text(tiny_dir, logs_db):
    for word in ("zebrafirst", "zebrasecond", "zebrathird"):
        assert chat(tiny_dir, word + "\n").exit_code == 0
    assert len(run("logs", "-n", "2").stdout.splitlines()) == 2
    assert len(run("logs", "-n", "0").stdout.splitlines()) == 3
    newest = json.loads(run("logs", "--json", "-n", "1").stdout)[0]
    assert newest["first_prompt"] == "zebrathird"
    r = run("logs", "rm", newest["id"])
    assert (r.exit_code, r.stdout) == (0, f"removed {newest['id']}\n")
    assert [c["first_prompt"] for c in Log(logs_db).conversations()] == ["zebrasecond", "zebrafirst"]
    files = [p for p in logs_db.parent.iterdir() if p.name.startswith("logs.db")]
    assert all(b"zebrathird" not in p.read_bytes() for p in files)  # overwritten, not only unlinked
    r = run("logs", "rm", newest["id"])
    assert r.exit_code == 2 and r.stderr == f"error: no conversation {newest['id']} in {logs_db}\n"


def test_complete_is_logged(tiny_dir, logs_db):
    r = run("complete", "Once upon a time", "-m", str(tiny_dir), "-t", "0", "-n", "6")
    assert r.exit_code == 0
    conv, (exchange,) = only(Log(logs_db))
    assert conv["source"] == "complete" and exchange["prompt"] == "Once upon a time"
    assert exchange["reply"] + ("" if exchange["reply"].endswith("\n") else "\n") == r.stdout
    assert exchange["reply_tokens"] == 6 and exchange["finish"] in ("length", "end")
    assert run("logs", "show", conv["id"]).stdout.endswith(f"Prompt: Once upon a time\nOutput: {exchange['reply']}\n")


def test_turning_the_log_off_and_on(tiny_dir, logs_db):
    assert chat(tiny_dir, "one\n", "--no-log").exit_code == 0
    assert chat(tiny_dir, "two\n", env={"CHATGPT_CLI_NO_LOG": "1"}).exit_code == 0
    assert run("complete", "x", "-m", str(tiny_dir), "-n", "2", "--no-log").exit_code == 0
    assert not logs_db.exists()
    assert run("logs", "status", env={"CHATGPT_CLI_NO_LOG": "1"}).stdout.startswith(
        "logging: off, by CHATGPT_CLI_NO_LOG is set\n")
    marker = logs_db.with_name("logs.off")
    assert run("logs", "off").stdout == f"logging off ({marker})\n" and marker.exists()
    assert chat(tiny_dir, "three\n").exit_code == 0
    assert not logs_db.exists()
    assert run("logs", "status").stdout.startswith(f"logging: off, by `chatgpt-cli logs off` ({marker} exists)\n")
    assert run("logs", "on").stdout == f"logging on ({logs_db})\n" and not marker.exists()
    assert chat(tiny_dir, "four\n").exit_code == 0
    status = run("logs", "status").stdout.splitlines()
    assert status[0] == "logging: on" and status[1].startswith(f"database: {logs_db} (")
    assert status[2] == "conversations: 1 (1 chat, 0 complete); exchanges: 1"


def prompts(stderr):
    return [block.split("\n---")[0] for block in stderr.split("--- prompt ")[1:]]


def test_chat_continue_and_cid_resume_exactly(tiny_dir, logs_db):
    # the same conversation straight through (not logged) and in three sittings
    straight = chat(tiny_dir, "Hi\nHow are you?\nAnd then?\nBye\n", "--show-prompt", "--no-log")
    first = chat(tiny_dir, "Hi\nHow are you?\n", "--show-prompt")
    conv, _ = only(Log(logs_db))
    second = run("chat", "-c", "--show-prompt", input="And then?\n")  # model, -t 0 and -n 4 come back
    third = run("chat", "--cid", conv["id"], "--show-prompt", input="Bye\n")
    assert second.stderr.startswith(f"(continuing conversation {conv['id']}: 2 exchange(s))\n")
    assert third.stderr.startswith(f"(continuing conversation {conv['id']}: 3 exchange(s))\n")
    assert prompts(first.stderr) + prompts(second.stderr) + prompts(third.stderr) == prompts(straight.stderr)
    assert first.stdout + second.stdout + third.stdout == straight.stdout
    conv, exchanges = only(Log(logs_db))  # still one conversation, with every exchange
    assert [e["prompt"] for e in exchanges] == ["Hi", "How are you?", "And then?", "Bye"]
    # an option given on the command line wins over the one restored
    assert Log(logs_db).conversation(conv["id"])["settings"]["max_tokens"] == 4
    run("chat", "-c", "-n", "2", input="More\n")
    assert Log(logs_db).conversation(conv["id"])["settings"]["max_tokens"] == 2


def test_continue_errors_are_usage_errors(tiny_dir, logs_db):
    r = run("chat", "-m", str(tiny_dir), "-c", input="")
    assert (r.exit_code, r.stderr) == (2, f"error: no conversation log at {logs_db}: nothing to continue\n")
    Log(logs_db).close()
    r = run("chat", "-m", str(tiny_dir), "-c", input="")
    assert (r.exit_code, r.stderr) == (2, f"error: no chat conversation in {logs_db} to continue\n")
    r = run("chat", "-m", str(tiny_dir), "--cid", "01NOSUCHID", input="")
    assert (r.exit_code, r.stderr) == (2, f"error: no conversation 01NOSUCHID in {logs_db} "
                                          "(`chatgpt-cli logs` lists them)\n")
    r = run("chat", "-m", str(tiny_dir), "-c", "--cid", "X", input="")
    assert (r.exit_code, r.stderr) == (2, "error: give --continue or --cid, not both\n")


def corrupt(path):
    path.write_bytes(b"this is not a database, just garbage " * 100)


def newer(path):
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()


def unwritable(path):
    path.parent.rmdir()
    path.parent.write_text("a file where the directory should be")


@pytest.mark.parametrize("damage, message", [
    (corrupt, "file is not a database"),
    (newer, "has schema version 99, newer than this chatgpt-cli knows (2); upgrade chatgpt-cli"),
    (unwritable, "cannot create the conversation log"),
])
def test_a_broken_database_warns_once_and_the_chat_goes_on(tiny_dir, logs_db, damage, message):
    expected = chat(tiny_dir, "Hi\nHow are you?\n", "--no-log").stdout
    logs_db.parent.mkdir(parents=True, exist_ok=True)
    damage(logs_db)
    r = chat(tiny_dir, "Hi\nHow are you?\n")
    assert r.exit_code == 0 and r.stdout == expected  # every reply
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("warning: ") and message in r.stderr
    assert r.stderr.endswith("; not logging this session\n")
    r = run("logs")  # reading says what is wrong, in one line, or that there is nothing
    assert "Traceback" not in r.stderr and r.stderr.count("\n") <= 1
    assert (r.exit_code, r.stderr.startswith("error: ")) == (1, True) or "no conversations logged yet" in r.stdout


def test_a_locked_database_warns_once_and_the_chat_goes_on(tiny_dir, logs_db, monkeypatch):
    expected = chat(tiny_dir, "Hi\nHow are you?\n", "--no-log").stdout
    Log(logs_db).close()
    monkeypatch.setattr(history, "BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(logs_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing, and goes on writing
    try:
        r = chat(tiny_dir, "Hi\nHow are you?\n")
    finally:
        holder.execute("ROLLBACK")
    assert r.exit_code == 0 and r.stdout == expected
    assert r.stderr == (f"warning: cannot write to the conversation log {logs_db}: database is locked; "
                        "not logging the rest of this session\n")


def cli(*args):
    return [sys.executable, "-m", "chatgpt_cli", *args]


def wait_for(condition, timeout=60):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def count(path):
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute("SELECT count(*) FROM exchanges").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


def test_sigkill_mid_reply_keeps_every_finished_exchange(tiny_dir, logs_db):
    p = subprocess.Popen(cli("chat", "-m", str(tiny_dir), "-t", "0", "-n", "3"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(b"first\nsecond\n")
        p.stdin.flush()
        wait_for(lambda: count(logs_db) == 2)
        p.stdin.write(b"/set max_tokens 1000000\nwrite forever\n")  # past the window it goes on and on
        p.stdin.flush()
        time.sleep(1.5)
        assert p.poll() is None  # still replying
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()
        p.stderr.close()
    log = Log(logs_db)
    assert log.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conv, exchanges = only(log)
    assert [e["prompt"] for e in exchanges] == ["first", "second"]
    assert conv["settings"]["max_tokens"] == 1000000  # the /set was kept too


def test_two_chats_at_once_both_log_everything(tiny_dir, logs_db):
    other = subprocess.Popen(cli("chat", "-m", str(tiny_dir), "-n", "2", "--seed", "1"), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    other.stdin.write(b"alpha 0\n")
    other.stdin.flush()
    wait_for(lambda: count(logs_db) == 1)  # the other chat runs, and has written

    def feed():
        for i in range(1, 10):
            other.stdin.write(f"alpha {i}\n".encode())
            other.stdin.flush()
            time.sleep(0.25)
        other.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        r = chat(tiny_dir, "".join(f"beta {i}\n" for i in range(10)))  # this one, meanwhile, in this process
    finally:
        feeder.join()
        other.stdout.read()
        errors = other.stderr.read()
        other.wait(timeout=60)
    assert other.returncode == 0 and b"warning" not in errors, errors
    assert r.exit_code == 0 and "warning" not in r.stderr
    log = Log(logs_db)
    times = {}
    for conv in log.conversations():
        exchanges = log.exchanges(conv["id"])
        name = conv["first_prompt"].split()[0]
        assert [e["prompt"] for e in exchanges] == [f"{name} {i}" for i in range(10)]
        times[name] = [e["time"] for e in exchanges]
    assert sorted(times) == ["alpha", "beta"]
    assert min(times["alpha"]) < max(times["beta"]) and min(times["beta"]) < max(times["alpha"])  # at once


def test_the_real_home_is_never_written(logs_db):
    assert os.environ["CHATGPT_CLI_LOGS_DB"] == str(logs_db)
    assert history.db_path() == logs_db


def test_ctrl_c_on_a_terminal_logs_the_reply_cut_short(tiny_dir, logs_db):
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    child = pexpect.spawn(sys.executable, cli("chat", "-m", str(tiny_dir), "-n", "100000", "--seed", "1")[1:],
                          env={**env, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1", "NO_COLOR": "1",
                               "XDG_DATA_HOME": str(logs_db.parent / "data")},
                          timeout=60, encoding="utf-8", dimensions=(40, 200))
    child.expect(">")
    child.sendline("Write forever")
    child.expect("AI Assistant:")
    child.expect(r"\w+")  # the reply is streaming
    child.sendintr()
    child.expect(r"\[cut short\]")
    child.expect(">")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    _, (exchange,) = only(Log(logs_db))
    assert (exchange["prompt"], exchange["finish"]) == ("Write forever", "interrupted") and exchange["reply"]


def test_logs_commands_do_not_import_torch(logs_db):
    Log(logs_db).close()
    code = ("import sys\nfrom chatgpt_cli.cli import app\n"
            "for args in (['logs'], ['logs', 'status'], ['logs', 'search', 'x'], ['logs', 'show', 'X']):\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_an_interrupted_completion_is_logged_cut_short(tiny_dir, logs_db):
    p = subprocess.Popen(cli("complete", "x", "-m", str(tiny_dir), "-n", "100000", "--ignore-eos"), bufsize=0,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    first = p.stdout.read(1)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    out, errs = p.communicate(timeout=60)
    assert p.returncode == 130 and errs.strip() == b"interrupted"
    conv, (exchange,) = only(Log(logs_db))
    assert (conv["source"], exchange["prompt"], exchange["finish"]) == ("complete", "x", "interrupted")
    printed = (first + out).decode()
    assert printed.startswith(exchange["reply"]) and len(exchange["reply"]) > 0


def test_complete_with_samples_logs_each_sample(tiny_dir, logs_db):
    r = run("complete", "Once", "-m", str(tiny_dir), "-N", "3", "-n", "5", "--seed", "2", "--json")
    assert r.exit_code == 0
    document = json.loads(r.stdout)
    conv, exchanges = only(Log(logs_db))
    assert conv["source"] == "complete" and len(exchanges) == 3
    assert sorted(e["reply"] for e in exchanges) == sorted(c["text"] for c in document["choices"])
    assert all(e["prompt"] == "Once" and e["reply_tokens"] <= 5 for e in exchanges)

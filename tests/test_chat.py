"""Chat: the transcript template, every command, cache reuse across turns, trimming, files."""

import io
import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from conftest import hf_model, write_hf_dir

from chatgpt_cli.chat import Chat, Settings, Turn
from chatgpt_cli.errors import UsageError
from chatgpt_cli.generate import Engine
from chatgpt_cli.repl import PlainOutput, run_piped
from chatgpt_cli.template import available_templates, load_template
from chatgpt_cli.tokenizer import EOT, Tokenizer
from chatgpt_cli.weights import load_model

TOK = Tokenizer()


class ScriptedEngine:
    """Stands in for the model: each reply is the next scripted text, as tokens."""

    def __init__(self, replies, window=1024):
        self.replies, self.window, self.prompts = list(replies), window, []

    def generate(self, prompt, max_new_tokens, options, generator=None, stop_at_eot=True, on_step=None):
        self.prompts.append(list(prompt))
        yield from (TOK.encode(self.replies.pop(0)) + [EOT])[:max_new_tokens]


def piped(chat, text):
    out, err = io.StringIO(), io.StringIO()
    run_piped(chat, io.StringIO(text), PlainOutput(out, err))
    return out.getvalue(), err.getvalue()


def test_default_template_renders_the_transcript():
    chat = Chat(ScriptedEngine([]), load_template("default"))
    chat.turns = [Turn("Hi there", "Hello! How can I help?")]
    assert "".join(chat.transcript(chat.turns, "What is 2+2?")) == (
        "What follows is an interaction between a user and a helpful AI assistant:\n"
        "User: Hi there\n"
        "AI Assistant: Hello! How can I help?\n"
        "User: What is 2+2?\n"
        "AI Assistant:")
    # piecewise encoding is the same as encoding the whole text: the cache prefix stays valid
    whole = "".join(chat.transcript(chat.turns, "What is 2+2?"))
    assert chat.encode(chat.transcript(chat.turns, "What is 2+2?")) == TOK.encode(whole)


def test_templates_shipped_and_system_override():
    assert {"default", "qa"} <= set(available_templates())
    qa = load_template("qa")
    chat = Chat(ScriptedEngine([]), qa, system="Be brief.")
    assert "".join(chat.transcript([], "Why?")) == "Be brief.\n\nQ: Why?\nA:"
    with pytest.raises(UsageError, match="unknown template 'nope'"):
        load_template("nope")


def test_piped_chat_exact_output_and_stop_string_not_printed():
    engine = ScriptedEngine([" Hello! How can I help?\nUser: made-up turn", " Four.", " 😀 done"])
    chat = Chat(engine, load_template("default"))
    out, err = piped(chat, "Hi\n\nWhat is 2+2?\nsmile\n")
    assert out == "Hello! How can I help?\nFour.\n😀 done\n"
    assert err == ""
    assert [t.reply for t in chat.turns] == ["Hello! How can I help?", "Four.", "😀 done"]
    # the second prompt is the first one plus the exchange: a prefix the cache can reuse
    assert engine.prompts[1][:len(engine.prompts[0])] == engine.prompts[0]


def test_every_command(tmp_path):
    engine = ScriptedEngine([" one", " two", " two again", " three"])
    chat = Chat(engine, load_template("default"))
    f = tmp_path / "chat.json"
    script = (f"/help\nfirst\nsecond\n/retry\n/undo\n/show\n/set temperature 0.2\n/set top_k 5\n/set top_p 0.5\n"
              f"/set max_tokens 50\n/set seed 9\n/save {f}\n/reset\n/show\n/load {f}\n/system Be terse.\n"
              f"/set nope 1\n/set top_k x\n/frobnicate\nthird\n/exit\nnever reached\n")
    out, err = piped(chat, script)
    assert out == "one\ntwo\ntwo again\n\nthree\n"  # /frobnicate: an empty line keeps the replies in step
    assert "/retry" in err and "/save FILE" in err  # /help
    assert "(last exchange dropped)" in err
    assert "exchanges: 1 (1 in the window);" in err and "exchanges: 0 (0 in the window);" in err
    assert "temperature 0.7, top_k 40, top_p 0.95, max_tokens 120, seed None" in err
    assert chat.settings == Settings(0.2, 5, 0.5, 50, 9)
    assert f"(saved 1 exchange(s) to {f})" in err and f"(loaded 1 exchange(s) from {f})" in err
    assert "error: usage: /set temperature|top_k|top_p|max_tokens|seed|repeat_penalty|" in err
    assert "error: /set top_k: 'x' is not a valid int" in err
    assert "error: unknown command /frobnicate; /help lists them" in err
    assert chat.system == "Be terse." and [t.reply for t in chat.turns] == ["three"]
    assert "never reached" not in "".join(p for p in map(str, engine.prompts))


def test_retry_and_undo_on_empty_chat_are_errors():
    chat = Chat(ScriptedEngine([]), load_template("default"))
    _, err = piped(chat, "/retry\n/undo\n")
    assert err == "error: nothing to retry yet\nerror: nothing to undo\n"


def test_save_is_atomic_owner_only_and_round_trips(tmp_path):
    chat = Chat(ScriptedEngine([" a reply"]), load_template("qa"), Settings(seed=4), system="Sys")
    piped(chat, "question\n")
    f = tmp_path / "c.json"
    piped(chat, f"/save {f}\n")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left
    data = json.loads(f.read_text())
    assert data["template"] == "qa" and data["system"] == "Sys" and data["settings"]["seed"] == 4
    other = Chat(ScriptedEngine([]), load_template("default"))
    piped(other, f"/load {f}\n")
    assert other.to_json() == chat.to_json()


@pytest.mark.parametrize("content,message", [
    (None, "error: no such file"), ("{not json", "error: cannot read"),
    ('{"schema": "other"}', "error: not a chatgpt-cli chat file"),
    ('{"schema": "chatgpt-cli/chat-v1", "template": "default", "system": "s", "settings": {}, "turns": [{"u": 1}]}',
     "error: not a chatgpt-cli chat file"),
])
def test_load_of_bad_files_keeps_the_chat(tmp_path, content, message):
    f = tmp_path / "bad.json"
    if content is not None:
        f.write_text(content)
    chat = Chat(ScriptedEngine([" kept"]), load_template("default"))
    piped(chat, "hello\n")
    _, err = piped(chat, f"/load {f}\n")
    assert err.startswith(message)
    assert [t.reply for t in chat.turns] == ["kept"]


def test_trimming_drops_oldest_whole_turns_and_keeps_the_system_prompt():
    engine = ScriptedEngine([f" reply number {i} is here" for i in range(12)], window=80)
    chat = Chat(engine, load_template("default"), Settings(max_tokens=20))
    out, err = piped(chat, "".join(f"message number {i}\n" for i in range(12)))
    assert out.count("\n") == 12
    assert "the model no longer sees the oldest" in err and "the system prompt is kept" in err
    assert len(chat.turns) == 12  # nothing is lost: /save still has every exchange
    for prompt in engine.prompts:
        text = TOK.decode(prompt)
        assert text.startswith("What follows is an interaction") and len(prompt) <= 80 - 20
    assert "message number 11" in TOK.decode(engine.prompts[-1])
    assert "message number 0" not in TOK.decode(engine.prompts[-1])


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    return write_hf_dir(hf_model(n_positions=512, seed=5), tmp_path_factory.mktemp("chatmodel"))


def test_cache_is_kept_across_turns(chat_model_dir):
    engine = Engine(load_model(chat_model_dir).model)
    chat = Chat(engine, load_template("default"), Settings(temperature=0, max_tokens=8))
    runs = []
    for i in range(6):
        piped(chat, f"Tell me about topic {i}.\n")
        runs.append(engine.stats.tokens_run)
    new = len(TOK.encode("User: Tell me about topic 5.\nAI Assistant:"))
    reply = 8
    # the first turn runs the system prompt too; later turns only what is new, not the history
    assert runs[0] > new
    # at most: the last reply (its re-encoded tokens may differ from those sampled), the new line, the new reply
    for r in runs[1:]:
        assert r <= new + 2 * reply + 2
    assert len(engine.cached) > 3 * (new + 2 * reply + 2)  # far less than the history each turn


def test_piped_chat_through_the_cli_matches_a_greedy_reference(chat_model_dir):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(chat_model_dir).eval()
    prompt = "What follows is an interaction between a user and a helpful AI assistant:\nUser: Hello\nAI Assistant:"
    ids = TOK.encode(prompt)
    with torch.no_grad():
        # the default template's [sampling] sets repeat_penalty 1.2 (its window, 64 tokens, holds all of these)
        gen = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=EOT,
                          eos_token_id=EOT, repetition_penalty=1.2)[0, len(ids):].tolist()
    if EOT in gen:
        gen = gen[:gen.index(EOT)]
    expected = TOK.decode(gen).split("\nUser:")[0].strip()
    r = subprocess.run([sys.executable, "-m", "chatgpt_cli", "chat", "-m", str(chat_model_dir), "-t", "0",
                        "-n", "12"], input=b"Hello\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == expected + "\n"
    assert b"\x1b[" not in r.stdout + r.stderr  # no colour over a pipe


pexpect = pytest.importorskip("pexpect")


def spawn_chat(model_dir, *args, env=None):
    base = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return pexpect.spawn(sys.executable, ["-m", "chatgpt_cli", "chat", "-m", str(model_dir), *args],
                         env={**base, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1",
                              "XDG_DATA_HOME": "/tmp/chatgpt-cli-test-data", **(env or {})},
                         timeout=60, encoding="utf-8", dimensions=(40, 200))


def test_ctrl_c_on_a_terminal(tiny_dir):
    child = spawn_chat(tiny_dir, "--max-tokens", "100000", "--seed", "1")
    child.expect(">")
    child.sendline("Write forever")
    child.expect("AI Assistant:")
    child.expect(r"\w+")  # the reply is streaming
    child.sendintr()
    child.expect(r"\[cut short\]")
    child.expect("tokens · ")
    child.expect(">")
    child.sendline("/show")
    child.expect("exchanges: 1 ")  # the cut reply was kept
    child.expect(">")
    child.sendintr()
    child.expect("Ctrl-C again")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before  # what it printed after "Ctrl-C again"


@pytest.mark.parametrize("no_color", [False, True])
def test_colour_only_without_no_color(tiny_dir, no_color):
    child = spawn_chat(tiny_dir, "-n", "3", env={"NO_COLOR": "1"} if no_color else {})
    child.logfile_read = log = io.StringIO()
    child.expect(">")
    child.sendline("hi")
    child.expect("tok/s")
    child.expect(">")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    output = log.getvalue()
    child.close()
    assert child.exitstatus == 0
    rich_styles = ("\x1b[2m", "\x1b[1;36m")  # the dim footer, the bold cyan label
    assert any(s in output for s in rich_styles) != no_color


def test_multi_line_input_and_history_on_a_terminal(tiny_dir, tmp_path):
    data = tmp_path / "data"
    child = spawn_chat(tiny_dir, "-n", "2", "--show-prompt", env={"XDG_DATA_HOME": str(data), "NO_COLOR": "1"})
    child.expect(">")
    child.sendline('"""')
    child.sendline("first line")
    child.sendline("second line")
    child.sendline('"""')
    child.expect(r"User: first line\r?\nsecond line")
    child.expect("tok/s")
    child.expect(">")
    child.sendline("one \\")
    child.sendline("two")
    child.expect(r"User: one \r?\ntwo")
    child.expect("tok/s")
    child.expect(">")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (data / "chatgpt-cli" / "history").read_text()
    assert "first line" in history and "/exit" in history


def test_extra_stop_strings_in_chat():
    chat = Chat(ScriptedEngine([" yes. STOP here"]), load_template("default"))
    from dataclasses import replace

    chat.template = replace(chat.template, stop=chat.template.stop + ("STOP",))
    out, _ = piped(chat, "go\n")
    assert out == "yes.\n"

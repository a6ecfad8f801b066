"""Issue 12, the CLI-level classes of faults: output that cannot be written, --png and --layer,
readers that leave early, JSON, counts, the model path, usage errors and --help, table widths.
Driven as a user would: real processes where the process matters, typer's runner elsewhere."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import BUNDLED, clean, one_line_error, run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LONG = "The quick brown fox jumps over the lazy dog and then runs far away into the deep dark forest " * 2


def proc(args, stdin=None, shell_redirect="", timeout=120):
    """Run chatgpt-cli in a real process; shell_redirect is appended (e.g. '>/dev/full', '>&-')."""
    cmd = " ".join([f'"{sys.executable}"', "-m", "chatgpt_cli", *(f"'{a}'" for a in map(str, args)), shell_redirect])
    return subprocess.run(["bash", "-c", cmd], input=stdin, capture_output=True, text=True, env=ENV, timeout=timeout)


def one_line(p, code, start):
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = [line for line in p.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith(start), p.stderr
    assert "Traceback" not in p.stderr


# --- 5. output that cannot be written ---------------------------------------------------
@pytest.mark.parametrize("args,redirect", [
    (["info"], ">/dev/full"), (["next", "Hello"], ">/dev/full"), (["next", "Hi", "--json"], ">/dev/full"),
    (["chat", "-n", "2"], ">/dev/full"), (["info"], ">&-"), (["complete", "Hello", "-n", "2"], ">&-")])
def test_12_5_unwritable_stdout_is_one_line_exit_1(tiny_dir, args, redirect):
    one_line(proc([*args, "-m", tiny_dir], stdin="Hello there\n", shell_redirect=redirect), 1,
             "error: cannot write output: ")
    one_line(proc(["tokenize", "Hello"], shell_redirect=redirect), 1, "error: cannot write output: ")


@pytest.mark.parametrize("args", [["complete", "Hello", "-n", "3"], ["score", "-"], ["attention", "Hello there"],
                                  ["complete", "Hi", "-n", "2", "--alternatives", "2"]])
def test_12_5_full_disk_for_every_writer(tiny_dir, args):
    one_line(proc([*args, "-m", tiny_dir], stdin="Hello there, friend", shell_redirect=">/dev/full"),
             1, "error: cannot write output: ")


# --- 10 / 15. attention --png and --layer ----------------------------------------------
@pytest.mark.parametrize("name", ["map.xyz", "map.docx", "map.PNGX"])
def test_12_10_png_extension_matplotlib_cannot_write(tiny_dir, tmp_path, name):
    one_line_error(run("attention", "Hello there", "-m", tiny_dir, "--png", tmp_path / name), 2, "cannot write")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layer", ["²", "٣", "1.0", "-1", "0x1", " 0", "99", ""])
def test_12_10_layer_must_be_ascii_digits(tiny_dir, layer):
    one_line_error(run("attention", "Hello there", "-m", tiny_dir, "--layer", layer), 2, "--layer must be")


def test_12_15_png_into_a_directory_without_extension_and_all(tiny_dir, tmp_path):
    d = tmp_path / "maps"
    d.mkdir()
    r = clean(run("attention", "Hello there", "-m", tiny_dir, "--png", d, "--layer", "1", "--head", "1"))
    assert (d / "attention-layer1-head1.png").stat().st_size > 0 and not (tmp_path / "maps.png").exists()
    assert f"saved the heat map to {d / 'attention-layer1-head1.png'}" in r.stderr
    r = clean(run("attention", "Hello there", "-m", tiny_dir, "--png", tmp_path / "plain"))
    assert (tmp_path / "plain.png").read_bytes()[:4] == b"\x89PNG" and "plain.png" in r.stderr
    clean(run("attention", "Hello there", "-m", tiny_dir, "--png", tmp_path / "v.svg"))
    assert (tmp_path / "v.svg").read_text().lstrip().startswith("<?xml")
    one_line_error(run("attention", "Hello there", "-m", tiny_dir, "--png", tmp_path / "a.png", "--layer", "all"),
                   2, "--png draws one head's map")
    assert not (tmp_path / "a.png").exists()


# --- 16. every command exits 0 when the reader leaves early -------------------------------
@pytest.mark.parametrize("args", [["next", "Hello", "--top", "3000"], ["score", "-", "--per-token"],
                                  ["attention", "-"], ["attention", "-", "--layer", "all"],
                                  ["complete", "Hi", "-n", "60", "--alternatives", "3", "--ignore-eos"],
                                  ["tokenize", "-", "-v"], ["info"]])
def test_12_16_reader_closing_the_pipe_early_exits_0(tiny_dir, args):
    model = ["-m", str(tiny_dir)] if args[0] != "tokenize" else []
    cmd = " ".join([f'"{sys.executable}"', "-m", "chatgpt_cli", *(f"'{a}'" for a in [*args, *model])])
    text = "hello world, this is a test of many words. " * 6
    p = subprocess.run(["bash", "-c", f"printf %s '{text}' | {cmd} | head -c 1 >/dev/null; "
                                      "echo ${PIPESTATUS[1]} >&2"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.stderr.strip().splitlines()[-1] == "0", p.stderr
    assert "Traceback" not in p.stderr and "error" not in p.stderr.lower()


# --- 17. --json is always valid JSON ------------------------------------------------------
@pytest.mark.parametrize("t", ["1e-40", "5e-324", "1e-300", "1e308"])
def test_12_17_next_json_has_no_nan(tiny_dir, t):
    r = clean(run("next", "Hello", "-m", tiny_dir, "--json", "-t", t, "--top", "5"))
    data = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    total = sum(c["sampled_prob"] for c in data["candidates"])
    assert total == (pytest.approx(5 / 50257, rel=0.01) if t == "1e308" else pytest.approx(1.0, abs=1e-3))


# --- 18. counts -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 300])
def test_12_18_verbose_counts_every_token(tiny_dir, n):
    r = clean(run("complete", "Hello", "-m", tiny_dir, "-n", n, "--ignore-eos", "-v", "--seed", "0"))
    assert f"; {n} tokens generated" in r.stderr


def test_12_18_footer_and_show_agree_and_stay_in_the_window(tiny_dir, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    from test_faults import spawn_chat

    child = spawn_chat(tiny_dir, tmp_path / "data", "-n", "10", "-t", "0")
    footers, shows = [], []
    for i in range(5):
        child.expect(">")
        child.sendline(f"message {i} with some more words in it to fill the window")
        child.expect(r"context (\d+)/(\d+)")
        footers.append((int(child.match.group(1)), int(child.match.group(2))))
        child.expect(">")
        child.sendline("/show")
        child.expect(r"\((\d+) in the window\); context used: (\d+)/(\d+) tokens")
        shows.append((int(child.match.group(2)), int(child.match.group(3))))
        assert int(child.match.group(1)) >= 0
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    assert footers == shows and all(used <= window for used, window in footers)


def test_12_18_bench_one_token(tiny_dir):
    r = clean(run("bench", "-m", tiny_dir, "--tokens", "1", "--runs", "1", "--prefill", "8", "--json"))
    data = json.loads(r.stdout)
    assert data["decode_tok_s_short"] > 0 and data["decode_tok_s_long"] > 0


# --- 19. the model path ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", " "])
def test_12_19_empty_model_is_refused(value):
    for cmd in (["complete", "Hi"], ["info"], ["chat"]):
        one_line_error(run(*cmd, "-m", value, input="Hi\n"), 2, "--model is empty")


def test_12_19_env_model_is_named(tmp_path):
    for value in ("garbage", str(tmp_path)):
        line = one_line_error(run("info", env={"CHATGPT_CLI_MODEL": value}), 1)
        assert line.endswith("(from $CHATGPT_CLI_MODEL)") and value in line


# --- 25. usage errors and --help ----------------------------------------------------------------
@pytest.mark.parametrize("args", [["complete", "--temp", "1"], ["complete", "-t", "abc"], ["nosuch"],
                                  ["chat", "extra"], ["complete", "--top", "3"], ["next", "-n"],
                                  ["bench", "--runs", "x"], ["attention", "--head", "1.5"]])
def test_12_25_usage_errors_are_one_line(args):
    p = proc(args)
    one_line(p, 2, "error: ")
    assert "╭" not in p.stderr and "Usage:" not in p.stderr


def test_12_25_suggestions_are_related():
    p = proc(["complete", "--temp", "1"])
    assert "--temperature" in p.stderr and "--stop" not in p.stderr and "--help" in p.stderr
    r = run("complete", "--tmp")
    assert r.exit_code == 2 and "did you mean" not in r.stderr


def test_12_25_help_metavars():
    for cmd in ("complete", "chat", "next", "attention", "score", "bench", "info", "tokenize"):
        r = clean(run(cmd, "--help", env={"COLUMNS": "120"}))
        assert not re.search(r"<(bool|str|int|float|list\[str\]|path)>", r.stdout), r.stdout
    r = run("complete", "--help", env={"COLUMNS": "120"})
    assert re.search(r"--temperature\s+-t\s+FLOAT", r.stdout) and re.search(r"--stop\s+TEXT", r.stdout)
    assert re.search(r"--ignore-eos\s+Go on", r.stdout)


# --- 26. tables fit the terminal --------------------------------------------------------------
@pytest.mark.parametrize("columns", [40, 80, 120])
def test_12_26_heat_map_and_alternatives_fit(columns):
    env = {"COLUMNS": str(columns)}
    for args in (["attention", LONG], ["attention", LONG, "--layer", "all"],
                 ["complete", LONG, "-n", "6", "--alternatives", "10", "--seed", "0"],
                 ["next", LONG, "--top", "5"]):
        r = clean(run(*args, "-m", BUNDLED, env=env))
        widest = max(len(line) for line in r.stdout.splitlines())
        assert widest <= columns, (args, widest, r.stdout)
    r = clean(run("attention", LONG, "-m", BUNDLED, env=env))
    assert "(showing the last" in r.stdout
    r = clean(run("complete", LONG, "-n", "3", "--alternatives", "10", "-m", BUNDLED, env=env))
    assert ("(showing" in r.stdout) == (columns < 120) or columns == 120


def test_12_26_heat_map_cells_are_intact():
    r = clean(run("attention", "one two three four five", "-m", BUNDLED, env={"COLUMNS": "80"}))
    rows = [line for line in r.stdout.splitlines() if re.match(r"\s*\d+ '", line)]
    assert len(rows) == 5 and all("…" not in row for row in rows)
    assert io.StringIO(r.stdout).read().count("·") == 10 + 1  # the masked future of 5 tokens, and the legend

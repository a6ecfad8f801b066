"""The `serve` command itself: its banner and log, Ctrl-C / SIGTERM, and its errors (127.0.0.1 only)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from typer.testing import CliRunner

from chatgpt_cli.cli import app

runner = CliRunner()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_running_stream_properly_and_exits_0(tiny_dir, sig):
    proc = subprocess.Popen([sys.executable, "-m", "chatgpt_cli", "serve", "-m", str(tiny_dir), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CHATGPT_CLI_API_KEY": ""})
    try:
        banner = proc.stderr.readline()
        match = re.fullmatch(r"chatgpt-cli serve: \S+ \([\d,]+ parameters, [^,]+, cpu\) at "
                             r"http://127\.0\.0\.1:(\d+)/v1 · Ctrl-C stops\n", banner)
        assert match, banner
        url = f"http://127.0.0.1:{match.group(1)}"
        assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
        lines, started = [], threading.Event()

        def stream():
            with httpx.stream("POST", url + "/v1/completions", timeout=30,
                              json={"prompt": "Go", "max_tokens": 65536, "stream": True}) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(20)
        proc.send_signal(sig)
        reader.join(20)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]" and '"finish_reason": "length"' in events[-2]
    log = proc.stderr.read().splitlines()
    assert re.fullmatch(r"GET /health 200 0 tokens \d+ ms", log[0])
    assert re.fullmatch(r"POST /v1/completions 200 \d+ tokens \d+ ms", log[1])
    assert log[2:] == ["stopped"]


def test_without_the_extra_it_says_how_to_install_it(tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed: importing it fails
    r = runner.invoke(app, ["serve", "-m", str(tiny_dir)])
    assert r.exit_code == 1
    assert r.stderr == "error: serve needs FastAPI and uvicorn: pip install 'chatgpt-cli[serve]'\n"


def test_another_address_without_a_key_warns_and_a_bad_address_is_one_line(tiny_dir):
    r = runner.invoke(app, ["serve", "-m", str(tiny_dir), "--host", "203.0.113.7", "--port", "8765"],
                      env={"CHATGPT_CLI_API_KEY": ""})  # a documentation address: not this machine's, never contacted
    assert r.exit_code == 1
    warning, error = r.stderr.splitlines()
    assert warning.startswith("warning: listening on 203.0.113.7 without an API key")
    assert error.startswith("error: cannot listen on 203.0.113.7:8765: ")
    r = runner.invoke(app, ["serve", "-m", str(tiny_dir), "--host", "203.0.113.7", "--port", "8765"],
                      env={"CHATGPT_CLI_API_KEY": "k"})
    assert r.stderr.startswith("error: cannot listen")  # with a key (from the environment): no warning


def test_bad_options_are_usage_errors(tiny_dir):
    r = runner.invoke(app, ["serve", "-m", str(tiny_dir), "--port", "70000"])
    assert r.exit_code == 2 and r.stderr == "error: --port must be between 0 and 65535, not 70000\n"
    r = runner.invoke(app, ["serve", "-m", str(tiny_dir), "--template", "nope"])
    assert r.exit_code == 2 and r.stderr.startswith("error: unknown template 'nope'")

"""`chatgpt-cli serve`: a live server on a free port of 127.0.0.1, driven with the official openai client."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.serve import bind, build, security_warning
from chatgpt_cli.serve_app import ServeConfig
from chatgpt_cli.serve_schema import ChatBody, CompletionBody, chat_pieces, parse, to_request
from chatgpt_cli.template import load_template
from chatgpt_cli.tokenizer import Tokenizer
from chatgpt_cli.weights import load_model

TOK = Tokenizer()
TEMPLATE = load_template("default")
LONG = 65536  # max_tokens of a generation that only ends when it is stopped (the most a request may ask)
FOREVER = {"max_tokens": LONG, "logit_bias": {"50256": -100}}  # and no end-of-text (random weights sample one at times)


@contextmanager
def live_server(model_dir, **config):
    """A server in a thread on a free port of 127.0.0.1, with its own copy of the model; stopped after."""
    max_waiting = config.pop("max_waiting", 8)
    loaded = load_model(model_dir)
    sock = bind("127.0.0.1", 0)
    server = build(loaded.model, ServeConfig("tiny", TEMPLATE, **config), port=0, max_waiting=max_waiting,
                   log=lambda line: server.lines.append(line))
    server.lines = []
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield server
    finally:
        server.should_exit = True
        server.worker.close()
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def model_dir(tiny_dir):
    return tiny_dir  # a 64-token window


@pytest.fixture(scope="module")
def server(model_dir):
    with live_server(model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def post(server, path, body=None, content=None, headers=None) -> httpx.Response:
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=30)


def complete(client, prompt, **kw) -> str:
    return client.completions.create(model="tiny", prompt=prompt, **kw).choices[0].text


def wait_until(predicate, seconds=10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- the API, through the official client ----------------------------------------------------------

def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = health(server)
    assert h["status"] == "ok" and h["model"] == "tiny" and h["waiting"] == 0
    assert any(line.startswith("GET /v1/models 200 0 tokens ") and line.endswith(" ms") for line in server.lines)


def test_greedy_completion_equals_complete_t0(client, model_dir):
    prompt = "The meaning of life is"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    cli = CliRunner().invoke(app, ["complete", prompt, "-m", str(model_dir), "-t", "0", "-n", "20"])
    assert cli.exit_code == 0, cli.output
    text = r.choices[0].text
    assert cli.stdout == text + ("" if text.endswith("\n") else "\n")
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 20, 25)


def test_streaming_completion_joins_to_the_whole_text(client, server):
    whole = client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    raw = post(server, "/v1/completions", {"prompt": "Once upon", "max_tokens": 3, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_chat_whole_and_streamed(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    assert choice.message.content == choice.message.content.strip()  # as the chat command keeps a reply
    prompt = [i for p in chat_pieces(TEMPLATE, parse(json.dumps({"messages": messages}).encode(), ChatBody).messages)
              for i in TOK.encode(p)]
    assert whole.usage.prompt_tokens == len(prompt) and TOK.decode(prompt).endswith("User: Hello!\nAI Assistant:")
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_chat_messages_render_through_the_transcript_template():
    messages = parse(json.dumps({"messages": [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]}).encode(), ChatBody).messages
    assert "".join(chat_pieces(TEMPLATE, messages)) == (
        "Be kind.\nUser: Hi\nAI Assistant: Hello!\nUser: Bye\nAI Assistant:")
    qa = load_template("qa")
    no_system = chat_pieces(qa, messages[1:2])
    assert no_system == [qa.render_system(qa.system), qa.render_user("Hi"), qa.assistant_prefix]


def test_n_choices_and_seed_reproducibility(client):
    kw = dict(model="tiny", prompt="Hi", max_tokens=8, temperature=1.0, n=3)
    a = client.completions.create(seed=7, **kw)
    b = client.completions.create(seed=7, **kw)
    c = client.completions.create(seed=8, **kw)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    texts = [ch.text for ch in a.choices]
    assert texts == [ch.text for ch in b.choices] and texts != [ch.text for ch in c.choices]
    assert len(set(texts)) == 3 and a.usage.completion_tokens == 24 and a.usage.prompt_tokens == 1
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                          n=2, seed=3)
    assert [ch.index for ch in chat.choices] == [0, 1]
    greedy = client.completions.create(model="tiny", prompt="Hi", max_tokens=8, temperature=0, n=3, logprobs=1)
    single = client.completions.create(model="tiny", prompt="Hi", max_tokens=8, temperature=0, logprobs=1)
    assert [c.text for c in greedy.choices] == [single.choices[0].text] * 3  # one batch, three equal rows
    for c in greedy.choices:
        assert c.logprobs.token_logprobs == pytest.approx(single.choices[0].logprobs.token_logprobs, abs=1e-2)
    streamed = list(client.completions.create(seed=7, stream=True, **kw))
    assert ["".join(c.choices[0].text for c in streamed if c.choices[0].index == i) for i in range(3)] == texts


def test_echo_and_token_prompts(client):
    text = complete(client, "Echo me", max_tokens=4, temperature=0)
    assert complete(client, "Echo me", max_tokens=4, temperature=0, echo=True) == "Echo me" + text
    assert complete(client, TOK.encode("Echo me"), max_tokens=4, temperature=0) == text
    both = client.completions.create(model="tiny", prompt=["Echo me", "Other"], max_tokens=4, temperature=0)
    assert [c.index for c in both.choices] == [0, 1] and both.choices[0].text == text


def test_a_tiny_temperature_or_top_p_is_greedy(client):  # found by the fuzz: both made nan probabilities
    greedy = complete(client, "A", max_tokens=4, temperature=0)
    assert complete(client, "A", max_tokens=4, temperature=1e-187) == greedy
    assert complete(client, "A", max_tokens=4, top_p=1e-187, seed=1) == greedy


def test_stop_ends_before_the_stop_text(client):
    full = complete(client, "Stop here:", max_tokens=12, temperature=0)
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip()
    r = client.completions.create(model="tiny", prompt="Stop here:", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_completion_logprobs_are_the_models(client, tiny_hf):
    prompt = "Numbers:"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    ids = TOK.encode(prompt)
    with torch.no_grad():
        first = torch.log_softmax(tiny_hf(torch.tensor([ids])).logits[0, -1].float(), -1)
    token = TOK.encode(lp.tokens[0])[0]
    assert lp.token_logprobs[0] == pytest.approx(float(first[token]), abs=1e-3)
    assert all(len(t) == 3 for t in lp.top_logprobs)
    assert max(lp.top_logprobs[0].values()) == pytest.approx(lp.token_logprobs[0])  # greedy: the top one


def test_echo_with_logprobs_scores_the_prompt(client, tiny_hf):
    prompt = "The cat sat on the mat"
    ids = TOK.encode(prompt)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt and lp.tokens == [TOK.decode([i]) for i in ids]
    with torch.no_grad():
        ref = torch.log_softmax(tiny_hf(torch.tensor([ids])).logits[0].float(), -1)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([float(ref[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-3)
    assert lp.text_offset == [len(TOK.decode(ids[:i])) for i in range(len(ids))]
    more = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, echo=True, logprobs=0, temperature=0)
    assert more.choices[0].logprobs.tokens[:len(ids)] == lp.tokens and len(more.choices[0].logprobs.tokens) == len(
        ids) + 2 and more.choices[0].text == prompt + complete(client, prompt, max_tokens=2, temperature=0)
    streamed = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=2, echo=True, logprobs=0,
                                              temperature=0, stream=True))
    assert [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == \
        more.choices[0].logprobs.tokens
    assert "".join(c.choices[0].text for c in streamed) == more.choices[0].text


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       logprobs=True, top_logprobs=2, temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    assert "".join(c.token for c in content).strip() == r.choices[0].message.content
    assert bytes(content[0].bytes).decode() == content[0].token


def test_penalties_bias_and_min_p(client):
    greedy = client.completions.create(model="tiny", prompt="A", max_tokens=8, temperature=0, logprobs=0)
    repeated = greedy.choices[0].logprobs.tokens
    assert len(set(repeated)) < 8  # this random model repeats itself greedily
    fresh = client.completions.create(model="tiny", prompt="A", max_tokens=8, temperature=0, logprobs=0,
                                      presence_penalty=2.0).choices[0].logprobs.tokens
    assert len(set(fresh)) == 8
    forced = complete(client, "A", max_tokens=3, temperature=0, logit_bias={"1212": 100})
    assert forced == TOK.decode([1212] * 3)
    assert complete(client, "A", max_tokens=8, temperature=1.0, seed=5, extra_body={"min_p": 1.0}) == \
        greedy.choices[0].text


def test_the_sampling_fields_map_onto_the_engines_options():
    body = parse(json.dumps({"prompt": "x", "temperature": 0.5, "top_p": 0.9, "top_k": 7, "seed": -1,
                             "frequency_penalty": 0.5, "presence_penalty": -0.25, "repetition_penalty": 1.3,
                             "min_p": 0.1, "logit_bias": {"13": -100}, "n": 2, "stop": "\n"}).encode(), CompletionBody)
    r = to_request(body, [[1, 2]], 5, None, ("User:",))
    o = r.options
    assert (o.temperature, o.top_p, o.top_k, o.seed) == (0.5, 0.9, 7, 2**63 - 1)
    assert (o.frequency_penalty, o.presence_penalty, o.repeat_penalty, o.min_p) == (0.5, -0.25, 1.3, 0.1)
    assert o.logit_bias == ((13, -100.0),) and (r.n, r.stop, r.max_tokens) == (2, ("User:", "\n"), 5)
    defaults = to_request(parse(b'{"prompt": "x"}', CompletionBody), [[1]], 16, None).options
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.adjusts) == (1.0, 1.0, 0, False)
    template = (("repeat_penalty", 1.1), ("no_repeat_ngram", 3.0), ("min_p", 0.05))  # a chat template's [sampling]
    chat = to_request(parse(b'{"prompt": "x", "min_p": 0.2}', CompletionBody), [[1]], 16, None, (), template).options
    assert (chat.repeat_penalty, chat.no_repeat_ngram, chat.min_p) == (1.1, 3, 0.2)  # the request's own wins


# --- the engine: prefix reuse, arrival order, concurrency, disconnects ---------------------------------

def test_second_chat_request_runs_only_its_new_tokens(client, server):
    history = [{"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.create(model="tiny", messages=history, max_tokens=6, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And of Spain?"}]
    before = health(server)["tokens_run"]
    second = client.chat.completions.create(model="tiny", messages=history, max_tokens=6, temperature=0)
    ran = health(server)["tokens_run"] - before
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens  # at least the whole first prompt came from the cache
    assert ran == second.usage.prompt_tokens - cached + second.usage.completion_tokens - 1
    assert ran < second.usage.prompt_tokens - first.usage.prompt_tokens + 6


def test_eight_concurrent_clients_each_get_their_own_answer(client):
    prompts = [f"Client number {i} says" for i in range(8)]
    expected = {p: complete(client, p, max_tokens=10, temperature=1.0, seed=i) for i, p in enumerate(prompts)}
    got, errors = {}, []

    def ask(i, p):
        try:
            got[p] = complete(openai.OpenAI(base_url=client.base_url, api_key="x", max_retries=0), p,
                              max_tokens=10, temperature=1.0, seed=i)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and got == expected and len(set(expected.values())) == 8


@contextmanager
def holding_the_engine(server):
    """A streaming request that would run forever, until the block ends and the client leaves."""
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"prompt": "Go", **FOREVER, "stream": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        yield
    wait_until(lambda: not health(server)["busy"])


def test_a_disconnect_frees_the_engine_at_once(server, client):
    with holding_the_engine(server):
        assert health(server)["busy"]
        a = health(server)["tokens_run"]
        wait_until(lambda: health(server)["tokens_run"] > a + 5)  # it is generating
    stopped = health(server)["tokens_run"]
    time.sleep(0.3)
    assert health(server)["tokens_run"] == stopped  # and has stopped
    assert complete(client, "Hello", max_tokens=3, temperature=0)  # free for the next request


def test_a_client_that_gives_up_waiting_frees_the_engine(server, client):
    with pytest.raises(httpx.TimeoutException):  # not streamed: the client leaves before the answer
        httpx.post(server.url + "/v1/completions", json={"prompt": "Go", **FOREVER}, timeout=0.5)
    wait_until(lambda: not health(server)["busy"])
    assert complete(client, "Hello", max_tokens=3, temperature=0)


def test_queue_in_arrival_order_then_429_when_full(server, monkeypatch):
    served, statuses = [], []
    engine = server.worker.engine
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda prompt, *a, **k: (served.append(TOK.decode(prompt)),
                                                                     real(prompt, *a, **k))[1])

    def ask(i):
        statuses.append(post(server, "/v1/completions", {"prompt": f"Job {i}", "max_tokens": 2}).status_code)

    threads = []
    with holding_the_engine(server):
        for i in range(8):  # the queue holds 8
            threads.append(threading.Thread(target=ask, args=(i,)))
            threads[-1].start()
            wait_until(lambda i=i: health(server)["waiting"] == i + 1)
        r = post(server, "/v1/completions", {"prompt": "one too many", "max_tokens": 2})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_error" and "busy" in r.json()["error"]["message"]
    for t in threads:
        t.join(30)
    assert served[1:] == [f"Job {i}" for i in range(8)] and statuses == [200] * 8  # served[0]: the one holding


# --- bad input: a 4xx with OpenAI's error object, never a 500 -----------------------------------------

BAD = [
    (b"{not json", None, None),
    (b"[1, 2]", None, None),
    (b'{"prompt": "x", "temperature": NaN}', None, None),
    (b"\xff\xfe", None, None),
    ({"prompt": "x", "temperature": "hot"}, "temperature", None),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens", None),
    ({"prompt": "x", "stream": "yes"}, "stream", None),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate", None),
    ({"prompt": "x", "temperature": 3}, "temperature", None),
    ({"prompt": "x", "top_p": 1.5}, "top_p", None),
    ({"prompt": "x", "n": 0}, "n", None),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens", None),
    ({"prompt": "x", "logprobs": 9}, "logprobs", None),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias", None),
    ({"prompt": "x", "logit_bias": {"5": 500}}, "logit_bias", None),
    ({"prompt": "x", "logit_bias": {"²": 1}}, "logit_bias", None),
    ({"prompt": [99999]}, "prompt", None),
    ({"prompt": []}, "prompt", None),
    ({}, "prompt", None),
    ({"prompt": "word " * 200}, "prompt", "context_length_exceeded"),
]
BAD_CHAT = [
    ({"messages": []}, "messages", None),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", None),
    ({"messages": [{"role": "user", "content": 5}]}, None, None),
    ({"messages": [{"role": "user", "content": "hi", "extra": 1}]}, "messages.0.extra", None),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": []}, "tools", None),
    ({"messages": "hi"}, "messages", None),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens", None),
    ({"messages": [{"role": "user", "content": "word " * 200}]}, "messages", "context_length_exceeded"),
]


@pytest.mark.parametrize("path,body,param,code", [("/v1/completions", *b) for b in BAD] +
                         [("/v1/chat/completions", *b) for b in BAD_CHAT])
def test_bad_requests_get_400_with_an_error_object(server, path, body, param, code):
    r = post(server, path, content=body) if isinstance(body, bytes) else post(server, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["message"] and (param is None or error["param"] == param) and error["code"] == code


def test_errors_through_the_client_and_other_statuses(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x " * 300)
    assert e.value.code == "context_length_exceeded"
    assert post(server, "/v1/completions", content=b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}').status_code == 413
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(server.url + "/v1/completions").status_code == 405
    assert "access-control-allow-origin" not in httpx.get(server.url + "/health",
                                                          headers={"Origin": "http://evil.example"}).headers


def test_api_key_and_cors(model_dir):
    with live_server(model_dir, api_key="s3cret", cors_origins=("http://app.example",)) as s:
        for key in ("wrong", ""):
            bad = openai.OpenAI(base_url=s.url + "/v1", api_key=key or "x", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        assert post(s, "/v1/completions", {"prompt": "x"}).status_code == 401
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert complete(good, "Hi", max_tokens=2, temperature=0)
        assert httpx.get(s.url + "/health").status_code == 200  # open without a key
        r = httpx.get(s.url + "/health", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_warns_without_a_key_on_other_addresses():
    assert security_warning("127.0.0.1", None) is None and security_warning("0.0.0.0", "k") is None
    assert "without an API key" in security_warning("0.0.0.0", None)


# --- property-based fuzz of request bodies ----------------------------------------------------------

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=8),
                 st.lists(st.integers(-5, 60000), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                               max_size=2))
VALID = {  # values the API accepts (or nearly: edges included)
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "n": st.integers(1, 3), "seed": st.integers(0, 99),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=4)), "stream": st.booleans(),
    "logit_bias": st.dictionaries(st.sampled_from(["0", "50256", "13"]), st.floats(-100, 100), max_size=2),
    "frequency_penalty": st.floats(-2, 2), "presence_penalty": st.floats(-2, 2), "top_k": st.integers(-1, 50),
    "min_p": st.floats(0, 1), "repetition_penalty": st.floats(0.5, 2),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                 "content": st.one_of(st.text(max_size=20), st.lists(st.fixed_dictionaries(
                                     {"type": st.just("text"), "text": st.text(max_size=5)}), max_size=2))})
PROMPT = st.one_of(st.text(max_size=30), st.lists(st.integers(0, 50256), max_size=5),
                   st.lists(st.text(max_size=5), min_size=1, max_size=2))


def bodies(required: dict, optional: dict):
    """Mostly valid bodies (a few fields), or bodies with junk anywhere and an unknown field now and then."""
    valid = st.fixed_dictionaries(required, optional=optional)
    junk = st.fixed_dictionaries({k: st.one_of(v, JUNK) for k, v in required.items()},
                                 optional={k: st.one_of(v, JUNK) for k, v in optional.items()})
    extra = st.dictionaries(st.text(max_size=4), JUNK, max_size=1)
    return st.one_of(valid, st.tuples(junk, extra).map(lambda t: {**t[1], **t[0]}))


# max_tokens is always there and small: every generation stays short
COMPLETION = bodies({"max_tokens": st.integers(0, 4), "prompt": PROMPT},
                    {**VALID, "logprobs": st.integers(0, 5), "echo": st.booleans()})
CHAT = bodies({"max_tokens": st.integers(1, 4), "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
              {**VALID, "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20)})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(COMPLETION.map(lambda b: ("/v1/completions", b)),
                      CHAT.map(lambda b: ("/v1/chat/completions", b)),
                      st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]), st.binary(max_size=40))))
def test_fuzzed_bodies_never_get_a_500_nor_hang(server, body):
    path, data = body
    r = httpx.post(server.url + path, content=data if isinstance(data, bytes) else json.dumps(data), timeout=20)
    assert r.status_code in (200, 400), (r.status_code, r.text)
    event(f"{path} {r.status_code}")
    if r.status_code == 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif isinstance(data, bytes):
        pytest.fail(f"{data!r} was accepted")
    elif data.get("stream") is True:
        assert r.text.endswith("data: [DONE]\n\n")
    else:
        assert r.json()["choices"]

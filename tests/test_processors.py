"""The logit processors: equal to transformers' own, on random logits and histories, and through the CLI."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
)
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.errors import UsageError
from chatgpt_cli.sampling import (
    SamplingOptions,
    adjust,
    frequency_presence_penalty,
    logit_bias,
    min_p_filter,
    no_repeat_ngram,
    parse_logit_bias,
    repetition_penalty,
    sample,
)
from chatgpt_cli.tokenizer import Tokenizer

V = 50
TOK = Tokenizer()


def cases(n=30):
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        length = int(torch.randint(0, 25, (1,), generator=gen))
        history = torch.randint(0, 8 if i % 2 else V, (length,), generator=gen).tolist()  # repeats likely
        yield torch.randn(V, generator=gen) * 3, history


def hf(processor, logits, history):
    return processor(torch.tensor([history], dtype=torch.long), logits[None].clone())[0]


@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    for logits, history in cases():
        assert torch.allclose(repetition_penalty(logits, history, penalty),
                              hf(RepetitionPenaltyLogitsProcessor(penalty), logits, history))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_transformers(n):
    for logits, history in cases():
        ours = no_repeat_ngram(logits, history, n)
        assert torch.equal(ours, hf(NoRepeatNGramLogitsProcessor(n), logits, history))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 1.0])
def test_min_p_equals_transformers(p):
    for logits, _ in cases():
        ours = torch.isfinite(min_p_filter(logits, p))
        theirs = torch.isfinite(MinPLogitsWarper(p)(None, logits[None].clone())[0])
        assert torch.equal(ours, theirs) and ours.any()


def test_logit_bias_equals_transformers_sequence_bias():
    bias = [(3, 2.5), (7, -1.0), (11, -math.inf)]
    processor = SequenceBiasLogitsProcessor(sequence_bias=[[[t], b] for t, b in bias])
    for logits, history in cases():
        assert torch.equal(logit_bias(logits, bias), hf(processor, logits, history))


def test_frequency_and_presence_penalty_follow_openai():
    logits, history = torch.zeros(V), [4, 4, 4, 9]
    out = frequency_presence_penalty(logits, history, 0.5, 0.25)
    assert out[4] == -(3 * 0.5 + 0.25) and out[9] == -(0.5 + 0.25) and out[0] == 0 and logits.eq(0).all()


def test_adjust_runs_the_documented_order_on_the_recent_window():
    logits = torch.tensor([2.0, -2.0, 1.0, 1.0])
    o = SamplingOptions(temperature=0, repeat_penalty=2.0, repeat_last_n=2, presence_penalty=0.5,
                        logit_bias=((3, -math.inf),))
    out = adjust(logits, [0, 1, 2], o)  # the window is [1, 2]: token 0 is too old to be penalised
    assert out.tolist() == [2.0, -4.5, 0.0, -math.inf]
    assert sample(logits, o, history=[0, 1, 2]) == 0
    assert adjust(logits, [0, 1, 2], SamplingOptions()) is logits  # everything off: untouched


def test_parse_logit_bias():
    the = TOK.encode(" the")[0]
    assert parse_logit_bias(["50256=ban", " the=-5", "13=2.5"], TOK.encode, TOK.n_vocab) == (
        (50256, -math.inf), (the, -5.0), (13, 2.5))
    for bad, message in [("hello world=1", "2 tokens"), ("99999=1", r"\[0, 50256\]"), ("13=500", r"\[-100, 100\]"),
                         ("13=x", r"\[-100, 100\]"), ("13", "TOKEN=BIAS")]:
        with pytest.raises(UsageError, match=message):
            parse_logit_bias([bad], TOK.encode, TOK.n_vocab)


# --- through the CLI, against transformers' generate on the same weights ------------------------
runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def hf_greedy(model, text, n, **kwargs):
    ids = TOK.encode(text)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=50256,
                             eos_token_id=50256, **kwargs)[0, len(ids):].tolist()
    return TOK.decode(out[:out.index(50256)] if 50256 in out else out)


@pytest.mark.parametrize("flags, kwargs", [(["--repeat-penalty", "1.5", "--repeat-last-n", "-1"],
                                            {"repetition_penalty": 1.5}),
                                           (["--no-repeat-ngram", "2"], {"no_repeat_ngram_size": 2})])
def test_greedy_complete_equals_transformers_generate(tiny_dir, tiny_hf, flags, kwargs):
    text = "The cat sat on the mat and the cat"
    plain = hf_greedy(tiny_hf, text, 30)
    expected = hf_greedy(tiny_hf, text, 30, **kwargs)
    assert expected != plain  # the processor changed something
    r = run("complete", text, "-m", str(tiny_dir), "-t", "0", "-n", "30", *flags)
    assert r.exit_code == 0, r.output
    assert r.stdout == expected + ("" if expected.endswith("\n") else "\n")


@pytest.mark.parametrize("flag, value, message", [
    ("--repeat-penalty", "0", "repeat-penalty must be a number > 0 (1 = off)"),
    ("--repeat-last-n", "-2", "repeat-last-n must be >= -1"),
    ("--frequency-penalty", "3", "frequency-penalty must be in [-2, 2]"),
    ("--presence-penalty", "-2.5", "presence-penalty must be in [-2, 2]"),
    ("--no-repeat-ngram", "-1", "no-repeat-ngram must be >= 0"),
    ("--min-p", "1.5", "min-p must be in [0, 1]"),
    ("--logit-bias", "13=1000", "logit-bias '13=1000': BIAS must be in [-100, 100]"),
])
@pytest.mark.parametrize("command", ["complete", "next", "chat"])
def test_bad_values_are_usage_errors_naming_the_range(tiny_dir, command, flag, value, message):
    r = run(command, "-m", str(tiny_dir), flag, value, input="hi\n")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), r.stderr


def test_next_shows_what_the_processors_do(tiny_dir):
    import json

    base = json.loads(run("next", "a b a b a", "-m", str(tiny_dir), "--json", "--top", "5").stdout)
    top = base["candidates"][0]["id"]
    banned = json.loads(run("next", "a b a b a", "-m", str(tiny_dir), "--json", "--top", "5",
                            "--logit-bias", f"{top}=ban").stdout)
    assert banned["candidates"][0]["id"] == top and banned["candidates"][0]["prob"] == base["candidates"][0]["prob"]
    assert banned["candidates"][0]["sampled_prob"] == 0 and base["candidates"][0]["sampled_prob"] > 0


class NoEngine:
    window = 1024


def test_chat_set_and_template_defaults(tmp_path):
    import io

    from chatgpt_cli.chat import Chat
    from chatgpt_cli.repl import PlainOutput, run_piped
    from chatgpt_cli.resources import shipped
    from chatgpt_cli.template import load_template

    toml = tmp_path / "t.toml"
    assert dict(load_template("default").sampling) == {"repeat_penalty": 1.2}  # the measured chat default
    assert dict(load_template("qa").sampling) == {}
    toml.write_text((shipped("prompts") / "qa.toml").read_text() + "\n[sampling]\nrepeat_penalty = 1.3\n")
    tmpl = load_template(str(toml))
    assert dict(tmpl.sampling) == {"repeat_penalty": 1.3}
    chat = Chat(NoEngine(), tmpl)
    err = io.StringIO()
    run_piped(chat, io.StringIO("/set repeat_penalty 1.4\n/set no_repeat_ngram 3\n/set logit_bias 13=-2\n"
                                "/set min_p 2\n/show\n"), PlainOutput(io.StringIO(), err))
    s = chat.settings
    assert (s.repeat_penalty, s.no_repeat_ngram, s.logit_bias) == (1.4, 3, ((13, -2.0),))
    assert "error: min-p must be in [0, 1] (0 = off), not 2.0" in err.getvalue()
    assert "repeat_penalty 1.4, repeat_last_n 64" in err.getvalue() and "logit_bias [(13, -2.0)]" in err.getvalue()
    toml.write_text((shipped("prompts") / "qa.toml").read_text() + "\n[sampling]\nrepeat_penalty = \"x\"\n")
    with pytest.raises(UsageError, match=r"\[sampling\] takes numbers"):
        load_template(str(toml))

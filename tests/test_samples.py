"""-N/--num-samples (N samples decoded as one batch) and complete --json / --logprobs."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.generate import Engine
from chatgpt_cli.model import GPT, GPTConfig, init_weights
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.tokenizer import EOT, Tokenizer

runner = CliRunner()
TOK = Tokenizer()
PROMPT = "Once upon a time"


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def complete_json(tiny_dir, *args):
    r = run("complete", PROMPT, "-m", str(tiny_dir), "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_same_seed_same_samples_and_row_zero_is_the_single_sample(tiny_dir):
    a = complete_json(tiny_dir, "-N", "4", "--seed", "7", "-n", "12")
    b = complete_json(tiny_dir, "-N", "4", "--seed", "7", "-n", "12")
    assert a["choices"] == b["choices"] and len(a["choices"]) == 4
    assert len({tuple(c["tokens"]) for c in a["choices"]}) > 1  # independent samples
    one = run("complete", PROMPT, "-m", str(tiny_dir), "--seed", "7", "-n", "12")  # the streamed path
    first = a["choices"][0]
    assert one.stdout == first["text"] + ("" if first["text"].endswith("\n") else "\n")
    assert TOK.decode(first["tokens"]) == first["text"]
    assert a["usage"]["prompt_tokens"] == len(TOK.encode(PROMPT))


def test_each_sample_stops_on_its_own_and_text_output_separates_them(tiny_dir):
    args = ("-N", "6", "--seed", "3", "-n", "15", "--logit-bias", f"{EOT}=6")  # end-of-text now and then
    data = complete_json(tiny_dir, *args)
    reasons = {c["finish_reason"] for c in data["choices"]}
    assert reasons == {"eos", "length"}
    assert len({len(c["tokens"]) for c in data["choices"]}) >= 2
    assert all(EOT not in c["tokens"] for c in data["choices"])
    for c in data["choices"]:
        assert (len(c["tokens"]) == 15) == (c["finish_reason"] == "length")
    r = run("complete", PROMPT, "-m", str(tiny_dir), *args)
    assert r.exit_code == 0, r.output
    ended_first = sorted(data["choices"], key=lambda c: (len(c["tokens"]) + (c["finish_reason"] == "eos"), c["index"]))
    expected = "---\n".join(c["text"] + ("" if c["text"].endswith("\n") else "\n") for c in ended_first)
    assert r.stdout == expected


def test_stop_strings_end_a_sample(tiny_dir):
    data = complete_json(tiny_dir, "-N", "3", "--seed", "1", "-n", "20", "-t", "0")
    text = data["choices"][0]["text"]
    assert {c["text"] for c in data["choices"]} == {text}  # greedy: all rows alike
    stop = text[len(text) // 2:len(text) // 2 + 3]
    stopped = complete_json(tiny_dir, "-N", "3", "-n", "20", "-t", "0", "--stop", stop)
    for c in stopped["choices"]:
        assert c["finish_reason"] == "stop" and c["text"] == text[:text.index(stop)]


def test_logprobs_equal_next(tiny_dir):
    data = complete_json(tiny_dir, "-n", "4", "-t", "0", "--logprobs", "3")
    choice = data["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(choice["tokens"]) == 4
    prompt_ids, checked = TOK.encode(PROMPT), 0
    for k, token in enumerate(choice["tokens"]):
        prefix = PROMPT + TOK.decode(choice["tokens"][:k])
        if TOK.encode(prefix) != prompt_ids + choice["tokens"][:k]:
            continue  # the text does not tokenize back to the same ids: next would see other tokens
        table = json.loads(run("next", prefix, "-m", str(tiny_dir), "--json", "--top", "3").stdout)["candidates"]
        assert [a["id"] for a in lp["top_logprobs"][k]] == [c["id"] for c in table]
        for alt, c in zip(lp["top_logprobs"][k], table, strict=True):
            assert math.exp(alt["logprob"]) == pytest.approx(c["prob"], abs=2e-6)
        assert token == table[0]["id"] and lp["token_logprobs"][k] == pytest.approx(lp["top_logprobs"][k][0]["logprob"])
        checked += 1
    assert checked >= 1
    assert lp["text_offset"][0] == 0 and lp["tokens"][0] == TOK.decode([choice["tokens"][0]])
    assert set(data["timings"]) == {"first_token_ms", "decode_tok_s"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8", "int4"])
def test_batched_samples_in_every_dtype(tiny_dir, dtype):
    data = complete_json(tiny_dir, "-N", "3", "--seed", "2", "-n", "6", "--dtype", dtype,
                         "--repeat-penalty", "1.2", "--min-p", "0.05")
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert all(len(c["tokens"]) <= 6 and TOK.decode(c["tokens"]) == c["text"] for c in data["choices"])
    # the batch runs other products (the few-rows kernels) than one sample: greedy, every row is the single path
    greedy = complete_json(tiny_dir, "-N", "5", "-t", "0", "-n", "12", "--dtype", dtype, "--ignore-eos")
    single = complete_json(tiny_dir, "-t", "0", "-n", "12", "--dtype", dtype, "--ignore-eos")
    assert [c["tokens"] for c in greedy["choices"]] == [single["choices"][0]["tokens"]] * 5


def test_bad_sample_options_are_usage_errors(tiny_dir):
    for args, message in [(["-N", "0"], "--num-samples must be in [1, 128]"),
                          (["--logprobs", "2"], "--logprobs needs --json"),
                          (["--json", "--logprobs", "21"], "--logprobs must be in [0, 20]"),
                          (["-N", "2", "--show-probs"], "--show-probs and --alternatives")]:
        r = run("complete", "hi", "-m", str(tiny_dir), *args)
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {message}"), r.stderr


def padded_model() -> GPT:
    """A model with nanoGPT's padded vocabulary whose padding rows would win every draw."""
    model = init_weights(GPT(GPTConfig(vocab_size=50304, n_positions=32, n_embd=32, n_layer=1, n_head=2))).eval()
    forward = model.forward

    def padded_forward(*args, **kwargs):
        logits = forward(*args, **kwargs)
        return torch.cat([logits[..., :TOK.n_vocab], logits[..., TOK.n_vocab:] + 1e4], dim=-1)

    model.forward = padded_forward
    return model


def test_padded_vocabulary_rows_are_never_sampled():
    engine = Engine(padded_model())
    options = SamplingOptions(temperature=1.0, seed=0)
    single = list(engine.generate([1, 2, 3], 40, options, stop_at_eot=False))  # past the window too
    batched = [t for step in engine.generate_batch([1, 2, 3], 40, options, 4, stop_at_eot=False)
               for t in step.values()]
    assert len(single) == 40 and len(batched) == 160
    assert max(single + batched) < TOK.n_vocab


def test_batch_of_one_equals_the_streamed_path_and_reencodes_past_the_window():
    engine = Engine(init_weights(GPT(GPTConfig(n_positions=16, n_embd=32, n_layer=2, n_head=2))).eval())
    options = SamplingOptions(temperature=0.9, seed=5, repeat_penalty=1.3)
    single = list(engine.generate([5, 6, 7], 30, options, stop_at_eot=False))
    batched = [step[0] for step in engine.generate_batch([5, 6, 7], 30, options, 1, stop_at_eot=False)]
    assert batched == single and engine.stats.reencodes >= 2

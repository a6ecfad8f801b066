"""Looking inside: next-token tables, attention maps, scoring, and the generation views."""

import json

import pytest
import torch
from conftest import hf_model, write_hf_dir
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.insight import attention_maps, candidates, next_token_logits, score, windows
from chatgpt_cli.model import GPT, GPTConfig
from chatgpt_cli.sampling import probabilities
from chatgpt_cli.tokenizer import Tokenizer
from chatgpt_cli.weights import load_model, save_model

runner = CliRunner()
TOK = Tokenizer()


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def handmade_dir(tmp_path_factory):
    """A model whose next-token logits are 3 for ' the', 2 for ' a', 1 for '.', 0 for the rest."""
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, n_positions=16))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        for token, logit in [(262, 3.0), (257, 2.0), (13, 1.0)]:
            model.transformer.wte.weight[token, 0] = logit
    return save_model(model, tmp_path_factory.mktemp("handmade"))


def test_next_golden_table(handmade_dir):
    r = run("next", "Look at", "-m", str(handmade_dir), "--top", "3", "-k", "2")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == GOLDEN_NEXT


GOLDEN_NEXT = """\
                           Next token after 2 tokens                            
┏━━━┳━━━━━━━━┳━━━━━┳━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┓
┃ # ┃ token  ┃  id ┃ logit ┃   prob ┃ cumulative ┃ sampled (t=1.0, k=2, p=1.0) ┃
┡━━━╇━━━━━━━━╇━━━━━╇━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┩
│ 1 │ ' the' │ 262 │ 3.000 │ 0.0004 │     0.0004 │                      0.7311 │
│ 2 │ ' a'   │ 257 │ 2.000 │ 0.0001 │     0.0005 │                      0.2689 │
│ 3 │ '.'    │  13 │ 1.000 │ 0.0001 │     0.0006 │                      0.0000 │
└───┴────────┴─────┴───────┴────────┴────────────┴─────────────────────────────┘
"""

GOLDEN_ALTERNATIVES = """\
 the the
    Alternatives at each step (probability after     
            temperature / top-k / top-p)             
┏━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┓
┃ step ┃ picked       ┃ #1             ┃ #2         ┃
┡━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━┩
│    1 │ ' the' 1.000 │ > ' the' 1.000 │ ' a' 0.000 │
│    2 │ ' the' 1.000 │ > ' the' 1.000 │ ' a' 0.000 │
└──────┴──────────────┴────────────────┴────────────┘
"""


def test_next_json_probabilities_equal_a_reference_softmax(tiny_dir, tiny_hf):
    r = run("next", "The quick brown", "-m", str(tiny_dir), "--dtype", "float32", "--top", "20", "--json",
            "-t", "0.5")
    data = json.loads(r.stdout)
    ids = TOK.encode("The quick brown")
    with torch.no_grad():
        ref = torch.softmax(tiny_hf(torch.tensor([ids])).logits[0, -1], -1)
        ref_t = torch.softmax(tiny_hf(torch.tensor([ids])).logits[0, -1] / 0.5, -1)
    for row in data["candidates"]:
        assert row["prob"] == pytest.approx(float(ref[row["id"]]), abs=1e-6)
        assert row["sampled_prob"] == pytest.approx(float(ref_t[row["id"]]), abs=1e-6)
    assert [row["id"] for row in data["candidates"]] == torch.topk(ref, 20).indices.tolist()


def test_probabilities_sum_to_one(tiny_dir):
    model = load_model(tiny_dir, dtype="float32").model
    logits = next_token_logits(model, TOK.encode("Hello there"))
    for t, k, p in [(1.0, 0, 1.0), (0.7, 40, 0.9), (2.0, 5, 1.0), (0, 0, 1.0)]:
        assert float(probabilities(logits, t, k, p).sum()) == pytest.approx(1.0, abs=1e-5)
    cands = candidates(logits, 10, 1.0, 3)
    assert sum(c.sampled_prob for c in cands) == pytest.approx(1.0, abs=1e-5)


def test_attention_rows_sum_to_one_zero_above_diagonal_and_match_transformers(tmp_path):
    ref = hf_model(n_layer=2, n_head=4, n_embd=32, n_positions=32, seed=3)
    ref.config._attn_implementation = "eager"
    path = write_hf_dir(ref, tmp_path / "m")
    ids = TOK.encode("The cat sat on the mat because it was warm.")
    maps = attention_maps(load_model(path, dtype="float32").model, ids)
    assert maps.shape == (2, 4, len(ids), len(ids))
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, len(ids)), atol=1e-5, rtol=0)
    assert torch.all(maps.triu(diagonal=1) == 0)
    with torch.no_grad():
        out = ref(torch.tensor([ids]), output_attentions=True)
    torch.testing.assert_close(maps, torch.stack([a[0] for a in out.attentions]), atol=1e-5, rtol=1e-4)


def test_attention_command_heat_map_json_summary_and_png(tiny_dir, tmp_path):
    r = run("attention", "one two three", "-m", str(tiny_dir), "--layer", "1", "--head", "1")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "Attention, layer 1, head 1" in lines[0]
    assert lines[2].count("·") == 2 and lines[4].count("·") == 0  # the causal mask, visible
    data = json.loads(run("attention", "one two three", "-m", str(tiny_dir), "--layer", "1", "--json").stdout)
    assert data["tokens"] == ["one", " two", " three"] and data["weights"][0][1:] == [0, 0]
    summary = run("attention", "one two three", "-m", str(tiny_dir), "--layer", "all")
    assert "L0" in summary.stdout and "L1" in summary.stdout
    png = tmp_path / "map.png"
    r = run("attention", "one two three", "-m", str(tiny_dir), "--png", str(png))
    assert r.exit_code == 0, r.stderr
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG"
    bad = run("attention", "x", "-m", str(tiny_dir), "--layer", "7")
    assert bad.exit_code == 2 and bad.stderr == "error: --layer must be 0..1 or 'all', not '7'\n"


def test_windows_score_every_token_once():
    for n in [2, 5, 16, 17, 40, 100]:
        for w in [4, 7, 16]:
            scored = [p for start, end, first in windows(n, w) for p in range(first, end)]
            assert scored == list(range(1, n))
            assert all(end - start <= w for start, end, _ in windows(n, w))


def reference_score(hf, ids, window):
    total, count = 0.0, 0
    for start, end, first in windows(len(ids), window):
        x = torch.tensor([ids[start:end]])
        with torch.no_grad():
            logits = hf(x).logits[0]
        lp = torch.log_softmax(logits[first - start - 1:-1], -1)
        tgt = x[0, first - start:]
        total -= float(lp.gather(1, tgt[:, None]).sum())
        count += len(tgt)
    return total / count


def test_score_equals_transformers_loss(tiny_dir, tiny_hf):
    model = load_model(tiny_dir, dtype="float32").model
    short = TOK.encode("A short text that fits the window easily.")
    with torch.no_grad():
        ref_loss = float(tiny_hf(torch.tensor([short]), labels=torch.tensor([short])).loss)
    assert score(model, short).mean_loss == pytest.approx(ref_loss, abs=1e-4)
    long = TOK.encode("word " * 150 + "and a different ending")  # longer than the 64-token window
    assert score(model, long).mean_loss == pytest.approx(reference_score(tiny_hf, long, 64), abs=1e-4)


def test_score_command(tiny_dir, tiny_hf, tmp_path):
    text = "The rain in Spain stays mainly in the plain."
    f = tmp_path / "t.txt"
    f.write_text(text)
    ids = TOK.encode(text)
    with torch.no_grad():
        ref_loss = float(tiny_hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    data = json.loads(run("score", str(f), "-m", str(tiny_dir), "--dtype", "float32", "--json", "--per-token").stdout)
    assert data["mean_loss"] == pytest.approx(ref_loss, abs=1e-4)
    assert len(data["per_token"]) == len(ids) - 1
    r = run("score", "-m", str(tiny_dir), "--dtype", "float32", input=text)
    assert r.stdout.splitlines()[0] == f"tokens: {len(ids)} ({len(ids) - 1} scored)"
    assert r.stdout.splitlines()[1] == f"mean loss: {data['mean_loss']:.4f} nats/token"
    bad = run("score", str(tmp_path / "missing.txt"), "-m", str(tiny_dir))
    assert bad.exit_code == 1 and bad.stderr.startswith("error: cannot read")


def test_alternatives_table_follows_the_text(handmade_dir):
    r = run("complete", "Look", "-m", str(handmade_dir), "-n", "2", "-t", "0", "--alternatives", "2")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == GOLDEN_ALTERNATIVES


def test_show_probs_is_plain_text_off_a_terminal(handmade_dir):
    r = run("complete", "Look", "-m", str(handmade_dir), "-n", "2", "-t", "0", "--show-probs")
    assert r.stdout == " the the\n"


def test_show_probs_colours_tokens_on_a_terminal(handmade_dir):
    pexpect = pytest.importorskip("pexpect")
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm-256color",
                                                                        "COLORTERM": "truecolor"}
    child = pexpect.spawn(sys.executable, ["-m", "chatgpt_cli", "complete", "Look", "-m", str(handmade_dir), "-n", "2",
                                           "--seed", "1", "-t", "1", "-k", "2", "--show-probs"], env=env,
                          encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    out = child.before
    child.close()
    assert "\x1b[38;2;" in out  # a true-colour foreground per token
    assert "the" in out

"""`explain`: the walk of one prediction, checked against transformers and against hand counts."""

import json

import pytest
import torch
from conftest import hf_model, write_hf_dir
from typer.testing import CliRunner

from chatgpt_cli.cli import app
from chatgpt_cli.explain import count, explain, last_token_attention, lens, weight_bytes_read
from chatgpt_cli.generate import decode_one, prefill
from chatgpt_cli.insight import next_token_logits, record
from chatgpt_cli.model import GPT, GPTConfig, init_weights
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.tokenizer import Tokenizer
from chatgpt_cli.weights import load_model

runner = CliRunner()
TOK = Tokenizer()
TEXT = "The cat sat on the mat because it was warm and"
SECTION_TITLES = ["1. Tokens", "2. Embeddings", "3. Attention", "4. The prediction forming",
                  "5. Unembedding and softmax", "6. Cost"]


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "80"})


def explained(path, *args) -> dict:
    r = run("explain", TEXT, "-m", str(path), "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    """A 3-block, 4-head reference model (eager attention, so it can return its weights)."""
    ref = hf_model(n_layer=3, n_head=4, n_embd=32, n_positions=32, seed=5)
    ref.config._attn_implementation = "eager"
    return ref, write_hf_dir(ref, tmp_path_factory.mktemp("eager"))


def test_the_lens_at_every_block_equals_transformers_hidden_states(eager):
    ref, path = eager
    ids = TOK.encode(TEXT)
    model = load_model(path, dtype="float32").model
    with torch.no_grad():
        out = ref(torch.tensor([ids]), output_hidden_states=True)
    # hidden_states[i] is the stream after block i-1; transformers applies ln_f to the last one itself
    want = [ref.lm_head(ref.transformer.ln_f(h[0, -1])) for h in out.hidden_states[1:-1]] + [out.logits[0, -1]]
    rec = record(model, ids, last_only=True)
    for layer, residual in enumerate(rec.residual):
        torch.testing.assert_close(lens(model, residual), want[layer], atol=1e-4, rtol=1e-4)
    data = explained(path, "-t", "0")
    assert [x["layer"] for x in data["layers"]] == [0, 1, 2]
    for layer, entry in enumerate(data["layers"]):
        probs = torch.softmax(want[layer], -1)
        assert [t["id"] for t in entry["top"]] == torch.topk(probs, 3).indices.tolist()
        assert [t["prob"] for t in entry["top"]] == pytest.approx(torch.topk(probs, 3).values.tolist(), abs=1e-5)


def test_the_last_block_of_the_lens_is_the_models_own_distribution_and_nexts(eager):
    _, path = eager
    ids = TOK.encode(TEXT)
    model = load_model(path, dtype="float32").model
    rec = record(model, ids, last_only=True)
    assert torch.equal(lens(model, rec.residual[-1]), next_token_logits(model, ids))  # bit for bit
    data = explained(path, "--top", "3")
    nxt = json.loads(run("next", TEXT, "-m", str(path), "--top", "3", "--json", "-t", "0.8").stdout)["candidates"]
    assert [(t["id"], t["prob"]) for t in data["layers"][-1]["top"]] == [(c["id"], c["prob"]) for c in nxt]
    assert [(t["id"], t["prob"], t["logit"], t["sampled_prob"]) for t in data["next"]] == \
        [(c["id"], c["prob"], c["logit"], c["sampled_prob"]) for c in nxt]


def test_attention_weights_equal_output_attentions(eager):
    ref, path = eager
    ids = TOK.encode(TEXT)
    model = load_model(path, dtype="float32").model
    with torch.no_grad():
        out = ref(torch.tensor([ids]), output_attentions=True)
    rec = record(model, ids, last_only=True)
    for layer, qkv in enumerate(rec.qkv):
        torch.testing.assert_close(last_token_attention(qkv, 4), out.attentions[layer][0, :, -1], atol=1e-5, rtol=1e-4)
    per_head = explained(path, "--heads")
    mean = explained(path)
    for layer in range(3):
        want = out.attentions[layer][0, :, -1]  # (heads, keys)
        heads = per_head["layers"][layer]["attention"]
        assert [h["head"] for h in heads] == [0, 1, 2, 3]
        for h in heads:
            top = torch.topk(want[h["head"]], 3)
            assert [k["pos"] for k in h["keys"]] == top.indices.tolist()
            assert [k["weight"] for k in h["keys"]] == pytest.approx(top.values.tolist(), abs=5e-5)
            assert [k["id"] for k in h["keys"]] == [ids[p] for p in top.indices.tolist()]
        (avg,) = mean["layers"][layer]["attention"]
        top = torch.topk(want.mean(0), 3)
        assert avg["head"] is None and [k["pos"] for k in avg["keys"]] == top.indices.tolist()
        assert [k["weight"] for k in avg["keys"]] == pytest.approx(top.values.tolist(), abs=5e-5)


def test_gpt2_124m_cost_equals_the_hand_count():
    with torch.device("meta"):  # GPT-2 small's shapes, no memory
        model = GPT(GPTConfig())
    # By hand, n_layer 12, C 768, vocab 50257, context T = 10:
    #   products per block 12 x 768^2 = 7,077,888; x 12 blocks = 84,934,656
    #   unembedding 768 x 50,257 = 38,597,376; products 123,532,032
    #   attention 2 x 12 x 10 x 768 = 184,320; total 123,716,352
    # Weights read, float32: a block holds 2 LayerNorms 3,072 + c_attn 1,769,472 + 2,304 + c_proj
    #   589,824 + 768 + c_fc 2,359,296 + 3,072 + mlp.c_proj 2,359,296 + 768 = 7,087,872 values;
    #   x 12 = 85,054,464, + ln_f 1,536 + the unembedding (tied wte) 38,597,376 + a row each of wte and
    #   wpe 1,536 = 123,654,912 values x 4 bytes = 494,619,648 (of 124,439,808 parameters: most of wpe
    #   stays unread). KV cache read: 2 x 12 x 10 x 768 x 4 bytes = 737,280.
    cost = count(model.config, 10, weight_bytes_read(model), 4)
    assert cost.block_products == 7_077_888
    assert cost.products == 123_532_032
    assert cost.unembedding == 38_597_376
    assert cost.attention == 184_320
    assert cost.total == 123_716_352
    assert cost.weight_bytes == 494_619_648
    assert cost.kv_bytes == 737_280
    assert cost.attention_for(1024) == 18_874_368  # linear per token with the cache
    assert cost.sequence_attention(1024) == 9_673_113_600  # 12 x 768 x 1024 x 1025: quadratic
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


def test_the_cost_formula_equals_the_multiply_adds_torch_counts_for_a_decode_step():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = init_weights(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64))).eval()
    model.setup_cache(64)
    with torch.inference_mode():
        prefill(model, list(range(1, 10)), 0)
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):  # attention as bmm
            decode_one(model, 10, 9)  # the 10th token: 10 keys
    assert counter.get_total_flops() == 2 * count(model.config, 10, 0, 4).total  # a multiply-add is 2 flops


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8", "int4"])
def test_every_dtype(tiny_dir, dtype):
    data = explained(tiny_dir, "--dtype", dtype, "-t", "0")
    nxt = json.loads(run("next", TEXT, "-m", str(tiny_dir), "--dtype", dtype, "--json").stdout)["candidates"]
    assert data["model"]["precision"].startswith(dtype)
    assert data["layers"][-1]["top"][0]["id"] == data["next"][0]["id"] == data["chosen"]["id"] == nxt[0]["id"]
    assert data["layers"][-1]["top"][0]["prob"] == nxt[0]["prob"]
    assert data["cost"]["weight_bytes"] > 0
    r = run("explain", TEXT, "-m", str(tiny_dir), "--dtype", dtype)
    assert r.exit_code == 0, r.stderr
    assert [t for t in SECTION_TITLES if t in r.stdout] == SECTION_TITLES


def test_bytes_per_token_follow_the_precision(tiny_dir):
    costs = {d: explained(tiny_dir, "--dtype", d)["cost"] for d in ("float32", "bfloat16", "int8", "int4")}
    by = {d: cost["weight_bytes"] for d, cost in costs.items()}
    assert by["bfloat16"] < 0.55 * by["float32"]  # the unembedding (50257 x 32) is most of it
    assert by["int8"] < 0.7 * by["bfloat16"]
    kv = {d: cost["kv_bytes"] / costs["float32"]["kv_bytes"] for d, cost in costs.items()}
    assert kv == {"float32": 1.0, "bfloat16": 0.5, "int8": pytest.approx((1 + 4 / 16) / 4, abs=1e-3),  # codes + scales
                  "int4": pytest.approx((0.5 + 4 / 16) / 4, abs=1e-3)}  # two codes a byte


def test_sampled_token_is_generations_first_token_with_that_seed(tiny_dir):
    for seed in (1, 2, 3):
        data = explained(tiny_dir, "--seed", str(seed), "-t", "1.5", "-k", "50")
        first = run("complete", TEXT, "-m", str(tiny_dir), "-n", "1", "--seed", str(seed), "-t", "1.5", "-k", "50")
        assert first.stdout == TOK.decode([data["chosen"]["id"]]) + "\n"
        assert data["sampling"]["kept"] == 50 and data["chosen"]["greedy"] is False


def test_json_shape(tiny_dir):
    data = explained(tiny_dir, "--seed", "0", "--dtype", "float32")
    assert list(data) == ["model", "tokens", "dropped", "embeddings", "layers", "first_top_layer", "next",
                          "sampling", "chosen", "cost"]
    ids = TOK.encode(TEXT)
    assert data["tokens"] == [{"id": i, "text": TOK.decode([i])} for i in ids]
    assert set(data["layers"][0]) == {"layer", "top", "attention"}
    assert set(data["layers"][0]["top"][0]) == {"id", "text", "prob"}
    assert set(data["chosen"]) == {"id", "text", "prob", "sampled_prob", "greedy"}
    assert len(data["embeddings"]) == len(ids)
    emb = data["embeddings"][0]
    model = load_model(tiny_dir, dtype="float32").model
    wte, wpe = model.transformer.wte.weight[ids[0]], model.transformer.wpe.weight[0]
    assert emb["wte"]["first"] == pytest.approx(wte[:4].tolist(), abs=1e-6)
    assert emb["sum"]["norm"] == pytest.approx(float((wte + wpe).norm()), abs=1e-5)
    lens_top = [x["top"][0]["id"] for x in data["layers"]]
    assert lens_top.index(data["next"][0]["id"]) == data["first_top_layer"]
    piped = run("explain", "-m", str(tiny_dir), "--json", "--seed", "0", "--dtype", "float32", input=TEXT)  # stdin
    assert json.loads(piped.stdout) == data
    assert explained(tiny_dir, "--section", "cost", "--dtype", "float32") == {"cost": data["cost"]}
    assert explained(tiny_dir, "--section", "lens", "--dtype", "float32")["first_top_layer"] == data["first_top_layer"]


def test_tokens_section_exact_with_partial_characters(tiny_dir):
    r = run("explain", "Hi 😀", "-m", str(tiny_dir), "--section", "tokens")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ("1. Tokens: 3 of the 64-token window (GPT-2's byte-level BPE)\n"
                        "  0:'Hi'=17250  1:b' \\xf0\\x9f\\x98'=30325  2:b'\\x80'=222\n")


def test_long_input_stays_within_80_columns_and_summarises(tiny_dir):
    text = " ".join(f"word{i} supercalifragilistic" for i in range(100))
    for extra in ([], ["--heads"]):
        r = run("explain", text, "-m", str(tiny_dir), *extra)
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        assert not any(line.endswith("…") for line in lines)  # nothing had to be cut
        assert "tokens before the window are not seen" in r.stdout
        assert "(40 more)" in r.stdout and "58 tokens not shown here; --json lists them all" in r.stdout
        assert len(lines) < 80


def test_bundled_model():
    r = run("explain", "The capital of France is", "-t", "0")
    assert r.exit_code == 0, r.stderr
    assert [t for t in SECTION_TITLES if t in r.stdout] == SECTION_TITLES
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert not any(line.endswith("…") for line in r.stdout.splitlines())
    assert "temperature 0: greedy" in r.stdout


def test_bad_options(tiny_dir):
    r = run("explain", "x", "-m", str(tiny_dir), "--section", "nope")
    assert r.exit_code == 2
    assert r.stderr == ("error: --section must be one of tokens, embeddings, attention, lens, softmax, cost, "
                        "not 'nope'\n")
    r = run("explain", "x", "-m", str(tiny_dir), "-t", "-1")
    assert r.exit_code == 2 and r.stderr.startswith("error: temperature")


def test_explain_library_leaves_a_kv_cache_alone(tiny_dir):
    model = load_model(tiny_dir, dtype="float32").model
    model.setup_cache(8)
    caches = [b.attn.kv_cache for b in model.transformer.h]
    e = explain(model, TOK.encode("a b c"), SamplingOptions(0.0))
    assert [b.attn.kv_cache for b in model.transformer.h] == caches
    assert e.chosen.token == e.top


def test_a_single_token_sees_only_itself(tiny_dir):
    r = run("explain", "-m", str(tiny_dir), "--json", "--heads", input="")  # no text: end-of-text alone
    data = json.loads(r.stdout)
    assert data["tokens"] == [{"id": 50256, "text": "<|endoftext|>"}]
    for layer in data["layers"]:
        assert [h["keys"] for h in layer["attention"]] == [[{"pos": 0, "id": 50256, "text": "<|endoftext|>",
                                                             "weight": 1.0}]] * 2
    assert data["cost"]["attention"] == 2 * 2 * 1 * 32

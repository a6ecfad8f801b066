"""The decoder against Hugging Face transformers' GPT2LMHeadModel on the same weights."""

import pytest
import torch
from conftest import hf_model, write_file, write_hf_dir

from chatgpt_cli.generate import Engine, decode_one, prefill
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.weights import load_model

CONFIGS = [
    dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257),
    dict(n_layer=3, n_head=3, n_embd=48, n_positions=40, vocab_size=1000),  # odd sizes
    dict(n_layer=1, n_head=5, n_embd=40, n_positions=17, vocab_size=333),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("layout", ["hf_dir", "file_prefixed", "file_bare_with_buffers"])
def test_logits_match_transformers(tmp_path, cfg, layout):
    ref = hf_model(**cfg, seed=1)
    if layout == "hf_dir":
        path = write_hf_dir(ref, tmp_path / "m")
    elif layout == "file_prefixed":  # no config.json: everything inferred, n_head from metadata
        path = write_file(ref, tmp_path / "m.safetensors", metadata={"n_head": str(cfg["n_head"])})
    else:
        path = write_file(ref, tmp_path / "m.safetensors", prefix=False, with_mask_buffers=True,
                          metadata={"n_head": str(cfg["n_head"])})
    model = load_model(path, dtype="float32", device="cpu").model
    idx = torch.randint(0, cfg["vocab_size"], (2, cfg["n_positions"]))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, atol=1e-4, rtol=1e-4)


def test_n_head_inferred_as_n_embd_over_64(tmp_path):
    ref = hf_model(n_layer=1, n_head=2, n_embd=128, n_positions=16, vocab_size=100)
    model = load_model(write_file(ref, tmp_path / "m.safetensors"), dtype="float32").model
    assert model.config.n_head == 2
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, atol=1e-4, rtol=1e-4)


def test_own_lm_head_is_used(tmp_path):
    ref = hf_model(n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=100)
    ref.config.tie_word_embeddings = False
    state = {k: v.clone() for k, v in ref.state_dict().items() if not k.endswith(".attn.bias")}
    state["lm_head.weight"] = torch.randn(100, 32)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "m.safetensors"), metadata={"n_head": "2"})
    model = load_model(tmp_path / "m.safetensors", dtype="float32").model
    assert not model.tied
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        hidden = ref.transformer(idx).last_hidden_state
        torch.testing.assert_close(model(idx), hidden @ state["lm_head.weight"].T, atol=1e-4, rtol=1e-4)
    for dtype in ("bfloat16", "int8", "int4"):  # the converted and quantized unembeddings are the own one too
        other = load_model(tmp_path / "m.safetensors", dtype=dtype).model
        with torch.no_grad():
            torch.testing.assert_close(other(idx).float(), model(idx), atol=0.3 if dtype == "int4" else 0.15, rtol=0.05)


def test_cache_prefill_plus_decode_equals_full_forward(tiny_dir):
    model = load_model(tiny_dir, dtype="float32").model
    idx = torch.randint(0, 50257, (1, 30))
    with torch.no_grad():
        full = model(idx)[0]
        model.setup_cache(64)
        steps = [prefill(model, idx[0, :10].tolist(), 0)]
        steps += [decode_one(model, int(idx[0, i]), i) for i in range(10, 30)]
        model.setup_cache(None)
    torch.testing.assert_close(torch.stack(steps), full[9:], atol=1e-4, rtol=1e-4)


def test_greedy_matches_transformers_generate(tiny_dir, tiny_hf):
    model = load_model(tiny_dir, dtype="float32").model
    prompt = [464, 3290, 318, 257]
    with torch.no_grad():
        ref = tiny_hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                               pad_token_id=50256, eos_token_id=None)[0, len(prompt):].tolist()
    ours = list(Engine(model).generate(prompt, 40, SamplingOptions(temperature=0), stop_at_eot=False))
    assert ours == ref


def test_generation_past_the_window_goes_on(tiny_dir):
    model = load_model(tiny_dir, dtype="float32").model  # window 64
    engine = Engine(model)
    out = list(engine.generate([1, 2, 3], 150, SamplingOptions(temperature=1.0, seed=3), stop_at_eot=False))
    assert len(out) == 150
    assert engine.stats.reencodes >= 2
    assert len(engine.cached) <= 64


def test_engine_reuses_the_common_prefix(tiny_dir):
    engine = Engine(load_model(tiny_dir, dtype="float32").model)
    greedy = SamplingOptions(temperature=0)
    first = list(engine.generate(list(range(100, 120)), 5, greedy, stop_at_eot=False))
    assert engine.stats.tokens_run == 20 + 4  # the prompt, then one decode per token but the last
    # the same conversation, longer: only the new tokens run through the model
    prompt = list(range(100, 120)) + first[:4] + [7, 8, 9]
    list(engine.generate(prompt, 1, greedy))
    assert engine.stats.tokens_run == 3
    # a request that shares nothing runs whole, and gives the same tokens as a fresh engine
    fresh = Engine(load_model(tiny_dir, dtype="float32").model)
    assert list(engine.generate([5, 6], 5, greedy, stop_at_eot=False)) == \
        list(fresh.generate([5, 6], 5, greedy, stop_at_eot=False))


def test_static_cache_equals_the_growing_one(tiny_dir):
    """The static cache (for CUDA graphs) reads the whole window and masks what is not written."""
    model = load_model(tiny_dir, dtype="float32").model
    idx = torch.randint(0, 50257, (1, 30)).tolist()[0]
    with torch.no_grad():
        model.setup_cache(64)
        want = [prefill(model, idx[:10], 0)] + [decode_one(model, idx[i], i) for i in range(10, 30)]
        model.setup_cache(64, static=True)
        cache = model.transformer.h[0].attn.kv_cache
        assert cache.static and torch.count_nonzero(cache.k_cache) == 0  # read whole, so it starts at zero
        got = [prefill(model, idx[:10], 0)] + [decode_one(model, idx[i], i) for i in range(10, 30)]
        assert cache.update(torch.tensor([30]), *[torch.zeros(1, 2, 1, 16)] * 2)[0].shape == (1, 2, 64, 16)
        # a second prompt over the first one's cache: positions past it hold stale keys, masked out
        got2 = prefill(model, idx[:5], 0)
        model.setup_cache(64)
        want2 = prefill(model, idx[:5], 0)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got2, want2, atol=1e-5, rtol=1e-5)


def test_engines_sharing_a_model_keep_their_own_caches(tiny_dir):
    model = load_model(tiny_dir, dtype="float32").model
    greedy = SamplingOptions(temperature=0)
    a, b = Engine(model), Engine(model)
    first_a = list(a.generate(list(range(100, 120)), 5, greedy, stop_at_eot=False))
    list(b.generate([9, 8, 7, 6], 5, greedy, stop_at_eot=False))  # overwrites the model's cache if shared
    more = list(range(100, 120)) + first_a + [3]
    got, want = [], []
    list(a.generate(more, 5, greedy, stop_at_eot=False, on_step=lambda logits, t: got.append(logits)))
    assert a.stats.tokens_run == 2 + 4  # only the last reply token and the new one ran: a kept its cache
    fresh = Engine(load_model(tiny_dir, dtype="float32").model)
    list(fresh.generate(more, 5, greedy, stop_at_eot=False, on_step=lambda logits, t: want.append(logits)))
    torch.testing.assert_close(torch.stack(got), torch.stack(want), atol=1e-5, rtol=1e-5)


def test_graph_decoder_replays_the_step_correctly(tiny_dir, monkeypatch):
    """The CUDA-graph engine's logic on the CPU: a 'graph' whose replay runs the recorded step
    again. Static buffers, the static cache, the warm-up at position 0 and prefix reuse together
    must give exactly the logits of the ordinary engine."""
    from chatgpt_cli import cuda_graph, generate
    from chatgpt_cli.cuda_graph import GraphDecoder

    monkeypatch.setattr(generate, "wants_graph", lambda model: True)
    monkeypatch.setattr(cuda_graph, "record", lambda step, device: (step(), step(), step)[-1])
    greedy = SamplingOptions(temperature=0)
    graphed = Engine(load_model(tiny_dir, dtype="float32").model)
    assert isinstance(graphed.decode, GraphDecoder) and graphed.caches[0].static
    monkeypatch.setattr(generate, "wants_graph", lambda model: False)
    plain = Engine(load_model(tiny_dir, dtype="float32").model)
    reply: list[int] = []
    for prompt in ([464, 3290, 318, 257], "next turn", [5, 6, 7]):  # a first turn, the next, a reset
        prompt = [464, 3290, 318, 257] + reply + [11, 290] if prompt == "next turn" else prompt
        got: list[torch.Tensor] = []
        want: list[torch.Tensor] = []
        reply = list(graphed.generate(prompt, 20, greedy, stop_at_eot=False, on_step=lambda lg, t, o=got: o.append(lg)))
        b = list(plain.generate(prompt, 20, greedy, stop_at_eot=False, on_step=lambda lg, t, o=want: o.append(lg)))
        assert reply == b and graphed.stats.tokens_run == plain.stats.tokens_run
        torch.testing.assert_close(torch.stack(got), torch.stack(want), atol=1e-5, rtol=1e-5)
    assert graphed.total_tokens_run < 3 * 20 + 4 + 30  # the second turn reused the first's cache


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_decode_matches_the_cpu(tiny_dir, dtype):
    from chatgpt_cli.cuda_graph import GraphDecoder

    greedy = SamplingOptions(temperature=0)
    gpu = Engine(load_model(tiny_dir, dtype=dtype, device="cuda").model)
    assert isinstance(gpu.decode, GraphDecoder)
    cpu = Engine(load_model(tiny_dir, dtype="float32", device="cpu").model)
    prompt = [464, 3290, 318, 257]
    steps = []
    got = list(gpu.generate(prompt, 30, greedy, stop_at_eot=False, on_step=lambda lg, t: steps.append(lg)))
    want_steps = []
    want = list(cpu.generate(prompt, 30, greedy, stop_at_eot=False, on_step=lambda lg, t: want_steps.append(lg)))
    tol = 1e-3 if dtype == "float32" else 0.1
    torch.testing.assert_close(torch.stack(steps).float().cpu(), torch.stack(want_steps), atol=tol, rtol=tol)
    if dtype == "float32":
        assert got == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "int4"])
def test_cuda_samples_and_every_dtype_run(tiny_dir, dtype):
    """-N on the GPU (the prompt through the graph engine's static cache, then the batch widened
    from it): every row the same greedy tokens, in float32 the single sample's and the CPU's."""
    greedy = SamplingOptions(temperature=0)
    gpu = Engine(load_model(tiny_dir, dtype=dtype, device="cuda").model)
    prompt = [464, 3290, 318, 257]
    one = list(gpu.generate(prompt, 12, greedy, stop_at_eot=False))
    rows: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for out in gpu.generate_batch(prompt, 12, greedy, 3, stop_at_eot=False):
        for r, t in out.items():
            rows[r].append(t)
    assert rows[0] == rows[1] == rows[2] and rows[0][0] == one[0]  # the first token comes from the prefill
    if dtype == "float32":
        assert rows[0] == one
        cpu = Engine(load_model(tiny_dir, dtype="float32", device="cpu").model)
        assert one == list(cpu.generate(prompt, 12, greedy, stop_at_eot=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_complete_prints_the_cpus_greedy_text(tiny_dir):
    from typer.testing import CliRunner

    from chatgpt_cli.cli import app

    def complete(device: str) -> str:
        r = CliRunner().invoke(app, ["complete", "The cat", "-m", str(tiny_dir), "--device", device,
                                     "--dtype", "float32", "-t", "0", "-n", "16"])
        assert r.exit_code == 0, r.output
        return r.stdout

    assert complete("cuda") == complete("cpu")

import pytest
import torch

from chatgpt_cli.errors import UsageError
from chatgpt_cli.sampling import (
    SamplingOptions,
    apply_temperature,
    make_generator,
    probabilities,
    sample,
    top_k_filter,
    top_p_filter,
)


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingOptions(temperature=0)) == 1


def test_top_k_leaves_exactly_k():
    logits = torch.tensor([1.0, 5.0, 3.0, 3.0, 3.0, 0.0])
    kept = torch.isfinite(top_k_filter(logits, 3))
    assert kept.sum() == 3 and kept[1]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, False, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.75)).tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.76)).tolist() == [True, True, True, False]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


def test_temperature_scales():
    logits = torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(apply_temperature(logits, 0.5), logits * 2)
    sharp = probabilities(logits, 0.5)
    flat = probabilities(logits, 2.0)
    assert sharp.max() > probabilities(logits, 1.0).max() > flat.max()
    assert torch.allclose(probabilities(logits, 1.0), torch.softmax(logits, -1))


def test_inputs_not_modified():
    logits = torch.randn(100)
    before = logits.clone()
    top_p_filter(top_k_filter(apply_temperature(logits, 0.7), 5), 0.9)
    probabilities(logits, 0.7, 5, 0.9)
    assert torch.equal(logits, before)


def test_same_seed_same_tokens():
    logits = torch.randn(50257)
    opts = SamplingOptions(temperature=1.0, seed=42)
    a = [sample(logits, opts, g) for g in [make_generator(42)] for _ in range(20)]
    b = [sample(logits, opts, g) for g in [make_generator(42)] for _ in range(20)]
    assert a == b and len(set(a)) > 1


def test_samples_stay_inside_top_k():
    logits = torch.randn(1000)
    allowed = set(torch.topk(logits, 7).indices.tolist())
    gen = make_generator(0)
    opts = SamplingOptions(temperature=2.0, top_k=7)
    assert {sample(logits, opts, gen) for _ in range(300)} <= allowed


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_k=-1),
                                    dict(top_p=0.0), dict(top_p=1.01), dict(seed=-1)])
def test_bad_values_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        SamplingOptions(**kwargs)

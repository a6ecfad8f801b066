import pytest
import torch

from chatgpt_cli.errors import UsageError
from chatgpt_cli.sampling import (
    SamplingOptions,
    apply_temperature,
    draw,
    draw_rows,
    inverse_cdf,
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


@pytest.mark.parametrize("options", [SamplingOptions(temperature=1.0), SamplingOptions(temperature=0.7, top_k=3),
                                     SamplingOptions(temperature=1.3, top_p=0.9)])
def test_draws_follow_the_distribution(options):
    """One uniform number per draw, through the cumulative sum: the frequencies of 40,000 draws (8
    rows of 5,000) are the probabilities ``probabilities`` reports, within 4 standard errors."""
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, float("-inf"), 0.0])
    want = probabilities(logits, options.temperature, options.top_k, options.top_p)
    generators = [make_generator(i) for i in range(8)]
    counts = torch.zeros(len(logits))
    for _ in range(5000):
        for token in draw_rows(logits.expand(8, -1), options, generators):
            counts[token] += 1
    freq, n = counts / counts.sum(), counts.sum()
    assert (counts[want == 0] == 0).all()  # never a token of probability 0
    assert ((freq - want).abs() <= 4 * (want * (1 - want) / n).sqrt() + 1e-9).all()


def test_a_draw_is_row_zero_of_a_batch_and_each_row_its_own_generator():
    torch.manual_seed(0)
    logits = torch.randn(4, 50257) * 3
    for options in (SamplingOptions(temperature=0.8), SamplingOptions(temperature=0.8, top_k=40, top_p=0.9)):
        batch = draw_rows(logits, options, [make_generator(10 + i) for i in range(4)])
        alone = [draw(logits[i], options, make_generator(10 + i)) for i in range(4)]
        assert batch == alone


def test_the_top_of_the_cumulative_sum_never_lands_on_a_zero_weight():
    weights = torch.tensor([[0.3, 0.7, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    for u in (0.0, 0.5, 1 - 2**-53):
        picked = inverse_cdf(weights, torch.full((3,), u, dtype=torch.float64))
        assert (weights.gather(-1, picked[:, None]) > 0).all()
    assert inverse_cdf(weights[:1], torch.tensor([0.29], dtype=torch.float64)).tolist() == [0]
    assert inverse_cdf(weights[:1], torch.tensor([0.31], dtype=torch.float64)).tolist() == [1]


def test_the_two_level_search_equals_one_running_sum():
    """inverse_cdf's blocks of 256 pick what one float64 running sum over the whole row picks, for
    rows whose size is not a multiple of 256 and mass anywhere (the short last block included)."""
    torch.manual_seed(1)
    for size in (5, 256, 300, 50257):
        weights = torch.rand(6, size) * (torch.rand(6, size) < 0.3)  # many zeros
        weights[0] = 0
        weights[0, -1] = 1.0  # all the mass on the last token
        weights[1, :size // 2] = 0
        for _ in range(20):
            u = torch.rand(6, dtype=torch.float64)
            cdf = weights.double().cumsum(-1)
            want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
            got = inverse_cdf(weights, u)
            assert (weights.gather(-1, got[:, None]) > 0).all()
            assert torch.equal(got, want)  # (rounding could split them only with u on a boundary)


def test_greedy_picks_what_the_cleaned_logits_argmax_picks():
    """The fast path (numpy's argmax on finite float32 rows) and the general one agree on every
    kind of row: ties (the first wins), NaN, +inf, all -inf, a padded vocabulary, 16-bit logits."""
    from chatgpt_cli.sampling import N_VOCAB, clean_logits, greedy

    torch.manual_seed(3)
    rows = torch.randn(6, N_VOCAB + 7)
    rows[0, 100] = rows[0, 200] = rows[0].max() + 1  # a tie
    rows[1, 5] = float("nan")
    rows[2, 9] = float("inf")
    rows[3] = float("-inf")
    rows[4, N_VOCAB + 3] = 1e9  # a padded id: never picked
    rows[5] = torch.round(rows[5])  # many ties
    for x in (rows, rows.to(torch.bfloat16), rows.double()):
        assert greedy(x) == clean_logits(x).argmax(-1).tolist()
    assert greedy(rows)[0] == 100 and greedy(rows)[4] != N_VOCAB + 3


def test_inverse_cdf_of_one_block_equals_the_two_level_search():
    """Top-k's few survivors take a one-block search: it picks what the blocks of 256 pick."""
    torch.manual_seed(4)
    for size in (1, 2, 40, 255, 256):
        weights = torch.rand(8, size) * (torch.rand(8, size) < 0.5)
        weights[:, 0] += 1e-3  # every row has some mass
        padded = torch.cat([weights, torch.zeros(8, 300)], dim=-1)  # the same mass, two levels
        for _ in range(25):
            u = torch.rand(8, dtype=torch.float64)
            got = inverse_cdf(weights, u)
            assert torch.equal(got, inverse_cdf(padded, u)), size
            assert (weights.gather(-1, got[:, None]) > 0).all()

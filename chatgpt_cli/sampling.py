"""Choosing the next token from the unembedding logits: a few small pure functions, in one order.

    raw logits, the sequence so far
      --(repeat penalty)--> --(frequency / presence penalty)--> --(no-repeat n-gram)--> --(logit bias)-->
      --(/ temperature)--> --(top-k)--> --(top-p)--> --(min-p)--> softmax --> draw one token

The first four (``adjust``) change the raw logits from what the sequence holds; the rest shape
the distribution drawn from (``probabilities``). Temperature 0 means greedy: the argmax of the
adjusted logits. Every step is off by default. Inputs are never modified. Draws use a CPU
generator, so the same seed and options give the same tokens on any machine. Any temperature > 0
and top-p > 0 samples: the logits are cleaned first (``clean_logits``), and a distribution that
still collapses falls back to greedy. Ids past the tokenizer's (a padded vocabulary) are never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from chatgpt_cli.errors import UsageError


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None
    repeat_penalty: float = 1.0  # 1.0 = off
    repeat_last_n: int = 64  # the window of recent tokens the penalties look at; -1 = all, 0 = off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -inf bans the token

    def __post_init__(self) -> None:
        check_options(self.temperature, self.top_k, self.top_p, self.seed)
        check_processors(self.repeat_penalty, self.repeat_last_n, self.frequency_penalty, self.presence_penalty,
                         self.no_repeat_ngram, self.min_p)
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in self.logit_bias))

    @property
    def adjusts(self) -> bool:
        """Whether any step of ``adjust`` is on."""
        return bool(self.logit_bias or self.no_repeat_ngram or (self.repeat_last_n and (
            self.repeat_penalty != 1.0 or self.frequency_penalty or self.presence_penalty)))


def check_options(temperature: float, top_k: int, top_p: float, seed: int | None = None) -> None:
    if not temperature >= 0 or temperature == float("inf"):
        raise UsageError(f"temperature must be a number >= 0, not {temperature}")
    if top_k < 0:
        raise UsageError(f"top-k must be >= 0 (0 = off), not {top_k}")
    if not 0 < top_p <= 1:
        raise UsageError(f"top-p must be in (0, 1] (1 = off), not {top_p}")
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"seed must be between 0 and 2**63-1, not {seed}")


def check_processors(repeat_penalty: float, repeat_last_n: int, frequency_penalty: float, presence_penalty: float,
                     no_repeat_ngram: int, min_p: float) -> None:
    if not 0 < repeat_penalty < math.inf:
        raise UsageError(f"repeat-penalty must be a number > 0 (1 = off), not {repeat_penalty}")
    if repeat_last_n < -1:
        raise UsageError(f"repeat-last-n must be >= -1 (-1 = the whole context, 0 = off), not {repeat_last_n}")
    for name, value in (("frequency-penalty", frequency_penalty), ("presence-penalty", presence_penalty)):
        if not -2 <= value <= 2:
            raise UsageError(f"{name} must be in [-2, 2] (0 = off), not {value}")
    if no_repeat_ngram < 0:
        raise UsageError(f"no-repeat-ngram must be >= 0 (0 = off), not {no_repeat_ngram}")
    if not 0 <= min_p <= 1:
        raise UsageError(f"min-p must be in [0, 1] (0 = off), not {min_p}")


def parse_logit_bias(specs: Sequence[str], encode, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """'TOKEN=BIAS' items: TOKEN a token id or a text that is exactly one token; BIAS a number, or
    -inf / ban to remove the token."""
    out = []
    for spec in specs:
        token, sep, value = spec.rpartition("=")
        if not sep or not token:
            raise UsageError(f"logit-bias {spec!r}: write TOKEN=BIAS (TOKEN an id or a one-token text)")
        if token.isdigit():
            tid = int(token)
        else:
            ids = encode(token)
            if len(ids) != 1:
                raise UsageError(f"logit-bias {spec!r}: {token!r} is {len(ids)} tokens, not one; give its id")
            tid = ids[0]
        if not 0 <= tid < n_vocab:
            raise UsageError(f"logit-bias {spec!r}: token id must be in [0, {n_vocab - 1}]")
        v = value.strip().lower()
        try:
            bias = -math.inf if v in ("ban", "-inf") else float(v)
        except ValueError:
            bias = math.nan
        if not (bias == -math.inf or -100 <= bias <= 100):
            raise UsageError(f"logit-bias {spec!r}: BIAS must be in [-100, 100], or -inf / ban")
        out.append((tid, bias))
    return tuple(out)


def from_cli(values: dict, encode, n_vocab: int, **extra) -> SamplingOptions:
    """SamplingOptions from the command line's sampling group (``--logit-bias`` as TOKEN=BIAS texts)."""
    values = {**values, **extra}
    values["logit_bias"] = parse_logit_bias(values.get("logit_bias") or (), encode, n_vocab)
    return SamplingOptions(**values)


# --- the raw-logit stage: the sequence so far changes the logits --------------------------------
def recent(history: Sequence[int], last_n: int) -> list[int]:
    """The tokens the penalties look at: the last last_n (-1: all, 0: none)."""
    if last_n == 0:
        return []
    return list(history) if last_n < 0 else list(history[-last_n:])


def repetition_penalty(logits: torch.Tensor, history: Sequence[int], penalty: float) -> torch.Tensor:
    """Tokens seen in history: a positive logit divided by penalty, a negative one multiplied
    (transformers' RepetitionPenaltyLogitsProcessor, CTRL's rule)."""
    if penalty == 1.0 or not history:
        return logits
    seen = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
    score = logits[..., seen]
    return logits.index_copy(-1, seen, torch.where(score < 0, score * penalty, score / penalty))


def frequency_presence_penalty(logits: torch.Tensor, history: Sequence[int], frequency: float,
                               presence: float) -> torch.Tensor:
    """OpenAI's penalties: logit[j] - count[j] * frequency - (count[j] > 0) * presence."""
    if (frequency == 0 and presence == 0) or not history:
        return logits
    counts = torch.bincount(torch.tensor(list(history), dtype=torch.long), minlength=logits.shape[-1])
    counts = counts[:logits.shape[-1]].to(logits.device, logits.dtype)
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def no_repeat_ngram(logits: torch.Tensor, history: Sequence[int], n: int) -> torch.Tensor:
    """Ban every token that would repeat an n-gram already in history (transformers'
    NoRepeatNGramLogitsProcessor)."""
    if n <= 0 or len(history) < n:  # no n-gram yet
        return logits
    h = torch.tensor(list(history), dtype=torch.long)
    grams = h.unfold(0, n, 1)  # (L-n+1, n): every n-gram so far
    match = (grams[:, :-1] == h[len(h) - (n - 1):]).all(dim=1)  # its first n-1 tokens are the last n-1
    banned = grams[match, -1].to(logits.device)
    return logits.index_fill(-1, banned, float("-inf")) if len(banned) else logits


def logit_bias(logits: torch.Tensor, bias: Sequence[tuple[int, float]]) -> torch.Tensor:
    """Add each (token, bias); a bias of -inf removes the token."""
    if not bias:
        return logits
    ids = torch.tensor([t for t, _ in bias], dtype=torch.long, device=logits.device)
    values = torch.tensor([b for _, b in bias], dtype=logits.dtype, device=logits.device)
    return logits.index_add(-1, ids, values)


def adjust(logits: torch.Tensor, history: Sequence[int], o: SamplingOptions) -> torch.Tensor:
    """The raw-logit stage, in order: repeat penalty, frequency/presence penalty, no-repeat n-gram, bias."""
    if not o.adjusts:
        return logits
    window = recent(history, o.repeat_last_n)
    logits = repetition_penalty(logits, window, o.repeat_penalty)
    logits = frequency_presence_penalty(logits, window, o.frequency_penalty, o.presence_penalty)
    logits = no_repeat_ngram(logits, history, o.no_repeat_ngram)
    return logit_bias(logits, o.logit_bias)


# --- the distribution stage ---------------------------------------------------------------------
N_VOCAB = 50257  # the ids GPT-2's tokenizer decodes; a padded vocabulary's extra rows are never sampled


def clean_logits(logits: torch.Tensor) -> torch.Tensor:
    """The logits as float64 on the CPU, safe to divide by any temperature > 0.

    NaN and padded ids (past ``N_VOCAB``) become -inf; the largest logit is shifted to 0 (so no
    division overflows); +inf logits share the top; a row with nothing finite becomes uniform.
    """
    x = logits.detach().to("cpu")
    top = x[..., :N_VOCAB].amax(-1, keepdim=True)  # NaN if any is NaN
    if torch.isfinite(top).all():  # the usual case (no NaN, no +inf): one pass
        out = x.to(torch.float64) - top.to(torch.float64)  # a new tensor: the caller's is never written
        if out.shape[-1] > N_VOCAB:
            out[..., N_VOCAB:] = float("-inf")
        return out
    x = x.to(torch.float64).nan_to_num(nan=float("-inf"), posinf=float("inf"))
    padded = x.shape[-1] > N_VOCAB
    if padded:
        x = x.clone() if x.data_ptr() == logits.data_ptr() else x  # never write into the caller's tensor
        x[..., N_VOCAB:] = float("-inf")
    top = x.amax(-1, keepdim=True)
    x = torch.where(top == float("inf"), torch.where(x == float("inf"), 0.0, float("-inf")), x - top)
    x = torch.where(torch.isnan(x), 0.0, x)  # only where top was -inf: nothing finite, uniform
    if padded:
        x[..., N_VOCAB:] = float("-inf")
    return x


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits; the rest -> -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    top = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p  # mass before it already >= p
    drop_sorted[..., 0] = False  # the most likely token always stays, however small p is
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's (that one stays)."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    drop = probs < min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(drop, float("-inf"))


def _plain(logits: torch.Tensor) -> torch.Tensor:
    """The logits as float32 on the CPU, without padded ids (never drawn)."""
    return logits.detach().to("cpu", torch.float32)[..., :N_VOCAB]


def survivors(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The tokens a draw can pick and their weights, in order: probabilities up to one factor per
    row (on the CPU, computed in float64 but for plain temperature sampling; the most likely token
    weighs 1).

    With top-k, the k survivors (ids (rows, k), most likely first, and their weights); otherwise
    the whole vocabulary in id order (ids None). Temperature > 0 here.
    """
    x = _plain(logits)
    top = x.amax(-1, keepdim=True)
    finite = bool(torch.isfinite(top).all())  # no NaN, no +inf: the usual case, no clean-up needed
    if 0 < top_k < x.shape[-1]:
        if finite:  # pick the k before cleaning: only k values go to float64
            kept, ids = torch.topk(x, top_k, dim=-1)
            kept = apply_temperature(clean_logits(kept), temperature)
        else:
            kept, ids = torch.topk(apply_temperature(clean_logits(logits), temperature), top_k, dim=-1)
        return ids, torch.exp(min_p_filter(top_p_filter(kept, top_p), min_p))
    plain = top_p >= 1 and min_p <= 0 and temperature >= 1e-30  # a temperature float32 holds (else float64)
    if plain and finite:  # plain temperature sampling: three passes
        return None, x.sub(top).div_(temperature).exp_()  # a new tensor, float32 (its sum is taken in float64)
    logits = apply_temperature(clean_logits(logits), temperature)  # the largest is 0: exp never overflows
    return None, torch.exp(min_p_filter(top_p_filter(logits, top_p), min_p))


def probabilities(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> torch.Tensor:
    """The distribution the next token is drawn from, over the whole vocabulary (float32, CPU)."""
    if temperature == 0:
        return torch.nn.functional.one_hot(clean_logits(logits).argmax(-1), logits.shape[-1]).float()
    ids, weights = survivors(logits, temperature, top_k, top_p, min_p)
    probs = (weights / weights.sum(-1, keepdim=True, dtype=torch.float64)).float()
    if ids is None:
        ids = torch.arange(probs.shape[-1]).expand(probs.shape)  # (a padded vocabulary has more logits)
    return torch.zeros(logits.shape, dtype=torch.float32).scatter(-1, ids, probs)


BLOCK = 256  # weights per block of the two-level cumulative sum in inverse_cdf


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each row of weights (rows, S), the index i whose slice of the cumulative sum holds
    u * total, for u (rows,) in [0, 1): one uniform number per draw. Weight 0 is never picked.

    In two levels, as fast for eight rows as one: the row cut into blocks of 256, the block found
    in the running sum of the block sums (float64), then the index in the running sum of that
    block alone (a float64 running sum over a whole vocabulary costs ten times more per row).
    """
    rows, size = weights.shape
    if size <= BLOCK:  # one block (top-k's survivors): the same sums in a quarter of the operations
        target = u * weights.sum(-1).double()
        idx = torch.searchsorted(weights.double().cumsum(-1), target[:, None], right=True)[:, 0].clamp(max=size - 1)
        return _off_zero(weights, idx)
    full = size // BLOCK * BLOCK
    sums = weights[:, :full].unflatten(-1, (-1, BLOCK)).sum(-1)  # (rows, blocks): a view, no copy
    sums = torch.cat([sums, weights[:, full:].sum(-1, keepdim=True)], dim=-1).double()  # the short last block
    ends = sums.cumsum(-1)
    target = u * ends[:, -1]
    block = torch.searchsorted(ends, target[:, None], right=True)[:, 0].clamp(max=sums.shape[1] - 1)
    start = (ends.gather(-1, block[:, None]) - sums.gather(-1, block[:, None]))[:, 0]
    first, offsets = block * BLOCK, torch.arange(BLOCK)  # (rows,), (256,)
    inner = weights.gather(-1, (first[:, None] + offsets).clamp(max=size - 1)).double()  # (rows, 256)
    inner = torch.where(offsets < size - first[:, None], inner, 0.0).cumsum(-1)  # past the row's end: nothing
    within = torch.searchsorted(inner, (target - start)[:, None], right=True)[:, 0].clamp(max=BLOCK - 1)
    return _off_zero(weights, (first + within).clamp(max=size - 1))


def _off_zero(weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """idx, but where rounding between the sums left it on a zero weight (past the last token
    with any), that last token."""
    stepped_off = weights.gather(-1, idx[:, None])[:, 0] == 0
    if stepped_off.any():
        last = weights.shape[-1] - 1 - (weights > 0).flip(-1).to(torch.uint8).argmax(-1)  # the last possible index
        idx = torch.where(stepped_off, last, idx)
    return idx


def greedy(logits: torch.Tensor) -> list[int]:
    """The most likely id of each row of (rows, vocab) logits (the first, on a tie).

    Rows of finite logits go through numpy's argmax (a tenth of torch's time on GPT-2's 50257
    float32 logits); the others through ``clean_logits`` (NaN never picked, +inf the top)."""
    if logits.dtype in (torch.float32, torch.bfloat16, torch.float16):  # float32 holds them exactly
        x = _plain(logits).numpy()
        picked = np.argmax(x, axis=-1)  # a NaN or +inf would be picked: then each row's top is not finite
        if np.isfinite(np.take_along_axis(x, picked[..., None], axis=-1)).all():
            return picked.tolist()
    return clean_logits(logits).argmax(-1).tolist()


def draw_rows(logits: torch.Tensor, options: SamplingOptions,
              generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token id per row of (rows, vocab) logits already through ``adjust``, row i drawn with
    generators[i]: the distributions of all rows computed together, one uniform number per row."""
    if options.temperature == 0:
        return greedy(logits)
    ids, weights = survivors(logits, options.temperature, options.top_k, options.top_p, options.min_p)
    u = torch.cat([torch.rand(1, dtype=torch.float64, generator=g) for g in generators])
    picked = inverse_cdf(weights, u)  # (rows,)
    if ids is not None:
        picked = ids.gather(-1, picked[:, None])[:, 0]
    return picked.tolist()


def draw(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None = None) -> int:
    """One token id from a (vocab,) row of logits already through ``adjust`` (the same draw as row
    0 of ``draw_rows``: ``-N`` sample 0 equals the single sample with the same seed)."""
    return draw_rows(logits[None], options, [generator])[0]


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None = None,
           history: Sequence[int] = ()) -> int:
    """One token id from a (vocab,) row of logits, given the sequence so far."""
    return draw(adjust(logits, history, options), options, generator)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible runs, else from the OS's entropy."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen

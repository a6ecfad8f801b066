"""How often the bundled model loops, with and without the logit processors; and what -N costs.

    nice python benchmarks/repetition.py [--model DIR] [--tokens 100] [--no-timing]

(a) 200 completions (25 prompts x 8 samples, decoded as batches) at two temperatures, for each
    configuration of processors: the share that repeat some 4-gram (of tokens) three times or more.
(b) the wall time of -N 8 against -N 1 for the same completion length (best of 3; a timing, so run
    it on a quiet machine).
(c) a greedy before/after example, as in the README.
Every README figure of issue 13 comes from this script: rerun it when the bundled model changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatgpt_cli.completion import samples  # noqa: E402
from chatgpt_cli.generate import Engine  # noqa: E402
from chatgpt_cli.resources import shipped  # noqa: E402
from chatgpt_cli.sampling import SamplingOptions  # noqa: E402
from chatgpt_cli.tokenizer import Tokenizer  # noqa: E402
from chatgpt_cli.weights import load_model  # noqa: E402

STORIES = ["Once upon a time", "One day, a little boy", "The cat and the dog", "Tom was sad because",
           "Lily's mom said", "In the big park there was", "The old man looked at", "Sam and Mia wanted to",
           "It was a sunny day and", "The little bird could not", "Max found a box", "After school, Anna",
           "The king had a"]
QUESTIONS = ["What is your favorite food?", "Can you help me book a table for two tonight?",
             "How are you today?", "What do you do for a living?", "Tell me about your family.",
             "What is the weather like?", "I need a flight to Boston.", "Do you like music?",
             "What should I cook for dinner?", "Where do you live?", "What are your hobbies?",
             "Can you recommend a movie?"]
SYSTEM = "What follows is an interaction between a user and a helpful AI assistant:\n"
PROMPTS = STORIES + [f"{SYSTEM}User: {q}\nAI Assistant:" for q in QUESTIONS]  # 25
CONFIGS = {  # name -> processor settings
    "none": {},
    "--repeat-penalty 1.2": {"repeat_penalty": 1.2},
    "--repeat-penalty 1.1": {"repeat_penalty": 1.1},
    "--frequency-penalty 0.5": {"frequency_penalty": 0.5},
}
TEMPERATURES = (0.7, 0.3)


def loops(tokens: list[int], n: int = 4, times: int = 3) -> bool:
    grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def share_looping(engine: Engine, tok: Tokenizer, settings: dict, temperature: float,
                  tokens: int) -> tuple[float, float]:
    """(share of completions that loop, share of chat replies that end by themselves: stop or eos)."""
    looping = total = ended = replies = 0
    for i, prompt in enumerate(PROMPTS):
        options = SamplingOptions(temperature=temperature, top_k=40, top_p=0.95, seed=1000 + i, **settings)
        chat = "AI Assistant:" in prompt
        for s in samples(engine, tok, tok.encode(prompt), options, 8, tokens, ["\nUser:"] if chat else []):
            looping += loops(s.tokens)
            total += 1
            replies += chat
            ended += chat and s.finish_reason != "length"
    return looping / total, ended / replies


def batch_cost(engine: Engine, tok: Tokenizer, n: int, tokens: int) -> float:
    ids = tok.encode("Once upon a time")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in samples(engine, tok, ids, SamplingOptions(temperature=0.8, seed=0), n, tokens, ignore_eos=True):
            pass
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(shipped("weights")))
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    loaded = load_model(Path(args.model))
    engine, tok = Engine(loaded.model), Tokenizer()
    print(f"(a) share of {len(PROMPTS) * 8} completions ({args.tokens} tokens at most, top-k 40, top-p 0.95) "
          "that repeat a 4-gram 3 times")
    print("and the share of the 96 chat replies among them that end by themselves (stop string or end-of-text)")
    print("| temperature | processors | completions that loop | chat replies that end |", flush=True)
    print("|---|---|---|---|")
    for t in TEMPERATURES:
        for name, settings in CONFIGS.items():
            loop_share, ended = share_looping(engine, tok, settings, t, args.tokens)
            print(f"| {t} | {name} | {loop_share:.1%} | {ended:.0%} |", flush=True)
    if not args.no_timing:
        one, eight = batch_cost(engine, tok, 1, 64), batch_cost(engine, tok, 8, 64)
        print(f"(b) 64 tokens: -N 1 {one:.3f} s, -N 8 {eight:.3f} s: -N 8 costs {eight / one:.2f}x -N 1 "
              f"({loaded.precision}, {loaded.device})")
    print("(c) greedy, 80 tokens, 'Once upon a time':")
    for name, settings in (("none", {}), ("--repeat-penalty 1.2", {"repeat_penalty": 1.2})):
        s = next(samples(engine, tok, tok.encode("Once upon a time"), SamplingOptions(temperature=0, **settings),
                         1, 80))
        print(f"[{name}]{s.text}")


if __name__ == "__main__":
    main()

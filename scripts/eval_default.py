"""Measure the default model as people meet it (not imported at run time).

Identity: 8 different who-are-you questions, each in a fresh chat, with 3 seeds (24 replies),
through the real chat path (chatgpt_cli.chat.Chat, the default template and sampling settings);
counts the replies that say it is an AI / an assistant, those with a dataset placeholder and those
that claim a human life. Then ten sample chats, unedited. Writes JSON and a Markdown fragment.

    python scripts/eval_default.py --model weights --out .train/eval
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import build_data  # noqa: E402
import identity_data  # noqa: E402
import torch  # noqa: E402

from chatgpt_cli.chat import Chat, Settings  # noqa: E402
from chatgpt_cli.generate import Engine  # noqa: E402
from chatgpt_cli.template import load_template  # noqa: E402
from chatgpt_cli.weights import load_model  # noqa: E402

QUESTIONS = ["Who are you?", "What's your name?", "Tell me about yourself.", "Where do you live?",
             "Are you a human or a computer?", "Hello, who am I chatting with?", "What kind of creature are you?",
             "Introduce yourself, please."]
SEEDS = [1, 2, 3]
SAYS_AI = re.compile(r"\b(?:AI|artificial intelligence|assistant|language model|computer program|chatbot)\b",
                     re.IGNORECASE)
SAMPLES = [  # (seed, user messages)
    (42, ["Hi! How are you today?", "What is your favorite sport?", "Can you recommend a good book?",
          "What is the capital of France?", "Thank you, goodbye!"]),
    (7, ["Hello, who are you?", "What do you like to do on weekends?", "Do you know any good movies?"]),
    (3, ["What is the best way to learn to cook?", "I need a flight to Seattle next Friday."]),
    (11, ["What will the weather be like in Chicago tomorrow?", "Tell me about yourself.",
          "Who is your best friend?"]),
    (5, ["I'd like to book a table for two at an Italian restaurant tonight.", "Around 7 pm, in San Jose.",
         "Great, thanks. Can you really make the booking?"]),
    (8, ["Tell me a short story about a cat.", "Make it a little longer."]),
    (13, ["Why is the sky blue?", "How far away is the moon?", "Who wrote Pride and Prejudice?"]),
    (21, ["Can you browse the internet for me?", "What can you do, then?", "Okay, tell me a joke."]),
    (9, ["I feel a bit sad today.", "My cat is sick.", "Thanks for listening."]),
    (17, ["Let's talk about music. Do you like jazz?", "Who is your favourite singer?", "Do you play an instrument?",
          "What should I learn first on the guitar?", "How long does it take to get good?",
          "Where are you from, by the way?", "Are you a real person?"]),
]


class Record:
    """An Output that keeps what the chat prints."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def reply_text(self, text: str) -> None:
        pass

    def reply_end(self, footer: str, cut_short: bool) -> None:
        self.footer = footer

    def info(self, text: str) -> None:
        self.notes.append(text)

    def error(self, text: str) -> None:
        self.notes.append(text)


def chat(engine: Engine, seed: int, messages: list[str]) -> tuple[list[tuple[str, str]], int]:
    """A fresh chat with the CLI's default template and sampling settings: (exchanges, context used)."""
    session = Chat(engine, load_template("default"), Settings(0.7, 40, 0.95, 120, seed))
    out = Record()
    turns = [(m, session.say(m, out).reply) for m in messages]
    used = int(out.footer.rsplit("context ", 1)[1].split("/")[0])
    return turns, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "weights")
    ap.add_argument("--out", type=Path, default=ROOT / ".train" / "eval")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one question, one seed, one sample chat (a check)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    questions, seeds, sample_chats = (QUESTIONS[:1], SEEDS[:1], SAMPLES[:1]) if args.quick else (
        QUESTIONS, SEEDS, SAMPLES)
    loaded = load_model(args.model)
    engine = Engine(loaded.model)
    trained = {q for qs in identity_data.QUESTIONS.values() for q in qs}
    identity = []
    for q in questions:
        for seed in seeds:
            reply = chat(engine, seed, [q])[0][0][1]
            identity.append({"question": q, "seed": seed, "reply": reply, "in_identity_templates": q in trained,
                             "says_ai": bool(SAYS_AI.search(reply)),
                             "placeholders": build_data.placeholders(reply),
                             "human_life": bool(build_data.HUMAN_LIFE.search(reply))})
            print(f"[{seed}] {q} -> {reply}", flush=True)
    n = len(identity)
    summary = {"replies": n, "says_ai": sum(r["says_ai"] for r in identity),
               "with_placeholder": sum(bool(r["placeholders"]) for r in identity),
               "claims_human_life": sum(r["human_life"] for r in identity),
               "questions_in_identity_templates": sum(q in trained for q in QUESTIONS)}
    print(json.dumps(summary), flush=True)
    samples = []
    for seed, messages in sample_chats:
        turns, used = chat(engine, seed, messages)
        samples.append({"seed": seed, "turns": turns, "context_tokens": used})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps({"identity_summary": summary, "identity": identity,
                                                   "samples": samples}, indent=1) + "\n")
    md = ["| question | seed | reply |", "|---|---|---|"]
    md += [f"| {r['question']} | {r['seed']} | {r['reply'].replace('|', '/').replace(chr(10), ' ')} |"
           for r in identity]
    for s in samples:
        md += ["", f"Seed {s['seed']} ({s['context_tokens']} tokens of context at the end):", "```"]
        md += [line for user, reply in s["turns"] for line in (f"User: {user}", f"AI Assistant: {reply}")]
        md += ["```"]
    (args.out / "eval.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

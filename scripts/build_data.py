"""The default model's training mix, built from ../shared/corpus (not imported at run time).

- Placeholders left in the corpus ("[user 2's name]", "(name)", "User 1", "<name>") are repaired where
  the slot is a speaker (persona chats are recast with two real names) and the conversation is dropped
  otherwise; ordinary brackets ("[citation needed]", code like "arr[i]") stay.
- Persona-style human chats (Synthetic-Persona-Chat, Topical-Chat) are recast as two named people
  talking, not under the User / AI Assistant labels, so the assistant never learns a human life;
  ChatterBot conversations where the assistant claims one are dropped.
- The assistant's identity (scripts/identity_data.py) is added as short chats of its own and as
  exchanges inserted into ordinary assistant conversations.
- Sources are subsampled so that none dominates; a held-out split is chosen by a hash of each
  conversation's text, so a conversation the corpus repeats lands on one side only.

    python scripts/build_data.py        # print the figures of the mix (conversations, placeholders)
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

import identity_data  # noqa: E402

from chatgpt_cli.template import load_template  # noqa: E402

# (name, folder, file pattern, kind, fraction of conversations / chunks kept)
SOURCES = [
    ("sgd", "sgd", "sgd_dialogues.txt", "assistant", 0.08),
    ("taskmaster4", "taskmaster4", "taskmaster4_dialogues.txt", "assistant", 1.0),
    ("dolly-open-qa", "dolly-open-qa", "dolly_open_qa.txt", "assistant", 1.0),
    ("chatterbot-corpus", "chatterbot-corpus", "chatterbot_english.txt", "assistant", 1.0),
    ("synthetic-persona-chat", "synthetic-persona-chat", "spc_conversations.txt", "people", 0.85),
    ("topical-chat", "topical-chat", "topical_chat_conversations.txt", "people", 0.45),
    ("tinystories-sample", "tinystories-sample", "tinystories_val_head.txt", "prose", 1.0),
    ("gutenberg", "gutenberg", "*.txt", "prose", 0.15),
]
VAL_EVERY = 25  # about one conversation in 25 is held out
IDENTITY_CHATS = 5000  # identity chats of their own (1-3 exchanges each)
INSERT_SHARE = 0.25  # share of assistant conversations that get an identity exchange inserted
NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "James", "Kate", "Leo",
         "Maya", "Nick", "Olivia", "Paul", "Rosa", "Sam", "Tara", "Victor", "Wendy", "Yusuf", "Zoe", "Omar",
         "Priya", "Marco", "Lena", "Tom", "Aisha", "Daniel", "Emma", "Jonas", "Lucy", "Mateo", "Nora", "Ravi"]

_SLOT = (r"(?:(?:your|their|my|his|her|insert|first|last|user|town|team|band|city|friend's|pet's|dog's|cat's)\s+)?"
         r"(?:name|user ?name|city(?:, state)?|country|state|place|team|link|age|university|hometown|location|"
         r"job|job title|school|company|address|phone number|email)")
_USER = r"user ?[12](?![0-9])(?:'s)?[^\]\)>\n]*"
PLACEHOLDER = re.compile(rf"[\[\(<]\s*(?:{_USER}|{_SLOT})\s*[\]\)>]|\buser ?[12](?![0-9])", re.IGNORECASE)
# a speaker slot that names one of the two people: "[user 1's name]", "(User 2)", "User 1"
SPEAKER = re.compile(r"[\[\(<]\s*user ?([12])(?:'s)?(?:[ _]name)?\s*[\]\)>]|\buser ?([12])(?![0-9_])", re.IGNORECASE)
HUMAN_LIFE = re.compile(
    r"\b[Mm]y (?:wife|husband|boyfriend|girlfriend|dog|cat|kids?|children|son|daughter|mom|mother|dad|father|"
    r"parents|brother|sister|family|job|house|apartment|hometown)\b|\bI live (?:in|on|with|near)\b|"
    r"\bI work (?:as|at|in|for)\b|\bI(?:'m| am) (?:a|an) (?:\w+ )?(?:student|teacher|nurse|doctor|mother|father|"
    r"mom|dad|man|woman|girl|boy|human|person|lawyer|engineer|chef|writer)\b|\bI(?:'m| am) \d+ years old\b|"
    r"\bI have (?:a|two|three|\d+) (?:dogs?|cats?|kids|children|sons?|daughters?|brothers?|sisters?)\b")


def placeholders(text: str) -> list[str]:
    """The dataset placeholders in a text (empty for ordinary text, brackets and all)."""
    return [m.group(0) for m in PLACEHOLDER.finditer(text)]


def repair_speakers(text: str, names: tuple[str, str]) -> str:
    """Speaker slots ("[user 1's name]", "User 2") replaced by the two people's names."""
    return SPEAKER.sub(lambda m: names[int(m.group(1) or m.group(2)) - 1], text)


def read_blocks(path: Path) -> list[str]:
    """Blank-line separated blocks (conversations, or paragraphs of prose)."""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    return [b.strip() for b in text.split("\n\n") if b.strip()]


def parse_turns(block: str) -> list[tuple[str, str]]:
    """A corpus conversation ('User: ...' / 'Assistant: ...' lines) as (role, text) turns."""
    turns: list[tuple[str, str]] = []
    for line in block.split("\n"):
        if line.startswith("User:"):
            turns.append(("user", line[5:].strip()))
        elif line.startswith("Assistant:"):
            turns.append(("assistant", line[10:].strip()))
        elif turns:  # a continuation line belongs to the turn before it
            turns[-1] = (turns[-1][0], turns[-1][1] + "\n" + line)
    return turns


def render_chat(turns: list[tuple[str, str]], template) -> str:
    parts = [template.render_system(template.system)]
    for role, msg in turns:
        parts.append(template.render_user(msg) if role == "user" else template.render_reply(msg))
    return "".join(parts)


def render_people(turns: list[tuple[str, str]], names: tuple[str, str]) -> str:
    a, b = names
    lines = [f"What follows is a conversation between two people, {a} and {b}:"]
    lines += [f"{a if role == 'user' else b}: {msg}" for role, msg in turns]
    return "\n".join(lines) + "\n"


def hashed(text: str) -> tuple[bool, float]:
    """(held out?, a uniform number in [0, 1)) from the text alone, so repeats go the same way."""
    h = hashlib.sha1(" ".join(text.split()).lower().encode()).digest()
    return int.from_bytes(h[:4], "big") % VAL_EVERY == 0, int.from_bytes(h[4:12], "big") / 2**64


def chunks(blocks: list[str], size: int = 2000) -> list[str]:
    """Prose paragraphs joined into chunks of about `size` characters."""
    out, cur = [], ""
    for b in blocks:
        cur = f"{cur}\n\n{b}" if cur else b
        if len(cur) > size:
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


@dataclass
class Data:
    train: list[tuple[str, str]] = field(default_factory=list)  # (source, document)
    val: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)


def build(corpus: Path, seed: int = 1337) -> Data:
    """The training mix and the held-out split, the same on every run."""
    template = load_template("default")
    rng = random.Random(seed)
    data, seen = Data(), set()
    pool = identity_data.exchanges(6 * IDENTITY_CHATS, seed)
    ident = {True: [], False: []}  # held out? -> exchanges (never the same exchange on both sides)
    for ex in dict.fromkeys(pool):
        ident[hashed("\n".join(ex))[0]].append(ex)
    inserted = 0
    for name, folder, pattern, kind, keep in SOURCES:
        st = data.stats.setdefault(name, dict.fromkeys(
            ["blocks", "duplicates", "with_placeholders", "placeholders", "repaired", "dropped_placeholder",
             "human_life_turns", "dropped_human_life", "identity_inserted", "train_docs", "val_docs"], 0))
        blocks = [b for path in sorted((corpus / folder).glob(pattern)) for b in read_blocks(path)]
        if kind == "prose":
            blocks = chunks(blocks)
        for block in blocks:
            st["blocks"] += 1
            key = " ".join(block.split()).lower()
            if key in seen:
                st["duplicates"] += 1
                continue
            seen.add(key)
            held_out, u = hashed(block)
            if u >= keep:
                continue
            found = placeholders(block) if kind != "prose" else []
            names = tuple(rng.sample(NAMES, 2))
            if found:
                st["with_placeholders"] += 1
                st["placeholders"] += len(found)
                if kind == "people":
                    block = repair_speakers(block, names)
                if placeholders(block):
                    st["dropped_placeholder"] += 1
                    continue
                st["repaired"] += 1
            if kind == "prose":
                doc = block
            else:
                turns = parse_turns(block)
                if not any(role == "assistant" for role, _ in turns):
                    continue
                claims = sum(1 for role, msg in turns if role == "assistant" and HUMAN_LIFE.search(msg))
                st["human_life_turns"] += claims
                if kind == "people":
                    doc = render_people(turns, names)
                else:
                    if claims:
                        st["dropped_human_life"] += 1
                        continue
                    side = ident[held_out]
                    if side and rng.random() < INSERT_SHARE:
                        at = 2 * rng.randrange(len(turns) // 2 + 1)  # at a boundary between exchanges
                        user, reply = side[rng.randrange(len(side))]
                        turns = turns[:at] + [("user", user), ("assistant", reply)] + turns[at:]
                        st["identity_inserted"] += 1
                        inserted += 1
                    doc = render_chat(turns, template)
            (data.val if held_out else data.train).append((name, doc))
            st["val_docs" if held_out else "train_docs"] += 1
    st = data.stats.setdefault("identity", {"exchanges": len(ident[False]) + len(ident[True]),
                                            "val_exchanges": len(ident[True]), "inserted": inserted})
    for held_out in (False, True):
        side = ident[held_out]
        n = IDENTITY_CHATS // VAL_EVERY if held_out else IDENTITY_CHATS
        for i in range(n):
            k = rng.choice((1, 1, 2, 2, 3))
            turns = [t for user, reply in (side[(3 * i + j) % len(side)] for j in range(k))
                     for t in (("user", user), ("assistant", reply))]
            (data.val if held_out else data.train).append(("identity", render_chat(turns, template)))
        st["val_docs" if held_out else "train_docs"] = n
    rng.shuffle(data.train)
    train_docs = {doc for _, doc in data.train}
    data.val = [(s, d) for s, d in dict.fromkeys(data.val) if d not in train_docs]
    return data


def main() -> None:
    import json

    data = build(ROOT.parent.parent / "shared" / "corpus")
    print(json.dumps(data.stats, indent=1))
    print(f"train {len(data.train)} docs, val {len(data.val)} docs")
    left = sum(1 for _, d in data.train + data.val if placeholders(d))
    print(f"documents with a placeholder left: {left}")


if __name__ == "__main__":
    main()

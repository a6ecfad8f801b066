"""The default model's training mix: identity exchanges, placeholder filter, persona recast, split."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import build_data  # noqa: E402
import identity_data  # noqa: E402


def test_identity_builder_is_deterministic_and_says_what_it_is():
    a = identity_data.exchanges(300, seed=5)
    assert a == identity_data.exchanges(300, seed=5)
    assert a != identity_data.exchanges(300, seed=6)
    assert identity_data.conversations(20, seed=5) == identity_data.conversations(20, seed=5)
    assert len(set(a)) > 250  # varied, not one answer repeated
    for user, reply in a:
        assert "AI" in reply or "language model" in reply, reply
        assert not build_data.placeholders(user + reply)
        assert not build_data.HUMAN_LIFE.search(reply), reply


@pytest.mark.parametrize("text", [
    "Hi, my name is [user 2's name].", "Nice to meet you, (name)!", "Nice to meet you, User 2.",
    "I'm <name>, hello", "I'm [User 1 Name] and I live in [city].", "I've never been to (user 1's country).",
    "Call me [username]", "[user1_hiking_location] is lovely", "I live in (user 2 location).",
])
def test_the_placeholder_filter_finds_slots(text):
    assert build_data.placeholders(text)


@pytest.mark.parametrize("text", [
    "It was founded in 1990 [citation needed].", "Use arr[i] and arr[::-1] in Python.",
    "function(number) { return number * factor; }", "Springfield (city in Ohio) is small.",
    "class Box<T> { }", "def f(name: str) -> List[int]:", "I was born in (roughly) 1990 [see above].",
    "Our users sign in as user 10 and user 12.", "My name is Anna (not Ann).",
])
def test_ordinary_brackets_in_ordinary_text_stay(text):
    assert build_data.placeholders(text) == []


def test_speaker_slots_are_repaired_with_the_two_names():
    text = "Hi, I'm [user 1's name]. Nice to meet you, (User 2)! User 2: hey [user 2 name]"
    assert build_data.repair_speakers(text, ("Anna", "Ben")) == "Hi, I'm Anna. Nice to meet you, Ben! Ben: hey Ben"


def test_the_human_life_filter():
    assert build_data.HUMAN_LIFE.search("I live in Ohio with my wife and I have two dogs.")
    assert not build_data.HUMAN_LIFE.search("How about the movie Fighting with My Family?")


def write(root: Path, folder: str, name: str, blocks: list[str]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / name).write_text("\n\n".join(blocks) + "\n")


def test_the_mix_on_a_small_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(build_data, "IDENTITY_CHATS", 100)
    spc = [f"User: Hi, I'm [user 1's name]. Topic {i}.\nAssistant: Hello [user 2's name] here, I live in Ohio."
           for i in range(60)] + ["User: I'm from [city].\nAssistant: Nice."] * 3
    sgd = [f"User: Book table {i} please.\nAssistant: Which city?\nUser: Paris.\nAssistant: Done." for i in range(80)]
    bot = ["User: Do you have a dog?\nAssistant: Yes, I have a dog and my wife loves him."]
    bot += ["User: What is AI?\nAssistant: Software [that learns]."] * 2
    write(tmp_path, "synthetic-persona-chat", "spc_conversations.txt", spc)
    write(tmp_path, "sgd", "sgd_dialogues.txt", sgd)
    write(tmp_path, "chatterbot-corpus", "chatterbot_english.txt", bot)
    monkeypatch.setattr(build_data, "SOURCES", [s[:4] + (1.0,) for s in build_data.SOURCES])
    data = build_data.build(tmp_path, seed=1)
    again = build_data.build(tmp_path, seed=1)
    assert data.train == again.train and data.val == again.val
    spc_stats = data.stats["synthetic-persona-chat"]
    assert spc_stats["with_placeholders"] == 61 and spc_stats["repaired"] == 60
    assert spc_stats["dropped_placeholder"] == 1 and spc_stats["duplicates"] == 2
    bot_stats = data.stats["chatterbot-corpus"]
    assert bot_stats["dropped_human_life"] == 1 and bot_stats["duplicates"] == 1
    docs = data.train + data.val
    assert not [d for _, d in docs if build_data.placeholders(d)]
    assert not {d for _, d in data.train} & {d for _, d in data.val}
    people = [d for s, d in docs if s == "synthetic-persona-chat"]
    assert len(people) == 60 and all("AI Assistant" not in d and "User:" not in d for d in people)
    assert people[0].startswith("What follows is a conversation between two people, ")
    assert any(s == "identity" for s, _ in data.val) and any(s == "identity" for s, _ in data.train)
    assert data.stats["identity"]["inserted"] > 0  # identity exchanges inside ordinary conversations
    assert "Software [that learns]." in "".join(d for _, d in docs)  # ordinary brackets stay

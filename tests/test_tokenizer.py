"""Tokenization equals the reference GPT-2 tokenizer (transformers' GPT2Tokenizer on the original files)."""

import json

import pytest
from conftest import SHARED

from chatgpt_cli.tokenizer import EOT, Tokenizer

TRICKY = [
    "Hello world",
    "",
    "   leading and trailing spaces   ",
    "tabs\tand\n\nnewlines\r\n  \n",
    "multiple     spaces    between",
    "I'm sure you'll see they've done it, we'd say; it's John's.",
    "DON'T SHOUT, I'LL LEAVE",
    "emoji: 😀🎉👍🏽 family: 👨‍👩‍👧‍👦",
    "中文字符和日本語のテキスト，한국어",
    "accents: café naïve résumé Ångström",
    "numbers 1234567890 3.14159 1,000,000",
    "code: def f(x):\n    return x**2  # comment",
    "<|endoftext|> is plain text here",
    "\u00a0non-breaking\u2003em-space",
]


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    tok_dir = SHARED / "tokenizer" / "gpt2"
    if not (tok_dir / "encoder.json").is_file():
        pytest.skip("shared tokenizer files not present")
    if int(transformers.__version__.split(".")[0]) < 5:
        return transformers.GPT2Tokenizer(vocab_file=str(tok_dir / "encoder.json"),
                                          merges_file=str(tok_dir / "vocab.bpe"))
    vocab = json.loads((tok_dir / "encoder.json").read_text(encoding="utf-8"))
    lines = (tok_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines if line])


def test_hello_world():
    assert Tokenizer().encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("text", TRICKY)
def test_matches_reference(reference, text):
    tok = Tokenizer()
    ids = tok.encode(text)
    if "<|endoftext|>" in text:  # the reference turns it into the special token; we never do
        assert EOT not in ids
        assert tok.decode(ids) == text
        return
    assert ids == reference.encode(text)
    assert tok.decode(ids) == text


def test_endoftext_is_ordinary_text():
    tok = Tokenizer()
    ids = tok.encode("a<|endoftext|>b")
    assert EOT not in ids and tok.decode(ids) == "a<|endoftext|>b"
    assert tok.decode([EOT]) == "<|endoftext|>"


def test_token_bytes_concatenate_to_the_text():
    tok = Tokenizer()
    text = "naïve 😀 中文"
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids).decode("utf-8") == text
    assert any(not _is_utf8(tok.token_bytes(i)) for i in ids)  # some tokens split a character


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False

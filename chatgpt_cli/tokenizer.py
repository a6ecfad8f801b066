"""GPT-2's byte-level BPE through tiktoken, built offline from the ranks shipped in the package."""

from __future__ import annotations

import base64
from functools import lru_cache
from importlib import resources

EOT = 50256  # <|endoftext|>: separates documents, starts unconditional samples, ends a reply
EOT_TEXT = "<|endoftext|>"
# GPT-2's split pattern (tiktoken's r50k form, equivalent to the original and faster).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _load_ranks() -> dict[bytes, int]:
    text = resources.files("chatgpt_cli").joinpath("data/gpt2.tiktoken").read_text()
    ranks = {}
    for line in text.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def _encoding():
    import tiktoken

    return tiktoken.Encoding(name="gpt2", pat_str=PAT_STR, mergeable_ranks=_load_ranks(),
                             special_tokens={EOT_TEXT: EOT}, explicit_n_vocab=50257)


class Tokenizer:
    """Text <-> GPT-2 token ids. User text is always ordinary text: '<|endoftext|>' in it is just text."""

    eot = EOT
    n_vocab = 50257

    def __init__(self) -> None:
        self._enc = _encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids, errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (a piece of a UTF-8 character, possibly)."""
        return self._enc.decode_single_token_bytes(token)

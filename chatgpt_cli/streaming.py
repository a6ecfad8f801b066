"""Turning streamed token ids into text that is safe to print at once.

GPT-2's tokens are byte strings: one emoji or CJK character can be split over several tokens. An
incremental UTF-8 decoder holds back incomplete characters, so the concatenation of everything
printed is byte-for-byte the decode of the whole sequence. Stop strings end the stream and are
never printed: only the tail that could still grow into a stop string is held back.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from chatgpt_cli.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""  # decoded, but maybe the start of a stop string
        self.stopped = False  # a stop string was found
        self.text = ""  # everything released so far

    def push(self, token: int) -> str:
        """Add one token; return the text that can be printed now."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(self._tokenizer.token_bytes(token))
        return self._release(final=False)

    def finish(self, keep_partial_stop: bool = True) -> str:
        """The end of the stream: release what was held back (unless a stop string ended it).

        ``keep_partial_stop=False`` drops a held tail that is the start of a stop string (a chat
        reply cut by the token limit inside "\nUser:" does not end with "\nUser")."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        if not keep_partial_stop:
            self._pending = self._pending[:len(self._pending) - self._held_tail(self._pending)]
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self._pending
        hits = [i for s in self._stop if (i := text.find(s)) >= 0]
        if hits:
            out, self._pending, self.stopped = text[:min(hits)], "", True
        else:
            hold = 0 if final else self._held_tail(text)
            out, self._pending = text[:len(text) - hold], text[len(text) - hold:]
        self.text += out
        return out

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

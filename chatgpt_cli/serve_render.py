"""The engine's events as OpenAI response objects: whole (``add`` then ``whole``) or as stream chunks.

``kind`` is "text_completion" or "chat.completion". A chat reply starts after the template's
assistant label: the whitespace around it is dropped, as the chat command does.
"""

from __future__ import annotations

from chatgpt_cli.serve_engine import Done, End, Piece, TokenLogprob
from chatgpt_cli.tokenizer import Tokenizer


class Renderer:
    def __init__(self, kind: str, model: str, id_: str, created: int, tok: Tokenizer, n: int,
                 echo: list[str] | None = None, logprobs: bool = False) -> None:
        self.kind, self.model, self.id, self.created, self.tok, self.n = kind, model, id_, created, tok, n
        self.chat = kind == "chat.completion"
        self.echo, self.wants_logprobs = echo, logprobs
        self.texts: dict[int, str] = {}
        self.held: dict[int, str] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {}
        self.finish: dict[int, str] = {}
        self.done: Done | None = None

    # --- text ------------------------------------------------------------------------------------
    def _text(self, index: int, text: str) -> str:
        """The part of a piece shown now: a chat reply drops the whitespace around it, as the chat does
        (whitespace is held back until more text follows it)."""
        if self.chat:
            text = self.held.get(index, "") + text
            if not self.texts.get(index):
                text = text.lstrip()
            shown = text.rstrip()
            self.held[index], text = text[len(shown):], shown
        self.texts[index] = self.texts.get(index, "") + text
        return text

    def _start(self, index: int) -> str:
        """A completion choice's text before any token: the echoed prompt, if asked for."""
        if index not in self.texts:
            self.texts[index] = self.echo[index // self.n] if self.echo else ""
            return self.texts[index]
        return ""

    # --- logprobs --------------------------------------------------------------------------------
    def _token(self, token: int, logprob: float) -> dict:
        return {"token": self.tok.decode([token]), "logprob": logprob, "bytes": list(self.tok.token_bytes(token))}

    def _logprobs(self, steps: list[TokenLogprob], offset: int) -> dict | None:
        """OpenAI's logprobs object for these steps; ``offset``: where the first one's text starts."""
        if self.chat:
            return {"content": [{**self._token(s.token, s.logprob),
                                 "top_logprobs": [self._token(t, lp) for t, lp in s.top]} for s in steps]}
        tokens = [self.tok.decode([s.token]) for s in steps]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [s.logprob for s in steps],
                "top_logprobs": [None if s.logprob is None else {self.tok.decode([t]): lp for t, lp in s.top}
                                 for s in steps] if any(s.top for s in steps) else None, "text_offset": offsets}

    # --- whole responses -------------------------------------------------------------------------
    def add(self, event: object) -> None:
        if isinstance(event, Piece):
            self._start(event.index)
            self._text(event.index, event.text)
            self.logprobs.setdefault(event.index, []).extend(event.logprobs)
        elif isinstance(event, End):
            self._start(event.index)
            self.finish[event.index] = event.finish_reason
        elif isinstance(event, Done):
            self.done = event

    def whole(self) -> dict:
        choices = []
        for i in sorted(self.finish):
            start = len(self.echo[i // self.n]) if self.echo and not self.scored_prompt(i) else 0
            lp = self._logprobs(self.logprobs.get(i, []), start) if self.wants_logprobs else None
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": self.texts[i]},
                                "logprobs": lp, "finish_reason": self.finish[i]})
            else:
                choices.append({"index": i, "text": self.texts[i], "logprobs": lp, "finish_reason": self.finish[i]})
        return {**self._head(self.kind), "choices": choices, "usage": self.usage(self.done)}

    @staticmethod
    def usage(done: Done | None) -> dict:
        d = done or Done(0, 0, 0)
        return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
                "total_tokens": d.prompt_tokens + d.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": d.cached_tokens}}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "chatgpt-cli"}

    # --- streams ---------------------------------------------------------------------------------
    def _chunk(self, index: int, text: str | None, logprobs: dict | None, finish: str | None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def opening(self) -> list[dict]:
        """The first chunks: each chat choice's role, or each completion's echoed prompt."""
        if self.chat:
            return [{**self._head("chat.completion.chunk"), "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}]} for i in range(self.n)]
        if self.echo:
            return [self._chunk(i, self._start(i), None, None) for i in range(self.n * len(self.echo))]
        return []

    def scored_prompt(self, index: int) -> bool:
        steps = self.logprobs.get(index)
        return bool(steps) and steps[0].logprob is None

    def chunk(self, event: object) -> dict | None:
        if isinstance(event, Piece) and event.prompt:
            return self._chunk(event.index, "", self._logprobs(event.logprobs, 0), None)
        if isinstance(event, Piece):
            offset = len(self.texts.get(event.index, "")) + len(self._start(event.index))
            text = self._text(event.index, event.text)
            lp = self._logprobs(event.logprobs, offset) if event.logprobs and self.wants_logprobs else None
            return self._chunk(event.index, text, lp, None) if text or lp else None
        if isinstance(event, End):
            return self._chunk(event.index, None, None, event.finish_reason)
        return None

    def usage_chunk(self, done: Done) -> dict:
        head = self._head("chat.completion.chunk" if self.chat else "text_completion")
        return {**head, "choices": [], "usage": self.usage(done)}

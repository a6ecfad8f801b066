"""The decode step on a CUDA GPU, recorded once as a CUDA graph and replayed for every token.

At batch 1 one GPT-2 token is a few hundred small kernels, and launching them one by one from
Python takes longer than running them. A CUDA graph records the whole step once; each token is
then a single launch. A graph replays fixed shapes at fixed addresses, so the step reads its token
and position from two static input buffers, and the model's KV cache is static: the attention
reads the whole cache and masks the positions not written yet (model.KVCache).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chatgpt_cli.model import GPT


def wants_graph(model: GPT) -> bool:
    return model.transformer.wte.weight.device.type == "cuda"


def record(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Run step twice to warm up (libraries set up their workspaces), off the main stream, then
    record it in a CUDA graph; return the graph's replay."""
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


class GraphDecoder:
    """``decoder(token, pos)`` -> next-token logits (vocab,), like ``generate.decode_one``.

    Build it right after ``model.setup_cache(..., static=True)`` and before any prompt is run:
    the warm-up runs the step at position 0, which a prompt then overwrites.
    """

    def __init__(self, model: GPT) -> None:
        device = model.transformer.wte.weight.device
        self.model = model
        self.idx = torch.zeros((1, 1), dtype=torch.long, device=device)  # (1, 1) the token
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,) its position
        with torch.inference_mode():
            self.replay = record(self.step, device)

    def step(self) -> None:
        self.logits = self.model(self.idx, self.pos)[0, -1]  # (vocab,); a replay rewrites it in place

    def __call__(self, token: int, pos: int) -> torch.Tensor:
        self.idx.fill_(token)
        self.pos.fill_(pos)
        self.replay()
        return self.logits.clone()  # the caller may keep it past the next replay

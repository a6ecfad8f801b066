"""The decode step on a CUDA GPU, recorded once as a CUDA graph and replayed for every token.

At batch 1 one GPT-2 token is a few hundred small kernels, and launching them one by one from
Python takes longer than running them. A CUDA graph records the whole step once; each token is
then a single launch. A graph replays fixed shapes at fixed addresses, so the step reads its token
and position from two static input buffers, and the model's KV cache is static: the attention
reads the whole cache and masks the positions not written yet (model.KVCache).
"""

from __future__ import annotations

import torch

from chatgpt_cli.model import GPT


def wants_graph(model: GPT) -> bool:
    return model.transformer.wte.weight.device.type == "cuda"


class GraphDecoder:
    """``decoder(token, pos)`` -> next-token logits (vocab,), like ``generate.decode_one``.

    Build it right after ``model.setup_cache(..., static=True)`` and before any prompt is run:
    recording warms up by running the step once at position 0, which a prompt then overwrites.
    """

    def __init__(self, model: GPT) -> None:
        device = model.transformer.wte.weight.device
        self.idx = torch.zeros((1, 1), dtype=torch.long, device=device)  # (1, 1) the token
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,) its position
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode():
            side = torch.cuda.Stream(device)  # warm up off the main stream (libraries set up workspaces)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    model(self.idx, self.pos)
            torch.cuda.current_stream(device).wait_stream(side)
            with torch.cuda.graph(self.graph):
                self.logits = model(self.idx, self.pos)[0, -1]  # (vocab,), rewritten by every replay

    def __call__(self, token: int, pos: int) -> torch.Tensor:
        self.idx.fill_(token)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.logits.clone()  # the caller may keep it past the next replay

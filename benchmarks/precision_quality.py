"""The quality of each precision against float32 on a model: loss (nats/token) on a chat text and
the share of positions whose most likely next token is float32's (teacher-forced), over the whole
text at once (the prompt's path) and a token at a time (the decode path, on the CPU the fused kernels).

    python benchmarks/precision_quality.py            # the bundled model: the figures in precision.py's QUALITY

The text is tests/test_precision.py's chat, whose figures the test bounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_precision import CHAT, teacher_forced_decode  # noqa: E402

from chatgpt_cli.resources import shipped  # noqa: E402
from chatgpt_cli.tokenizer import Tokenizer  # noqa: E402
from chatgpt_cli.weights import load_model  # noqa: E402


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else shipped("weights")
    ids = Tokenizer().encode(CHAT)
    logits = {}
    with torch.inference_mode():
        for dtype in ("float32", "bfloat16", "auto", "int8", "int4"):
            loaded = load_model(model, dtype=dtype).model
            logits[dtype] = loaded(torch.tensor([ids]))[0].float()
            logits[f"{dtype} decode"] = teacher_forced_decode(loaded, ids)
    targets = torch.tensor(ids[1:])
    full = F.cross_entropy(logits["float32"][:-1], targets).item()
    print(f"{len(targets)} tokens; float32 loss {full:.4f} nats/token")
    for path, name in (("", "the whole text at once (a prompt)"), (" decode", "a token at a time (decode)")):
        print(name)
        for dtype in ("float32", "bfloat16", "auto", "int8", "int4"):
            loss = F.cross_entropy(logits[dtype + path][:-1], targets).item()
            agree = (logits[dtype + path].argmax(-1) == logits["float32"].argmax(-1)).float().mean().item()
            print(f"  {dtype}: loss {loss - full:+.4f} against float32, top-1 the same at {agree:.1%} of positions")


if __name__ == "__main__":
    main()

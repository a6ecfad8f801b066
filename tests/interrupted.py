"""Generation under a hail of signals (run by test_interrupts.py in its own process).

Usage: python interrupted.py MODEL_DIR DTYPE SECONDS [torch]   (torch: decode through the model's
forward, not the fused step)

Another process sends SIGINT and SIGTERM at random moments 0-2 ms apart while this one generates
(one row, then two rows of -N), with the CLI's handlers (Ctrl-C: KeyboardInterrupt; SIGTERM:
cli_plumbing.handle_sigterm's). Prints one JSON line: the exceptions that came out, by kind, the
tokens generated, and whether greedy output afterwards equals greedy output before.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import torch

from chatgpt_cli.cli_plumbing import handle_sigterm
from chatgpt_cli.generate import Engine, decode_one
from chatgpt_cli.sampling import SamplingOptions
from chatgpt_cli.weights import load_model

path, dtype, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
engine = Engine(load_model(path, dtype=dtype).model)
if sys.argv[4:] == ["torch"]:
    engine.decode, engine.batch_decode = functools.partial(decode_one, engine.model), None
prompt, greedy, sampled = [464, 2068, 7586, 21831], SamplingOptions(temperature=0), SamplingOptions(0.9, seed=1)
before = list(engine.generate(prompt, 12, greedy, stop_at_eot=False))
list(engine.generate_batch(prompt, 3, sampled, 2))  # its kernels compiled before the signals, not during

handle_sigterm()
armed = False  # a signal outside the generation below is dropped: only what generating raises counts
handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
for s, handler in handlers.items():
    signal.signal(s, lambda number, frame, handler=handler: handler(number, frame) if armed else None)
killer = subprocess.Popen([sys.executable, "-c", f"""
import os, random, signal, time
while True:
    time.sleep(random.uniform(0, 0.002))
    os.kill({os.getpid()}, random.choice((signal.SIGINT, signal.SIGTERM)))
"""])
came_out, tokens, rounds = Counter(), 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    rounds += 1
    try:
        armed = True
        if rounds % 2:
            for _ in engine.generate(prompt, 40, sampled, stop_at_eot=False):
                tokens += 1
        else:
            for out in engine.generate_batch(prompt, 40, sampled, 2, stop_at_eot=False):
                tokens += len(out)
        armed = False
    except KeyboardInterrupt:
        armed = False
        came_out["KeyboardInterrupt"] += 1
    except BaseException as e:  # noqa: BLE001 (what the test looks for)
        armed = False
        came_out[f"{type(e).__name__}: {e}"] += 1
killer.kill()
killer.wait()
for s in handlers:
    signal.signal(s, signal.SIG_IGN)  # signals still in flight
time.sleep(0.05)
with torch.inference_mode():
    after = list(engine.generate(prompt, 12, greedy, stop_at_eot=False))
print(json.dumps({"came_out": came_out, "tokens": tokens, "fused": type(engine.decode).__name__ == "FusedDecoder",
                  "same_after": after == before}))

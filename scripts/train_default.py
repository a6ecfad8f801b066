"""Train the default model shipped in weights/ (not imported at run time).

Builds its text with scripts/build_data.py from ../shared/corpus/ (deterministically: placeholders
removed, persona chats recast, the assistant's identity added, sources rebalanced), keeps a
validation split apart, trains chatgpt_cli.model.GPT with the GPT-2 tokenizer (tied unembedding)
and exports a Hugging Face style directory. --init starts from an existing model instead of
random weights (its position table is repeated to fill a longer --block).

    python scripts/train_default.py --out weights --minutes 120
    python scripts/train_default.py --init weights --block 512 --out .train/final --minutes 45
    python scripts/train_default.py --tiny --steps 3 --out /tmp/w   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))
import build_data as build_data_module  # noqa: E402

from chatgpt_cli.model import GPT, GPTConfig, init_weights  # noqa: E402
from chatgpt_cli.tokenizer import EOT, Tokenizer  # noqa: E402
from chatgpt_cli.weights import load_model, save_model  # noqa: E402


def build_data(corpus: Path, seed: int) -> tuple[list[str], list[str]]:
    """(train documents, validation documents), the same on every run."""
    train, val = build_split(corpus, seed)
    return [doc for _, doc in train], [doc for _, doc in val]


def build_split(corpus: Path, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """((source, train document) pairs, (source, validation document) pairs)."""
    data = build_data_module.build(corpus, seed)
    return data.train, data.val


def to_stream(docs: list[str], tok: Tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids.extend(tok.encode(doc))
        ids.append(EOT)
    return torch.tensor(ids, dtype=torch.int32)


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, block: int, max_windows: int = 200) -> float:
    """Mean loss (nats/token) over consecutive windows of the validation stream."""
    model.eval()
    losses, count = 0.0, 0
    n = min(max_windows, (len(data) - 1) // block)
    for i in range(n):
        x = data[i * block:(i + 1) * block].long()[None]
        y = data[i * block + 1:(i + 1) * block + 1].long()[None]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        losses += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return losses / max(count, 1)


def from_model(path: Path, block: int) -> GPT:
    """A model initialised from the one in `path` (every tensor copied); when `block` is longer than
    its window, the learned position table is repeated to fill the new positions."""
    old = load_model(path, dtype="float32", fast=False).model
    config = GPTConfig(n_positions=block, n_embd=old.config.n_embd, n_layer=old.config.n_layer,
                       n_head=old.config.n_head, vocab_size=old.config.vocab_size)
    model = GPT(config)
    state = old.state_dict()
    wpe = state["transformer.wpe.weight"]
    state["transformer.wpe.weight"] = wpe.repeat(-(-block // len(wpe)), 1)[:block].clone()
    model.load_state_dict(state)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "weights")
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=3000, help="planned steps (the learning-rate schedule)")
    ap.add_argument("--minutes", type=float, default=0, help="stop after this much time (0: no limit)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=200,
                    help="validation windows measured during training (with --eval-only: of each source)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up steps (at most a tenth of --steps)")
    ap.add_argument("--init", type=Path, help="start from this model directory instead of random weights")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step (faster)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on a little data (tests)")
    ap.add_argument("--eval-only", action="store_true", help="only measure the model in --out on the validation split")
    args = ap.parse_args()
    if args.tiny:
        args.compile = False
        args.n_embd, args.n_layer, args.n_head, args.block, args.batch = 32, 1, 2, 32, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tok = Tokenizer()
    t0 = time.time()
    train_pairs, val_pairs = build_split(args.corpus, args.seed)
    if args.tiny:
        train_pairs, val_pairs = train_pairs[:200], val_pairs[:20]
    val_docs = [d for _, d in val_pairs]
    val = to_stream(val_docs, tok)
    if args.eval_only:  # each source on its own stream; the overall figure weighs them by their tokens
        model = load_model(args.out, dtype="float32", fast=False).model
        by_source = {}
        for source in dict.fromkeys(s for s, _ in val_pairs):
            docs = [d for s, d in val_pairs if s == source]
            stream = to_stream(docs, tok)
            window = model.config.n_positions
            used = min(args.eval_windows, (len(stream) - 1) // window) * window
            by_source[source] = {"val_loss": round(evaluate(model, stream, window, args.eval_windows), 4),
                                 "tokens": len(stream), "tokens_scored": used, "documents": len(docs)}
            print(f"  {source}: {by_source[source]}", flush=True)
        total = sum(v["tokens_scored"] for v in by_source.values())
        full = sum(v["val_loss"] * v["tokens_scored"] for v in by_source.values()) / total
        print(f"val_loss {full:.4f} nats/token over {total:,} tokens of the validation split "
              f"(at most {args.eval_windows} windows of each source)")
        meta = json.loads((args.out / "training.json").read_text())
        meta |= {"val_loss_split": round(full, 4), "val_tokens_scored": total, "val_by_source": by_source}
        (args.out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
        return

    mix: dict[str, int] = {}
    train_ids: list[int] = []
    for source, doc in train_pairs:
        ids = tok.encode(doc)
        train_ids += ids + [EOT]
        mix[source] = mix.get(source, 0) + len(ids) + 1
    train = torch.tensor(train_ids, dtype=torch.int32)
    mix = dict(sorted(mix.items(), key=lambda kv: -kv[1]))
    print(f"data: {len(train_pairs)} train docs, {len(train):,} tokens; {len(val_docs)} val documents, "
          f"{len(val):,} tokens ({time.time() - t0:.0f}s)", flush=True)
    for source, n in mix.items():
        print(f"  mix {source}: {n:,} tokens ({100 * n / len(train):.1f}%)", flush=True)

    if args.init:
        model = from_model(args.init, args.block)
        args.n_embd, args.n_layer, args.n_head = model.config.n_embd, model.config.n_layer, model.config.n_head
    else:
        config = GPTConfig(n_positions=args.block, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head)
        model = init_weights(GPT(config), args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=False)
    gen = torch.Generator().manual_seed(args.seed)
    warmup = max(1, min(args.warmup, args.steps // 10))

    def progress(step: int) -> float:
        """How far through the run: by steps, or by the time budget when that comes first."""
        by_time = (time.time() - start) / (args.minutes * 60) if args.minutes else 0.0
        return min(1.0, max(step / args.steps, by_time))

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress(step))))

    def save(step: int, val_loss: float) -> None:
        meta = {"step": step, "tokens_seen": step * args.batch * args.block, "val_loss": round(val_loss, 4),
                "minutes": round((time.time() - start) / 60, 1), "settings": vars(args) | {
                    "corpus": "../shared/corpus", "out": str(args.out), "init": args.init and str(args.init)},
                "train_tokens": len(train), "mix_tokens": mix, "val_documents": len(val_docs)}
        save_model(model, args.out, dtype=torch.float16)
        (args.out / "training.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    start = time.time()
    model.train()
    step, tokens, last = 0, 0, time.time()
    val_loss, best = float("nan"), float("inf")
    step_fn = torch.compile(loss_of) if args.compile else loss_of
    while progress(step) < 1.0:
        ix = torch.randint(len(train) - args.block - 1, (args.batch,), generator=gen)
        x = torch.stack([train[i:i + args.block] for i in ix]).long()
        y = torch.stack([train[i + 1:i + 1 + args.block] for i in ix]).long()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        if step % 20 == 0 or step == 1:
            rate = tokens / (time.time() - last)
            print(f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e} {rate:.0f} tok/s", flush=True)
            tokens, last = 0, time.time()
        if step % args.eval_every == 0:
            val_loss = evaluate(model, val, args.block, args.eval_windows)
            print(f"step {step} val_loss {val_loss:.4f} ({(time.time() - start) / 60:.1f} min)", flush=True)
            if val_loss < best:  # keep the best checkpoint, should later steps overfit
                best = val_loss
                save(step, val_loss)
    val_loss = evaluate(model, val, args.block, args.eval_windows)
    if val_loss < best:
        save(step, val_loss)
    else:
        print(f"final val_loss {val_loss:.4f} is above the best ({best:.4f}): keeping the best checkpoint")
        model.load_state_dict(load_model(args.out, dtype="float32", fast=False).model.state_dict())
    full = evaluate(model, val, args.block, max_windows=10_000)
    print(f"val_loss {full:.4f} nats/token over the whole validation split", flush=True)
    meta = json.loads((args.out / "training.json").read_text())
    meta["val_loss_full_split"] = round(full, 4)
    (args.out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""`explain`: one prediction walked through the model. Rendering only; explain.py computes it."""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Annotated, Optional

import typer

from chatgpt_cli.cli import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    app,
    guarded,
    load,
    prompt_text,
    write_out,
)
from chatgpt_cli.errors import UsageError

SECTION_NAMES = ("tokens", "embeddings", "attention", "lens", "softmax", "cost")
TOKENS_SHOWN = 12  # a long text lists this many tokens at each end
EMBEDDINGS_SHOWN = 3  # ... and the embeddings of this many


@app.command()
def explain(
    text: Annotated[Optional[str], typer.Argument(help="The text so far; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    section: Annotated[Optional[str], typer.Option(help="Only this section: " + ", ".join(SECTION_NAMES) + ".")] = None,
    heads: Annotated[bool, typer.Option("--heads", help="Attention: the top keys of each head, not the mean.")] = False,
    top: Annotated[int, typer.Option("--top", help="How many next tokens to list.")] = 5,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Walk the prediction of the next token through the model: tokens, embeddings, attention,
    the logit lens, unembedding and softmax, the token chosen, and what it cost."""
    with guarded():
        from chatgpt_cli.explain import explain as walk
        from chatgpt_cli.sampling import SamplingOptions
        from chatgpt_cli.tokenizer import EOT, Tokenizer

        options = SamplingOptions(temperature, top_k, top_p, seed)
        if section is not None and section not in SECTION_NAMES:
            raise UsageError(f"--section must be one of {', '.join(SECTION_NAMES)}, not {section!r}")
        if top < 1:
            raise UsageError(f"--top must be >= 1, not {top}")
        loaded = load(model, dtype, device, verbose=False)
        tok = Tokenizer()
        ids = tok.encode(prompt_text(text)) or [EOT]
        e = walk(loaded.model, ids, options, top=top, heads=heads)
        if as_json:
            data = as_dict(e, tok, loaded.precision)
            if section is not None:
                data = only(data, section)
            write_out(json.dumps(data, ensure_ascii=False) + "\n")
            return
        width = max(shutil.get_terminal_size((80, 24)).columns, 40)
        write_out(render(e, tok, loaded.precision, width, section))


def text_of(tok, token: int) -> str:
    return tok.token_bytes(token).decode("utf-8", errors="replace")


def as_dict(e, tok, precision: str) -> dict:
    """The stable JSON shape: tokens, embeddings, layers (one per block, after it), next, chosen, cost."""
    def ranked(token: int, prob: float) -> dict:
        return {"id": token, "text": text_of(tok, token), "prob": round(prob, 6)}

    def vec(v) -> dict:
        return {"norm": round(v.norm, 6), "first": [round(x, 6) for x in v.first]}

    c, cost = e.config, e.cost
    return {
        "model": {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_positions": c.n_positions,
                  "vocab_size": c.vocab_size, "precision": precision},
        "tokens": [{"id": i, "text": text_of(tok, i)} for i in e.ids],
        "dropped": e.dropped,
        "embeddings": [{"pos": m.pos, "id": m.token, "wte": vec(m.wte), "wpe": vec(m.wpe), "sum": vec(m.total)}
                       for m in e.embeddings],
        "layers": [{"layer": layer.layer, "top": [ranked(r.token, r.prob) for r in layer.top],
                    "attention": [{"head": f.head, "keys": [{"pos": k.pos, "id": k.token, "text": text_of(tok, k.token),
                                                              "weight": round(k.weight, 6)} for k in f.keys]}
                                  for f in layer.attention]}
                   for layer in e.layers],
        "first_top_layer": e.first_top_layer,
        "next": [ranked(cand.token, cand.prob) | {"logit": round(cand.logit, 4),
                                                  "sampled_prob": round(cand.sampled_prob, 6)} for cand in e.next],
        "sampling": {"temperature": e.options.temperature, "top_k": e.options.top_k, "top_p": e.options.top_p,
                     "seed": e.options.seed, "kept": e.chosen.kept, "kept_mass": round(e.chosen.kept_mass, 6)},
        "chosen": ranked(e.chosen.token, e.chosen.prob) | {"sampled_prob": round(e.chosen.sampled_prob, 6),
                                                            "greedy": e.chosen.greedy},
        "cost": {"context": cost.context, "window": cost.window, "block_products": cost.block_products,
                 "products": cost.products, "unembedding": cost.unembedding, "attention": cost.attention,
                 "total": cost.total, "attention_at_window": cost.attention_for(cost.window),
                 "sequence_attention": cost.sequence_attention(cost.context),
                 "sequence_attention_at_window": cost.sequence_attention(cost.window),
                 "weight_bytes": cost.weight_bytes, "kv_bytes": cost.kv_bytes},
    }


def only(data: dict, section: str) -> dict:
    """The JSON keys of one section (the layers keep just that section's part)."""
    if section == "attention":
        return {"layers": [{"layer": x["layer"], "attention": x["attention"]} for x in data["layers"]]}
    if section == "lens":
        return {"layers": [{"layer": x["layer"], "top": x["top"]} for x in data["layers"]],
                "first_top_layer": data["first_top_layer"]}
    keys = {"tokens": ("tokens", "dropped"), "embeddings": ("embeddings",), "softmax": ("next", "sampling", "chosen"),
            "cost": ("cost",)}[section]
    return {k: data[k] for k in keys}


def piece(tok, token: int, width: int = 12) -> str:
    """A token's text quoted; a piece of a UTF-8 character as its bytes; long ones cut short."""
    raw = tok.token_bytes(token)
    try:
        shown = repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        shown = repr(raw)
    return shown if len(shown) <= width else shown[:width - 2] + "…" + shown[-1]


def fit(lines: list[str], width: int) -> str:
    return "".join((line if len(line) <= width else line[:width - 1] + "…") + "\n" for line in lines)


def wrap(words: list[str], width: int, indent: str = "  ") -> list[str]:
    lines, line = [], indent
    for word in words:
        if len(line) + len(word) + 2 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += word + "  "
    return lines + [line.rstrip()] if line.strip() else lines


def para(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent="   ", subsequent_indent="   ", break_on_hyphens=False)


def values(v) -> str:
    return " ".join(f"{x:+.4f}" for x in v.first)


def render(e, tok, precision: str, width: int, section: str | None = None) -> str:
    """The report, one section or all, each line at most ``width`` columns."""
    views = {"tokens": tokens_view, "embeddings": embeddings_view, "attention": attention_view,
             "lens": lens_view, "softmax": softmax_view, "cost": cost_view}
    parts = [views[name](e, tok, precision, width) for name in (SECTION_NAMES if section is None else (section,))]
    return "\n".join(fit(lines, width) for lines in parts)


def tokens_view(e, tok, precision: str, width: int) -> list[str]:
    T = len(e.ids)
    lines = [f"1. Tokens: {T} of the {e.config.n_positions}-token window (GPT-2's byte-level BPE)"]
    if e.dropped:
        lines.append(f"   (the {e.dropped} tokens before the window are not seen)")
    words = [f"{p}:{piece(tok, i, 24)}={i}" for p, i in enumerate(e.ids)]
    if T > 2 * TOKENS_SHOWN:
        words = words[:TOKENS_SHOWN] + [f"({T - 2 * TOKENS_SHOWN} more)"] + words[-TOKENS_SHOWN:]
    return lines + wrap(words, width)


def embeddings_view(e, tok, precision: str, width: int) -> list[str]:
    lines = [f"2. Embeddings: the token's row of wte + its position's row of wpe, {e.config.n_embd} values",
             f"   {'#':>4}  {'token':<14}  {'vector':<10} {'|x|':>7}  first values"]
    rows = e.embeddings
    hidden = len(rows) - 2 * EMBEDDINGS_SHOWN
    if hidden > 0:
        rows = rows[:EMBEDDINGS_SHOWN] + [None] + rows[-EMBEDDINGS_SHOWN:]
    for m in rows:
        if m is None:
            lines.append(f"   ({hidden} tokens not shown here; --json lists them all)")
            continue
        name = f"wte[{m.token}]"
        lines += [f"   {m.pos:>4}  {piece(tok, m.token):<14}  {name:<10} {m.wte.norm:7.3f}  {values(m.wte)}",
                  f"   {'':>4}  {'':<14}  {f'wpe[{m.pos}]':<10} {m.wpe.norm:7.3f}  {values(m.wpe)}",
                  f"   {'':>4}  {'':<14}  {'sum':<10} {m.total.norm:7.3f}  {values(m.total)}"]
    return lines + ["   the sums are the residual stream entering block 0"]


def keys_cell(tok, keys) -> str:
    return "  ".join(f"{piece(tok, k.token, 10)}@{k.pos} {k.weight:.3f}" for k in keys)


def attention_view(e, tok, precision: str, width: int) -> list[str]:
    c, T = e.config, len(e.ids)
    hs, last = c.head_dim, e.ids[-1]
    lines = [f"3. Attention in each block, for the last token {piece(tok, last)} (position {T - 1})",
             *para(f"Per head ({c.n_head} heads of {hs}): q 1x{hs} (this token's query), K and V {T}x{hs} "
                   f"(keys and values of tokens 0..{T - 1}); weights = softmax(q K^T / sqrt({hs})), 1x{T}; "
                   f"output = weights V, 1x{hs}; the heads side by side ({c.n_embd}) go through c_proj. "
                   "The causal mask: a query sees its own token and the ones before it, never a later one "
                   f"(the last token sees all {T}).", width),
             f"   block  {'head  ' if len(e.layers[0].attention) > 1 else ''}"
             f"keys attended most{'' if len(e.layers[0].attention) > 1 else f' (mean over the {c.n_head} heads)'}"]
    for layer in e.layers:
        for f in layer.attention:
            head = "" if f.head is None else f"{f.head:>4}  "
            lines.append(f"   {layer.layer:>5}  {head}{keys_cell(tok, f.keys)}")
    return lines


def lens_view(e, tok, precision: str, width: int) -> list[str]:
    lines = ["4. The prediction forming, block by block: the logit lens (ln_f and the",
             "   unembedding applied to the last position's residual stream after each block)",
             "   block  top tokens (probability)"]
    for layer in e.layers:
        lines.append(f"   {layer.layer:>5}  " + "  ".join(f"{piece(tok, r.token)} {prob(r.prob)}" for r in layer.top))
    return lines + [f"   the final answer {piece(tok, e.top)} is first the top token after block {e.first_top_layer}"
                    f" (of 0..{e.config.n_layer - 1})"]


def softmax_view(e, tok, precision: str, width: int) -> list[str]:
    o, ch = e.options, e.chosen
    lines = [f"5. Unembedding and softmax: {e.config.n_embd} values -> {e.config.vocab_size:,} logits -> probabilities",
             f"   {'#':>3}  {'token':<14} {'id':>6} {'logit':>9} {'prob':>8} {'sampled':>8}"]
    for n, cand in enumerate(e.next, 1):
        lines.append(f"   {n:>3}  {piece(tok, cand.token):<14} {cand.token:>6} {cand.logit:>9.3f} {cand.prob:>8.4f}"
                     f" {cand.sampled_prob:>8.4f}")
    chosen = f"{piece(tok, ch.token)} ({ch.token})"
    if ch.greedy:
        return lines + para(f"temperature 0: greedy, the top token {chosen}, probability {ch.prob:.4f}", width)
    how = f"seed {o.seed}" if o.seed is not None else "no --seed: a fresh draw each run"
    return lines + para(f"temperature {o.temperature}, top-k {o.top_k}, top-p {o.top_p} leave {ch.kept:,} tokens "
                        f"({100 * ch.kept_mass:.1f}% of the probability before them); sampled ({how}): {chosen}, "
                        f"probability {ch.sampled_prob:.4f} after them, {ch.prob:.4f} before.", width)


def prob(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def cost_view(e, tok, precision: str, width: int) -> list[str]:
    k, C, L = e.cost, e.cost.n_embd, e.cost.n_layer
    T, W = k.context, k.window
    rows = [("matrix products", f"{L} blocks x 12 x {C}^2", k.n_layer * k.block_products),
            ("unembedding", f"{C} x {k.vocab_size:,}", k.unembedding),
            ("attention", f"{L} blocks x 2 x {T} keys x {C}", k.attention), ("total", "", k.total)]
    lines = [f"6. Cost of this token: multiply-adds at a context of {T} (window {W})"]
    lines += [f"   {name:<16} {how:<32} {n:>16,}" for name, how, n in rows]
    lines += para("Per block: q,k,v 3C^2 + attention output C^2 + MLP 8C^2 = 12C^2; attention: q.K and "
                  "weights.V over the keys so far, in every head.", width)
    lines += para(f"Attention grows with the context T: per new token, with the KV cache, linearly "
                  f"(2 x {L} x T x {C}: {k.attention_for(W):,} at the full window); a whole sequence at once, "
                  f"or each token without the cache, quadratically ({L} x {C} x T(T+1): "
                  f"{k.sequence_attention(T):,} for these {T} tokens, {k.sequence_attention(W):,} for {W}).", width)
    lines += para(f"Weights read for this token: {size(k.weight_bytes)} ({precision}), plus {size(k.kv_bytes)} "
                  f"of KV cache: {k.total / (k.weight_bytes + k.kv_bytes):.2f} multiply-adds per byte. Processors "
                  "do far more per byte they can read, so decode waits on memory bandwidth: fewer bytes per "
                  "weight, faster tokens.", width)
    return lines

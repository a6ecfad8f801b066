"""`explain`: one prediction walked through the model. explain.py computes it, render.py draws it;
here the options, the JSON shape and the glue."""

from __future__ import annotations

import json
import shutil
from typing import Annotated, Any, Optional

import typer

from chatgpt_cli.cli_options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, SeedOpt, sampling_options
from chatgpt_cli.cli_plumbing import guarded, load, prompt_text, write_out
from chatgpt_cli.errors import UsageError

SECTION_NAMES = ("tokens", "embeddings", "attention", "lens", "softmax", "cost")


@sampling_options(temperature=0.8, top_k=0, top_p=1.0)
def explain(
    text: Annotated[Optional[str], typer.Argument(help="The text so far; '-' or none reads stdin.")] = None,
    model: ModelOpt = None,
    section: Annotated[Optional[str], typer.Option(help="Only this section: " + ", ".join(SECTION_NAMES) + ".")] = None,
    heads: Annotated[bool, typer.Option("--heads", help="Attention: the top keys of each head, not the mean.")] = False,
    top: Annotated[int, typer.Option("--top", help="How many next tokens to list.")] = 5,
    sampling: dict[str, Any] | None = None,
    seed: SeedOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Walk the prediction of the next token through the model: tokens, embeddings, attention,
    the logit lens, unembedding and softmax, the token chosen, and what it cost."""
    with guarded():
        from chatgpt_cli.explain import explain as walk
        from chatgpt_cli.sampling import from_cli
        from chatgpt_cli.tokenizer import EOT, Tokenizer

        options = from_cli(sampling or {}, Tokenizer().encode, Tokenizer.n_vocab, seed=seed)
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
        from chatgpt_cli.render import explanation

        width = max(shutil.get_terminal_size((80, 24)).columns, 40)
        write_out(explanation(e, tok, loaded.precision, width, section))


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


def register(app: typer.Typer) -> None:
    app.command()(explain)

"""Loading and saving GPT-2 weights in safetensors, strictly. Nothing else is ever read: no pickle.

Accepted: a ``.safetensors`` file, or a directory with ``config.json`` and ``model.safetensors``
or a sharded ``model.safetensors.index.json`` (checkpoint.py reads them). The names and shapes
are checked against the config, then the tensors go into the model: memory-mapped as stored, or
converted, laid out anew, packed or quantized a block at a time as the dtype and device ask.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from chatgpt_cli.checkpoint import Mapped, find_files, read_safetensors, refuse_pickle
from chatgpt_cli.errors import UsageError, WeightsError
from chatgpt_cli.model import GPT, Conv1D, GPTConfig
from chatgpt_cli.precision import DTYPE_CHOICES, DTYPES, Scheme, choose_scheme

LINEAR_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


@dataclass(frozen=True)
class LoadedModel:
    model: GPT
    config: GPTConfig
    files: tuple[Path, ...]
    dtype: torch.dtype  # what the weights are stored in (int8, int4: the rest of the model)
    device: torch.device
    n_params: int
    scheme: Scheme  # the precision and its kernels (precision.py)

    @property
    def precision(self) -> str:
        return self.scheme.precision


def normalize_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names -> this model's names: add the ``transformer.`` prefix, drop mask buffers."""
    out = {}
    for key, t in tensors.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) and not key.endswith("c_attn.bias"):
            continue  # the causal-mask buffers of the original GPT-2 files, not weights
        if key != "lm_head.weight" and not key.startswith("transformer."):
            key = "transformer." + key
        out[key] = t
    return out


def config_from(tensors: dict[str, torch.Tensor], config_json: dict | None, metadata: dict[str, str],
                where: Path) -> GPTConfig:
    """The config from config.json, else inferred from the shapes (n_head = n_embd / 64)."""
    wte, wpe = tensors.get("transformer.wte.weight"), tensors.get("transformer.wpe.weight")
    if wte is None or wpe is None or wte.dim() != 2 or wpe.dim() != 2:
        raise WeightsError(f"{where}: not GPT-2 weights (no 2-D transformer.wte.weight / transformer.wpe.weight)")
    if config_json is not None:
        values = {"n_positions": config_json.get("n_positions", config_json.get("n_ctx"))}
        for f in fields(GPTConfig):
            if f.name in config_json:
                values[f.name] = config_json[f.name]
        values = {k: v for k, v in values.items() if v is not None}
        act = config_json.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise WeightsError(f"{where}: activation_function {act!r} is not GPT-2's tanh GELU")
        for name, value in values.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (name != "layer_norm_epsilon" and not isinstance(value, int)):
                raise WeightsError(f"{where}: config.json has a malformed {name}: {value!r}")
        config = GPTConfig(**values)
    else:
        layers = {int(m.group(1)) for k in tensors if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
        n_embd = wte.shape[1]
        if metadata.get("n_head", "").isdigit():
            n_head = int(metadata["n_head"])
        elif n_embd % 64 == 0:
            n_head = n_embd // 64  # true of every GPT-2 size
        else:
            raise WeightsError(f"{where}: cannot tell the number of heads (n_embd {n_embd} is not a multiple "
                               "of 64 and there is no config.json); put a config.json beside the weights")
        config = GPTConfig(vocab_size=wte.shape[0], n_positions=wpe.shape[0], n_embd=n_embd,
                           n_layer=len(layers), n_head=n_head)
    if min(config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head) <= 0 \
            or config.n_embd % config.n_head or config.layer_norm_epsilon <= 0:
        raise WeightsError(f"{where}: impossible config {config}")
    check_sizes(config, tensors, where)
    return config


def check_sizes(config: GPTConfig, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """The config's sizes against the tensors, before anything is allocated for them."""
    wte, wpe = tensors["transformer.wte.weight"], tensors["transformer.wpe.weight"]
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    found = {"vocab_size": wte.shape[0], "n_embd": wte.shape[1], "n_positions": wpe.shape[0],
             "n_layer": len(layers)}
    wrong = [f"{name} {getattr(config, name)} but the tensors have {n}" for name, n in found.items()
             if getattr(config, name) != n]
    if config.n_layer > len(layers):
        wrong.append(f"missing the tensors of layers transformer.h.{len(layers)}..{config.n_layer - 1}")
    if wrong:
        raise WeightsError(f"{where}: the config does not match the weights: {'; '.join(wrong)}")
    if config.n_head > config.n_embd:
        raise WeightsError(f"{where}: impossible config: n_head {config.n_head} > n_embd {config.n_embd}")


def check_usable(config: GPTConfig, where: Path, n_vocab: int = 50257, min_positions: int = 2) -> None:
    """What the command line needs beyond a well-formed model: GPT-2's tokenizer and room for a reply.

    A vocabulary padded past the tokenizer's ids (nanoGPT pads to a multiple of 64) is fine: the
    padded ids are never sampled. A smaller one cannot embed every id the tokenizer makes."""
    if config.vocab_size < n_vocab:
        raise WeightsError(f"{where}: vocab_size {config.vocab_size} is smaller than the GPT-2 tokenizer's "
                           f"{n_vocab} ids, so its text cannot be encoded for this model")
    if config.n_positions < min_positions:
        raise WeightsError(f"{where}: n_positions {config.n_positions} is too small to hold a prompt and a "
                           f"reply (at least {min_positions} positions are needed)")


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    C, V = config.n_embd, config.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (config.n_positions, C),
              "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        shapes |= {p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                   p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
                   p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                   p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
                   p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)}
    return shapes


def check_tensors(tensors: dict[str, torch.Tensor], config: GPTConfig, where: Path) -> None:
    """Every key present, none unexpected, every shape right; the error names all that is wrong."""
    want = expected_shapes(config)
    if "lm_head.weight" in tensors:
        want["lm_head.weight"] = (config.vocab_size, config.n_embd)
    problems = []
    if missing := [k for k in want if k not in tensors]:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:4])}"
                        + (" ..." if len(missing) > 4 else ""))
    if unexpected := [k for k in tensors if k not in want]:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:4])}"
                        + (" ..." if len(unexpected) > 4 else ""))
    for k, shape in want.items():
        if k in tensors and tuple(tensors[k].shape) != shape:
            problems.append(f"{k} has shape {tuple(tensors[k].shape)}, expected {shape}")
    if problems:
        raise WeightsError(f"{where} does not match the GPT-2 config "
                           f"(n_layer={config.n_layer}, n_embd={config.n_embd}, n_positions={config.n_positions}, "
                           f"vocab_size={config.vocab_size}): " + "; ".join(problems[:5]))


def all_finite(t: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """No NaN or inf in t, checked a million values at a time (no full-size temporaries)."""
    return all(bool(torch.isfinite(part).all()) for part in t.reshape(-1).split(chunk))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available on this machine (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple's MPS is not available on this machine (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r}: choose auto, cpu, cuda or mps")
    return torch.device(name)


def load_model(path: str | Path, dtype: str = "auto", device: str = "auto", fast: bool = True) -> LoadedModel:
    """Load GPT-2 weights from a safetensors file or a Hugging Face style directory.

    ``dtype`` and the device choose a precision scheme (precision.py), which converts the matrices
    a layer at a time; ``fast=False`` keeps torch's own layers.
    """
    path = Path(path).expanduser()
    files, config_json = find_files(path)
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    maps: list[mmap.mmap] = []
    for file in files:
        refuse_pickle(file)
        part, meta, mm = read_safetensors(file)
        maps += [mm] if mm is not None else []
        metadata |= meta
        tensors |= normalize_keys(part)
    config = config_from(tensors, config_json, metadata, path)
    check_tensors(tensors, config, path)
    dev = resolve_device(device)
    stored = tensors["transformer.wte.weight"].dtype
    if dtype != "auto" and dtype not in DTYPES and dtype not in ("int8", "int4"):
        raise UsageError(f"--dtype {dtype!r}: choose {DTYPE_CHOICES}")
    scheme = choose_scheme(dtype, stored, dev, fast)
    target = scheme.storage

    def copied(name: str) -> bool:  # laid out anew as (out, in) or quantized by the scheme, or converted
        return target != stored or dev.type != "cpu" or scheme.converts(name) or \
            (scheme.linear is not None and name.endswith(LINEAR_WEIGHTS))

    mapped = Mapped(maps)
    for k, t in tensors.items():
        if not all_finite(t):
            warnings.warn(f"{k} in {path} contains NaN or infinite values", stacklevel=2)
        if copied(k):
            mapped.release(t)  # to be copied anyway: read back a tensor at a time, not all at once

    def place(name: str, t: torch.Tensor) -> torch.Tensor:
        if scheme.converts(name):
            out = t.to(dev)  # as stored until quantized, a chunk of rows at a time
        else:
            out = t.to(device=dev, dtype=target)  # (laid out anew a layer at a time by the scheme)
        if out.data_ptr() != t.data_ptr():
            mapped.release(t)
        return out

    model = GPT(config, tied="lm_head.weight" not in tensors)  # uninitialised; filled without a copy
    n_params = sum(t.numel() for t in tensors.values())
    model.load_state_dict({k: place(k, t) for k, t in tensors.items()}, strict=True, assign=True)
    del tensors
    model.eval().requires_grad_(False)
    scheme.apply(model, copied=mapped.release)
    return LoadedModel(model, config, tuple(files), target, dev, n_params, scheme)


def save_model(model: GPT, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a Hugging Face style directory: config.json + model.safetensors (GPT-2 key names)."""
    from safetensors.torch import save_file

    if not all(isinstance(getattr(parent, name), Conv1D) for parent, name in model.linear_layers()):
        raise UsageError("save_model: this model's layers were converted for speed; load it with fast=False")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "n_head": str(c.n_head)})
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
              "n_positions": c.n_positions, "n_ctx": c.n_positions, "n_embd": c.n_embd, "n_layer": c.n_layer,
              "n_head": c.n_head, "layer_norm_epsilon": c.layer_norm_epsilon, "activation_function": "gelu_new",
              "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": model.tied,
              "torch_dtype": str(dtype or model.transformer.wte.weight.dtype).removeprefix("torch.")}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out

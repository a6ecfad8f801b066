"""GPT-2 safetensors -> GGUF for llama.cpp's ``gpt2`` architecture, with the ``gguf`` package.

Used by bench_vs_llamacpp.py to give llama.cpp the very weights chatgpt-cli loads. The layout
follows llama.cpp's own converter (convert_hf_to_gguf.py, GPT2Model): GPT-2's Conv1D weights are
stored (in, out) and GGUF wants (out, in) in numpy order (its ne[0] is the input dimension), so
they are transposed; 1-D tensors (norms, biases) stay float32 in an f16 file; a tied unembedding
is left out and llama.cpp reuses token_embd. The tokenizer metadata (byte-level BPE, "gpt2")
comes from the ranks bundled with chatgpt-cli: tokens in GPT-2's printable byte alphabet, the
merges recovered from the ranks, <|endoftext|> (50256) as a control token and as bos/eos.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from chatgpt_cli.checkpoint import find_files, read_safetensors, refuse_pickle
from chatgpt_cli.model import GPTConfig
from chatgpt_cli.tokenizer import EOT, Tokenizer
from chatgpt_cli.weights import check_tensors, config_from, normalize_keys

TOP_NAMES = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
             "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
             "lm_head.weight": "output.weight"}
BLOCK_NAMES = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
               "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # gguf.TokenType
FTYPE_F32, FTYPE_F16 = 0, 1  # gguf.LlamaFileType


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    """The tensors (this project's names) and config of a safetensors file or HF directory."""
    path = Path(path).expanduser()
    files, config_json = find_files(path)
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for file in files:
        refuse_pickle(file)
        part, meta, _ = read_safetensors(file)  # each tensor keeps its memory map alive
        tensors |= normalize_keys(part)
        metadata |= meta
    config = config_from(tensors, config_json, metadata, path)
    check_tensors(tensors, config, path)
    return tensors, config


def gguf_name(key: str) -> str:
    """transformer.h.3.attn.c_attn.weight -> blk.3.attn_qkv.weight, and so on."""
    if key in TOP_NAMES:
        return TOP_NAMES[key]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", key)
    if m is None or m.group(2) not in BLOCK_NAMES:
        raise ValueError(f"no GGUF name for {key}")
    return f"blk.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}.{m.group(3)}"


def gguf_tensors(tensors: dict[str, torch.Tensor], half: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, numpy array) for each tensor: matrices (out, in), in float16 if half."""
    for key, t in tensors.items():
        if key.endswith(CONV1D):
            t = t.t()  # Conv1D (in, out) -> (out, in)
        dtype = np.float16 if half and t.dim() == 2 else np.float32
        yield gguf_name(key), np.ascontiguousarray(t.float().numpy().astype(dtype))


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (the form vocab files use)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """token's bytes merged by the ranks below max_rank, lowest rank first (tiktoken's BPE)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        pairs = [(ranks.get(a + b, max_rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        rank, i = min(pairs)
        if rank >= max_rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


@lru_cache(maxsize=1)
def gpt2_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of GPT-2's tokenizer in GGUF's form."""
    tok = Tokenizer()
    pieces = [tok.token_bytes(i) for i in range(EOT)]
    chars = byte_alphabet()
    show = lambda b: "".join(chars[x] for x in b)
    tokens = [show(p) for p in pieces] + ["<|endoftext|>"]
    types = [TOKEN_NORMAL] * EOT + [TOKEN_CONTROL]
    ranks = {p: i for i, p in enumerate(pieces)}
    merges = []
    for rank, piece in enumerate(pieces):
        if len(piece) > 1:  # every longer token is the merge of exactly two earlier ones
            splits = [i for i in range(1, len(piece))  # where both halves are earlier tokens
                      if ranks.get(piece[:i], rank) < rank and ranks.get(piece[i:], rank) < rank]
            left, right = (piece[:splits[0]], piece[splits[0]:]) if len(splits) == 1 else bpe_split(ranks, piece, rank)
            merges.append(f"{show(left)} {show(right)}")
    return tokens, types, merges


def write_gguf(tensors: dict[str, torch.Tensor], config: GPTConfig, out: Path, half: bool) -> Path:
    """Write a GGUF file llama.cpp loads as GPT-2: f32, or f16 if half."""
    import gguf

    if config.vocab_size != EOT + 1:
        raise ValueError(f"vocab_size {config.vocab_size}: only GPT-2's tokenizer (50257 tokens) is written")
    w = gguf.GGUFWriter(str(out), "gpt2")
    w.add_name("gpt2")
    w.add_context_length(config.n_positions)
    w.add_embedding_length(config.n_embd)
    w.add_feed_forward_length(4 * config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_head_count(config.n_head)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    w.add_file_type(FTYPE_F16 if half else FTYPE_F32)
    tokens, types, merges = gpt2_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(EOT)
    w.add_eos_token_id(EOT)
    for name, array in gguf_tensors(tensors, half):
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out

"""Reading checkpoint files, strictly: finding them, refusing pickles, memory-mapping safetensors.

Nothing but safetensors is ever read. Tensors are views of the memory-mapped file (no copy), and
every offset, dtype and shape in the header is checked before a byte of data is touched.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import stat
import struct
import warnings
from pathlib import Path

import torch

from chatgpt_cli.errors import WeightsError

MAX_HEADER = 100 * 1024 * 1024  # a safetensors header is JSON; anything bigger is not a real file
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
OTHER_DTYPES = {"I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL", "F8_E4M3", "F8_E5M2"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack"}
CONVERT_HINT = ("only safetensors files are loaded (pickles are never opened); convert it on a trusted "
                "machine, e.g. with transformers: GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(OUT)")


def find_files(path: Path) -> tuple[list[Path], dict | None]:
    """The safetensors file(s) and the parsed config.json (or None) for a file or directory."""
    if kind(path) == "file":
        refuse_pickle(path)
        config_file = path.with_name("config.json")
        return [path], (read_json(config_file) if config_file.is_file() else None)
    config = read_json(path / "config.json") if (path / "config.json").is_file() else None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: no 'weight_map' of tensor names to shard files")
        names = sorted(set(map(str, weight_map.values())))
        for name in names:
            if not name or os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
                raise WeightsError(f"{index} names a shard outside the model directory: {name!r}")
        shards = [path / name for name in names]
        for shard in shards:
            if not shard.is_file():
                raise WeightsError(f"{index} names a shard that is missing: {shard.name} (or not a regular file)")
        return shards, config
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"], config
    found = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return found, config
    if found:
        raise WeightsError(f"{path}: several .safetensors files and no model.safetensors.index.json")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(f"{path} holds {pickles[0]}, not safetensors: {CONVERT_HINT}")
    raise WeightsError(f"no weights in {path}: expected model.safetensors or model.safetensors.index.json")


def kind(path: Path) -> str:
    """ "file" or "dir"; anything else (missing, a dangling link, a loop, a FIFO, a device) is an error."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WeightsError(f"model path {path} is a loop of symbolic links") from None
        if path.is_symlink():
            raise WeightsError(f"model path {path} is a broken symbolic link ({e.strerror}): "
                               "its target is missing (a half-deleted download?)") from None
        raise WeightsError(f"model not found: {path}" if isinstance(e, FileNotFoundError)
                           else f"cannot open {path}: {e.strerror}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    raise WeightsError(f"model path {path} is not a regular file or a directory (a pipe, device or socket "
                       "cannot be memory-mapped); save the weights to a file first")


def refuse_pickle(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix in PICKLE_SUFFIXES or head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") \
            or head[:4] == b"PK\x03\x04":
        raise WeightsError(f"{path} is not a safetensors file: {CONVERT_HINT}")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], mmap.mmap | None]:
    """Memory-map one safetensors file: (tensors by name, metadata, the map). Every offset is checked."""
    if kind(path) != "file":
        raise WeightsError(f"{path} is a directory, not a safetensors file")
    try:
        f = path.open("rb")
    except OSError as e:
        raise WeightsError(f"cannot open {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise WeightsError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_HEADER, size - 8):
            raise WeightsError(f"{path} is not a safetensors file, or is truncated "
                               f"(header length {n} for a file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path} is not a safetensors file (its header is not JSON)") from None
        if not isinstance(header, dict):
            raise WeightsError(f"{path}: malformed safetensors header")
        metadata = header.pop("__metadata__", None) or {}
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else None
    tensors = {}
    data_size = size - 8 - n
    for name, info in header.items():
        tensors[name] = tensor_from(path, name, info, mm, 8 + n, data_size)
    return tensors, ({str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}), mm


def tensor_from(path: Path, name: str, info: object, mm: mmap.mmap | None, base: int, data_size: int) -> torch.Tensor:
    try:
        dtype_name, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(dtype_name, str) and isinstance(shape, list) and is_int(start) and is_int(end)
                and all(is_int(d) and 0 <= d < 2**62 for d in shape)):
            raise TypeError
    except (TypeError, KeyError, ValueError):
        raise WeightsError(f"{path}: malformed header entry for tensor {name!r}") from None
    if dtype_name not in FLOAT_DTYPES:
        kind = "non-float" if dtype_name in OTHER_DTYPES else "unknown"
        raise WeightsError(f"{path}: tensor {name!r} has {kind} dtype {dtype_name}; GPT-2 weights are floats")
    dtype = FLOAT_DTYPES[dtype_name]
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if not 0 <= start <= end <= data_size or end - start != nbytes:
        raise WeightsError(f"{path} is truncated or corrupt: tensor {name!r} needs bytes {start}..{end} "
                           f"({nbytes} expected) of {data_size}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.frombuffer(mm, dtype=dtype, count=numel, offset=base + start).view(shape)


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Mapped:
    """The memory maps behind loaded tensors. Once a tensor has been copied (converted, packed or
    quantized), ``release`` lets its pages go; anything still reading it (an embedding kept as
    stored) brings back from the file just the pages it touches."""

    def __init__(self, maps: list[mmap.mmap]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.spans = [(torch.frombuffer(mm, dtype=torch.uint8, count=1).data_ptr(), mm) for mm in maps]

    def release(self, t: torch.Tensor) -> None:
        ptr, n = t.data_ptr(), t.numel() * t.element_size()
        for base, mm in self.spans:
            if base <= ptr and ptr + n <= base + len(mm) and hasattr(mmap, "MADV_DONTNEED"):
                start = -(-(ptr - base) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor
                end = (ptr - base + n) // mmap.PAGESIZE * mmap.PAGESIZE
                if end > start:
                    mm.madvise(mmap.MADV_DONTNEED, start, end - start)

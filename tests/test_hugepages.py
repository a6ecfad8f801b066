"""The weights a decode step streams lie in huge pages where Linux gives them (hugepages.py)."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest
import torch

from chatgpt_cli import hugepages
from chatgpt_cli.bench import random_model

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
huge_pages_on = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not THP.exists() or "[never]" in THP.read_text(),
    reason="needs Linux with transparent huge pages not off")


def mapping_of(t: torch.Tensor) -> dict[str, str] | None:
    """/proc/self/smaps' entry for the mapping that holds t's first byte (None: no such mapping)."""
    address, entry = t.data_ptr(), None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
            start, end = (int(x, 16) for x in head.split("-"))
            entry = {"range": head} if start <= address < end else None
        elif entry is not None and ":" in head:
            entry[head.rstrip(":")] = line.split(":", 1)[1].strip()
            if head == "VmFlags:":
                return entry
    return entry


@huge_pages_on
def test_a_converted_models_weights_are_in_mappings_that_take_huge_pages() -> None:
    for dtype in ("float32", "bfloat16", "int8", "int4"):
        model = random_model("gpt2", dtype)
        layers = [model.lm_head, *(m for b in model.transformer.h for m in (b.attn.c_attn, b.mlp.c_proj))]
        for layer in layers:
            stored = torch.from_numpy(layer.arrays[0])  # what the decode kernels stream
            entry = mapping_of(stored)
            assert entry is not None and "hg" in entry["VmFlags"].split(), (dtype, entry)  # MADV_HUGEPAGE
            if "THPeligible" in entry:
                assert entry["THPeligible"] == "1", (dtype, entry)
        # the small ones too: carved from the same mappings as the big ones
        assert mapping_of(torch.from_numpy(model.transformer.h[0].attn.c_proj.arrays[0]))["range"] \
            == mapping_of(torch.from_numpy(model.transformer.h[0].attn.c_attn.arrays[0]))["range"]


@huge_pages_on
@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])  # the int8 codes' cache has scales, bfloat16's not
def test_one_rows_kv_cache_is_in_mappings_that_take_huge_pages(dtype) -> None:
    """Every layer's keys, values (and int8 scales) of the CPU kernels' one-row cache are carved
    from one shared mapping that asked for huge pages; -N's widened rows (N times the memory) are
    in ordinary pages."""
    from chatgpt_cli.generate import Engine
    from chatgpt_cli.kvcache import FusedKVCache
    from chatgpt_cli.sampling import SamplingOptions

    model = random_model("gpt2", dtype)
    engine = Engine(model)
    seen = []

    def check() -> None:
        caches = [block.attn.kv_cache for block in model.transformer.h]
        assert all(isinstance(c, FusedKVCache) for c in caches)
        buffers = [b for c in caches for b in (c.k_cache, c.v_cache, c.k_scale, c.v_scale) if b.numel()]
        rows = caches[0].k_cache.shape[0]
        for b in buffers:
            entry = mapping_of(b)
            assert entry is not None and ("hg" in entry["VmFlags"].split()) == (rows == 1), (rows, entry)
        if rows == 1:
            assert len({mapping_of(b)["range"] for b in buffers}) == 1  # carved one after another
        seen.append(rows)

    check()
    for _ in engine.generate_batch([464, 318], 2, SamplingOptions(temperature=0), 3, on_step=lambda *a: check()):
        pass
    assert seen[0] == 1 and 3 in seen  # one row, then -N's three
    greedy = SamplingOptions(temperature=0)
    one = [row[0] for row in engine.generate_batch([464, 318], 3, greedy, 1)]
    assert list(engine.generate([464, 318], 3, greedy)) == one


@huge_pages_on
def test_huge_page_tensors_hold_their_values_and_are_unmapped_when_freed() -> None:
    with hugepages.shared():
        a, b = hugepages.empty((1000, 768), torch.int8), hugepages.empty((7,), torch.float32)
    big = hugepages.resident(torch.arange(3 << 20, dtype=torch.float32).view(3, -1), torch.bfloat16)
    assert big.dtype == torch.bfloat16 and big.shape == (3, 1 << 20) and big.is_contiguous()
    assert torch.equal(big, torch.arange(3 << 20, dtype=torch.float32).view(3, -1).to(torch.bfloat16))
    assert a.data_ptr() % hugepages.HUGE == 0 and big.data_ptr() % hugepages.HUGE == 0
    a.fill_(-3)
    b.copy_(torch.arange(7.0))
    assert int(a.sum()) == -3 * 768000 and b.tolist() == list(range(7))
    view = a[10:]
    del a, b
    gc.collect()
    assert mapping_of(view) is not None and int(view.sum()) == -3 * 990 * 768  # a view keeps the memory
    held = view.data_ptr()
    del view
    gc.collect()
    assert all(not (int(line.split("-")[0], 16) <= held < int(line.split()[0].split("-")[1], 16))
               for line in Path("/proc/self/maps").read_text().splitlines())  # unmapped
    del big


def test_without_huge_pages_tensors_are_ordinary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hugepages, "_mapping", lambda nbytes: None)  # another OS, a refused mmap
    with hugepages.shared():
        t = hugepages.empty((2048, 2048), torch.float32)
    assert t.shape == (2048, 2048) and t.dtype == torch.float32
    small = hugepages.empty((3,), torch.bfloat16)
    assert small.shape == (3,) and small.dtype == torch.bfloat16
    model = random_model("gpt2", "int8")
    assert model.lm_head.arrays[0].shape == (50257, 768)


@huge_pages_on
def test_bench_says_how_much_of_the_weights_is_in_huge_pages() -> None:
    from typer.testing import CliRunner

    from chatgpt_cli.cli import app

    r = CliRunner().invoke(app, ["bench", "--random", "gpt2", "--dtype", "int8", "--runs", "1", "--tokens", "2",
                                 "--prefill", "8", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["huge_pages"] >= 0.9  # the whole model is one shared mapping's pages
    table = CliRunner().invoke(app, ["info"])  # the bundled model, as loaded
    assert table.exit_code == 0, table.output
    rows = dict((line[:30].strip(), line[30:].strip()) for line in table.stdout.splitlines())  # key, value
    assert rows["weights in 2 MB pages"] == "100%"


def test_the_share_in_huge_pages_and_why_it_is_low(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatgpt_cli.cli_plumbing import pages

    if hugepages.setting() != "always":  # then ordinary memory is in huge pages too
        plain = torch.ones(4 << 20)  # 16 MB of ordinary memory
        assert hugepages.share([(plain.data_ptr(), plain.numel() * 4)]) in (None, 0.0)
    assert hugepages.share([]) is None
    assert pages(1.0) == "100%"
    monkeypatch.setattr(hugepages, "setting", lambda: "never")
    assert pages(0.0) == "0% (transparent huge pages are off: decode is slower, see README)"
    monkeypatch.setattr(hugepages, "setting", lambda: "madvise")
    assert pages(0.2) == "20% (Linux gave too few: decode is slower, see README)"


@huge_pages_on
def test_a_thread_still_reading_the_weights_at_exit_does_not_crash_the_process() -> None:
    """At exit the mappings stay (the OS takes them back): a daemon thread still in a product (a
    server's decode, a Ctrl-C'd stream) would otherwise read unmapped memory and die by SIGSEGV."""
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import threading, time, torch
        from chatgpt_cli import hugepages
        with hugepages.shared():
            w = hugepages.empty((8 << 20,), torch.float32)
        w.fill_(1.0)
        a = w.numpy()
        started = threading.Event()
        def read():
            while True:
                started.set()
                a.sum()  # numpy lets go of the GIL inside
        threading.Thread(target=read, daemon=True).start()
        started.wait()
        time.sleep(0.05)
    """)
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (done.returncode, done.stderr[-500:])

"""Δ extraction over a few hundred adapters keeps the process's memory flat.

RSS is sampled after every Δ the extractor stores (through a :class:`DeltaCache` subclass), with
glibc's ``malloc_trim(0)`` first: without it freed heap chunks stay resident and RSS swings by
±15 MB between samples on this job (measured), which would hide a leak of the size that matters
here. The bound comes from what a leak would cost: every adapter holds ``X`` bytes of LoRA
tensors (computed from the layout below: 128 KiB for rank 16 on all 7 projections of
tiny-qwen2), so keeping each adapter's weights (or anything of that size per adapter, such as
its activations) grows RSS by ``n·X`` over ``n`` adapters. The test allows an eighth of that.
What legitimately grows is the job's own bookkeeping — one result per adapter (a dataclass, a
dict entry, a few short strings: about 2 KiB), i.e. ~0.5 MB over 260 adapters.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import sys

import pytest
import torch

from deltalora.config import LoraSpec
from deltalora.deltas import DeltaCache, ProbeSet, compute_deltas, sources_from_adapters
from deltalora.lora import LoraWeights, derive_layout, save_adapter

N_ADAPTERS = 300
WARMUP = 40  # the first 5 forwards (K = 8): lazy imports, allocator pools, v(B)
WINDOW = 40  # samples whose median is compared (robust to the working set of one K-group)
K = 8

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/statm and calls glibc malloc_trim"
)


def _malloc_trim():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc: no malloc_trim, RSS would keep freed memory")
    return libc.malloc_trim


def test_rss_stays_flat_over_hundreds_of_adapters(tiny_qwen2, tmp_path):
    trim = _malloc_trim()
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        trim(0)
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    layout = derive_layout(tiny_qwen2.arch, LoraSpec(rank=16, alpha=32, targets="q,k,v,o,gate,up,down"))
    adapter_bytes = sum(s.num_params for s in layout.slots) * 4  # fp32 A and B of one adapter
    assert adapter_bytes == 128 * 1024
    dirs = []
    for start in range(0, N_ADAPTERS, 50):
        ws = LoraWeights.random(layout, num_adapters=50, std=0.05, seed=start)
        dirs += [save_adapter(ws.select(i), tmp_path / f"a{start + i:04d}") for i in range(50)]
    del ws

    samples: list[int] = []

    class SamplingCache(DeltaCache):
        def put(self, *args, **kwargs):
            path = super().put(*args, **kwargs)
            if kwargs.get("name", "delta") == "delta":
                samples.append(rss())
            return path

    # short probes: the forward is not what is measured, the per-adapter path (hash, load, stack, inject, store) is
    probes = ProbeSet("short", ("Hello there.", "### Response:"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny GEMMs: a second thread only adds spin-waits on a shared 2-core machine (~3x slower)
    try:
        report = compute_deltas(
            tiny_qwen2,
            sources_from_adapters(dirs),
            probes=probes,
            cache=SamplingCache(tmp_path / "c"),
            batch_adapters=K,
        )
    finally:
        torch.set_num_threads(threads)
    assert report.counts() == {"computed": N_ADAPTERS, "cached": 0, "broken": 0}
    assert len(samples) == N_ADAPTERS

    measured = N_ADAPTERS - WARMUP
    start_mb = statistics.median(samples[WARMUP : WARMUP + WINDOW]) / 2**20
    end_mb = statistics.median(samples[-WINDOW:]) / 2**20
    leak_mb = measured * adapter_bytes / 2**20  # 32.5 MB if every adapter's weights were kept
    bound_mb = leak_mb / 8
    growth = end_mb - start_mb
    print(
        f"RSS {start_mb:.1f} -> {end_mb:.1f} MB over {measured} adapters: "
        f"growth {growth:+.2f} MB (bound {bound_mb:.2f} MB)"
    )
    assert growth < bound_mb, (
        f"RSS grew {growth:.1f} MB over {measured} adapters of {adapter_bytes // 1024} KiB each "
        f"(bound {bound_mb:.1f} MB = 1/8 of keeping every adapter's weights): something per adapter is retained"
    )

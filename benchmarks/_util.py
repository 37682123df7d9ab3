"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from deltalora.backbones.precision import cpu_info


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine() -> dict:
    cpu = cpu_info()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu["model"],
        "cpu_capability": cpu["capability"],
        "amx_bf16": cpu["amx_bf16"],
        "avx512_bf16": cpu["avx512_bf16"],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def measured_gemm_peak(
    dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5, device: str = "cpu"
) -> float:
    """FLOP/s of an n x n @ n x n matmul in ``dtype`` on this machine (at torch's thread count): the best of
    ``repeats`` timed runs after one warm-up. A measured roofline for throughput benchmarks, in place of a
    hard-coded peak that is right for one CPU only."""
    if repeats < 1 or n < 1:
        raise ValueError(f"measured_gemm_peak: need n >= 1 and repeats >= 1, got n={n}, repeats={repeats}")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    best = float("inf")
    with torch.no_grad():
        a @ b  # warm-up: kernel selection, page faults
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# Teacher settings that say how a teacher was computed (its precision, where its LoRA A started), not what it was
# trained on or for how long: two screens that differ only in these screen a task the same way.
HOW_NOT_WHAT = ("precision", "bf16_autocast", "init", "init_seed", "shared_init")


def screen_recipe(summary: dict) -> dict:
    """What a screen (``benchmarks/zoo.py --split condition``) measured, from its results JSON's ``summary``:
    backbone, teacher recipe (less :data:`HOW_NOT_WHAT`), seeds, train subset, items and split. Two screens with
    equal recipes score a task comparably, so their rows may be combined."""
    teacher = {k: v for k, v in summary["teacher"].items() if k not in HOW_NOT_WHAT}
    return {
        "backbone": summary["backbone"],
        "teacher": teacher,
        **{k: summary.get(k) for k in ("seeds", "subset", "limit", "split")},
    }


def recipe_difference(a: dict, b: dict) -> list[str]:
    """The keys (teacher.* spelled out) on which two :func:`screen_recipe` results differ."""
    keys = sorted((set(a) | set(b)) - {"teacher"})
    out = [k for k in keys if a.get(k) != b.get(k)]
    ta, tb = a.get("teacher", {}), b.get("teacher", {})
    return out + [f"teacher.{k}" for k in sorted(set(ta) | set(tb)) if ta.get(k) != tb.get(k)]


def command_line() -> str:
    return "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")

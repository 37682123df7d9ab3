"""Device facts, and the training precision they call for (``precision: auto``).

bf16 is a win only where the hardware does bf16 matmuls natively: CUDA GPUs that support it, and CPUs with
AMX or AVX512-BF16. Elsewhere (an AVX2-only CPU) torch emulates bf16 and a matmul is 60-370x *slower* than
float32, so a bf16 default that suits one machine never finishes on another. ``auto`` decides per machine:

- CUDA: bfloat16 iff ``torch.cuda.is_bf16_supported()``;
- CPU: bfloat16 iff /proc/cpuinfo lists ``amx_bf16`` or ``avx512_bf16``; otherwise a short matmul probe
  decides (bfloat16 iff it is at least :data:`BF16_MIN_SPEEDUP` x as fast as float32). The probe's result is
  cached under ``$DELTALORA_HOME/precision/``, keyed by CPU model and torch version, so it runs once per machine;
- anything else (mps, ...): float32.

Each decision is made once per process and logged once (logger ``deltalora.precision``). An explicit
``float32``/``fp32``/``bfloat16``/``bf16`` always wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..paths import atomic_write_bytes, home

log = logging.getLogger("deltalora.precision")

# setting -> canonical name; "auto" is decided per device
PRECISION_SETTINGS: dict[str, str] = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_MIN_SPEEDUP = 1.5  # the probe must show bf16 at least this much faster than fp32 to pick it
PROBE_N = 512  # probe matmul size: n x n @ n x n
PROBE_REPEATS = 5
PROBE_BUDGET_S = 1.0  # stop timing an (emulated, slow) dtype once its repeats have taken this long
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def canonical_precision(setting: str) -> str:
    """``"fp32"`` -> ``"float32"``, ``"bf16"`` -> ``"bfloat16"``, ``"auto"`` stays; anything else is a ValueError."""
    try:
        return PRECISION_SETTINGS[str(setting).strip().lower()]
    except KeyError:
        raise ValueError(f"precision {setting!r} is not one of {', '.join(PRECISION_SETTINGS)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------- CPU facts


def _proc_cpuinfo() -> str:
    """The text of /proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_info() -> dict:
    """CPU model, torch's capability string, the bf16 flags, torch version and thread count."""
    model, flags = None, None
    for line in _proc_cpuinfo().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:  # x86 / arm spelling
            flags = set(value.split())
    flags = flags or set()
    get_capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "capability": get_capability() if get_capability else "unknown",
        **{f: f in flags for f in BF16_FLAGS},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def describe_machine(info: dict | None = None) -> str:
    """One line for reports, e.g. ``Intel(R) Xeon(R) Processor (AVX512, amx_bf16), torch 2.13.0+cpu, 2 threads``."""
    info = info or cpu_info()
    traits = ", ".join([info["capability"]] + [f for f in BF16_FLAGS if info.get(f)])
    threads = f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}"
    line = f"{info['model']} ({traits}), torch {info['torch']}, {threads}"
    if torch.cuda.is_available():
        line += f", CUDA {torch.cuda.get_device_name(0)}"
    return line


# ---------------------------------------------------------------------------------------- the CPU probe


def _time_matmul(dtype: torch.dtype, n: int, repeats: int, budget_s: float) -> float:
    """Median seconds of an n x n matmul in ``dtype`` after one warm-up; fewer repeats once over budget."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    with torch.no_grad():
        a @ b  # warm-up: kernel selection / JIT
        times: list[float] = []
        while len(times) < repeats and sum(times) < budget_s:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _matmul_probe(n: int = PROBE_N, repeats: int = PROBE_REPEATS, budget_s: float = PROBE_BUDGET_S) -> dict:
    """Median seconds of an n x n matmul in float32 and in bfloat16 on this CPU (at torch's thread count)."""
    return {
        "float32_seconds": _time_matmul(torch.float32, n, repeats, budget_s),
        "bfloat16_seconds": _time_matmul(torch.bfloat16, n, repeats, budget_s),
        "n": n,
        "threads": torch.get_num_threads(),
    }


def probe_cache_path(info: dict) -> Path:
    """Where the probe result for this CPU model and torch version is cached."""
    key = hashlib.sha256(f"{info['model']}\n{info['torch']}".encode()).hexdigest()[:16]
    return home() / "precision" / f"{key}.json"


def _read_probe(path: Path, info: dict) -> dict | None:
    """A cached probe for exactly this CPU model and torch version, or None (absent, corrupt, or someone else's)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        speedup = float(saved["bf16_speedup"])
        int(saved["n"])
        if (
            saved["cpu_model"] != info["model"]
            or saved["torch"] != info["torch"]
            or not (math.isfinite(speedup) and speedup > 0)
        ):
            return None
        return saved
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cpu_probe(info: dict | None = None) -> tuple[dict, Path, bool]:
    """(the probe result, its cache file, whether it came from the cache); measures and caches when needed."""
    info = info or cpu_info()
    path = probe_cache_path(info)
    saved = _read_probe(path, info)
    if saved is not None:
        return saved, path, True
    m = _matmul_probe()
    result = {
        "cpu_model": info["model"],
        "torch": info["torch"],
        "capability": info["capability"],
        **m,
        "bf16_speedup": m["float32_seconds"] / max(m["bfloat16_seconds"], 1e-12),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        atomic_write_bytes(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:  # a read-only cache only costs a re-probe next process
        log.warning("could not cache the precision probe at %s (%s)", path, exc)
    return result, path, False


# ---------------------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class PrecisionDecision:
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)


_DECIDED: dict[tuple[str, str], PrecisionDecision] = {}  # (canonical setting, device) -> decision, once per process


def reset_precision_memo() -> None:
    """Forget this process's decisions (tests; a changed machine cannot happen within one process)."""
    _DECIDED.clear()


def _decide_auto(device: torch.device) -> PrecisionDecision:
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return PrecisionDecision(torch.bfloat16, "CUDA device supports bf16")
        return PrecisionDecision(torch.float32, "CUDA device without bf16 support")
    if device.type != "cpu":
        return PrecisionDecision(torch.float32, f"{device.type} device: float32 is the safe choice")
    info = cpu_info()
    flags = [f for f in BF16_FLAGS if info[f]]
    if flags:
        return PrecisionDecision(torch.bfloat16, f"CPU has native bf16 ({', '.join(flags)} flags)")
    probe, path, cached = cpu_probe(info)
    speedup = float(probe["bf16_speedup"])
    dtype = torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32
    return PrecisionDecision(
        dtype,
        f"no bf16 CPU flags; measured bf16 {speedup:.2f}x fp32 speed on a {probe['n']}² matmul "
        f"({'cached in ' if cached else 'saved to '}{path}; bf16 needs ≥ {BF16_MIN_SPEEDUP:g}x)",
    )


def decide_precision(setting: str, device: torch.device | str) -> PrecisionDecision:
    """The dtype ``setting`` means on ``device``, with the reason; decided and logged once per process."""
    canon = canonical_precision(setting)
    device = torch.device(device)
    key = (canon, str(device))
    if key not in _DECIDED:
        if canon == "auto":
            decision = _decide_auto(device)
        else:
            decision = PrecisionDecision(_DTYPES[canon], f"set explicitly ({setting})")
        _DECIDED[key] = decision
        log.info("precision %s on %s: %s (%s)", setting, device, decision.name, decision.reason)
    return _DECIDED[key]


def resolve_precision(setting: str, device: torch.device | str) -> torch.dtype:
    """``auto`` | ``float32`` | ``fp32`` | ``bfloat16`` | ``bf16`` on ``device`` -> torch.float32 or torch.bfloat16."""
    return decide_precision(setting, device).dtype


@contextlib.contextmanager
def narrowed_linears(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """For the block, every linear layer of the frozen ``model`` holds its weight and bias in ``dtype``.

    Under autocast to ``dtype`` these are exactly the tensors autocast would make on every call (frozen weights are
    not in its cast cache): cast once per job instead of in every forward, with bit-identical results (tested in
    tests/test_zoo_train.py). The original tensors are put back afterwards, also on error. ``dtype=None`` changes
    nothing."""
    if dtype is None:
        yield
        return
    saved = []
    try:
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                for p in (m.weight, m.bias):
                    if p is not None and p.dtype.is_floating_point and p.dtype.itemsize > dtype.itemsize:
                        saved.append((p, p.data))
                        p.data = p.data.to(dtype)
        yield
    finally:
        for p, data in saved:
            p.data = data


__all__ = [
    "BF16_MIN_SPEEDUP",
    "PRECISION_SETTINGS",
    "PrecisionDecision",
    "canonical_precision",
    "cpu_info",
    "cpu_probe",
    "decide_precision",
    "describe_machine",
    "dtype_name",
    "narrowed_linears",
    "probe_cache_path",
    "reset_precision_memo",
    "resolve_precision",
]

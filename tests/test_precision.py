"""precision: auto — bf16 where the device does bf16 natively or measurably faster, else fp32 (mocked machines)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import deltalora.backbones.precision as prec
from deltalora.backbones.precision import (
    cpu_info,
    decide_precision,
    describe_machine,
    probe_cache_path,
    reset_precision_memo,
    resolve_precision,
)

CPU = torch.device("cpu")
AMX_FLAGS = "fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
AVX2_FLAGS = "fpu vme sse sse2 avx avx2 fma"


def cpuinfo_text(model: str, flags: str) -> str:
    block = f"processor\t: {{i}}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    return "".join(block.format(i=i) for i in range(2))


class FakeProbe:
    """Stands in for the matmul probe: bf16 takes ``fp32_s / speedup`` seconds; counts its calls."""

    def __init__(self, speedup: float, fp32_s: float = 0.01):
        self.speedup, self.fp32_s, self.calls = speedup, fp32_s, 0

    def __call__(self, n: int = prec.PROBE_N, repeats: int = prec.PROBE_REPEATS, budget_s: float = prec.PROBE_BUDGET_S):
        self.calls += 1
        return {"float32_seconds": self.fp32_s, "bfloat16_seconds": self.fp32_s / self.speedup, "n": n, "threads": 2}


@pytest.fixture
def machine(monkeypatch, deltalora_home):
    """A fresh process memo and cache root; ``set_cpu(model, flags)`` and ``set_probe(speedup)`` fake the CPU."""
    monkeypatch.setattr(prec, "_DECIDED", {})

    class M:
        home = deltalora_home

        @staticmethod
        def set_cpu(model: str, flags: str) -> None:
            monkeypatch.setattr(prec, "_proc_cpuinfo", lambda: cpuinfo_text(model, flags))

        @staticmethod
        def set_probe(speedup: float) -> FakeProbe:
            probe = FakeProbe(speedup)
            monkeypatch.setattr(prec, "_matmul_probe", probe)
            return probe

    M.set_cpu("Intel(R) Xeon(R) Processor", AMX_FLAGS)
    M.set_probe(1.0)
    return M


def test_cpu_info_reads_model_flags_and_capability(machine):
    info = cpu_info()
    assert info["model"] == "Intel(R) Xeon(R) Processor"
    assert info["amx_bf16"] is True and info["avx512_bf16"] is True
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    line = describe_machine()
    assert line.startswith(
        f"Intel(R) Xeon(R) Processor ({info['capability']}, amx_bf16, avx512_bf16), torch {torch.__version__}"
    )
    machine.set_cpu("AMD EPYC 7B12", AVX2_FLAGS)
    info = cpu_info()
    assert info["model"] == "AMD EPYC 7B12" and not info["amx_bf16"] and not info["avx512_bf16"]
    assert "bf16" not in describe_machine()


def test_cpu_info_without_proc_cpuinfo_falls_back(monkeypatch, machine):
    monkeypatch.setattr(prec, "_proc_cpuinfo", lambda: "")
    monkeypatch.setattr(prec.platform, "processor", lambda: "arm")
    info = cpu_info()
    assert info["model"] == "arm" and info["amx_bf16"] is False and info["avx512_bf16"] is False


@pytest.mark.parametrize("flags", [AMX_FLAGS, "avx2 avx512f avx512_bf16", "avx2 amx_bf16"])
def test_cpu_with_bf16_flags_is_bf16_without_probing(machine, flags):
    machine.set_cpu("Some Xeon", flags)
    probe = machine.set_probe(0.01)  # would say fp32 if it were asked
    d = decide_precision("auto", CPU)
    assert d.dtype == torch.bfloat16 and "flags" in d.reason
    assert probe.calls == 0
    assert not (machine.home / "precision").exists()


def test_avx2_cpu_where_bf16_is_slower_is_fp32(machine):
    machine.set_cpu("Intel(R) Core(TM) i7-8700", AVX2_FLAGS)
    probe = machine.set_probe(1 / 60)  # emulated bf16: 60x slower
    d = decide_precision("auto", CPU)
    assert d.dtype == torch.float32 and probe.calls == 1
    assert "measured bf16 0.02x fp32" in d.reason
    assert resolve_precision("auto", "cpu") == torch.float32


def test_avx2_cpu_where_bf16_measures_faster_is_bf16(machine):
    machine.set_cpu("Future CPU", AVX2_FLAGS)
    machine.set_probe(2.0)
    assert resolve_precision("auto", CPU) == torch.bfloat16


def test_probe_threshold(machine):
    machine.set_cpu("Borderline CPU", AVX2_FLAGS)
    machine.set_probe(prec.BF16_MIN_SPEEDUP * 0.9)
    assert resolve_precision("auto", CPU) == torch.float32


@pytest.mark.parametrize("bf16,want", [(True, torch.bfloat16), (False, torch.float32)])
def test_cuda_follows_is_bf16_supported(machine, monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    probe = machine.set_probe(100.0)
    assert resolve_precision("auto", torch.device("cuda", 0)) == want
    assert probe.calls == 0  # the CPU probe is never asked about a GPU


def test_other_devices_are_fp32(machine):
    assert resolve_precision("auto", torch.device("mps")) == torch.float32


def test_explicit_setting_wins(machine, monkeypatch):
    # an AMX CPU (auto = bf16) asked for fp32, a slow-bf16 CPU asked for bf16, a GPU without bf16 asked for bf16
    assert resolve_precision("float32", CPU) == torch.float32 and resolve_precision("fp32", CPU) == torch.float32
    machine.set_cpu("Old CPU", AVX2_FLAGS)
    probe = machine.set_probe(0.01)
    assert resolve_precision("bfloat16", CPU) == torch.bfloat16 and resolve_precision("bf16", CPU) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("BF16", "cuda") == torch.bfloat16
    assert probe.calls == 0
    with pytest.raises(ValueError, match="not one of"):
        resolve_precision("fp64", CPU)


def test_decided_and_logged_once_per_process(machine, caplog):
    machine.set_cpu("Old CPU", AVX2_FLAGS)
    probe = machine.set_probe(0.5)
    with caplog.at_level(logging.INFO, logger="deltalora.precision"):
        first = [decide_precision("auto", CPU) for _ in range(3)]
    assert probe.calls == 1 and len({d.dtype for d in first}) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "deltalora.precision"]
    assert len(lines) == 1 and "float32" in lines[0] and "measured bf16 0.50x fp32" in lines[0]


def test_probe_result_is_cached_and_reused_across_processes(machine):
    machine.set_cpu("Old CPU", AVX2_FLAGS)
    probe = machine.set_probe(0.25)
    assert resolve_precision("auto", CPU) == torch.float32
    path = probe_cache_path(cpu_info())
    assert path.parent == machine.home / "precision" and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["cpu_model"] == "Old CPU" and saved["torch"] == torch.__version__
    assert saved["bf16_speedup"] == pytest.approx(0.25)
    reset_precision_memo()  # a new process: the cache answers, the probe does not run again
    d = decide_precision("auto", CPU)
    assert d.dtype == torch.float32 and "cached in" in d.reason and probe.calls == 1


def test_probe_cache_is_keyed_by_cpu_model_and_torch_version(machine, monkeypatch):
    machine.set_cpu("Old CPU", AVX2_FLAGS)
    probe = machine.set_probe(0.25)
    resolve_precision("auto", CPU)
    first = probe_cache_path(cpu_info())
    # another CPU model: its own file and its own measurement (it measures bf16 faster)
    reset_precision_memo()
    machine.set_cpu("Other CPU", AVX2_FLAGS)
    probe2 = machine.set_probe(3.0)
    assert resolve_precision("auto", CPU) == torch.bfloat16 and probe2.calls == 1
    other = probe_cache_path(cpu_info())
    assert other != first and other.is_file()
    # another torch version on the first CPU: measured again, not read from the first file
    reset_precision_memo()
    machine.set_cpu("Old CPU", AVX2_FLAGS)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    probe3 = machine.set_probe(0.5)
    assert resolve_precision("auto", CPU) == torch.float32 and probe3.calls == 1
    assert probe_cache_path(cpu_info()) not in (first, other)
    assert probe.calls == 1
    assert sorted(p.name for p in (machine.home / "precision").iterdir()) == sorted(
        {first.name, other.name, probe_cache_path(cpu_info()).name}
    )


@pytest.mark.parametrize(
    "junk",
    [
        b"{not json",
        b"[]",
        b'{"bf16_speedup": "fast"}',
        b"\xff\xfe",
        b"",
        b'{"cpu_model": "Someone else", "torch": "0", "bf16_speedup": 9, "n": 512}',
    ],
)
def test_corrupt_cache_is_ignored_and_rewritten(machine, junk):
    machine.set_cpu("Old CPU", AVX2_FLAGS)
    path = probe_cache_path(cpu_info())
    path.parent.mkdir(parents=True)
    path.write_bytes(junk)
    probe = machine.set_probe(0.25)
    assert resolve_precision("auto", CPU) == torch.float32 and probe.calls == 1
    assert json.loads(path.read_text())["bf16_speedup"] == pytest.approx(0.25)


def test_real_probe_measures_both_dtypes():
    m = prec._matmul_probe(n=32, repeats=2)
    assert m["float32_seconds"] > 0 and m["bfloat16_seconds"] > 0 and m["n"] == 32


def _bench_util():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_util.py"
    spec = importlib.util.spec_from_file_location("bench_util", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmarks_name_the_cpu_and_measure_their_peak(machine):
    util = _bench_util()
    m = util.machine()
    assert (m["cpu"], m["cpu_capability"], m["amx_bf16"], m["avx512_bf16"]) == (
        "Intel(R) Xeon(R) Processor",
        torch.backends.cpu.get_cpu_capability(),
        True,
        True,
    )
    peak = util.measured_gemm_peak(torch.float32, n=64, repeats=2)
    assert 1e6 < peak < 1e15  # FLOP/s, not seconds
    with pytest.raises(ValueError, match="repeats"):
        util.measured_gemm_peak(repeats=0)

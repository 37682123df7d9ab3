"""Prompts in, PEFT adapter out: run a trained generator on a task's prompts.

    report = generate_adapter("runs/x/generator.safetensors", "my_task.jsonl", "adapters/my_task", seed=0)

Steps: read and validate the prompt file (JSONL ``{"prompt"[, "response"|"answer"]}`` or DnD JSON
``[{prompt, response, system}]``) — a bad file raises before anything is loaded or written; load the
generator checkpoint (validated); sample ``n_prompts`` condition texts (seeded) in the checkpoint's
condition form; encode them with the checkpoint's encoder; run the generator; write a PEFT directory
(atomically) that stock ``PeftModel.from_pretrained`` loads. The adapter's safetensors header records the
generator file's sha256, the hash of the condition texts, the encoder, ``n_prompts`` and the seed.

Everything that touches the conditions package goes through :func:`condition_items`,
:func:`condition_texts`, :func:`sample_condition`, :func:`load_condition_encoder` and :func:`encode_condition`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..conditions import ConditionPool, load_encoder, read_prompt_file, sample_indices
from ..config import RuntimeConfig
from ..errors import ConfigError
from ..lora.adapter_io import check_adapter_out, save_adapter
from .checkpoint import LoadedGenerator, load_generator

# ------------------------------------------------------------------------- conditions (one place)


def condition_items(path: str | Path) -> list:
    """Validated items of a prompt file (raises a one-line :class:`~deltalora.tasks.TaskError`)."""
    return read_prompt_file(path)


def condition_texts(items: Sequence, form: str, source: str) -> list[str]:
    """The texts the encoder sees for ``items`` in condition ``form`` (``prompts`` / ``prompt_answer``)."""
    return ConditionPool(Path(source).stem, tuple(items), source).texts(form)


def sample_condition(texts: Sequence[str], n_prompts: int, seed: int) -> list[str]:
    """``n_prompts`` of ``texts``, a pure function of the arguments (distinct when there are enough)."""
    return [texts[i] for i in sample_indices(len(texts), n_prompts, seed)]


@functools.lru_cache(maxsize=4)
def load_condition_encoder(name: str, runtime: RuntimeConfig):
    """The frozen sentence encoder ``name`` (loaded once per process and runtime)."""
    return load_encoder(name, runtime)


def encode_condition(encoder, texts: Sequence[str]) -> torch.Tensor:
    """float32 ``[len(texts), dim]`` embeddings of ``texts``."""
    return encoder.encode(list(texts))


# ------------------------------------------------------------------------------------------- API


def texts_sha256(texts: Sequence[str]) -> str:
    """Hash of an ordered list of condition texts."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def generate_adapter(
    generator: str | Path | LoadedGenerator,
    prompts: str | Path,
    out: str | Path,
    n_prompts: int | None = None,
    seed: int = 0,
    runtime: RuntimeConfig | None = None,
) -> dict[str, Any]:
    """Generate one adapter for the prompts in ``prompts`` and write it to ``out``; returns a report.

    ``n_prompts`` defaults to the checkpoint's; another count is accepted only by generators that pool
    over prompts (``flexible_n_prompts``). ``report["seconds"]["per_adapter"]`` is the time of the
    per-adapter work (sample + encode + generate + save), without the one-time loads.
    """
    runtime = runtime or RuntimeConfig()
    out = Path(out)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    check_adapter_out(out)
    items = condition_items(prompts)  # a bad file fails here: nothing loaded, nothing written
    t0 = time.perf_counter()
    loaded = generator if isinstance(generator, LoadedGenerator) else load_generator(generator, runtime.torch_device)
    t_load_gen = time.perf_counter() - t0
    n = loaded.n_prompts if n_prompts is None else n_prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n_prompts must be a positive integer, got {n!r}")
    if n != loaded.n_prompts and not getattr(loaded.gen, "flexible_n_prompts", False):
        raise ConfigError(
            f"generator {loaded.name!r} ({loaded.path}) takes exactly {loaded.n_prompts} prompts; "
            f"drop --n-prompts or pass {loaded.n_prompts}"
        )
    texts = condition_texts(items, loaded.condition_form, str(prompts))

    t1 = time.perf_counter()
    encoder = load_condition_encoder(loaded.encoder, runtime)
    t_load_enc = time.perf_counter() - t1

    t2 = time.perf_counter()
    chosen = sample_condition(texts, n, seed)
    cond = encode_condition(encoder, chosen)
    if cond.dim() != 2 or cond.shape != (n, loaded.cond_dim):
        raise ConfigError(
            f"encoder {loaded.encoder!r} gives condition {tuple(cond.shape)}, "
            f"generator {loaded.path} needs ({n}, {loaded.cond_dim}); "
            "use the encoder the generator was trained with"
        )
    t3 = time.perf_counter()
    param = next(iter(loaded.gen.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    with torch.inference_mode():
        weights = loaded.gen(cond.to(device=runtime.torch_device, dtype=dtype).unsqueeze(0)).select(0)
    weights = weights.to("cpu", torch.float32)
    t4 = time.perf_counter()
    bad = [k for k, t in (*weights.A.items(), *weights.B.items()) if not torch.isfinite(t).all()]
    if bad:
        raise ConfigError(
            f"generator {loaded.path} produced non-finite LoRA weights (slot {bad[0]}); "
            "the checkpoint is broken — use an earlier one"
        )
    meta = {
        "deltalora_version": __version__,
        "generator": loaded.name,
        "generator_sha256": loaded.sha256,
        "encoder": loaded.encoder,
        "condition_form": loaded.condition_form,
        "condition_sha256": texts_sha256(chosen),
        "n_prompts": str(n),
        "seed": str(seed),
        "prompts_file": Path(prompts).name,
    }
    save_adapter(weights, out, base_model_name_or_path=loaded.backbone, metadata=meta)
    t5 = time.perf_counter()
    return {
        "out": str(out),
        "generator": loaded.name,
        "generator_path": str(loaded.path),
        "generator_sha256": loaded.sha256,
        "backbone": loaded.backbone,
        "encoder": loaded.encoder,
        "condition_form": loaded.condition_form,
        "n_prompts": n,
        "seed": seed,
        "prompts": str(prompts),
        "num_items": len(items),
        "condition_sha256": meta["condition_sha256"],
        "num_slots": len(weights.layout.slots),
        "num_params": weights.layout.num_params,
        "seconds": {
            "load_generator": round(t_load_gen, 4),
            "load_encoder": round(t_load_enc, 4),
            "encode": round(t3 - t2, 4),
            "generate": round(t4 - t3, 4),
            "save": round(t5 - t4, 4),
            "per_adapter": round(t5 - t2, 4),
        },
    }


__all__ = [
    "condition_items",
    "condition_texts",
    "encode_condition",
    "generate_adapter",
    "load_condition_encoder",
    "sample_condition",
    "texts_sha256",
]

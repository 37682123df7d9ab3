"""Import Drag-and-Drop-LLMs' released teacher checkpoints into a deltalora zoo.

DnD's layout (github.com/jerryliang24/Drag-and-Drop-LLMs):

- ``download_data.py`` fetches the HF dataset ``Jerrylz/<domain>`` into ``data/<domain>/``; the training
  scripts (e.g. ``workspace/main/exploration/reconstruction/train_qwen0.5lora_ARC-c.py``) read one folder per
  dataset, ``data/<domain>/<dataset>/``.
- ``workspace/datasets/process_datasets/post_process_ckpts.py`` turns each LLaMA-Factory ``checkpoint-N/``
  into ``N.safetensors`` (its ``adapter_model.safetensors`` moved and renamed) and deletes everything else,
  so the folder holds only numbered safetensors files — no ``adapter_config.json``.
- ``workspace/dnd/dataset/`` (``Text2Qwen25LoRA_CheckpointDataset``) reads them with safetensors and strips
  ``base_model.model.`` from the keys: the files are PEFT-keyed,
  ``base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_<A|B>.weight``.
- The condition prompts are ``prepare/data/<dataset>_train.json`` (``[{"prompt", "response", "system"}]``;
  a LLaMA-Factory ``[{"conversations": [{"value"}, ...]}]`` file is accepted too, as DnD's dataset does).
- LLaMA-Factory's ``lora_alpha`` defaults to ``2 * lora_rank`` (DnD's ``configs/*/adapter_config.json`` have
  r 16 / alpha 32), which is the alpha assumed here unless one is given.

Each ``N.safetensors`` becomes a PEFT directory ``<zoo>/<dataset>/s0/stepN`` (via :func:`save_adapter`), listed
with task = folder name, family ``dnd`` (or a given mapping), step = N. Pickled checkpoints are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..backbones.architecture import Architecture, module_path
from ..backbones.loader import architecture_of
from ..config import MODULE_ORDER, LoraSpec
from ..lora import LoraLayout, LoraWeights, Slot, derive_layout, load_adapter, save_adapter
from ..paths import atomic_write_bytes
from .manifest import MANIFEST_NAME, ZooEntry, ZooError, append_entry, file_sha256, read_manifest

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONDITION_NAME = "condition.json"
_CKPT = re.compile(r"^(\d+)\.safetensors$")
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(?P<layer>\d+)\.(?P<parent>self_attn|mlp)\."
    r"(?P<module>[a-z_]+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


def find_dataset_dirs(root: Path) -> list[Path]:
    """``root`` itself if it holds ``N.safetensors`` files, else its sub-folders that do (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise ZooError(f"{root}: not a directory; pass DnD's data/<domain> folder or one dataset folder")

    def has_ckpt(d: Path) -> bool:  # pickled checkpoints count too, so that they are refused by name, not ignored
        return any(_CKPT.match(p.name) or p.suffix in PICKLE_SUFFIXES for p in d.iterdir() if p.is_file())

    if has_ckpt(root):
        return [root]
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and has_ckpt(d))
    if not dirs:
        raise ZooError(
            f"{root}: no DnD checkpoint folders found (expected <dataset>/<N>.safetensors, as DnD's "
            "post_process_ckpts.py writes them); pass data/<domain> or one dataset folder"
        )
    return dirs


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ZooError(
            f"{folder}: holds pickled checkpoints ({', '.join(pickles[:3])}); deltalora never unpickles files — "
            "convert them to safetensors (N.safetensors) first"
        )
    out = []
    for p in folder.iterdir():
        if p.suffix == ".safetensors":
            m = _CKPT.match(p.name)
            if not m:
                raise ZooError(f"{p}: not named <step>.safetensors; DnD names each checkpoint by its step number")
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_dnd_checkpoint(path: Path) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """``{(layer, module): {"A": tensor, "B": tensor}}`` of one DnD checkpoint, its keys validated."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ZooError(
            f"{path}: not a readable safetensors file ({' '.join(str(exc).split())}); re-download it"
        ) from None
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m or m.group("module") not in MODULE_ORDER:
            raise ZooError(
                f"{path}: unrecognised key {key!r}; expected PEFT LoRA keys like "
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight (plain LoRA on q/k/v/o/gate/up/down)"
            )
        if not t.is_floating_point() or t.dim() != 2:
            raise ZooError(f"{path}: tensor {key} is {tuple(t.shape)} {t.dtype}; LoRA factors are 2-D float matrices")
        found.setdefault((int(m.group("layer")), m.group("module")), {})[m.group("ab")] = t
    if not found:
        raise ZooError(f"{path}: holds no LoRA tensors")
    half = [f"{layer}.{mod}" for (layer, mod), ab in found.items() if set(ab) != {"A", "B"}]
    if half:
        raise ZooError(f"{path}: slots {half[:3]} have only one of lora_A / lora_B; the file is incomplete")
    return found


def dnd_weights(path: Path, arch: Architecture | None, alpha: float | None = None) -> LoraWeights:
    """One DnD checkpoint as :class:`LoraWeights`; the layout is derived from ``arch`` or inferred from shapes."""
    found = read_dnd_checkpoint(path)
    ranks = {ab["A"].shape[0] for ab in found.values()} | {ab["B"].shape[1] for ab in found.values()}
    if len(ranks) != 1:
        raise ZooError(f"{path}: LoRA ranks differ between slots ({sorted(ranks)}); only a single rank is supported")
    rank = ranks.pop()
    modules = {m for _, m in found}
    layers = sorted({layer for layer, _ in found})
    if {(layer, m) for layer in layers for m in modules} != set(found):
        raise ZooError(
            f"{path}: not every layer adapts the same modules {sorted(modules)}; such a layout is not supported"
        )
    n_layers = arch.num_hidden_layers if arch is not None else layers[-1] + 1
    spec = LoraSpec(
        rank=rank,
        alpha=alpha if alpha is not None else 2 * rank,
        targets=tuple(modules),
        layers=None if layers == list(range(n_layers)) else tuple(layers),
    )
    if arch is not None:
        try:
            layout = derive_layout(arch, spec)
        except Exception as exc:  # ConfigError: layers beyond the backbone
            raise ZooError(
                f"{path}: does not fit the backbone ({exc}); pass the --backbone it was trained for"
            ) from None
    else:
        slots = []
        for layer in layers:
            for module in MODULE_ORDER:
                if module in modules:
                    a, b = found[(layer, module)]["A"], found[(layer, module)]["B"]
                    slots.append(
                        Slot(len(slots), layer, module, module_path(layer, module), a.shape[1], b.shape[0], rank)
                    )
        layout = LoraLayout(arch=None, spec=spec, slots=tuple(slots))
    try:
        return LoraWeights(
            layout,
            {s.key: found[(s.layer, s.module)]["A"] for s in layout.slots},
            {s.key: found[(s.layer, s.module)]["B"] for s in layout.slots},
        )
    except (KeyError, ValueError) as exc:
        raise ZooError(
            f"{path}: tensor shapes do not fit the layout ({exc}); pass the --backbone it was trained for"
        ) from None


def find_prompt_json(folder: Path, prompts_dir: Path | None) -> Path | None:
    """The dataset's prompt JSON: ``<name>_train.json`` / a single ``*.json`` in its folder, else in ``prompts_dir``."""
    name = folder.name
    local = sorted(p for p in folder.glob("*.json") if p.is_file())
    for p in local:
        if p.name == f"{name}_train.json":
            return p
    if len(local) == 1:
        return local[0]
    if len(local) > 1:
        raise ZooError(
            f"{folder}: several JSON files ({', '.join(p.name for p in local[:3])}); keep only {name}_train.json"
        )
    if prompts_dir is not None:
        for cand in (f"{name}_train.json", f"{name}.json"):
            if (Path(prompts_dir) / cand).is_file():
                return Path(prompts_dir) / cand
    return None


def read_prompt_json(path: Path) -> int:
    """Validate a DnD prompt file; returns its number of prompts."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{path}: not valid UTF-8 JSON ({' '.join(str(exc).split())}); fix or remove it") from None
    if not isinstance(data, list) or not data:
        raise ZooError(f"{path}: expected a non-empty JSON array of {{prompt, response, system}} objects")
    for i, rec in enumerate(data):
        ok = isinstance(rec, dict) and (
            isinstance(rec.get("prompt"), str)
            or (
                isinstance(rec.get("conversations"), list)
                and rec["conversations"]
                and isinstance(rec["conversations"][0], dict)
                and isinstance(rec["conversations"][0].get("value"), str)
            )
        )
        if not ok:
            raise ZooError(
                f"{path}: entry {i} has neither a 'prompt' string nor LLaMA-Factory 'conversations'; fix the file"
            )
    return len(data)


def import_dnd(
    dnd_dir: str | Path,
    out_dir: str | Path,
    backbone: str | None = None,
    families: dict[str, str] | None = None,
    prompts_dir: str | Path | None = None,
    alpha: float | None = None,
    progress: bool = False,
) -> list[ZooEntry]:
    """Convert every ``<dataset>/N.safetensors`` under ``dnd_dir`` into ``out_dir``; returns the imported entries.

    With ``backbone`` (a registered name, model directory or HF id) each adapter is validated against the
    backbone's derived layout; without, the layout is inferred from keys and shapes. Re-running skips
    checkpoints already listed.
    """
    from tqdm.auto import tqdm

    arch = None
    if backbone:
        arch = architecture_of(backbone)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed = {e.id: e for e in read_manifest(out)} if (out / MANIFEST_NAME).is_file() else {}
    families = families or {}
    folders = find_dataset_dirs(Path(dnd_dir))
    plan = [(folder, _checkpoints(folder)) for folder in folders]
    entries = []
    bar = tqdm(total=sum(len(c) for _, c in plan), desc="dnd import", unit="adapter", disable=not progress)
    for folder, ckpts in plan:
        task = folder.name
        prompt = find_prompt_json(folder, Path(prompts_dir) if prompts_dir else None)
        extra_cond: dict = {}
        if prompt is not None:
            n = read_prompt_json(prompt)
            cond = out / task / CONDITION_NAME
            atomic_write_bytes(cond, prompt.read_bytes())
            extra_cond = {
                "condition": cond.relative_to(out).as_posix(),
                "condition_source": str(prompt),
                "condition_sha256": file_sha256(cond),
                "n_condition": n,
            }
        for step, path in ckpts:
            eid = f"{task}/s0/step{step}"
            if eid in listed:
                entries.append(listed[eid])
                bar.update(1)
                continue
            w = dnd_weights(path, arch, alpha)
            target = save_adapter(
                w,
                out / task / "s0" / f"step{step}",
                base_model_name_or_path=backbone or None,
                metadata={"source": "dnd", "dnd_file": path.name, "task": task},
            )
            if arch is not None:
                load_adapter(target, arch=arch)  # round-trip check against the backbone
            entry = ZooEntry(
                id=eid,
                task=task,
                family=families.get(task, "dnd"),
                seed=0,
                step=step,
                path=target.relative_to(out).as_posix(),
                sha256=file_sha256(target / "adapter_model.safetensors"),
                train_loss=None,
                backbone=backbone or "",
                extra={
                    "source": "dnd",
                    "dnd_file": str(path),
                    "rank": w.layout.spec.rank,
                    "alpha": w.layout.spec.alpha,
                    **extra_cond,
                },
            )
            append_entry(out, entry)
            listed[eid] = entry
            entries.append(entry)
            bar.update(1)
    bar.close()
    return entries


__all__ = [
    "CONDITION_NAME",
    "dnd_weights",
    "find_dataset_dirs",
    "find_prompt_json",
    "import_dnd",
    "read_dnd_checkpoint",
]

"""PEFT adapter directories in and out, validated where they enter.

A PEFT LoRA directory holds ``adapter_config.json`` (PEFT's ``LoraConfig`` as JSON) and
``adapter_model.safetensors`` whose keys look like
``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`` (no adapter name).
:func:`save_adapter` writes exactly that, so stock ``PeftModel.from_pretrained`` loads it unchanged;
:func:`load_adapter` reads it back into :class:`LoraWeights` and refuses anything it cannot trust with
an :class:`~deltalora.errors.AdapterError` naming the file, the problem and the fix;
:func:`inspect_adapter` reports the same problems (as many as it can find) without raising.

Pickled weights (``adapter_model.bin``) are never unpickled.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from ..backbones.architecture import MODULE_PARENT, Architecture, module_path
from ..config import MODULE_ORDER, LoraSpec, validation_message
from ..errors import AdapterError, ConfigError
from ..paths import atomic_dir, safetensors_bytes
from .layout import PEFT_PREFIX, LoraLayout, Slot, derive_layout
from .weights import LoraWeights

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"

SUPPORTED = (
    "deltalora supports plain LoRA (use_dora false, empty rank_pattern/alpha_pattern, bias 'none', "
    "no modules_to_save) on the q/k/v/o/gate/up/down projections"
)
RESAVE = "re-save the adapter with PeftModel.save_pretrained or deltalora.lora.adapter_io.save_adapter"
OTHER_BACKBONE = (
    "the adapter was made for a different backbone: load it with (or pass --backbone of) the one it was trained for"
)

# base_model.model.<module path>.lora_A[.<adapter name>].weight
_KEY_RE = re.compile(rf"^{re.escape(PEFT_PREFIX)}(?P<path>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
_PATH_RE = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<parent>\w+)\.(?P<module>\w+)$")
# Config fields whose non-default values change what the weights mean; deltalora refuses them.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "use_dora": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
}

SlotId = tuple[int, str]  # (layer, module)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _preview(items: list[str], n: int = 2) -> str:
    """The first ``n`` items, and how many more there are."""
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def _slot_key(sid: SlotId) -> str:
    return f"{sid[0]}.{sid[1]}"


def _order(sid: SlotId) -> tuple[int, int]:
    """Canonical slot order: layer, then MODULE_ORDER."""
    return sid[0], MODULE_ORDER.index(sid[1])


def _canonical(sids) -> list[SlotId]:
    return sorted(sids, key=_order)


# --------------------------------------------------------------------------------------------- save


def peft_lora_config(spec: LoraSpec, base_model_name_or_path: str | None = None):
    """The ``peft.LoraConfig`` (inference, no dropout, no bias) equivalent to ``spec``."""
    from peft import LoraConfig

    return LoraConfig(
        r=spec.rank,
        lora_alpha=int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha,
        target_modules=list(spec.targets),
        layers_to_transform=list(spec.layers) if spec.layers is not None else None,
        use_rslora=spec.rslora,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
    )


def check_adapter_out(out: str | Path) -> None:
    """Refuse to replace anything but a previous adapter directory (an adapter write replaces ``out`` whole)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(
            f"{out}: exists and is not a directory; pass --out a new directory (or a previous adapter directory)"
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME))
    if foreign:
        raise ConfigError(
            f"{out}: exists and holds other files ({', '.join(foreign[:3])}); "
            "pass --out a new directory — it would be replaced whole"
        )


def save_adapter(
    weights: LoraWeights,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``weights`` as a PEFT adapter directory (atomically); returns ``out_dir``.

    The config is PEFT's own ``LoraConfig.save_pretrained`` output; tensors are stored under the
    layout's PEFT keys in the dtype they have. ``metadata`` goes into the safetensors header.
    """
    if weights.num_adapters is not None:
        raise ValueError(
            f"save_adapter takes a single adapter, got a batch of {weights.num_adapters}; save weights.select(i) for "
            "each"
        )
    meta = {"format": "pt", **(metadata or {})}
    bad = [k for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; not so for {bad}")
    config = peft_lora_config(weights.layout.spec, base_model_name_or_path)
    tensors: dict[str, torch.Tensor] = {}
    for slot in weights.layout.slots:
        for key, t in ((slot.peft_key_a, weights.A[slot.key]), (slot.peft_key_b, weights.B[slot.key])):
            tensors[key] = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        (tmp / WEIGHTS_NAME).write_bytes(safetensors_bytes(tensors, meta))
    return out


# --------------------------------------------------------------------------------------------- scan


@dataclass
class _Scan:
    """Everything read from one adapter directory, and every problem found on the way."""

    dir: Path
    arch: Architecture | None
    problems: list[AdapterError] = field(default_factory=list)
    config: dict[str, Any] | None = None
    spec: LoraSpec | None = None
    # (layer, module) -> {"A": tensor, "B": tensor}, for every well-formed LoRA key in the file
    found: dict[SlotId, dict[str, torch.Tensor]] | None = None
    selected: list[SlotId] | None = None  # slots adapter_config.json asks for, canonical order
    layout: LoraLayout | None = None

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG_NAME

    @property
    def weights_file(self) -> Path:
        return self.dir / WEIGHTS_NAME

    def problem(self, file: Path, problem: str, fix: str) -> None:
        self.problems.append(AdapterError(file, _one_line(problem), _one_line(fix)))

    def tensors(self) -> dict[SlotId, tuple[torch.Tensor, torch.Tensor]]:
        """(A, B) of every found slot holding both."""
        return {sid: (ab["A"], ab["B"]) for sid, ab in (self.found or {}).items() if "A" in ab and "B" in ab}


def _scan(path: str | Path, arch: Architecture | None) -> _Scan:
    scan = _Scan(Path(path), arch)
    if not scan.dir.is_dir():
        what = "is a file, not an adapter directory" if scan.dir.exists() else "adapter directory not found"
        scan.problem(scan.dir, what, f"pass a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
        return scan
    _read_config(scan)
    _read_weights(scan)
    if scan.config is None or not scan.found:
        return scan
    _select_slots(scan)
    if scan.selected is not None and scan.spec is not None:
        _check_tensors(scan)
    return scan


def _read_config(scan: _Scan) -> None:
    file = scan.config_file
    if not file.is_file():
        scan.problem(file, f"{CONFIG_NAME} not found", f"a PEFT adapter directory needs one; {RESAVE}")
        return
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        scan.problem(file, f"not valid JSON ({exc})", RESAVE)
        return
    if not isinstance(cfg, dict):
        scan.problem(file, f"top level is a {type(cfg).__name__}, not a JSON object", RESAVE)
        return
    if cfg.get("peft_type") != "LORA":
        scan.problem(file, f"peft_type is {cfg.get('peft_type')!r}, not 'LORA'", "deltalora reads LoRA adapters only")
        return
    for name, default in _UNSUPPORTED_DEFAULTS.items():
        value = cfg.get(name, default)
        if (value != default) if isinstance(default, str) else bool(value):
            scan.problem(file, f"{name} is {value!r}", SUPPORTED)
    pattern = cfg.get("layers_pattern")
    if pattern not in (None, "", [], "layers", ["layers"]):
        scan.problem(
            file, f"layers_pattern is {pattern!r}", "deltalora supports decoder layers under model.layers only"
        )
    scan.config = cfg
    try:
        scan.spec = LoraSpec(rank=cfg.get("r"), alpha=cfg.get("lora_alpha"), rslora=bool(cfg.get("use_rslora", False)))
    except ValidationError as exc:
        scan.problem(
            file, f"invalid r / lora_alpha ({validation_message(exc)})", "r and lora_alpha must be positive numbers"
        )


def _read_weights(scan: _Scan) -> None:
    file = scan.weights_file
    if not file.is_file():
        pickle = scan.dir / PICKLE_NAME
        if pickle.is_file():
            scan.problem(
                pickle,
                f"{WEIGHTS_NAME} not found, only pickled {PICKLE_NAME}, which deltalora refuses and never unpickles",
                "in an environment you trust, load it with torch.load(path, weights_only=True) and write "
                f"safetensors.torch.save_file(state_dict, '{WEIGHTS_NAME}', metadata={{'format': 'pt'}}) beside it",
            )
        else:
            scan.problem(file, f"{WEIGHTS_NAME} not found", f"a PEFT adapter directory needs its weights; {RESAVE}")
        return
    try:
        raw = load_file(str(file))
    except Exception as exc:  # safetensors raises SafetensorError (and others) for damaged files
        scan.problem(
            file, f"not a readable safetensors file ({exc})", f"it is truncated or corrupt: copy it again or {RESAVE}"
        )
        return
    found: dict[SlotId, dict[str, torch.Tensor]] = defaultdict(dict)
    foreign, named = [], []
    for key in sorted(raw):
        m = _KEY_RE.match(key)
        p = _PATH_RE.match(m["path"]) if m else None
        if m and m["name"] is not None:
            named.append(key)
        elif p and MODULE_PARENT.get(p["module"]) == p["parent"]:
            found[(int(p["layer"]), p["module"])][m["ab"]] = raw[key]
        else:
            foreign.append(key)
    if not raw:
        scan.problem(file, "holds no tensors", RESAVE)
    if named:
        name = _KEY_RE.match(named[0])["name"]
        scan.problem(
            file,
            f"{len(named)} key(s) carry the adapter name {name!r} ({_preview(named, 1)}): a live PeftModel "
            "state_dict, not PEFT's saved format",
            f"{RESAVE}, or drop '.{name}' from the keys",
        )
    if foreign:
        scan.problem(
            file,
            f"{len(foreign)} key(s) match no LoRA slot ({_preview(foreign)})",
            f"{SUPPORTED}, keyed like {PEFT_PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight",
        )
    scan.found = dict(found)


def _layer_indices(scan: _Scan) -> list[int] | None:
    value = scan.config.get("layers_to_transform")
    if value is None or value == []:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        fix = "it must be null, a layer index or a list of layer indices"
        scan.problem(scan.config_file, f"layers_to_transform is {value!r}", fix)
        return None
    if scan.arch is not None:
        n = scan.arch.num_hidden_layers
        bad = sorted(i for i in value if i >= n)
        if bad:
            scan.problem(
                scan.config_file,
                f"layers_to_transform {bad} do not exist: the backbone has {n} layers (0..{n - 1})",
                OTHER_BACKBONE,
            )
    return sorted(set(value))


def _matcher(scan: _Scan, layers: list[int] | None):
    """PEFT's rule (check_target_module_exists) for our module paths: ``(path, layer) -> bool``, or None."""
    cfg, file = scan.config, scan.config_file
    targets = cfg.get("target_modules")
    exclude = cfg.get("exclude_modules")
    if isinstance(targets, str) and targets.lower() == "all-linear":
        targets = list(MODULE_ORDER)
    try:
        regex = re.compile(targets) if isinstance(targets, str) else None
        exclude_re = re.compile(exclude) if isinstance(exclude, str) else None
    except re.error as exc:
        scan.problem(file, f"target_modules / exclude_modules is not a valid regex ({exc})", "fix the pattern")
        return None
    if not (
        isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))
    ):
        scan.problem(
            file, f"target_modules is {targets!r}", f"it must be a list of module names or a regex; {SUPPORTED}"
        )
        return None

    def excluded(path: str) -> bool:
        if exclude_re is not None:
            return exclude_re.fullmatch(path) is not None
        return bool(exclude) and (path in exclude or any(path.endswith(f".{e}") for e in exclude))

    def selects(path: str, layer: int) -> bool:
        if excluded(path):
            return False
        if regex is not None:  # PEFT ignores layers_to_transform for a regex
            return regex.fullmatch(path) is not None
        hit = path in targets or any(path.endswith(f".{t}") for t in targets)
        return hit and (layers is None or layer in layers)

    return selects, targets


def _select_slots(scan: _Scan) -> None:
    """Resolve target_modules / layers_to_transform to a rectangular set of slots and a LoraSpec."""
    layers = _layer_indices(scan)
    resolved = _matcher(scan, layers)
    if resolved is None:
        return
    selects, targets = resolved
    if scan.arch is not None:
        universe_layers = range(scan.arch.num_hidden_layers)
        where = f"the backbone's {scan.arch.num_hidden_layers} layers"
    else:
        universe_layers = sorted({sid[0] for sid in scan.found} | set(layers or ()))
        where = f"model.layers.{{{','.join(map(str, universe_layers))}}}"
    universe = {(layer, m): module_path(layer, m) for layer in universe_layers for m in MODULE_ORDER}
    file = scan.config_file
    if isinstance(targets, list):
        for t in targets:
            if not any(p == t or p.endswith(f".{t}") for p in universe.values()):
                fix = OTHER_BACKBONE if scan.arch is not None and t.rsplit(".", 1)[-1] in MODULE_ORDER else SUPPORTED
                scan.problem(
                    file, f"target_modules entry {t!r} matches no q/k/v/o/gate/up/down projection of {where}", fix
                )
    selected = _canonical(sid for sid, path in universe.items() if selects(path, sid[0]))
    if not selected:
        scan.problem(
            file, f"target_modules {scan.config.get('target_modules')!r} selects no projection of {where}", SUPPORTED
        )
        return
    modules = sorted({m for _, m in selected}, key=MODULE_ORDER.index)
    sel_layers = sorted({layer for layer, _ in selected})
    if len(selected) != len(modules) * len(sel_layers):
        scan.problem(
            file,
            "target_modules selects different modules in different layers "
            f"({_preview([_slot_key(s) for s in selected], 4)})",
            "deltalora supports the same modules in every adapted layer; split it into several adapters",
        )
        return
    if scan.spec is None:
        return
    if scan.arch is not None:
        spec_layers = None if layers is None and len(sel_layers) == scan.arch.num_hidden_layers else sel_layers
    else:
        spec_layers = layers
    scan.spec = scan.spec.model_copy(
        update={"targets": tuple(modules), "layers": None if spec_layers is None else tuple(spec_layers)}
    )
    scan.selected = selected


def _check_tensors(scan: _Scan) -> None:
    """Keys, shapes, dtypes and values of the weights file against the selected slots; builds the layout."""
    file, spec, arch = scan.weights_file, scan.spec, scan.arch
    expected = {(sid, ab) for sid in scan.selected for ab in "AB"}
    present = {(sid, ab) for sid, d in scan.found.items() for ab in d}
    peft_key = lambda sid, ab: f"{PEFT_PREFIX}{module_path(*sid)}.lora_{ab}.weight"  # noqa: E731
    keys_of = lambda pairs: [peft_key(*p) for p in sorted(pairs, key=lambda p: (_order(p[0]), p[1]))]  # noqa: E731
    unexpected, missing = present - expected, expected - present
    if unexpected:
        scan.problem(
            file,
            f"{len(unexpected)} tensor(s) not selected by {CONFIG_NAME} ({_preview(keys_of(unexpected))})",
            f"the config and the weights disagree; {OTHER_BACKBONE if arch is not None else RESAVE}",
        )
    if missing:
        scan.problem(
            file,
            f"{len(missing)} LoRA tensor(s) missing ({_preview(keys_of(missing))})",
            f"the file is incomplete; {RESAVE}",
        )

    shape_problems, dtype_problems = [], []
    features: dict[str, set[tuple[int, int]]] = defaultdict(set)  # module -> {(in, out)}
    pairs = scan.tensors()
    for sid in scan.selected:
        if sid not in pairs:
            continue
        a, b = pairs[sid]
        name = _slot_key(sid)
        if not (a.is_floating_point() and b.is_floating_point()):
            dtype_problems.append(f"{name} ({a.dtype}/{b.dtype})")
        if a.dim() != 2 or b.dim() != 2:
            shape_problems.append(f"{name} A{list(a.shape)} B{list(b.shape)} are not 2-D")
            continue
        if a.shape[0] != spec.rank or b.shape[1] != spec.rank:
            shape_problems.append(f"{name} A{list(a.shape)} B{list(b.shape)} do not have rank r={spec.rank}")
            continue
        fin, fout = a.shape[1], b.shape[0]
        if arch is not None:
            want_in, want_out = arch.linear_shape(sid[1])
            if fin != want_in:
                shape_problems.append(f"{name} A{list(a.shape)} (backbone needs {[spec.rank, want_in]})")
            if fout != want_out:
                shape_problems.append(f"{name} B{list(b.shape)} (backbone needs {[want_out, spec.rank]})")
        features[sid[1]].add((fin, fout))
    inconsistent = [m for m, shapes in features.items() if len(shapes) > 1]
    if inconsistent:
        shape_problems.append(
            f"{inconsistent[0]} has different shapes in different layers {sorted(features[inconsistent[0]])}"
        )
    if shape_problems:
        fix = OTHER_BACKBONE if arch is not None else f"the config's r or the tensors are wrong; {RESAVE}"
        scan.problem(file, f"tensor shape mismatch: {_preview(shape_problems)}", fix)
    if dtype_problems:
        scan.problem(
            file,
            f"non-floating-point LoRA tensors: {_preview(dtype_problems)}",
            f"LoRA tensors must be float; {RESAVE}",
        )
    else:
        bad = [
            f"{_slot_key(sid)} ({ab})"
            for sid in scan.selected
            if sid in pairs
            for ab, t in zip("AB", pairs[sid])
            if not torch.isfinite(t).all()
        ]
        if bad:
            scan.problem(
                file,
                f"non-finite values (NaN/Inf) in slot {_preview(bad, 8)}",
                "the adapter is broken (diverged training?): retrain or re-export it",
            )
    if scan.problems:
        return
    if arch is not None:
        try:
            scan.layout = derive_layout(arch, spec)
        except ConfigError as exc:  # pragma: no cover - bounds are checked above
            scan.problem(scan.config_file, str(exc), OTHER_BACKBONE)
        return
    slots = []
    for sid in scan.selected:
        a, b = pairs[sid]
        slots.append(Slot(len(slots), sid[0], sid[1], module_path(*sid), a.shape[1], b.shape[0], spec.rank))
    scan.layout = LoraLayout(arch=None, spec=spec, slots=tuple(slots))


# --------------------------------------------------------------------------------------------- load


def load_adapter(
    path: str | Path, arch: Architecture | None = None, dtype: torch.dtype | None = torch.float32
) -> LoraWeights:
    """Read and validate a PEFT LoRA directory; raise :class:`AdapterError` for anything off.

    With ``arch`` the layout is derived from the backbone and the file must match it exactly; without,
    slots and shapes are inferred from the file. ``dtype=None`` keeps the stored dtype.
    """
    scan = _scan(path, arch)
    if scan.problems:
        raise scan.problems[0]
    pairs = scan.tensors()
    A, B = {}, {}
    for slot in scan.layout.slots:
        a, b = pairs[(slot.layer, slot.module)]
        A[slot.key] = a if dtype is None else a.to(dtype)
        B[slot.key] = b if dtype is None else b.to(dtype)
    return LoraWeights(scan.layout, A, B)


# --------------------------------------------------------------------------------------------- inspect


def delta_w_fro(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> float:
    """``||scale · B A||_F`` without forming ``B A``: ``||B A||_F² = trace((BᵀB)(AAᵀ))`` (r×r products)."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    sq = torch.trace((b64.T @ b64) @ (a64 @ a64.T)).item()
    return abs(scale) * math.sqrt(max(sq, 0.0))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _norms(scan: _Scan, scale: float | None) -> dict[str, dict[str, float | None]]:
    """Per module: Frobenius norms of all its A (and B) tensors together, and the mean over layers of ||ΔW||_F."""
    groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for (_, module), (a, b) in scan.tensors().items():
        if (
            a.dim() == 2
            and b.dim() == 2
            and a.shape[0] == b.shape[1]
            and a.is_floating_point()
            and b.is_floating_point()
        ):
            groups[module].append((a, b))
    out = {}
    for module in MODULE_ORDER:
        if module not in groups:
            continue
        ab = groups[module]
        fro = lambda ts: math.sqrt(sum(t.detach().double().pow(2).sum().item() for t in ts))  # noqa: E731
        out[module] = {
            "A_fro": _finite_or_none(fro(a for a, _ in ab)),
            "B_fro": _finite_or_none(fro(b for _, b in ab)),
            "delta_w_fro_mean": None
            if scale is None
            else _finite_or_none(sum(delta_w_fro(a, b, scale) for a, b in ab) / len(ab)),
        }
    return out


def inspect_adapter(path: str | Path, arch: Architecture | None = None) -> dict[str, Any]:
    """Summary of an adapter directory and every problem found; never raises for an invalid adapter.

    ``norms[module]``: ``A_fro`` / ``B_fro`` are the Frobenius norms of all that module's A (B) tensors
    taken together; ``delta_w_fro_mean`` is the mean over layers of ``||scale · B A||_F``.
    Fields that cannot be read are None.
    """
    scan = _scan(path, arch)
    cfg, spec = scan.config or {}, scan.spec
    pairs = scan.tensors()
    lora = [t for ab in (scan.found or {}).values() for t in ab.values()]
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in lora})
    if spec is not None and scan.selected is not None:
        targets = list(spec.targets)
        layers = sorted({layer for layer, _ in scan.selected})
    else:
        targets = cfg.get("target_modules") if scan.config is not None else None
        layers = sorted({layer for layer, _ in pairs}) or None
    return {
        "path": str(scan.dir),
        "valid": not scan.problems,
        "problems": [str(p) for p in scan.problems],
        "rank": spec.rank if spec else cfg.get("r"),
        "alpha": spec.alpha if spec else cfg.get("lora_alpha"),
        "scale": spec.scale if spec else None,
        "rslora": spec.rslora if spec else cfg.get("use_rslora"),
        "targets": targets,
        "layers": layers,
        "num_slots": len(pairs) if scan.found is not None else None,
        "num_params": sum(t.numel() for t in lora) if scan.found is not None else None,
        "norms": _norms(scan, spec.scale if spec else None) if scan.found is not None else None,
        "dtype": ",".join(dtypes) if dtypes else None,
    }


__all__ = [
    "CONFIG_NAME",
    "PICKLE_NAME",
    "WEIGHTS_NAME",
    "delta_w_fro",
    "inspect_adapter",
    "load_adapter",
    "peft_lora_config",
    "save_adapter",
]

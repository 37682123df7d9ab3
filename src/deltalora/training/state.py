"""Trainer state on disk: one safetensors file, written atomically, never unpickled.

``trainer_state.safetensors`` holds the generator's tensors (``gen.*``), the optimizer's per-parameter
state (``opt.<i>.<name>``), the torch RNG state (``rng.torch``) and, in its string metadata, a JSON
header: the next step to run, the optimizer's param groups, a hash of the training config and data.
The LR schedule is a pure function of the step, so the step restores it; the data order is a pure
function of (seed, step), so the step restores the data position too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import DeltaLoraError
from ..paths import atomic_write_bytes

STATE_NAME = "trainer_state.safetensors"
STATE_FORMAT = "deltalora-trainer-state/1"


class TrainStateError(DeltaLoraError):
    """A trainer state file is unreadable or belongs to another run."""


def save_state(
    path: Path, gen: torch.nn.Module, opt: torch.optim.Optimizer, step: int, fingerprint: str, extra: dict | None = None
) -> None:
    tensors = {f"gen.{k}": v.detach().cpu().contiguous().clone() for k, v in gen.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for name, t in st.items():
            if not torch.is_tensor(t):
                t = torch.tensor(t)
            tensors[f"opt.{pid}.{name}"] = t.detach().cpu().contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    header = {
        "format": STATE_FORMAT,
        "step": int(step),
        "fingerprint": fingerprint,
        "param_groups": sd["param_groups"],
        "extra": extra or {},
    }
    atomic_write_bytes(Path(path), st_save(tensors, metadata={"header": json.dumps(header)}))


def read_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["header"])
    except (OSError, SafetensorError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise TrainStateError(
            f"{path}: unreadable trainer state ({type(exc).__name__}); delete it to restart this run from step 0"
        ) from None
    if header.get("format") != STATE_FORMAT:
        raise TrainStateError(
            f"{path}: not a deltalora trainer state (format {header.get('format')!r}); pass another --out"
        )
    return header, tensors


def restore_state(
    path: Path, gen: torch.nn.Module, opt: torch.optim.Optimizer, fingerprint: str, also: str | None = None
) -> int:
    """Load generator, optimizer and RNG from ``path``; returns the step to continue from.

    ``also`` is a second fingerprint accepted as the same run (an older version's fingerprint of it)."""
    header, tensors = read_state(path)
    if header["fingerprint"] not in {fingerprint, also}:
        raise TrainStateError(
            f"{path}: this run directory was trained with another config or teacher set; "
            "pass a new output directory (or delete it to start over)"
        )
    gen_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("gen.")}
    try:
        gen.load_state_dict(gen_sd, strict=True)
    except RuntimeError as exc:  # missing / unexpected keys or shapes
        first = " ".join(str(exc).split())[:200]
        raise TrainStateError(f"{path}: generator tensors do not match ({first}); delete it to restart") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return int(header["step"])


__all__ = ["STATE_NAME", "TrainStateError", "read_state", "restore_state", "save_state"]

"""Train one teacher LoRA on (prompt, target) pairs with a completion-only loss.

The LoRA lives in plain tensors injected by hooks (:func:`deltalora.lora.inject`), the same path
Δ extraction and generator training use, so the backbone is never wrapped or mutated. Only the
target tokens pass through the LM head (the answers are short; the head is a large share of a small
model's FLOPs). Checkpoints along the tail of the run are saved as PEFT directories, as DnD keeps
consecutive checkpoints of one run.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file, save_file

from ..backbones.precision import PrecisionDecision, canonical_precision, decide_precision, dtype_name, narrowed_linears
from ..config import LoraSpec, StrictModel
from ..errors import ConfigError
from ..lora import LoraLayout, LoraWeights, derive_layout, inject, peft_a_init, save_adapter, weights_hash
from ..paths import atomic_dir


class TeacherTrainConfig(StrictModel):
    lora: LoraSpec = LoraSpec(rank=8, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down"))
    steps: int = Field(120, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    max_length: int = Field(256, ge=8)
    checkpoints: int = Field(3, ge=1)  # how many checkpoints to keep along the tail
    checkpoint_every: int = Field(20, ge=1)  # spacing of the tail checkpoints, in steps
    # Precision of the teacher forward/backward (autocast over the weights; the saved adapters are float32):
    # auto (bfloat16 where the device does bf16 natively or measurably faster, else float32 —
    # deltalora.backbones.precision), float32 / fp32, bfloat16 / bf16. The zoo's fingerprint records the
    # effective dtype, never "auto". Deprecated spelling, still read from old YAMLs: bf16_autocast: true | false
    # (= precision: bfloat16 | float32); giving both is an error.
    precision: str = "auto"
    # Where the teachers' LoRA A start. canonical (default): one init for the whole zoo — every task, seed and
    # mixed teacher — drawn once from init_seed and stored in the zoo (init/, hashed in zoo_config.json); a job's
    # seed changes only its data order. Then ΔW of different tasks share one coordinate system and a generator's
    # weight loss has a signal (two seeds of one task: ΔW cosine 0.47 from one init, 0.01-0.02 from two).
    # per_seed: one init per zoo seed (drawn from the seed; spelled shared_init: true before). per_job: every job
    # draws its own (zoos built before this option; shared_init: false).
    init: Literal["canonical", "per_seed", "per_job"] = "canonical"
    init_seed: int = Field(0, ge=0)  # canonical only: what the zoo's one init is drawn from

    @model_validator(mode="before")
    @classmethod
    def _legacy_switches(cls, data):
        """Old boolean spellings still read from saved YAMLs: shared_init → init, bf16_autocast → precision."""
        data = _legacy_switch(data, "shared_init", "init", ("per_seed", "per_job"), "its old spelling", "canonical")
        return _legacy_switch(
            data, "bf16_autocast", "precision", ("bfloat16", "float32"), "its deprecated spelling", "auto"
        )

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        return canonical_precision(v)


def _legacy_switch(data, old: str, new: str, values: tuple[str, str], why: str, better: str):
    """``{old: true|false}`` → ``{new: values[0]|values[1]}``; giving both keys, or a non-boolean, is an error."""
    if not isinstance(data, dict) or old not in data:
        return data
    data = dict(data)
    flag = data.pop(old)
    if new in data:
        raise ValueError(f"gives both {new} and {old} ({why}); keep {new} and drop {old}")
    if not isinstance(flag, bool):
        raise ValueError(f"{old} ({why}) must be true or false, got {flag!r}; better write {new}: {better}")
    data[new] = values[0] if flag else values[1]
    return data


def teacher_precision(setting: str, device: torch.device | str, weights_dtype: torch.dtype) -> PrecisionDecision:
    """The dtype teacher training computes in: ``setting`` resolved on ``device`` (autocast), or the weights'
    own dtype when that is already as narrow (autocast only narrows). An explicit float32 over narrower
    weights cannot be honoured and is refused."""
    d = decide_precision(setting, device)
    if d.dtype.itemsize < weights_dtype.itemsize:
        return d
    if d.dtype != weights_dtype and canonical_precision(setting) != "auto":
        raise ConfigError(
            f"teacher.precision {setting} over {dtype_name(weights_dtype)} weights: autocast only narrows the "
            "weights' dtype; "
            f"load the backbone with runtime dtype float32 or set teacher.precision: auto"
        )
    return PrecisionDecision(weights_dtype, f"the weights are already {dtype_name(weights_dtype)}")


@dataclass
class Checkpoint:
    step: int
    path: Path
    train_loss: float  # mean loss over the last `checkpoint_every` steps


def peft_init(layout: LoraLayout, generator: torch.Generator) -> LoraWeights:
    """PEFT's default init: A ~ kaiming-uniform(a=√5) (nn.Linear's), B = 0, so ΔW = 0 at step 0."""
    A, B = {}, {}
    for s in layout.slots:
        A[s.key] = peft_a_init(s.a_shape, s.in_features, generator)
        B[s.key] = torch.zeros(s.b_shape)
    return LoraWeights(layout, A, B)


def tokenize_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of prompt + target + eos, and where the target starts; prompts are cut from the left."""
    eos = tokenizer.eos_token or ""
    out = []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target + eos, add_special_tokens=False)["input_ids"][: max_length // 2]
        p = p[-(max_length - len(t)) :]
        out.append((p + t, len(p)))
    return out


def collate(examples: list[tuple[list[int], int]], pad_id: int):
    """Right-padded ids, attention mask, and a mask of the positions whose *next* token is a target."""
    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    predict = torch.zeros((len(examples), n), dtype=torch.bool)
    for i, (seq, start) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        predict[i, start - 1 : len(seq) - 1] = True  # position j predicts token j+1
    return ids, mask, predict


def completion_loss(model, ids, mask, predict) -> torch.Tensor:
    """Mean cross-entropy of the target tokens, with the LM head applied only where it is needed."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.lm_head(hidden[predict]).float()
    labels = ids[:, 1:][predict[:, :-1]]
    return F.cross_entropy(logits, labels)


def train_teacher(
    backbone,
    pairs: Sequence[tuple[str, str]],
    cfg: TeacherTrainConfig,
    out_dir: Path,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
    progress=None,
    init_seed: int | None = None,
    precision: torch.dtype | None = None,
    init: LoraWeights | None = None,
    resume_dir: Path | None = None,
    save_every: int = 25,
) -> list[Checkpoint]:
    """Train a LoRA on ``pairs`` and save the tail checkpoints under ``out_dir/step{N}``.

    ``seed`` orders the data and, unless ``init`` (a starting adapter: the zoo's canonical init) or ``init_seed``
    is given, draws the LoRA init. ``precision`` is the
    dtype to compute in (the zoo passes the one it fingerprinted); by default :func:`teacher_precision` of
    ``cfg.precision`` on the backbone's device.

    ``resume_dir`` makes a long run resumable after a kill: every ``save_every`` steps the whole training state
    (LoRA, AdamW moments, schedule, data order, losses, the tail checkpoints saved so far) is written there
    atomically, and a call that finds it continues from it — bit-identical to a run never stopped. It must belong
    to this run alone (the caller keys it by recipe); a state of another recipe is refused. It is removed when the
    run ends."""
    if not pairs:
        raise ValueError("train_teacher needs at least one (prompt, target) pair")
    weights_dtype = next(backbone.model.parameters()).dtype
    if precision is None:
        precision = teacher_precision(cfg.precision, backbone.device, weights_dtype).dtype
    elif precision.itemsize > weights_dtype.itemsize:
        raise ValueError(f"precision {precision} is wider than the {weights_dtype} weights; autocast only narrows")
    narrow = precision.itemsize < weights_dtype.itemsize
    layout = derive_layout(backbone.arch, cfg.lora)
    if init is None:
        init = peft_init(layout, torch.Generator().manual_seed(seed if init_seed is None else init_seed))
    elif init.layout.signature != layout.signature or init.num_adapters is not None:
        raise ValueError("init must be one adapter of the teacher's LoRA layout (cfg.lora on this backbone)")
    init = _detached_cpu(init).to(backbone.device)  # a fresh copy: training changes it in place
    params = [t.requires_grad_(True) for t in init.tensors()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    data = tokenize_pairs(backbone.tokenizer, pairs, cfg.max_length)
    order: list[int] = []
    rng = random.Random(seed)
    keep = {cfg.steps - i * cfg.checkpoint_every for i in range(cfg.checkpoints)}
    keep = {s for s in keep if s > 0}
    pad = backbone.tokenizer.pad_token_id
    losses: list[float] = []
    saved: list[Checkpoint] = []
    first = 1
    run_id = {
        "cfg": cfg.model_dump(mode="json"),
        "seed": seed,
        "items": len(data),
        "data": _digest_ids(data),
        "precision": dtype_name(precision),
        "init": weights_hash(init) if resume_dir is not None else None,  # before the first step changes them
    }
    resume_dir = Path(resume_dir) if resume_dir is not None else None
    ckpt_root = resume_dir if resume_dir is not None else Path(out_dir)  # tail checkpoints live with the state
    if resume_dir is not None and (resume_dir / _STATE).is_dir():
        done, losses, order, rng_state, saved = _load_state(resume_dir, run_id, params, opt, sched)
        rng.setstate(rng_state)
        first = done + 1
    model = backbone.model
    with narrowed_linears(model, precision if narrow else None):
        for step in range(first, cfg.steps + 1):
            batch = []
            while len(batch) < cfg.batch_size:
                if not order:
                    order = list(range(len(data)))
                    rng.shuffle(order)
                batch.append(data[order.pop()])
            ids, mask, predict = (t.to(backbone.device) for t in collate(batch, pad))
            with inject(model, init), torch.autocast(backbone.device.type, dtype=precision, enabled=narrow):
                loss = completion_loss(model, ids, mask, predict)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress is not None:
                progress(step, losses[-1])
            if step in keep:
                recent = losses[-cfg.checkpoint_every :]
                path = save_adapter(
                    _detached_cpu(init),
                    ckpt_root / f"step{step}",
                    base_model_name_or_path=backbone.name,
                    metadata={**(metadata or {}), "step": str(step), "seed": str(seed)},
                )
                saved.append(Checkpoint(step=step, path=path, train_loss=sum(recent) / len(recent)))
            if resume_dir is not None and step % save_every == 0 and step < cfg.steps:
                _save_state(resume_dir, run_id, step, params, opt, sched, losses, order, rng.getstate(), saved)
    if resume_dir is not None:  # the finished run: checkpoints to their place, the state gone
        for c in saved:
            dest = Path(out_dir) / c.path.name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(str(c.path), str(dest))
            c.path = dest
        shutil.rmtree(resume_dir, ignore_errors=True)
    return saved


_STATE = "state"  # resume_dir/state: state.safetensors (tensors) + state.json (the rest), replaced atomically


def _digest_ids(data: Sequence[tuple[list[int], int]]) -> str:
    h = hashlib.sha256()
    for ids, start in data:
        h.update(json.dumps([start, ids]).encode())
    return h.hexdigest()


def _save_state(resume_dir: Path, run_id: dict, step: int, params, opt, sched, losses, order, rng_state, saved):
    opt_sd = opt.state_dict()
    tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
    for i, st in opt_sd["state"].items():
        for name, t in st.items():
            tensors[f"opt.{i}.{name}"] = t.detach().cpu().contiguous()
    meta = {
        "run": run_id,
        "step": step,
        "losses": losses,
        "order": order,
        "rng": [rng_state[0], list(rng_state[1]), rng_state[2]],
        "param_groups": opt_sd["param_groups"],
        "sched": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
        "saved": [{"step": c.step, "dir": c.path.name, "train_loss": c.train_loss} for c in saved],
    }
    resume_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(resume_dir / _STATE) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")


def _load_state(resume_dir: Path, run_id: dict, params, opt, sched):
    """Restore what :func:`_save_state` wrote into ``params``, ``opt`` and ``sched``; returns (step, losses, order,
    rng state, saved checkpoints)."""
    d = resume_dir / _STATE
    try:
        meta = json.loads((d / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(d / "state.safetensors"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{d}: unreadable training state ({e}); delete {resume_dir} to train from the start") from e
    if meta.get("run") != json.loads(json.dumps(run_id)):
        raise ValueError(
            f"{d}: a training state of another run (recipe, seed, data or init differ); delete {resume_dir} to train "
            "this one from the start"
        )
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"].to(p.device))
    state = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**meta["sched"], "lr_lambdas": [None] * len(sched.lr_lambdas)})
    saved = [Checkpoint(c["step"], resume_dir / c["dir"], c["train_loss"]) for c in meta["saved"]]
    for c in saved:
        if not c.path.is_dir():
            raise ValueError(f"{c.path}: a checkpoint the training state lists is missing; delete {resume_dir}")
    rng = meta["rng"]
    return meta["step"], meta["losses"], meta["order"], (rng[0], tuple(rng[1]), rng[2]), saved


def _detached_cpu(w: LoraWeights) -> LoraWeights:
    return LoraWeights(
        w.layout,
        {k: v.detach().to("cpu").clone() for k, v in w.A.items()},
        {k: v.detach().to("cpu").clone() for k, v in w.B.items()},
    )

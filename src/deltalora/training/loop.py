"""The one generator-training loop: L = L_weights + λ(t)·L_Δ, resumable, DDP-aware.

    result = train_generator(cfg, dataset, backbone, out_dir)     # dataset: TeacherDataset(split="train")

Every step draws ``batch_size`` teachers (the data order is a pure function of (seed, step): epoch e is
a seeded permutation, conditions are resampled per epoch), generates their adapters, and takes
L_weights on all of them and — once λ(t) > 0 — L_Δ on the first ``delta_batch``, whose Δ comes from a
forward of the frozen backbone over the probes with the generated LoRA injected (:class:`DeltaProbe`).
AdamW, linear warm-up then cosine LR, gradient clipping.

Files in ``out_dir``: ``log.jsonl`` (one record per logged step), ``trainer_state.safetensors`` (every
``save_every`` steps and at the end; see :mod:`.state`), ``generator.safetensors`` (the final
generator, what ``deltalora generate`` reads) and ``train_config.json``. Killed at any point, the same
call resumes from the last saved state; on CPU the final weights and losses equal an uninterrupted run's.

Under ``torchrun`` (``torch.distributed`` initialised) only the generator is wrapped in
DistributedDataParallel; each rank takes every world-th teacher of the global batch, the LR schedule
runs on every rank, logging and saving happen on rank 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..deltas import AnswerLogProbs, DeltaProbe, TaskProbes, answer_kl, is_task_probes, remove_shared
from ..errors import ConfigError
from ..generators import build_generator
from ..generators.checkpoint import save_generator
from ..generators.library import TeacherLibrary
from ..lora import LoraWeights
from ..tasks import Task, stable_seed
from .config import LATER_DEFAULTS, TrainConfig
from .data import TeacherDataset, collate_teachers
from .losses import WeightLoss, cosine, delta_loss, head, product_sq_norm
from .state import STATE_NAME, read_state, restore_state, save_state

LOG_NAME = "log.jsonl"
GENERATOR_NAME = "generator.safetensors"
FIT_NAME = "fit.json"  # the weight-loss floor of the training teachers (WeightLoss.floor)


@dataclass
class TrainResult:
    generator: Path
    steps: int
    last: dict  # the last log record
    seconds: float  # wall time of this call's steps
    resumed_from: int
    module: torch.nn.Module | None = None  # the trained generator, in memory
    # L_weights if the generator output each task's mean teacher exactly (WeightLoss.floor): what the tail loss is
    # judged against; also in <out>/fit.json
    weight_loss_floor: float | None = None


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr_ratio·lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_positions(cfg: TrainConfig, n: int, step: int) -> list[tuple[int, int]]:
    """(dataset index, epoch) of the global batch of ``step``: consecutive slices of a stream of seeded epoch
    permutations."""
    out = []
    for pos in range(step * cfg.batch_size, (step + 1) * cfg.batch_size):
        epoch, j = divmod(pos, n)
        g = torch.Generator().manual_seed(stable_seed("train-order", cfg.seed, epoch) % (2**63))
        out.append((int(torch.randperm(n, generator=g)[j]), epoch))
    return out


# Settings a run at λ = 0 never reads: a weight-only generator is the same whatever they say, so it is reusable
# across Δ variants of a preset (e.g. ``deltalora run --set train.delta_loss=specific_cosine``).
DELTA_ONLY_FIELDS = ("delta_batch", "delta_loss", "probes", "representation", "probe_dtype")


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """The config as the run reads it: at λ = 0 the Δ-only settings are reset to their defaults, so every Δ variant
    of a preset names (and records) the same weight-only run."""
    if cfg.uses_delta:
        return cfg
    return cfg.model_copy(update={k: TrainConfig.model_fields[k].default for k in DELTA_ONLY_FIELDS})


def recorded_config(cfg: TrainConfig) -> dict:
    """What ``train_config.json`` and the generator checkpoint record: the effective config, plus, at λ = 0, which
    settings were not read."""
    out = json.loads(effective_config(cfg).model_dump_json())
    if not cfg.uses_delta:
        out["unused_at_lambda_0"] = list(DELTA_ONLY_FIELDS)
    return out


def _fingerprint_json(cfg: TrainConfig) -> str:
    """The config's JSON without the fields added later while they hold their defaults: a run fingerprinted before
    they existed keeps its fingerprint (and resumes)."""
    at_default = {k for k, v in LATER_DEFAULTS.items() if json.loads(cfg.model_dump_json(include={k}))[k] == v}
    return cfg.model_dump_json(exclude=at_default)


def fingerprint(cfg: TrainConfig, dataset: TeacherDataset, world: int, legacy: bool = False) -> str:
    """What makes a run directory's state reusable: the config, the teacher set, their Δ, the world size and, where
    prompts are held back, which part of each condition pool the teachers draw (``TeacherDataset.condition_parts``).

    Without the Δ loss (λ = 0) the Δ-only settings and the teachers' Δ spec are left out. ``legacy`` gives the
    fingerprint that earlier versions wrote (everything included), which a resume still accepts.
    """
    spec = dataset.deltas_spec.__dict__
    if not cfg.uses_delta and not legacy:
        cfg = effective_config(cfg)
        spec = None
    h = hashlib.sha256(_fingerprint_json(cfg).encode())
    h.update(json.dumps([dataset.ids, dataset.heldout, spec, world, dataset.seed]).encode())
    if dataset.condition_parts:  # prompts held back for the seen tasks: a state trained on whole pools must not resume
        h.update(json.dumps(dataset.condition_parts, sort_keys=True).encode())
    return h.hexdigest()


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across(values: dict[str, float | None], world: int) -> dict[str, float | None]:
    """Average the non-None scalars over ranks (each rank logs its local microbatch)."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor(
        [[0.0 if values[k] is None else float(values[k]), 0.0 if values[k] is None else 1.0] for k in keys],
        dtype=torch.float64,
    )
    dist.all_reduce(t)
    return {k: (None if t[i, 1] == 0 else float(t[i, 0] / t[i, 1])) for i, k in enumerate(keys)}


class _FusedForward:
    """One forward for the Δ loss and the KL tether when both use the same task probes: the answers' forward over
    prompt + answer gives the answer log-probs and, pooled over the prompt tokens, v; Δ = v − v(B) of the probe.
    ``ok(groups)`` says whether every group's prompts tokenise exactly as its probes (checked once per group);
    where not, the loop runs the two forwards as before."""

    def __init__(self, probe: DeltaProbe, answers: AnswerLogProbs):
        self.probe, self.answers = probe, answers
        self.enabled = probe.shares_forward_with(answers)
        self._checked: dict[tuple[str, ...], bool] = {}

    def ok(self, groups) -> bool:
        if not self.enabled:
            return False
        for g in groups:
            key = (g,) if isinstance(g, str) else tuple(g)
            if key not in self._checked:
                self._checked[key] = self.answers.prompts_are(key, self.probe.probe_texts(key))
            if not self._checked[key]:
                return False
        return True

    def __call__(self, weights, groups) -> tuple[torch.Tensor, torch.Tensor]:
        logp, v = self.answers(weights, groups, rep=self.probe.rep)
        return logp, self.probe.delta_of(v, groups)


def _truncate_log(path: Path, before_step: int) -> None:
    """Keep the log records of steps < ``before_step`` (a resumed run rewrites the rest); drop a torn tail."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", before_step) < before_step:
            kept.append(line)
    path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the [tensorboard] extra is not installed
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train_generator(
    cfg: TrainConfig,
    dataset: TeacherDataset,
    backbone,
    out_dir: str | Path,
    *,
    meta: dict | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    tasks: Mapping[str, Task] | None = None,
) -> TrainResult:
    """Train (or resume, or return a finished) generator on ``dataset``; see the module docstring.

    ``meta`` goes into the generator checkpoint (``encoder`` must name the condition encoder);
    ``stop_after`` stops after that many steps of this call (for tests and time-boxed runs); ``tasks`` (name ->
    Task) are the zoo's tasks, which the KL tether (``cfg.kl``) reads its answer items from.
    """
    out = Path(out_dir)
    rank, world = _dist()
    device = backbone.device
    meta = dict(meta or {})
    meta.setdefault("encoder", cfg.encoder)
    meta.setdefault("backbone", backbone.name)
    meta.setdefault("condition_form", cfg.condition_form)
    final = out / GENERATOR_NAME
    state_path = out / STATE_NAME
    fp = fingerprint(cfg, dataset, world)

    examples = [dataset.example(i, 0) for i in range(len(dataset))]  # one pass: weights and Δ of every teacher
    teachers = LoraWeights.stack([e.weights for e in examples])
    # the teachers and the zoo's canonical init, for generators that read them (compact's A0, mixture's members)
    library = TeacherLibrary.from_zoo(dataset.zoo, dataset.ids, dataset.layout.arch, weights=teachers)
    torch.manual_seed(cfg.seed)
    gen = build_generator(
        cfg.generator,
        dataset.layout,
        cond_dim=dataset.cond_dim,
        n_prompts=cfg.n_prompts,
        library=library,
        **cfg.generator_options,
    ).to(device)
    del library
    out_layout = getattr(gen, "out_layout", dataset.layout)
    if out_layout.signature != dataset.layout.signature and cfg.weight_loss != "product":
        raise ConfigError(
            f"generator {cfg.generator!r} outputs rank-{out_layout.spec.rank} adapters, which only the product "
            f"weight loss compares with rank-{dataset.layout.spec.rank} teachers; set train.weight_loss: product"
        )
    decay = [p for n, p in gen.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in gen.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    start = 0
    if state_path.exists():
        start = restore_state(state_path, gen, opt, fp, also=fingerprint(cfg, dataset, world, legacy=True))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(recorded_config(cfg), indent=2), encoding="utf-8")
        _truncate_log(out / LOG_NAME, start)
    model = gen
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(gen, device_ids=[device.index] if device.type == "cuda" else None)

    answers = None
    if cfg.uses_kl:
        if tasks is None:
            raise ConfigError("train.kl needs the zoo's tasks (its answer items): pass tasks= to train_generator")
        answers = AnswerLogProbs(backbone, TaskProbes(cfg.kl_probes, tasks, backbone.tokenizer), cfg.kl_answer_tokens)
    # the teachers' mean Σ‖ΔW‖²: the norm penalty's unit, so μ is scale-free like λ
    norm_unit = float(product_sq_norm(teachers).mean()) if cfg.norm_penalty > 0 else 1.0
    wloss = WeightLoss(cfg.weight_loss, teachers, cfg.token_weighting)
    floor = wloss.floor(teachers, ["+".join(e.components) for e in examples])
    wloss = wloss.to(device)
    if rank == 0:
        fit = {"weight_loss": cfg.weight_loss, "weight_loss_floor": floor, "teachers": len(examples)}
        (out / FIT_NAME).write_text(json.dumps(fit, indent=2), encoding="utf-8")
    del examples, teachers
    delta_scale = max(float(dataset.deltas.square().sum(-1).mean()), 1e-12)
    shared = dataset.mean_delta().to(device)  # the shift every teacher shares (specific_cosine loss, log)
    task_probes = dataset.task_probes
    if cfg.uses_delta and (
        is_task_probes(cfg.probes) != (task_probes is not None)
        or (task_probes is not None and task_probes.name != cfg.probes)
    ):
        have = task_probes.name if task_probes is not None else dataset.deltas_spec.probes
        raise ConfigError(
            f"train.probes is {cfg.probes} but the teacher dataset holds Δ over {have}; build the dataset with the "
            "probes the Δ loss uses (task probes: TeacherDataset(..., task_probes=TaskProbes(...)))"
        )
    probes = task_probes if task_probes is not None else cfg.probes
    probe = DeltaProbe(backbone, probes, cfg.representation, cfg.probe_dtype) if cfg.uses_delta else None
    # Δ and KL on the same task probes: one forward over prompt + answer serves both (the KL needs it anyway, and no
    # prompt position sees the answer), instead of a second forward and backward over the prompts for Δ
    fuse = _FusedForward(probe, answers) if probe is not None and answers is not None else None

    log = (out / LOG_NAME).open("a", encoding="utf-8") if rank == 0 else None
    tb = _tensorboard(out) if rank == 0 else None
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {out.name}", disable=not progress or rank != 0, leave=False)
    record: dict = {}
    t_call = time.perf_counter()
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            positions = batch_positions(cfg, len(dataset), step)
            mine = positions[rank::world]
            n_delta = len(range(rank, cfg.delta_batch, world))
            batch = collate_teachers([dataset.example(i, e) for i, e in mine]).to(device)
            gen.train()
            pred = model(batch.conditions)
            lw = wloss(pred, batch.weights)
            lam = cfg.lam.at(step)
            loss = cfg.weight_scale * lw
            ld = cos = scos = pnorm = tnorm = lkl = lnorm = None
            lam_kl = cfg.kl.at(step)
            student_logp = None
            if lam > 0 and lam_kl > 0 and n_delta > 0 and fuse is not None and fuse.ok(batch.components[:n_delta]):
                student_logp, d_pred = fuse(head(pred, n_delta), batch.components[:n_delta])
            elif lam > 0 and n_delta > 0:
                d_pred = probe(head(pred, n_delta), batch.components[:n_delta] if task_probes is not None else None)
            if lam > 0 and n_delta > 0:
                d_t = batch.deltas[:n_delta]
                ld_t = delta_loss(d_pred, d_t, cfg.delta_loss, delta_scale, shared=shared)
                loss = loss + lam * ld_t
                ld = float(ld_t.detach())
                cos = float(cosine(d_pred, d_t).mean())
                scos = float(cosine(remove_shared(d_pred, shared), remove_shared(d_t, shared)).mean())
                pnorm, tnorm = float(d_pred.detach().norm(dim=-1).mean()), float(d_t.norm(dim=-1).mean())
            if lam_kl > 0 and n_delta > 0:  # the KL tether, on the same prefix of the batch as the Δ loss
                groups = batch.components[:n_delta]
                with torch.no_grad():
                    teacher_logp = answers(head(batch.weights, n_delta), groups)
                if student_logp is None:
                    student_logp = answers(head(pred, n_delta), groups)
                kl_t = answer_kl(teacher_logp, student_logp, answers.mask(groups)).mean()
                loss = loss + lam_kl * kl_t
                lkl = float(kl_t.detach())
            if cfg.norm_penalty > 0:
                norm_t = product_sq_norm(pred).mean() / norm_unit
                loss = loss + cfg.norm_penalty * norm_t
                lnorm = float(norm_t.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip))
            opt.step()
            vals = _mean_across(
                {
                    "loss": float(loss.detach()),
                    "loss_weights": float(lw.detach()),
                    "loss_delta": ld,
                    "delta_cosine": cos,
                    "delta_cosine_specific": scos,
                    "delta_norm_pred": pnorm,
                    "delta_norm_teacher": tnorm,
                    "loss_kl": lkl,
                    "weight_norm": lnorm,
                },
                world,
            )
            record = {
                "step": step,
                **vals,
                "lambda": lam,
                "lambda_kl": lam_kl,
                "lr": lr,
                "grad_norm": gnorm,
                "epoch": positions[0][1],
                "step_seconds": round(time.perf_counter() - t0, 4),
            }
            if rank == 0:
                if step % cfg.log_every == 0 or step == cfg.steps - 1:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if tb is not None:
                        for k, v in record.items():
                            if k != "step" and isinstance(v, float):
                                tb.add_scalar(k, v, step)
                bar.update(1)
                bar.set_postfix(
                    lw=f"{record['loss_weights']:.4f}", ld="-" if ld is None else f"{record['loss_delta']:.4f}"
                )
            done = step + 1
            if done % cfg.save_every == 0 or done == end:
                if rank == 0:
                    save_state(state_path, gen, opt, done, fp, {"last": record})
                if world > 1:
                    dist.barrier()
    finally:
        bar.close()
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()
    seconds = time.perf_counter() - t_call
    steps_done = max(start, end)
    if steps_done >= cfg.steps and rank == 0 and not final.exists():
        save_generator(
            gen,
            final,
            {**meta, "train_config": recorded_config(cfg), "train_ids": dataset.ids, "heldout": dataset.heldout},
        )
    if not record and state_path.exists():
        record = read_state(state_path)[0]["extra"].get("last", {})
    return TrainResult(
        generator=final,
        steps=steps_done,
        last=record,
        seconds=seconds,
        resumed_from=start,
        module=gen,
        weight_loss_floor=floor,
    )


__all__ = [
    "GENERATOR_NAME",
    "LOG_NAME",
    "TrainResult",
    "batch_positions",
    "effective_config",
    "fingerprint",
    "lr_at",
    "recorded_config",
    "train_generator",
]

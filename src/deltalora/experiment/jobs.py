"""The experiment's jobs from config files: the held-out run, one generator (torchrun-ready) and the ablation sweep.

Each reads its YAML (``overrides``: ``--set``-style ``KEY=VALUE`` pairs laid over it) and returns where its result is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import parse_overrides
from ..errors import ConfigError
from ..training import TrainResult, train_generator
from ..training.distributed import barrier, init_distributed, is_distributed, leave_distributed, rank
from .ablate import run_ablation
from .compose import run_compose
from .config import load_ablation_config, load_compose_config, load_run_config, load_scaling_config
from .run import prepare, run_experiment
from .scaling import run_scaling


def _study(load, study, config, out, overrides: Sequence[str], progress: bool, command: str | None) -> Path:
    """Load a study's YAML (``overrides`` laid over it) and run it into ``out`` (default ``runs/<name>``)."""
    cfg = load(config, parse_overrides(list(overrides)))
    dest = Path(out) if out is not None else Path("runs") / cfg.name
    return study(cfg, dest, progress=progress, command=command)


def run_from_config(
    config: str | Path,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """:func:`~deltalora.experiment.run_experiment` of the run config into ``out`` (default ``runs/<name>``); the
    report's path. ``command`` is recorded in the results as what started the run."""
    return _study(load_run_config, run_experiment, config, out, overrides, progress, command)


def train_variant(
    config: str | Path,
    out: str | Path,
    variant: str = "delta",
    seed: int = 0,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[int, TrainResult]:
    """Train one generator ``variant`` (``RunConfig.variants``: weight_only, delta, the ``compare`` names) with
    ``seed`` into ``out``, on the run's zoo and Δ in ``run_dir`` (default ``runs/<name>``); (this process's rank,
    the result).

    Under torchrun it joins the process group: rank 0 prepares what is missing, the other ranks wait and then
    read it, every rank trains its share of each batch (DDP), and the group is left when training ends.
    """
    cfg = load_run_config(config, parse_overrides(list(overrides)))
    if variant not in cfg.variants:
        raise ConfigError(f"--arm {variant!r}: use one of {', '.join(cfg.variants)}")
    init_distributed()
    me = rank()
    dest = Path(run_dir) if run_dir is not None else Path("runs") / cfg.name
    if me == 0:
        ctx = prepare(cfg, dest, progress=True)  # builds what is missing, once
    if is_distributed():
        barrier()
        if me != 0:
            ctx = prepare(cfg, dest, progress=False)  # everything is cached by now
    try:
        res = train_generator(
            cfg.arm_config(variant, seed),
            ctx.train_set,
            ctx.backbone,
            out,
            progress=me == 0,
            meta={"encoder": cfg.train.encoder, "heldout_tasks": ctx.heldout},
            tasks=ctx.tasks,
        )
    finally:
        leave_distributed()
    return me, res


def ablate_from_config(config: str | Path, out: str | Path = "runs/ablate", progress: bool = True) -> Path:
    """:func:`~deltalora.experiment.ablate.run_ablation` of the ablation config into ``out``; the table's path."""
    return run_ablation(load_ablation_config(config), out, progress=progress)


def compose_from_config(
    config: str | Path,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """:func:`~deltalora.experiment.compose.run_compose` of the compose config; the path of compositionality.md."""
    return _study(load_compose_config, run_compose, config, out, overrides, progress, command)


def scale_from_config(
    config: str | Path,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """:func:`~deltalora.experiment.scaling.run_scaling` of the scaling config; the path of scaling.md."""
    return _study(load_scaling_config, run_scaling, config, out, overrides, progress, command)


__all__ = ["ablate_from_config", "compose_from_config", "run_from_config", "scale_from_config", "train_variant"]

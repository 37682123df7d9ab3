"""``deltalora run`` / ``deltalora ablate`` configs: one held-out experiment, end to end.

A run names a zoo config (the backbone, tasks and teacher recipe live there), which tasks to hold
out, the generator-training config shared by both generator variants (the Δ-augmented one uses ``train.lam``,
the weight-only one the same config with λ = 0), how many generator seeds and generated adapters per
held-out task, how to evaluate, what the report's targets ask (``targets``) and which training tasks the
seen-task section scores from prompts held back from training (``seen``). Relative paths are
resolved against the YAML's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ..backbones.precision import canonical_precision
from ..config import StrictModel, deep_merge, load_yaml, model_validate_or_raise
from ..errors import ConfigError
from ..lora.merge import MERGE_METHODS
from ..training import LambdaSchedule, TrainConfig
from ..zoo import load_zoo_config


class EvalConfig(StrictModel):
    split: str = "eval"
    limit: int | None = Field(50, ge=1)  # eval items per held-out task (None = the whole split)
    batch_rows: int = Field(32, ge=1)
    # float32 (the default: every number in results/ so far) | bfloat16 | auto. Narrower than the weights runs the
    # evaluator under autocast: faster on CPUs with native bf16, some predictions change (benchmarks/eval_speed.py
    # --precision bfloat16 measures how many). Cached scores are keyed by it.
    precision: str = "float32"

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        return canonical_precision(v)


class TargetConfig(StrictModel):
    """What the report's targets ask of the Δ-augmented generator, and how far beyond noise a comparison must be.

    Recorded in results.json with the rest of the run config; a results.json from before these were configurable
    renders with the defaults, which are the values the report always used.
    """

    recovers_oracle_gain: float = Field(0.8, gt=0)  # (b): share of the oracle's gain over base to recover
    delta_cosine_to_oracle: float = Field(0.8, ge=-1, le=1)  # (c): mean Δ-cosine to the oracle teacher to reach
    noise_se: float = Field(2.0, ge=0)  # (a), (d): the mean difference must exceed this many standard errors
    # seen tasks: median share of the own teachers' gain the Δ-augmented adapters recover (random conditions must
    # also lose accuracy there, beyond noise as in (d))
    seen_recovers_gain: float = Field(0.9, gt=0)


class SeenConfig(StrictModel):
    """The seen-task section: how well the generator reproduces its training tasks from prompts it never saw.

    Every training task's condition pool is split (a deterministic function of the task and ``seed``); the
    generators train on the kept part only, and ``tasks`` training tasks, stratified by family, get adapters
    generated from the held-back part, scored beside base and their own teachers. ``tasks: 0`` turns the section
    off and trains on whole pools, as runs did before it existed.
    """

    tasks: int = Field(8, ge=0)  # seen tasks to evaluate; all training tasks when they are fewer
    fraction: float = Field(0.25, gt=0, lt=1)  # share of every training task's condition pool held back
    seed: int = 0  # the pool split and the choice of seen tasks


class CompareGenerator(StrictModel):
    """Another generator trained beside the two variants, with a row of its own in both report sections: the run's
    ``train`` config with ``generator`` and ``generator_options`` replaced, at λ = 0 (weight loss only) unless
    ``train`` overrides more — any training settings, merged key by key onto the run's, e.g. B1 Δ-only training:
    ``{weight_scale: 0, lam: {target: 1}, probes: task:train:8, kl: {target: 0.5}, norm_penalty: 0.1}``."""

    generator: str
    generator_options: dict = Field(default_factory=dict)
    train: dict = Field(default_factory=dict)
    label: str | None = None  # the report row's label (default: "<generator> generator (λ=0)")


class RetrievalRow(StrictModel):
    """A retrieve-and-merge baseline row: the top-k training teachers by ``by``, merged with ``merge``."""

    by: str = "delta"  # delta (predicted Δ̂ vs teacher Δ) | condition (prompt embeddings, no Δ)
    merge: str = "avg"  # a merge method of deltalora.lora.merge (avg, svd, ties, dare, dare_ties)
    label: str | None = None

    @field_validator("by")
    @classmethod
    def _by(cls, v: str) -> str:
        if v not in ("delta", "condition"):
            raise ValueError(f"by must be delta or condition, got {v!r}")
        return v

    @field_validator("merge")
    @classmethod
    def _merge(cls, v: str) -> str:
        if v not in MERGE_METHODS:
            raise ValueError(f"unknown merge method {v!r}; use one of {', '.join(MERGE_METHODS)}")
        return v


class PredictorConfig(StrictModel):
    """The Δ predictor of the Δ-retrieval rows (one per generator seed, trained on the training teachers' Δ)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    hidden: int = Field(256, ge=1)
    loss: str = "cosine"


class MultitaskBaseline(StrictModel):
    """One LoRA trained with the teachers' recipe on the union of the training tasks' train splits, per zoo seed."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: int | None = Field(None, ge=1)  # None: the teachers' steps × the number of training tasks


class ArrowBaseline(StrictModel):
    """PEFT's Arrow routing over one expert per training task (its zoo seed-``expert_seed`` teacher, last step)."""

    top_k: int = Field(3, ge=1)
    temperature: float = Field(1.0, gt=0)
    expert_seed: int = 0
    batch_rows: int = Field(8, ge=1)  # Arrow runs every expert for every token: smaller batches than the evaluator's


class BaselineConfig(StrictModel):
    """The baselines a user would try without a generator, each a report row. Empty: none (as runs before them)."""

    retrieval: dict[str, RetrievalRow] = Field(default_factory=dict)  # row name -> retrieve-and-merge row
    k: int = Field(3, ge=1)  # teachers retrieved per adapter
    temperature: float = Field(0.1, gt=0)  # merge weights softmax(cosine / temperature) over the k
    # conditions per generator seed each retrieval row answers (None: the run's adapters_per_seed, the generators')
    adapters_per_seed: int | None = Field(None, ge=1)
    predictor: PredictorConfig = PredictorConfig()
    multitask: MultitaskBaseline | None = None
    arrow: ArrowBaseline | None = None

    def rows(self) -> list[str]:
        return [*self.retrieval, *(["multitask"] if self.multitask else []), *(["arrow"] if self.arrow else [])]


BUILTIN_ROWS = ("base", "average_merge", "weight_only", "delta", "oracle", "delta_random_condition")


class RunConfig(StrictModel):
    name: str = "run"
    zoo: str  # zoo YAML (deltalora zoo build --config); relative to this file
    zoo_dir: str | None = None  # build/reuse the zoo here (default: <out>/zoo)
    # keys of the zoo config to change for this run, nested as in the zoo YAML, e.g. {teacher: {shared_init: true}}
    # (`--set zoo_set.teacher.shared_init=true`): a variant of a zoo without a second, near-identical YAML
    zoo_set: dict = Field(default_factory=dict)
    heldout: list[str] = Field(default_factory=list)  # tasks never seen in training; or heldout_count of them
    heldout_count: int = Field(0, ge=0)
    heldout_seed: int = 0
    train: TrainConfig
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # generator training seeds
    adapters_per_seed: int = Field(2, ge=1)  # generated adapters per held-out task and seed (condition samples)
    random_condition: bool = True  # also evaluate the Δ-augmented generator on random conditions
    average_merge: bool = True  # also evaluate the mean ΔW of the training teachers
    delta_batch_adapters: int = Field(8, ge=1)  # adapters per forward when computing teacher Δ
    eval: EvalConfig = EvalConfig()
    targets: TargetConfig = TargetConfig()
    seen: SeenConfig = SeenConfig()
    # more generators to compare, each a variant (trained per seed, λ = 0) and a report row named by its key, e.g.
    # {mixture: {generator: mixture}}: the library-mixture generator beside the weight-only and Δ-augmented ones
    compare: dict[str, CompareGenerator] = Field(default_factory=dict)
    # baselines without a generator (retrieve-and-merge, multi-task LoRA, Arrow), rows after the average merge
    baselines: BaselineConfig = BaselineConfig()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError(f"seeds must be distinct non-negative integers, got {v}")
        return v

    @field_validator("compare")
    @classmethod
    def _compare(cls, v: dict) -> dict:
        for name in v:
            if name in BUILTIN_ROWS or not name.replace("_", "").isalnum():
                raise ValueError(
                    f"compare: {name!r} must be a new row name (letters, digits, _), not one of "
                    f"{', '.join(BUILTIN_ROWS)}"
                )
        return v

    @property
    def variants(self) -> tuple[str, ...]:
        """Every generator variant of the run, in report order: weight-only, Δ-augmented, then ``compare``'s."""
        return ("weight_only", "delta", *self.compare)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        taken = [r for r in self.baselines.rows() if r in BUILTIN_ROWS or r in self.compare]
        bad = [r for r in self.baselines.retrieval if not r.replace("_", "").isalnum() or r in ("multitask", "arrow")]
        if taken or bad:
            raise ValueError(
                f"baselines.retrieval: row name(s) {taken + bad} are taken or not letters, digits and _; name each "
                "row anew"
            )
        if bool(self.heldout) == bool(self.heldout_count):
            raise ValueError("name the held-out tasks with exactly one of heldout: [...] or heldout_count: N")
        if not self.train.uses_delta:
            raise ValueError(
                "train.lam.target must be > 0: it is the Δ-augmented variant's λ (the weight-only variant uses 0)"
            )
        return self

    def arm_config(self, variant: str, seed: int) -> TrainConfig:
        """The training config of one generator variant (``weight_only``, ``delta`` or a ``compare`` name: what
        ``deltalora train --arm`` names) and seed."""
        if variant not in self.variants:
            raise ConfigError(f"unknown generator variant {variant!r}; use one of {', '.join(self.variants)}")
        lam = self.train.lam if variant == "delta" else LambdaSchedule()
        update = {"lam": lam, "seed": seed}
        if variant in self.compare:
            other = self.compare[variant]
            update.update(generator=other.generator, generator_options=other.generator_options)
            if other.train:
                base = json.loads(self.train.model_copy(update=update).model_dump_json())
                merged = deep_merge(base, {**other.train, "seed": seed})
                return model_validate_or_raise(TrainConfig, merged, f"compare.{variant}.train")
        return self.train.model_copy(update=update)


class AblationGrid(StrictModel):
    """One factor at a time around the run's Δ-augmented config (each list may be empty = not swept)."""

    lam: list[float] = Field(default_factory=lambda: [0.0, 0.1, 1.0, 10.0])
    probes: list[str] = Field(default_factory=lambda: ["generic5", "neutral24"])
    representation: list[str] = Field(default_factory=lambda: ["last_token", "mean", "layers:[-4,-1]:concat"])
    delta_loss: list[str] = Field(default_factory=lambda: ["mse", "cosine"])
    # the behavioural losses (empty: not swept): the KL tether's target (on λ's schedule), the weight loss's scale
    # (0: the seed's B1, Δ-only training) and the norm penalty μ
    kl: list[float] = Field(default_factory=list)
    weight_scale: list[float] = Field(default_factory=list)
    norm_penalty: list[float] = Field(default_factory=list)


class AblationConfig(StrictModel):
    run: str  # the run YAML whose zoo, held-out tasks and training config are the centre of the sweep
    seed: int = 0
    evaluate: bool = False  # also score accuracy on the held-out tasks (slow); Δ-cosine is always measured
    grid: AblationGrid = AblationGrid()


class ComposeRetrieval(StrictModel):
    """The compositional retrieval row: one Δ predictor per generator seed (on the single-task teachers), queried with
    Δ̂₁ + Δ̂₂ (the sum of the two component tasks' predicted Δ), top ``k`` merged with ``merge``."""

    k: int = Field(3, ge=1)
    temperature: float = Field(0.1, gt=0)
    merge: str = "avg"
    predictor: PredictorConfig = PredictorConfig()

    @field_validator("merge")
    @classmethod
    def _merge(cls, v: str) -> str:
        return RetrievalRow._merge(v)


class ComposeConfig(StrictModel):
    """``deltalora compose``: do mixed-task teachers' Δ add up, and do adapters for two tasks at once interfere?

    On a zoo with mixed-task teachers (``mixed:`` pairs of the zoo YAML), for every pair: the Δ algebra of each
    mixed teacher against its components' teachers (per probe set of ``algebra_probes``), and, on both component
    tasks' eval splits, the mixed teacher, the ``merges`` of the two components' teachers, the adapter the generator
    writes from a condition of both tasks' prompts, and Δ-retrieval queried with Δ̂₁ + Δ̂₂, each against the
    component's own teacher. The generator and the predictor train on the single-task teachers only (no mixed one).
    """

    name: str = "compose"
    zoo: str
    zoo_dir: str | None = None
    zoo_set: dict = Field(default_factory=dict)
    pairs: list[str] = Field(default_factory=list)  # mixed tasks ("a+b") to study; empty: every pair of the zoo
    train: TrainConfig  # the generator that writes the mixed-condition adapter
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)  # generator (and predictor) seeds
    merges: list[str] = Field(default_factory=lambda: ["avg", "ties"], min_length=1)
    retrieval: ComposeRetrieval | None = ComposeRetrieval()
    # probe sets of the Δ algebra; task:train:N probes a pair's three adapters on the union of both tasks' prompts
    algebra_probes: list[str] = Field(default_factory=lambda: ["generic5"], min_length=1)
    delta_batch_adapters: int = Field(8, ge=1)
    eval: EvalConfig = EvalConfig()
    # a composed adapter interferes catastrophically on a component task when it keeps less than this share of the
    # component's own teacher's gain over the base model
    retained: float = Field(0.5, gt=0, le=1)

    @field_validator("merges")
    @classmethod
    def _merges(cls, v: list[str]) -> list[str]:
        for m in v:
            RetrievalRow._merge(m)
        if len(set(v)) != len(v):
            raise ValueError(f"merges must be distinct, got {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return RunConfig._seeds(v)


class ScalingConfig(StrictModel):
    """``deltalora scale``: held-out gain against the number of training tasks, every task held out once.

    The zoo's single-task tasks are dealt into ``folds`` folds stratified by family; each fold is held out once, and
    its *pool* is every other task. Per ``draw``, a seeded random order of the pool gives nested training sets (its
    first n tasks, for every n of ``sizes`` below the pool's size, and the whole pool); on each set a generator
    (``train``, seed = the draw), the mean merge of its teachers and the ``retrieval`` row are built, and every
    held-out task of the fold is scored with them (``adapters_per_task`` generated and retrieved adapters each).
    """

    name: str = "scaling"
    zoo: str
    zoo_dir: str | None = None
    zoo_set: dict = Field(default_factory=dict)
    folds: int = Field(5, ge=2)
    fold_seed: int = 0
    run_folds: list[int] | None = None  # only these folds in this call (the report covers the folds done)
    sizes: list[int] = Field(default_factory=lambda: [8, 16, 32, 64], min_length=1)  # and always the whole pool
    draws: int = Field(2, ge=1)
    train: TrainConfig
    adapters_per_task: int = Field(1, ge=1)
    retrieval: RetrievalRow = RetrievalRow()  # the retrieval row (fixed before any run, not chosen on held-out tasks)
    k: int = Field(3, ge=1)
    temperature: float = Field(0.1, gt=0)
    predictor: PredictorConfig = PredictorConfig()
    delta_batch_adapters: int = Field(8, ge=1)
    eval: EvalConfig = EvalConfig()
    # the "% of own-teacher gain" column counts only tasks whose own teachers gain at least this much over base
    min_own_gain: float = Field(0.05, ge=0)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v) or len(set(v)) != len(v):
            raise ValueError(f"sizes must be distinct positive task counts, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.run_folds is not None and any(not 0 <= f < self.folds for f in self.run_folds):
            raise ValueError(f"run_folds {self.run_folds} must name folds 0..{self.folds - 1}")
        return self


def _resolve(path: Path, value: str | None) -> str | None:
    if value is None or Path(value).expanduser().is_absolute():
        return value
    return str((path.parent / value).resolve())


def _load_with_zoo(path: str | Path, model, overrides: dict | None):
    """A run or compose config with its zoo paths resolved against the YAML's folder and its ``zoo_set`` checked (a
    wrong key fails here, not after the backbone has loaded)."""
    path = Path(path)
    cfg = load_yaml(path, model, overrides)
    cfg = cfg.model_copy(update={"zoo": _resolve(path, cfg.zoo), "zoo_dir": _resolve(path, cfg.zoo_dir)})
    if cfg.zoo_set:
        try:
            zoo_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{path}: zoo_set does not fit the zoo config: {exc}") from None
    return cfg


def load_run_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    return _load_with_zoo(path, RunConfig, overrides)


def zoo_config(cfg: RunConfig | ComposeConfig | ScalingConfig):
    """The run's (or compose study's) zoo config: the zoo YAML with ``zoo_set`` applied."""
    return load_zoo_config(cfg.zoo, cfg.zoo_set or None)


def load_compose_config(path: str | Path, overrides: dict | None = None) -> ComposeConfig:
    return _load_with_zoo(path, ComposeConfig, overrides)


def load_scaling_config(path: str | Path, overrides: dict | None = None) -> ScalingConfig:
    return _load_with_zoo(path, ScalingConfig, overrides)


def load_ablation_config(path: str | Path) -> AblationConfig:
    path = Path(path)
    cfg = load_yaml(path, AblationConfig)
    return cfg.model_copy(update={"run": _resolve(path, cfg.run)})


__all__ = [
    "BUILTIN_ROWS",
    "CompareGenerator",
    "ComposeConfig",
    "ComposeRetrieval",
    "AblationConfig",
    "AblationGrid",
    "EvalConfig",
    "RunConfig",
    "ScalingConfig",
    "SeenConfig",
    "TargetConfig",
    "load_ablation_config",
    "load_compose_config",
    "load_run_config",
    "load_scaling_config",
    "zoo_config",
]

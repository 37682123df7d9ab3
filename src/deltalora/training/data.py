"""Generator training data: teacher adapters of a zoo, each with a sampled condition and its cached Δ.

    deltas = DeltaSpec.for_backbone(backbone, probes="generic5", representation="last_token")
    train = TeacherDataset("zoo/", conditioner, deltas, split="train", heldout=["rg_gcd"], seed=0)
    loader = DataLoader(train, batch_size=8, shuffle=True, collate_fn=collate_teachers)
    for epoch in range(E):
        train.set_epoch(epoch)          # new prompts for every teacher, deterministic per (seed, epoch, teacher)
        for batch in loader: ...        # batch.weights: LoraWeights [K, ...], batch.conditions [K, n, dim],
                                        # batch.deltas [K, dim]

Splits are by *task* (leave-tasks-out): a teacher belongs to ``"train"`` only if none of its tasks is held
out, to ``"heldout"`` only if all of them are; a mixed teacher with one held-out component is in neither
(it would leak the held-out task into training); ``mixed=False`` keeps every mixed teacher out of both splits
(the compositionality study: a generator that never saw a mixed teacher). Everything is checked when the dataset is
built: the Δ of every teacher must be in the cache (the error says which ``deltalora deltas compute`` fills it), Δ
vectors must be finite float32 of one width, adapters must load against the backbone and share one layout.

A condition is keyed by the teacher's manifest id rather than its position, so the prompts a teacher sees
do not change when the split (and hence positions) changes. ``set_epoch`` changes the dataset object it
is called on: with ``DataLoader(persistent_workers=True)`` the workers keep their own copy, so use
non-persistent workers (the default) or call ``example(i, epoch)`` directly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..backbones.architecture import Architecture
from ..conditions import Conditioner
from ..deltas import DeltaCache, DeltaSpec
from ..deltas.probes import TaskProbes
from ..errors import DeltaLoraError
from ..lora import LoraWeights, load_adapter
from ..tasks import stable_seed
from ..zoo.manifest import ZooEntry, adapter_dir, read_manifest

SPLITS = ("train", "heldout")


class DatasetError(DeltaLoraError):
    """The zoo, its Δ cache or the split cannot make a training set."""


def components(entry: ZooEntry) -> tuple[str, ...]:
    """The tasks a teacher was trained on: its mixed components, or its one task."""
    return tuple(entry.tasks) if entry.tasks else (entry.task,)


def zoo_tasks(entries: Iterable[ZooEntry]) -> list[str]:
    """Every task some teacher was trained on (sorted)."""
    return sorted({t for e in entries for t in components(e)})


def choose_heldout(tasks: Iterable[str], n: int, seed: int) -> list[str]:
    """``n`` tasks to hold out, a deterministic function of the task set and ``seed`` (sorted)."""
    pool = sorted(set(tasks))
    if not 0 <= n < len(pool):
        raise DatasetError(
            f"cannot hold out {n} of {len(pool)} tasks; hold out at least 0 and leave at least one to train on"
        )
    return sorted(random.Random(stable_seed("heldout", seed, *pool)).sample(pool, n))


def choose_seen(entries: Iterable[ZooEntry], n: int, seed: int) -> list[str]:
    """Up to ``n`` of the tasks that have their own (non-mixed) teachers in ``entries``, stratified by family (sorted).

    Round-robin over the families in a seeded order, each family's tasks in a seeded order: every family is
    covered once ``n`` reaches the number of families, and all tasks are taken when there are ``n`` or fewer.
    A deterministic function of the tasks, their families and ``seed``.
    """
    if n < 0:
        raise DatasetError(f"cannot choose {n} seen tasks; ask for 0 or more")
    family: dict[str, set[str]] = {}
    for e in entries:
        if not e.mixed:
            family.setdefault(e.family, set()).add(e.task)
    tasks = sorted({t for ts in family.values() for t in ts})
    if n >= len(tasks):
        return tasks
    rng = random.Random(stable_seed("seen", seed, *tasks))
    queues = [rng.sample(sorted(family[f]), len(family[f])) for f in rng.sample(sorted(family), len(family))]
    out: list[str] = []
    while len(out) < n:
        out += [q.pop(0) for q in queues if q][: n - len(out)]
    return sorted(out)


def split_entries(entries: Sequence[ZooEntry], heldout: Iterable[str]) -> dict[str, list[ZooEntry]]:
    """``{"train", "heldout", "excluded"}``: teachers with no held-out task, with only held-out tasks, and mixed
    teachers with some held-out component (in neither split). Unknown held-out names are an error."""
    held = set(heldout)
    known = set(zoo_tasks(entries))
    unknown = sorted(held - known)
    if unknown:
        raise DatasetError(f"held-out task(s) {unknown} are not in the zoo; use some of: {', '.join(sorted(known))}")
    out: dict[str, list[ZooEntry]] = {"train": [], "heldout": [], "excluded": []}
    for e in entries:
        comp = set(components(e))
        out["train" if not comp & held else "heldout" if comp <= held else "excluded"].append(e)
    return out


@dataclass
class TeacherExample:
    id: str
    task: str
    family: str
    components: tuple[str, ...]
    weights: LoraWeights  # one adapter: A [r, in], B [out, r] per slot, float32
    condition: torch.Tensor  # [n_prompts, cond_dim] float32
    delta: torch.Tensor  # [delta_dim] float32


@dataclass
class TeacherBatch:
    ids: list[str]
    tasks: list[str]
    families: list[str]
    weights: LoraWeights  # K stacked adapters
    conditions: torch.Tensor  # [K, n_prompts, cond_dim]
    deltas: torch.Tensor  # [K, delta_dim]
    components: list[tuple[str, ...]] = field(default_factory=list)  # each teacher's tasks (its task probes)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, *args, **kwargs) -> TeacherBatch:
        return TeacherBatch(
            self.ids,
            self.tasks,
            self.families,
            self.weights.to(*args, **kwargs),
            self.conditions.to(*args, **kwargs),
            self.deltas.to(*args, **kwargs),
            self.components,
        )


def collate_teachers(examples: Sequence[TeacherExample]) -> TeacherBatch:
    """K examples -> one batch (``LoraWeights.stack`` for the adapters, ``torch.stack`` for the rest)."""
    if not examples:
        raise DatasetError("cannot collate an empty batch")
    return TeacherBatch(
        ids=[e.id for e in examples],
        tasks=[e.task for e in examples],
        families=[e.family for e in examples],
        weights=LoraWeights.stack([e.weights for e in examples]),
        conditions=torch.stack([e.condition for e in examples]),
        deltas=torch.stack([e.delta for e in examples]),
        components=[e.components for e in examples],
    )


class TeacherDataset(Dataset):
    """The teachers of one task-level split of a zoo, validated at construction (see the module docstring)."""

    def __init__(
        self,
        zoo: str | Path,
        conditioner: Conditioner,
        deltas: DeltaSpec,
        *,
        split: str = "train",
        heldout: Iterable[str] = (),
        seed: int = 0,
        cache: DeltaCache | str | Path | None = None,
        arch: Architecture | None = None,
        preload: bool = True,
        verify: bool = False,
        task_probes: TaskProbes | None = None,
        mixed: bool = True,
    ):
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.zoo = Path(zoo)
        self.conditioner = conditioner
        self.deltas_spec = deltas
        self.task_probes = task_probes  # each teacher's Δ over its own task's prompts (deltas names the spec)
        self.split = split
        self.seed = int(seed)
        self.epoch = 0
        self.arch = arch
        self.cache = cache if isinstance(cache, DeltaCache) else DeltaCache(cache)
        entries = read_manifest(self.zoo, verify=verify)
        self.heldout = sorted(set(heldout))
        parts = split_entries(entries, self.heldout)
        if not mixed:  # single-task teachers only (the compositionality study keeps every mixed teacher out)
            parts = {
                "train": [e for e in parts["train"] if not e.mixed],
                "heldout": [e for e in parts["heldout"] if not e.mixed],
                "excluded": parts["excluded"] + [e for e in parts["train"] + parts["heldout"] if e.mixed],
            }
        self.excluded = [e.id for e in parts["excluded"]]
        self.entries: list[ZooEntry] = sorted(parts[split], key=lambda e: e.id)
        if not self.entries:
            raise DatasetError(
                f"{self.zoo}: the {split!r} split is empty (held out: {self.heldout or 'none'}; "
                f"{len(self.excluded)} mixed teachers excluded); hold out fewer tasks or build a larger zoo"
            )
        missing_pools = sorted({t for e in self.entries for t in components(e)} - set(conditioner.pools))
        if missing_pools:
            raise DatasetError(
                f"no condition pool for task(s) {missing_pools}; build the Conditioner with pools for every task of "
                "the zoo"
            )
        self._dirs = [adapter_dir(self.zoo, e) for e in self.entries]
        self._deltas = self._load_deltas()
        self._weights = self._check_adapters(preload)

    # ------------------------------------------------------------------------------------ checks

    def _load_deltas(self) -> list[torch.Tensor]:
        out, missing = [], []
        for e, d in zip(self.entries, self._dirs):
            try:
                key = self.spec_of(e).key(d)
            except DeltaLoraError as exc:
                raise DatasetError(f"teacher {e.id}: {exc}") from None
            hit = self.cache.get(key)
            if hit is None:
                missing.append(e)
                continue
            t = hit.tensor
            if t.dim() != 1 or t.dtype != torch.float32 or t.numel() == 0:
                raise DatasetError(
                    f"{self.cache.path(key)}: Δ of {e.id} is {t.dtype} {tuple(t.shape)}, expected a float32 vector; "
                    f"delete the file and recompute it with `{self.deltas_spec.command(self.zoo, self.cache.root)}`"
                )
            if not bool(torch.isfinite(t).all()):
                raise DatasetError(
                    f"{self.cache.path(key)}: Δ of {e.id} has non-finite values; drop the teacher from the zoo or "
                    "retrain it"
                )
            out.append(t)
        if missing:
            s = self.deltas_spec
            raise DatasetError(
                f"Δ missing from the cache {self.cache.root} for {len(missing)} of {len(self.entries)} teachers "
                f"(first: {missing[0].id}) on backbone {s.backbone}, probes {s.probes}, repr {s.representation}, "
                f"dtype {s.dtype}; "
                f"compute them with `{s.command(self.zoo, self.cache.root)}`"
            )
        widths = {int(t.numel()) for t in out}
        if len(widths) != 1:
            first = next(e.id for e, t in zip(self.entries, out) if t.numel() != out[0].numel())
            raise DatasetError(
                f"Δ vectors have different widths {sorted(widths)} (e.g. {self.entries[0].id} vs {first}); the cache "
                "mixes representations — recompute with one --repr"
            )
        return out

    def spec_of(self, entry: ZooEntry) -> DeltaSpec:
        """The Δ spec a teacher's cached Δ is keyed by: the run's, or with task probes its own task's probe set."""
        if self.task_probes is None:
            return self.deltas_spec
        return self.deltas_spec.with_probes(self.task_probes.probe_set(components(entry)))

    def _load(self, i: int) -> LoraWeights:
        try:
            return load_adapter(self._dirs[i], self.arch, dtype=torch.float32)
        except DeltaLoraError as exc:
            raise DatasetError(f"teacher {self.entries[i].id}: {exc}") from None

    def _check_adapters(self, preload: bool) -> list[LoraWeights] | None:
        kept: list[LoraWeights] = []
        sig = None
        for i in range(len(self.entries)):
            w = self._load(i)
            if sig is None:
                sig, self.layout = w.layout.signature, w.layout
            elif w.layout.signature != sig:
                raise DatasetError(
                    f"{self._dirs[i]}: LoRA layout (slots, rank or scale) differs from {self._dirs[0]}'s; "
                    "a generator is trained on teachers of one layout — drop the odd teacher or build the zoo with "
                    "one LoRA config"
                )
            if preload:
                kept.append(w)
        return kept if preload else None

    # ------------------------------------------------------------------------------------ access

    @property
    def deltas(self) -> torch.Tensor:
        """[N, dim] float32: the cached Δ of the split's teachers, in dataset order."""
        return torch.stack(self._deltas)

    def mean_delta(self) -> torch.Tensor:
        """The training teachers' mean Δ: the shift every fine-tune on answer text shares, which the
        ``specific_cosine`` loss and the task-specific Δ-cosine project out (:func:`deltalora.deltas.remove_shared`)."""
        return self.deltas.mean(0)

    @property
    def condition_parts(self) -> dict[str, str]:
        """Task -> which part of its condition pool the teachers' conditions are drawn from, for every task of the
        split whose pool is a part (prompts held back for the seen-task evaluation); empty when all are whole. Part
        of a training run's fingerprint: a generator trained on whole pools is never resumed on split ones."""
        return {t: p.part for t in self.tasks if (p := self.conditioner.pools[t]).part is not None}

    @property
    def delta_dim(self) -> int:
        return int(self._deltas[0].numel())

    @property
    def cond_dim(self) -> int:
        return self.conditioner.dim

    @property
    def n_prompts(self) -> int:
        return self.conditioner.n_prompts

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    @property
    def tasks(self) -> list[str]:
        """Every task the split's teachers were trained on (sorted)."""
        return zoo_tasks(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Conditions drawn from now on use ``epoch`` (prompts are resampled per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> TeacherExample:
        return self.example(i, self.epoch)

    def adapter(self, i: int) -> LoraWeights:
        """Teacher ``i``'s adapter (held in memory when the dataset preloads, else read from the zoo)."""
        return self._weights[i] if self._weights is not None else self._load(i)

    def example(self, i: int, epoch: int) -> TeacherExample:
        e = self.entries[i]
        comp = components(e)
        return TeacherExample(
            id=e.id,
            task=e.task,
            family=e.family,
            components=comp,
            weights=self.adapter(i),
            condition=self.conditioner.sample(comp, seed=self.seed, epoch=epoch, key=e.id),
            delta=self._deltas[i],
        )


__all__ = [
    "DatasetError",
    "TeacherBatch",
    "TeacherDataset",
    "TeacherExample",
    "choose_heldout",
    "choose_seen",
    "collate_teachers",
    "components",
    "split_entries",
    "zoo_tasks",
]

"""A retrieval index over the training teachers: what each teacher does (its Δ) and what its task looks like
(the mean embedding of its condition prompts), plus an optional Δ predictor, in one safetensors file.

    index = build_index(train_set, predictor)            # from a generator training set (TeacherDataset)
    index.save("runs/x/retrieval/index-s0.safetensors")
    hits = index.retrieve(condition, by="delta", k=3, temperature=0.1)   # [(teacher id, weight, cosine)]

``by="delta"`` ranks the teachers by the cosine between the predicted Δ̂ of the condition and each teacher's Δ,
both with the training teachers' mean Δ projected out (the shared direction every fine-tune moves along; left
in, it makes every teacher look alike). ``by="condition"`` is the control without Δ: cosine between the mean
embedding of the query's prompts and of each teacher's task prompts. The k best teachers get weights
softmax(cosine / temperature) over those k.

The index refers to its zoo by path, teacher ids and a hash of the manifest's (id, adapter sha256) pairs, as a
mixture generator does, and refuses a zoo that changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..deltas.analyze import remove_shared
from ..errors import ConfigError
from ..generators.library import teachers_sha256
from ..paths import atomic_write_bytes, safetensors_bytes
from ..zoo.manifest import adapter_dir, read_manifest
from .predictor import DeltaPredictor

BY = ("delta", "condition")
META_KEY = "deltalora_retrieval_index"
FORMAT = 1


class RetrievalError(ConfigError):
    """A retrieval index, its zoo or a retrieval request is unusable."""


@dataclass(frozen=True)
class Hit:
    id: str
    group: str  # the teacher's task (mixed: components joined by "+")
    cosine: float
    weight: float


@dataclass
class RetrievalIndex:
    zoo: Path
    ids: tuple[str, ...]
    groups: tuple[str, ...]
    sha256: str
    deltas: torch.Tensor  # [N, D] the teachers' cached Δ (float32)
    shared: torch.Tensor  # [D] the training teachers' mean Δ (projected out before Δ cosines)
    conditions: torch.Tensor  # [N, cond_dim] mean embedding of each teacher's task prompts
    encoder: str
    n_prompts: int
    form: str
    predictor: DeltaPredictor | None = None
    info: dict | None = None  # how the predictor was trained (steps, loss, seed, fit)

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------------------------ querying

    def _check_condition(self, condition: torch.Tensor) -> torch.Tensor:
        condition = condition.float()
        if condition.dim() != 2 or condition.shape[-1] != self.conditions.shape[-1]:
            raise RetrievalError(
                f"a condition is [n_prompts, {self.conditions.shape[-1]}] embeddings of encoder {self.encoder}, got "
                f"{tuple(condition.shape)}; encode the prompts with that encoder"
            )
        return condition

    def predict(self, condition: torch.Tensor) -> torch.Tensor:
        """The predicted Δ̂ of one condition ([n_prompts, dim] → [delta_dim])."""
        if self.predictor is None:
            raise RetrievalError(
                "this index has no Δ predictor; retrieve by condition, or build the index with a predictor"
            )
        with torch.no_grad():
            return self.predictor(self._check_condition(condition)[None])[0]

    def delta_scores(self, delta: torch.Tensor) -> torch.Tensor:
        """Cosine of a Δ query ([delta_dim], e.g. Δ̂₁ + Δ̂₂ for a composition) to every teacher's Δ ([N]), both with
        the shared direction projected out."""
        delta = torch.as_tensor(delta).float()
        if tuple(delta.shape) != (self.deltas.shape[-1],):
            raise RetrievalError(f"a Δ query has shape ({self.deltas.shape[-1]},), got {tuple(delta.shape)}")
        q = remove_shared(delta, self.shared)
        return torch.nn.functional.cosine_similarity(remove_shared(self.deltas, self.shared), q[None], dim=-1)

    def scores(self, condition: torch.Tensor, by: str = "delta") -> torch.Tensor:
        """Cosine of one condition ([n_prompts, dim]) to every teacher ([N])."""
        if by not in BY:
            raise RetrievalError(f"unknown retrieval key {by!r}; use one of {', '.join(BY)}")
        condition = self._check_condition(condition)
        if by == "condition":
            return torch.nn.functional.cosine_similarity(self.conditions, condition.mean(0)[None], dim=-1)
        return self.delta_scores(self.predict(condition))

    def _check_top(self, k: int, temperature: float) -> None:
        if not isinstance(k, int) or not 1 <= k <= len(self):
            raise RetrievalError(f"k must be between 1 and the {len(self)} teachers of the index, got {k}")
        if not (temperature > 0 and temperature == temperature and temperature != float("inf")):
            raise RetrievalError(f"temperature must be a positive finite number, got {temperature}")

    def _top(self, cos: torch.Tensor, k: int, temperature: float) -> list[Hit]:
        top = torch.topk(cos, k)
        w = torch.softmax(top.values.double() / temperature, dim=0)
        return [
            Hit(self.ids[i], self.groups[i], float(c), float(x))
            for i, c, x in zip(top.indices.tolist(), top.values.tolist(), w.tolist())
        ]

    def retrieve(self, condition: torch.Tensor, by: str = "delta", k: int = 3, temperature: float = 0.1) -> list[Hit]:
        """The ``k`` teachers closest to ``condition``, best first, with softmax(cosine / temperature) weights."""
        self._check_top(k, temperature)  # bad k / temperature fail before any work
        return self._top(self.scores(condition, by), k, temperature)

    def retrieve_delta(self, delta: torch.Tensor, k: int = 3, temperature: float = 0.1) -> list[Hit]:
        """The ``k`` teachers whose Δ is closest to a Δ query (:meth:`delta_scores`), weighted as :meth:`retrieve`."""
        self._check_top(k, temperature)
        return self._top(self.delta_scores(delta), k, temperature)

    def adapter_dirs(self, hits: Sequence[Hit], zoo: str | Path | None = None) -> list[Path]:
        """Where the hit teachers' adapters are: in ``zoo`` (default: the index's), which must be unchanged."""
        zoo = Path(zoo) if zoo is not None else self.zoo
        if not (zoo / "manifest.jsonl").is_file():
            raise RetrievalError(f"{zoo}: no zoo there (no manifest.jsonl); pass --zoo the zoo the index was built on")
        entries = {e.id: e for e in read_manifest(zoo)}
        missing = [i for i in self.ids if i not in entries]
        if missing:
            raise RetrievalError(
                f"{zoo}: teacher(s) {missing[:3]} of the index are not in this zoo; pass the zoo the index was built on"
            )
        if teachers_sha256([entries[i] for i in self.ids]) != self.sha256:
            raise RetrievalError(
                f"{zoo}: the teachers differ from those the index was built on (adapter hashes changed); rebuild the "
                "index"
            )
        unknown = [h.id for h in hits if h.id not in entries]
        if unknown:  # pragma: no cover - hits come from the index's ids
            raise RetrievalError(f"{zoo}: unknown teacher(s) {unknown[:3]}")
        return [adapter_dir(zoo, entries[h.id]) for h in hits]

    # ------------------------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {"deltas": self.deltas, "shared": self.shared, "conditions": self.conditions}
        pred = None
        if self.predictor is not None:
            tensors.update({f"predictor.{k}": v for k, v in self.predictor.state_dict().items()})
            pred = self.predictor.config()
        meta = {
            "format": FORMAT,
            "zoo": str(self.zoo),
            "ids": list(self.ids),
            "groups": list(self.groups),
            "sha256": self.sha256,
            "encoder": self.encoder,
            "n_prompts": self.n_prompts,
            "form": self.form,
            "predictor": pred,
            "info": self.info or {},
        }
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        atomic_write_bytes(path, safetensors_bytes(tensors, {"format": "pt", META_KEY: json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        path = Path(path)
        fix = "rebuild it (an experiment run writes one per seed under <run>/retrieval/)"
        if not path.is_file():
            raise RetrievalError(f"{path}: no retrieval index there; pass the index file a run wrote, or {fix}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[META_KEY])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            ids, groups = tuple(meta["ids"]), tuple(meta["groups"])
            deltas, shared, conditions = tensors["deltas"], tensors["shared"], tensors["conditions"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error for the user
            raise RetrievalError(f"{path}: not a retrieval index ({type(exc).__name__}); {fix}") from None
        if meta.get("format") != FORMAT:
            raise RetrievalError(f"{path}: index format {meta.get('format')!r}, this deltalora reads {FORMAT}; {fix}")
        n = len(ids)
        ok = (
            len(groups) == n
            and deltas.shape[0] == n
            and conditions.shape[0] == n
            and shared.shape == deltas.shape[1:]
            and all(bool(torch.isfinite(t).all()) for t in (deltas, shared, conditions))
        )
        if not ok:
            raise RetrievalError(f"{path}: the index's tensors do not fit its {n} teachers or are not finite; {fix}")
        predictor = None
        if meta.get("predictor"):
            predictor = DeltaPredictor(**meta["predictor"])
            state = {k.removeprefix("predictor."): v for k, v in tensors.items() if k.startswith("predictor.")}
            try:
                predictor.load_state_dict(state, strict=True)
            except RuntimeError:
                raise RetrievalError(f"{path}: the Δ predictor's weights do not fit its config; {fix}") from None
            predictor.eval()
        return cls(
            Path(meta["zoo"]),
            ids,
            groups,
            meta["sha256"],
            deltas,
            shared,
            conditions,
            meta["encoder"],
            int(meta["n_prompts"]),
            meta["form"],
            predictor,
            meta.get("info") or {},
        )


def build_index(train_set, predictor: DeltaPredictor | None = None, info: dict | None = None) -> RetrievalIndex:
    """The index of a generator training set (:class:`deltalora.training.TeacherDataset`): its teachers' Δ, their
    mean, and the mean embedding of each teacher's task prompts (the part generators train on)."""
    cond = train_set.conditioner
    means = {}
    rows = []
    for e in train_set.entries:
        comp = tuple(e.tasks) if e.tasks else (e.task,)
        if comp not in means:
            means[comp] = torch.cat([cond.embeddings[t] for t in comp]).float().mean(0)
        rows.append(means[comp])
    return RetrievalIndex(
        zoo=Path(train_set.zoo).resolve(),
        ids=tuple(train_set.ids),
        groups=tuple("+".join(e.tasks) if e.tasks else e.task for e in train_set.entries),
        sha256=teachers_sha256(train_set.entries),
        deltas=train_set.deltas.float(),
        shared=train_set.mean_delta().float(),
        conditions=torch.stack(rows),
        encoder=cond.encoder.name,
        n_prompts=cond.n_prompts,
        form=cond.form,
        predictor=predictor,
        info=info,
    )


__all__ = ["BY", "Hit", "RetrievalError", "RetrievalIndex", "build_index"]

"""The library-mixture generator: condition → weights over the training teachers → their weighted mixture.

    cond [K, N, D] ──pool──► trunk MLP ──► logits [K, L] ──softmax──► w [K, L]
    adapter_k = Σ_l w_kl · teacher_l            (L library members: task-mean teachers, or every teacher)

It is the bridge between a merge and a generator: at step 0 the logits are zero, so every condition gets
the plain average of the library (the ``average_merge`` baseline); trained on L_weights it learns which
members a condition's task resembles, and with the Δ loss at large λ it becomes behavioural retrieval.
Everything is differentiable, so L_w and L_Δ both train it. The parameters are only the pooling, the
trunk and one linear layer to L logits; the members are data read from the zoo (:mod:`.library`), which
the checkpoint references rather than copies.

How the mixture is formed (``mix``):

- ``factors``: A = Σ w_l A_l and B = Σ w_l B_l per slot, rank r. Meaningful only when the members share one
  A, i.e. on a canonical zoo (where it is ΔW's mixture up to the small drift of A in training).
- ``exact``: ΔW = Σ w_l ΔW_l exactly, by rank concatenation as ``average_merge`` does: rank L·r, scale 1,
  A = [A_1; …; A_L], B = [w_1·s·B_1, …, w_L·s·B_L]. Large (L·r) and only the ``product`` weight loss can
  compare it with rank-r teachers.
- ``svd``: the exact mixture truncated to rank r per slot. Cheap because the members are fixed: with
  [s·B_1 … s·B_L] = Q_b R_b and [A_1; …; A_L]ᵀ = Q_a R_a (QR once, at build), ΔW_k = Q_b (R_b D_k R_aᵀ) Q_aᵀ
  with D_k = diag(w_k ⊗ 1_r), so each adapter needs only the SVD of an (L·r)² core. The gradient treats the
  kept singular subspaces as constants (the SVD's own gradient is NaN when singular values repeat).
- ``auto`` (default): ``factors`` on a canonical zoo, else ``svd``. The checkpoint records the choice.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..config import LoraSpec, StrictModel, model_validate_or_raise
from ..errors import ConfigError
from ..lora import LoraLayout, LoraWeights, derive_layout
from .compact import PromptPool, check_int, trunk_mlp
from .library import FROM_CHECKPOINT, LibraryNeeded, TeacherLibrary, check_reference
from .registry import register_generator


class MixtureOptions(StrictModel):
    """The mixture generator's options (``build_generator("mixture", ..., library=lib, **options)``)."""

    members: Literal["task_means", "teachers"] = "task_means"  # one member per task group, or every teacher
    mix: Literal["auto", "factors", "exact", "svd"] = "auto"
    trunk_width: int = Field(256, ge=1, le=65536, strict=True)
    trunk_depth: int = Field(2, ge=1, le=64, strict=True)
    pooling: Literal["mean", "attention"] = "attention"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    library_ref: dict[str, Any] | None = None  # where the teachers are (TeacherLibrary.reference); set by the builder


class MixtureGenerator(nn.Module):
    """Condition embeddings [K, N, cond_dim] -> K mixtures of the library members (see the module docstring)."""

    flexible_n_prompts = True

    def __init__(self, layout: LoraLayout, cond_dim: int, n_prompts: int, opts: MixtureOptions, members: _Members):
        super().__init__()
        self.layout, self.cond_dim, self.n_prompts, self.opts = layout, cond_dim, n_prompts, opts
        self.spec = {"name": "mixture", "cond_dim": cond_dim, "n_prompts": n_prompts, "options": opts.model_dump()}
        self.member_names = members.names
        self.out_layout = members.out_layout
        self._members = members  # keeps the shared buffers' entry alive (see _members)
        n = len(self.member_names)
        self.pool = PromptPool(cond_dim, opts.pooling)
        self.trunk = trunk_mlp(cond_dim, opts.trunk_width, opts.trunk_depth, opts.dropout)
        self.logits = nn.Linear(opts.trunk_width, n)
        nn.init.zeros_(self.logits.weight)  # uniform weights at step 0: the library's average
        nn.init.zeros_(self.logits.bias)
        # the members are data (read from the zoo on every build), not parameters: non-persistent buffers
        for name, t in members.buffers.items():
            self.register_buffer(name, t, persistent=False)

    def mixture_weights(self, cond: torch.Tensor) -> torch.Tensor:
        """[K, L]: each condition's weights over the members (``member_names``), summing to 1."""
        if cond.dim() != 3 or cond.shape[-1] != self.cond_dim or cond.shape[0] < 1 or cond.shape[1] < 1:
            raise ValueError(
                f"mixture generator: cond must be [K, n_prompts, {self.cond_dim}] with K, n_prompts >= 1, "
                f"got {tuple(cond.shape)}"
            )
        return torch.softmax(self.logits(self.trunk(self.pool(cond))), dim=-1)

    def forward(self, cond: torch.Tensor) -> LoraWeights:
        w = self.mixture_weights(cond)  # [K, L]
        k, n = w.shape
        r = self.layout.spec.rank
        s = float(self.layout.scale)
        A, B = {}, {}
        for i, slot in enumerate(self.layout.slots):
            if self.opts.mix == "factors":
                A[slot.key] = torch.einsum("kl,lri->kri", w, getattr(self, f"a{i}"))
                B[slot.key] = torch.einsum("kl,lor->kor", w, getattr(self, f"b{i}"))
            elif self.opts.mix == "exact":
                a_cat, b_cat = getattr(self, f"a{i}"), getattr(self, f"b{i}")
                A[slot.key] = a_cat.expand(k, *a_cat.shape)
                B[slot.key] = b_cat.unsqueeze(0) * w.repeat_interleave(r, dim=1).unsqueeze(1)
            else:
                qb, rb, qa, ra = (getattr(self, f"{name}{i}") for name in ("qb", "rb", "qa", "ra"))
                core = (rb.unsqueeze(0) * w.repeat_interleave(r, dim=1).unsqueeze(1)) @ ra.T  # [K, m_b, m_a]
                # The top-t singular subspaces (U_t, V_t) are taken as constants: the SVD's own gradient has
                # 1/(σᵢ² − σⱼ²) terms and turns NaN once the weights pick one member (σ's repeat at 0). The gradient
                # flows through C = U_tᵀ·core·V_t (= diag(S_t) in value), so s·B·A = Q_b U_t C V_tᵀ Q_aᵀ is the best
                # rank-t approximation forward, and its gradient is the loss's projected onto those subspaces.
                u, sv, vh = torch.linalg.svd(core.detach(), full_matrices=False)
                t = min(r, sv.shape[-1])
                ut, vt = u[..., :t], vh[:, :t].transpose(-1, -2)  # [K, m_b, t], [K, m_a, t]
                c = ut.transpose(-1, -2) @ core @ vt  # [K, t, t]
                root = sv[:, :t].clamp_min(1e-12).sqrt()  # B and A share the norm, as √S each
                b = qb @ (ut @ (c / root.unsqueeze(1))) / s  # [K, out, t]
                a = (root.unsqueeze(-1) * vt.transpose(-1, -2)) @ qa.T  # [K, t, in]
                if t < r:  # a member set smaller than the rank: pad with zero directions
                    b = torch.nn.functional.pad(b, (0, r - t))
                    a = torch.nn.functional.pad(a, (0, 0, 0, r - t))
                A[slot.key], B[slot.key] = a, b
        return LoraWeights(self.out_layout, A, B)

    def extra_repr(self) -> str:
        return f"members={len(self.member_names)} ({self.opts.members}), mix={self.opts.mix}"


@register_generator("mixture")
def build_mixture(layout: LoraLayout, cond_dim: int, n_prompts: int, library=None, **options) -> MixtureGenerator:
    """Build the mixture generator over ``library`` (a :class:`TeacherLibrary`; with ``FROM_CHECKPOINT``, the one
    the recorded ``library_ref`` option references, read back from its zoo)."""
    check_int("cond_dim", cond_dim, generator="mixture")
    check_int("n_prompts", n_prompts, generator="mixture")
    opts = model_validate_or_raise(MixtureOptions, options, "mixture generator options")
    if library == FROM_CHECKPOINT or library is None:
        if opts.library_ref is None:
            raise LibraryNeeded(
                "mixture generator: needs the training teachers (library=TeacherLibrary) — it mixes them, one "
                "logit per member; train it with `deltalora run`"
            )
        ref = opts.library_ref
        check_reference(ref)  # every load, even when another generator already holds the members

        def library() -> TeacherLibrary:
            return TeacherLibrary.from_zoo(Path(str(ref["zoo"])), list(ref.get("ids", [])), layout.arch)

    elif isinstance(library, TeacherLibrary):
        ref, lib = library.reference(), library

        def library() -> TeacherLibrary:
            return lib

    else:
        raise ConfigError(f"mixture generator: library must be a TeacherLibrary, got {type(library).__name__}")
    members = _members(layout, opts, ref, library)
    opts = opts.model_copy(update={"mix": members.mix, "library_ref": ref})
    return MixtureGenerator(layout, cond_dim, n_prompts, opts, members)


class _Members:
    """A library's members as a mixture generator holds them: names, the buffers, the output layout."""

    __slots__ = ("names", "buffers", "out_layout", "mix", "__weakref__")

    def __init__(self, names, buffers, out_layout, mix):
        self.names, self.buffers, self.out_layout, self.mix = names, buffers, out_layout, mix


# Generators of one library share its member buffers: an experiment loads a dozen mixture generators over the same
# teachers (variants x seeds), and each rebuilt its own copy — 0.5 GB each on the large preset, plus the 3 GB
# stacked library read to make them, which pushed the run past 24 GiB. Entries live while a generator holds them.
_SHARED: weakref.WeakValueDictionary[str, _Members] = weakref.WeakValueDictionary()


def _members(layout: LoraLayout, opts: MixtureOptions, ref: dict, library) -> _Members:
    """The members of the library ``ref`` names (``library()`` reads it) for ``layout`` and ``opts``; shared."""
    key = json.dumps([ref, opts.members, opts.mix, layout.signature], sort_keys=True, default=str)
    hit = _SHARED.get(key)
    if hit is not None:
        return hit
    lib = library()
    if lib.weights.layout.signature != layout.signature:
        raise ConfigError("mixture generator: the teacher library's LoRA layout differs from the generator's")
    mix = opts.mix if opts.mix != "auto" else ("factors" if lib.init is not None else "svd")
    if opts.members == "task_means":
        names, members = lib.group_means()
    else:
        names, members = lib.ids, lib.weights
    n = len(names)
    s = float(layout.scale)
    r = layout.spec.rank
    out_layout = layout
    if mix == "exact":
        spec = LoraSpec(rank=n * r, alpha=float(n * r), targets=layout.spec.targets, layers=layout.spec.layers)
        out_layout = derive_layout(layout.arch, spec)
    buffers: dict[str, torch.Tensor] = {}
    for i, slot in enumerate(layout.slots):
        a, b = members.A[slot.key].float(), members.B[slot.key].float()  # [L, r, in], [L, out, r]
        if mix == "factors":
            buffers[f"a{i}"], buffers[f"b{i}"] = a, b
            continue
        a_cat = a.reshape(n * r, -1)  # [L·r, in]
        b_cat = (s * b).permute(1, 0, 2).reshape(b.shape[1], n * r)  # [out, L·r]
        if mix == "exact":
            buffers[f"a{i}"], buffers[f"b{i}"] = a_cat, b_cat
            continue
        qb, rb = torch.linalg.qr(b_cat)  # [out, m_b], [m_b, L·r]
        qa, ra = torch.linalg.qr(a_cat.T)  # [in, m_a], [m_a, L·r]
        for name, t in (("qb", qb), ("rb", rb), ("qa", qa), ("ra", ra)):
            buffers[f"{name}{i}"] = t.contiguous()
    out = _Members(tuple(names), buffers, out_layout, mix)
    _SHARED[key] = out
    return out


__all__ = ["MixtureGenerator", "MixtureOptions", "build_mixture"]

"""The compact generator: a Text-to-LoRA-style hypernetwork with factorised per-module heads.

    cond [K, N, D] ──pool over prompts──► [K, D] ──trunk MLP──► h [K, W]
    for every module type m (q_proj, …, down_proj) and every adapted layer l:
        z = h ⊕ layer_emb[l] ⊕ module_emb[m]                                  (W + E_l + E_m)
        head_m(z) = Linear(W+E_l+E_m, H) → GELU → Linear(H, 2·r·p)  ──► C [r, p], D [p, r]
        A[l, m] = A0[l, m] + C · P_m          B[l, m] = Q_m · D
    with P_m [p, in_m] and Q_m [out_m, p] learned bases shared by all layers of module m.

One head per module type, shared by all layers (as Text-to-LoRA's hypernetwork: trunk ⊕ layer
embedding ⊕ module embedding → head); the layer embedding tells the head which layer it emits.
Everything (which modules, how many layers, every shape) is read from the
:class:`~deltalora.lora.LoraLayout`; nothing is typed in.

**Why factorised heads.** Text-to-LoRA's heads emit the flat ``r·(in+out)`` weights of a slot, so each
costs ``H · r·(in+out)`` parameters — for Qwen2.5-1.5B, r16, all 7 modules, ≥ 0.66 M per unit of
``H``, and a learned per-slot base A alone would be ``Σ_slots r·in`` ≈ 8 M: more than 1/20 of the
HyperConv generator for the same layout. Here a head emits ``2·r·p`` coefficients and the
``p·(in+out)`` bases are shared across layers, so the size grows with the model width, not with
``layers × rank × width``: defaults ≈ 1.2 M parameters for Qwen2.5-1.5B r16 all-7 and ≈ 0.8 M for
Qwen2.5-0.5B r8 all-7 (``deltalora generator info`` prints exact counts and the ratio to hyperconv).
The price: for one module type, every generated ``B`` lies in the ``p``-dimensional column space of
``Q_m`` (and ``A − A0`` in the row space of ``P_m``); raise ``basis_dim`` to loosen it.

**Initialisation (ΔW = 0 at step 0).** Each head's last linear layer (weight and bias) starts at zero,
so at step 0 ``C = D = 0``: ``B = 0`` exactly and ``A = A0``. ``A0`` is where the teachers' A is:

- ``a0="zoo"``: the zoo's canonical init (:mod:`.library`), the A every teacher of a canonical zoo starts
  from and barely moves in training — so the generator learns B in the teachers' own coordinates. Saved
  with the generator (``Σ_slots r·in`` checkpoint numbers, no parameters).
- ``a0="seed"``: PEFT's default LoRA-A init (``kaiming_uniform_(a=√5)`` on ``[r, in]``: uniform on
  ``±1/√in``) drawn per slot from a dedicated generator seeded by ``base_a_seed``, regenerated on every
  build (no checkpoint bytes). Unrelated to any teacher's A: only a product-space loss can compare them.
- ``a0="auto"`` (default): ``zoo`` when the teacher library comes from a canonical zoo, else ``seed``; the
  checkpoint records which.

The first output is thus a LoRA with B = 0, and injecting it leaves the base model's logits unchanged.
``A0`` is fixed (as in LoRA-FA); ``learn_base_a=True`` makes it a trained parameter starting there
(``+ Σ_slots r·in`` parameters).
As with PEFT, at step 0 only the B-producing path receives gradient; after a step with ``B ≠ 0`` and
then ``C ≠ 0``, every parameter does. ``P_m`` and ``Q_m`` start orthonormal.

**Pooling.** ``pooling="mean"`` averages the prompts; ``pooling="attention"`` (default) weights them
by ``softmax(LN(c_n) · q / √D)`` with a learned query ``q`` that starts at zero — so it starts as the
mean and can learn to emphasise informative prompts. Either way the generator accepts any number of
prompts (``flexible_n_prompts``); ``n_prompts`` is what it was built (and trained) for.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config import MODULE_ORDER, StrictModel, model_validate_or_raise
from ..errors import ConfigError
from ..lora import LoraLayout, LoraWeights
from ..lora import peft_a_init as _draw_peft_a
from .library import FROM_CHECKPOINT
from .registry import register_generator


class CompactOptions(StrictModel):
    """The compact generator's own options (``build_generator("compact", layout, cond_dim, n_prompts, **options)``)."""

    trunk_width: int = Field(256, ge=1, le=65536, strict=True)
    trunk_depth: int = Field(2, ge=1, le=64, strict=True)  # number of Linear+GELU blocks in the trunk
    layer_emb_dim: int = Field(32, ge=1, le=65536, strict=True)
    module_emb_dim: int = Field(16, ge=1, le=65536, strict=True)
    head_hidden: int = Field(64, ge=1, le=65536, strict=True)  # width of each head's hidden layer
    basis_dim: int = Field(16, ge=1, le=65536, strict=True)  # p: size of each module's learned A and B bases
    pooling: Literal["mean", "attention"] = "attention"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    learn_base_a: bool = Field(False, strict=True)  # True: base A is a trained parameter (+ Σ_slots r·in parameters)
    a0: Literal["auto", "zoo", "seed"] = "auto"  # where the base A comes from (see the module docstring)
    base_a_seed: int = Field(0, ge=0, strict=True)  # seed of the PEFT-distributed base A (a0="seed")


def check_int(name: str, value, minimum: int = 1, generator: str = "compact") -> int:
    """A builder's integer argument, refused with a one-line ConfigError naming the generator."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{generator} generator: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class PromptPool(nn.Module):
    """[K, N, D] -> [K, D]: mean over prompts, or attention pooling with a zero-initialised learned query."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.norm = nn.LayerNorm(dim)
            self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean":
            return cond.mean(dim=1)
        scores = self.norm(cond) @ self.query / math.sqrt(cond.shape[-1])  # [K, N]
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("kn,knd->kd", weights, cond)


def trunk_mlp(in_dim: int, width: int, depth: int, dropout: float = 0.0) -> nn.Sequential:
    """LN → ``depth`` × (Linear → GELU [→ Dropout]) → LN: the pooled condition [K, in_dim] -> [K, width]."""
    blocks: list[nn.Module] = [nn.LayerNorm(in_dim)]
    for i in range(depth):
        blocks += [nn.Linear(in_dim if i == 0 else width, width), nn.GELU()]
        if dropout:
            blocks.append(nn.Dropout(dropout))
    blocks.append(nn.LayerNorm(width))
    return nn.Sequential(*blocks)


class ModuleHead(nn.Module):
    """One module type's head: z -> coefficients (C [r, p], D [p, r]); its last layer starts at zero.

    With the module's learned bases ``P`` [p, in] and ``Q`` [out, p]: ``ΔA = C P`` and ``B = Q D``.
    """

    def __init__(self, in_dim: int, hidden: int, rank: int, basis: int, in_features: int, out_features: int):
        super().__init__()
        self.rank, self.basis = rank, basis
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.out = nn.Linear(hidden, 2 * rank * basis)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # Orthonormal bases (rows of P, columns of Q), built on the CPU before registration (meta-safe).
        p = torch.empty(basis, in_features)
        q = torch.empty(out_features, basis)
        nn.init.orthogonal_(p)
        nn.init.orthogonal_(q)
        self.basis_a = nn.Parameter(p)  # P [p, in]
        self.basis_b = nn.Parameter(q)  # Q [out, p]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [..., in_dim] -> (ΔA [..., r, in], B [..., out, r])."""
        coef = self.out(self.hidden(z))
        r, p = self.rank, self.basis
        c = coef[..., : r * p].unflatten(-1, (r, p))
        d = coef[..., r * p :].unflatten(-1, (p, r))
        return c @ self.basis_a, self.basis_b @ d


def peft_a_init(layout: LoraLayout, module: str, seed: int) -> torch.Tensor:
    """PEFT's LoRA-A init for every slot of ``module`` ([n_layers, r, in], uniform on ±1/√in), from ``seed``.

    Drawn from its own CPU generator (seeded by ``seed`` and the module's position in the canonical
    order), so it is the same on every rebuild whatever the global RNG state — a checkpoint need not store it.
    """
    slots = [s for s in layout.slots if s.module == module]
    s0 = slots[0]
    g = torch.Generator(device="cpu").manual_seed(seed * len(MODULE_ORDER) + MODULE_ORDER.index(module))
    return _draw_peft_a((len(slots), *s0.a_shape), s0.in_features, g)


class CompactGenerator(nn.Module):
    """Condition embeddings [K, N, cond_dim] -> a batch of K LoRAs for ``layout`` (see the module docstring)."""

    flexible_n_prompts = True

    def __init__(
        self,
        layout: LoraLayout,
        cond_dim: int,
        n_prompts: int,
        opts: CompactOptions,
        base_a: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        if not layout.slots:
            raise ConfigError("compact generator: the LoRA layout has no slots")
        self.layout = layout
        self.cond_dim = cond_dim
        self.n_prompts = n_prompts
        self.opts = opts
        self.spec = {
            "name": "compact",
            "cond_dim": cond_dim,
            "n_prompts": n_prompts,
            "options": opts.model_dump(mode="json"),
        }

        self.layers = layout.layers  # layer index -> position in layer_emb
        self.modules_ = tuple(dict.fromkeys(s.module for s in layout.slots))
        # slots of each module, in layer order; a layout is rectangular (layers × targets) but do not rely on it
        self.slots_of = {m: [s for s in layout.slots if s.module == m] for m in self.modules_}
        shapes = {m: {(s.in_features, s.out_features, s.rank) for s in slots} for m, slots in self.slots_of.items()}
        odd = [m for m, sh in shapes.items() if len(sh) != 1]
        if odd:
            raise ConfigError(
                f"compact generator: module {odd[0]} has different shapes in different layers {sorted(shapes[odd[0]])}"
            )
        layer_pos = {layer: i for i, layer in enumerate(self.layers)}
        self.layer_idx = {
            m: [layer_pos[s.layer] for s in slots] for m, slots in self.slots_of.items()
        }  # no buffers: meta-safe

        w = opts.trunk_width
        self.pool = PromptPool(cond_dim, opts.pooling)
        self.trunk = trunk_mlp(cond_dim, w, opts.trunk_depth, opts.dropout)
        self.layer_emb = nn.Embedding(len(self.layers), opts.layer_emb_dim)
        self.module_emb = nn.Embedding(len(self.modules_), opts.module_emb_dim)
        head_in = w + opts.layer_emb_dim + opts.module_emb_dim
        self.heads = nn.ModuleDict()
        for m in self.modules_:
            s0 = self.slots_of[m][0]
            self.heads[m] = ModuleHead(
                head_in, opts.head_hidden, s0.rank, opts.basis_dim, s0.in_features, s0.out_features
            )
        # base_a: module -> [n_layers, r, in] (a0="zoo"; zeros when rebuilding a checkpoint, which holds the values)
        if opts.a0 == "zoo" and base_a is None:
            raise ConfigError('compact generator: a0="zoo" needs the zoo\'s canonical init (pass library=)')
        init = {m: base_a[m] if base_a is not None else peft_a_init(layout, m, opts.base_a_seed) for m in self.modules_}
        if opts.learn_base_a:
            self.base_a = nn.ParameterDict({m: nn.Parameter(init[m].clone()) for m in self.modules_})
        else:
            for m in self.modules_:  # from the zoo: saved with the generator; from the seed: regenerated, not saved
                self.register_buffer(f"base_a_{m}", init[m].clone(), persistent=opts.a0 == "zoo")

    def _base_a(self, m: str) -> torch.Tensor:
        return self.base_a[m] if self.opts.learn_base_a else getattr(self, f"base_a_{m}")

    def forward(self, cond: torch.Tensor) -> LoraWeights:
        if cond.dim() != 3 or cond.shape[-1] != self.cond_dim or cond.shape[0] < 1 or cond.shape[1] < 1:
            raise ValueError(
                f"compact generator: cond must be [K, n_prompts, {self.cond_dim}] with K, n_prompts >= 1, "
                f"got {tuple(cond.shape)}"
            )
        k = cond.shape[0]
        h = self.trunk(self.pool(cond))  # [K, W]
        A, B = {}, {}
        for mi, m in enumerate(self.modules_):
            slots = self.slots_of[m]
            n = len(slots)
            idx = torch.tensor(self.layer_idx[m], dtype=torch.long, device=h.device)
            z = torch.cat(
                [
                    h.unsqueeze(1).expand(k, n, h.shape[-1]),
                    self.layer_emb(idx).unsqueeze(0).expand(k, n, -1),
                    self.module_emb.weight[mi].expand(k, n, -1),
                ],
                dim=-1,
            )  # [K, n_layers, head_in]
            da, b = self.heads[m](z)  # [K, n, r, in], [K, n, out, r]
            a = self._base_a(m).to(da.dtype).unsqueeze(0) + da
            for i, s in enumerate(slots):
                A[s.key] = a[:, i]
                B[s.key] = b[:, i]
        order = [s.key for s in self.layout.slots]  # canonical slot order, as everything else iterates
        return LoraWeights(self.layout, {k: A[k] for k in order}, {k: B[k] for k in order})

    def extra_repr(self) -> str:
        return f"slots={len(self.layout.slots)}, cond_dim={self.cond_dim}, n_prompts={self.n_prompts}"


def zoo_base_a(layout: LoraLayout, init: LoraWeights) -> dict[str, torch.Tensor]:
    """The canonical init's A of each module, stacked over its layers ([n_layers, r, in]), checked against layout."""
    if init.layout.signature != layout.signature:
        raise ConfigError("compact generator: the zoo's canonical init has another LoRA layout than the teachers")
    modules = dict.fromkeys(s.module for s in layout.slots)
    return {m: torch.stack([init.A[s.key].float() for s in layout.slots if s.module == m]) for m in modules}


@register_generator("compact")
def build_compact(layout: LoraLayout, cond_dim: int, n_prompts: int, library=None, **options) -> CompactGenerator:
    """Build the compact generator; ``options`` are :class:`CompactOptions` fields (unknown ones are refused).

    ``library`` (a :class:`~.library.TeacherLibrary`) supplies the zoo's canonical init for ``a0="zoo"``/``"auto"``;
    the spec records the resolved ``a0``, so a checkpoint rebuilds (``library=FROM_CHECKPOINT``) the same way."""
    check_int("cond_dim", cond_dim)
    check_int("n_prompts", n_prompts)
    opts = model_validate_or_raise(CompactOptions, options, "compact generator options")
    base_a = None
    if library == FROM_CHECKPOINT:
        if opts.a0 == "zoo":
            base_a = {  # placeholders of the right shape: the checkpoint holds the values
                m: torch.zeros(
                    sum(s.module == m for s in layout.slots), *next(s for s in layout.slots if s.module == m).a_shape
                )
                for m in dict.fromkeys(s.module for s in layout.slots)
            }
        elif opts.a0 == "auto":  # saved before the option existed: the seeded A
            opts = opts.model_copy(update={"a0": "seed"})
    else:
        init = getattr(library, "init", None)
        if opts.a0 == "zoo" and init is None:
            raise ConfigError(
                'compact generator: a0="zoo" needs teachers from a canonical zoo (teacher.init: canonical); '
                "this zoo has no common init — use a0: seed"
            )
        use_zoo = opts.a0 == "zoo" or (opts.a0 == "auto" and init is not None)
        opts = opts.model_copy(update={"a0": "zoo" if use_zoo else "seed"})
        base_a = zoo_base_a(layout, init) if use_zoo else None
    return CompactGenerator(layout, cond_dim, n_prompts, opts, base_a)


__all__ = [
    "CompactGenerator",
    "CompactOptions",
    "PromptPool",
    "build_compact",
    "check_int",
    "trunk_mlp",
    "zoo_base_a",
]

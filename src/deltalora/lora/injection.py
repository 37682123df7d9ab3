"""Apply LoRA weights held in plain tensors to a frozen backbone through forward hooks.

For every slot the hook adds ``(scale · x Aᵀ) Bᵀ`` to the output of the frozen linear layer — the
same arithmetic as PEFT's LoRA layer with dropout 0 — without ever forming ΔW = B A and without
copying anything into the model. Because the tensors are used, not copied, gradients flow back to
them (e.g. into a generator that produced them), and because the hook runs inside the module's
forward it is recomputed correctly under (non-reentrant) activation checkpointing.

A *batched* ``LoraWeights`` (leading dim K) runs K different adapters in one forward: each batch
row is routed to one adapter. By default a batch of N = K·m rows is split adapter-major (rows
0..m-1 use adapter 0, and so on); pass ``rows`` to route arbitrarily, with -1 meaning "base model".

    with inject(backbone.model, weights):
        out = backbone.model(input_ids=ids, attention_mask=mask)

With activation checkpointing the backward pass *recomputes* the forward, hooks included, so call
``loss.backward()`` inside the ``with`` block (after it, the hooks are gone and torch raises a
CheckpointError about a different number of saved tensors). Reentrant checkpointing is refused:
it would silently drop the gradients to the injected tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .weights import LoraWeights


class InjectionError(RuntimeError):
    """The model or the routing does not fit the weights being injected."""


def _uses_reentrant_checkpointing(model: nn.Module) -> bool:
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            fn = getattr(module, "_gradient_checkpointing_func", None)
            kwargs = getattr(fn, "keywords", {}) or {}
            if kwargs.get("use_reentrant", True):
                return True
    return False


# The routed path groups rows by adapter when adapters serve at least this many rows on average (below
# that, one batched gather of per-row A/B beats a Python loop of tiny matmuls).
GROUP_MIN_ROWS = 4


class _Router:
    """Maps the batch rows seen by a hook to adapter indices, resolved once per forward batch size."""

    def __init__(self, num_adapters: int | None, rows: torch.Tensor | None):
        self.k = num_adapters
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        if self.rows is not None:
            if self.k is None:
                raise InjectionError("rows routing needs batched weights (a leading adapter dimension)")
            if self.rows.dim() != 1:
                raise InjectionError(
                    f"rows must be 1-D (one adapter index per batch row), got shape {tuple(self.rows.shape)}"
                )
            if self.rows.numel() and (int(self.rows.max()) >= self.k or int(self.rows.min()) < -1):
                raise InjectionError(f"rows must be in [-1, {self.k - 1}] (-1 = base model)")
        # Runs of consecutive rows that share an adapter (the evaluator's arm-major batches): each run is a slice of
        # the batch, so it needs no gather of rows and no scatter of results, only its own matmul pair.
        self.runs: list[tuple[int, int, int]] | None = None
        # Otherwise rows grouped by adapter, when every adapter serves several rows: each group runs as one dense
        # matmul pair (gathered rows, scattered results) instead of a private copy of A and B for every row.
        self.groups: list[tuple[int, torch.Tensor | None]] | None = None
        if self.rows is not None and self.rows.numel():
            bounds = [0] + (torch.nonzero(self.rows[1:] != self.rows[:-1])[:, 0] + 1).tolist() + [self.rows.numel()]
            runs = [(int(self.rows[lo]), lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
            if len(runs) <= max(1, self.rows.numel() // GROUP_MIN_ROWS):
                self.runs = runs
        if self.rows is not None and self.rows.numel() and self.runs is None:
            used = sorted({int(r) for r in self.rows.tolist()} - {-1})
            if len(used) <= max(1, self.rows.numel() // GROUP_MIN_ROWS):
                whole = len(used) == 1 and bool((self.rows == used[0]).all())
                self.groups = [(k, None if whole else torch.nonzero(self.rows == k)[:, 0]) for k in used]

    def check(self, n: int) -> None:
        if self.k is None:
            return
        if self.rows is not None:
            if self.rows.numel() != n:
                raise InjectionError(f"rows has {self.rows.numel()} entries but the batch has {n} rows")
        elif n % self.k:
            raise InjectionError(
                f"batch of {n} rows cannot be split over {self.k} adapters; pass rows= to route them explicitly"
            )


def _lora_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float, router: _Router) -> torch.Tensor:
    """``scale · (x Aᵀ) Bᵀ`` with one adapter per row of x (x: [N, ..., in])."""
    A = A.to(x.dtype)
    B = B.to(x.dtype)
    if A.dim() == 2:  # one adapter for every row
        return ((x @ A.transpose(0, 1)) * scale) @ B.transpose(0, 1)
    n = x.shape[0]
    xs = x.reshape(n, -1, x.shape[-1])  # [N, T, in]
    if router.rows is None:
        k = A.shape[0]
        xk = xs.reshape(k, -1, xs.shape[-1])  # adapter-major: [K, m·T, in]
        h = torch.einsum("kti,kri->ktr", xk, A) * scale  # scale the rank-r intermediate, not the output
        d = torch.einsum("ktr,kor->kto", h, B)
        return d.reshape(*x.shape[:-1], B.shape[1])
    if router.groups is not None:
        out = None
        for k, idx in router.groups:
            if idx is None:  # every row uses adapter k
                return (((xs @ A[k].transpose(0, 1)) * scale) @ B[k].transpose(0, 1)).reshape(*x.shape[:-1], B.shape[1])
            idx = idx.to(x.device)
            dk = ((xs.index_select(0, idx) @ A[k].transpose(0, 1)) * scale) @ B[k].transpose(0, 1)
            if out is None:
                out = xs.new_zeros(n, xs.shape[1], B.shape[1])
            out = out.index_copy(0, idx, dk)
        if out is None:  # base rows only
            out = xs.new_zeros(n, xs.shape[1], B.shape[1])
        return out.reshape(*x.shape[:-1], B.shape[1])
    rows = router.rows.to(x.device)
    idx = rows.clamp(min=0)
    h = torch.einsum("nti,nri->ntr", xs, A.index_select(0, idx)) * scale
    if bool((rows < 0).any()):
        h = h * (rows >= 0).to(h.dtype).view(-1, 1, 1)  # base rows: no adapter
    d = torch.einsum("ntr,nor->nto", h, B.index_select(0, idx))
    return d.reshape(*x.shape[:-1], B.shape[1])


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _add_blocks_in_place(
    output: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float
) -> torch.Tensor:
    """The adapter-major layout without autograd (Δ extraction): block k of the rows gets ``scale · (x Aₖᵀ) Bₖᵀ``
    added into the frozen linear's output by one fused batched multiply-add, with no [K, T, out] temporary."""
    k, dt = A.shape[0], output.dtype
    # in place, so in the output's dtype: under autocast the frozen linear's output and its input can differ
    with torch.autocast(device_type=output.device.type, enabled=False):
        h = torch.bmm(x.reshape(k, -1, x.shape[-1]).to(dt), A.to(dt).transpose(1, 2)) * scale  # scale the rank-r part
        output.view(k, -1, output.shape[-1]).baddbmm_(h, B.to(dt).transpose(1, 2))
    return output


def _add_runs(
    output: torch.Tensor,
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    runs: list[tuple[int, int, int]],
) -> torch.Tensor:
    """``output`` plus ``scale · (x Aₖᵀ) Bₖᵀ`` on each run of rows ``[lo, hi)`` routed to adapter k (k = -1: none).

    Without autograd the runs are added into ``output`` in place (the frozen linear's fresh result), so an
    evaluator batch pays for the LoRA matmuls and nothing else; with autograd the result is a new tensor."""
    A, B = A.to(x.dtype), B.to(x.dtype)
    if _needs_grad(output, x, A, B):
        parts = [
            output[lo:hi]
            if k < 0
            else output[lo:hi] + ((x[lo:hi] @ A[k].transpose(0, 1)) * scale) @ B[k].transpose(0, 1)
            for k, lo, hi in runs
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    dt = output.dtype
    with torch.autocast(device_type=output.device.type, enabled=False):  # in place: the output's dtype, as above
        for k, lo, hi in runs:
            if k >= 0:
                output[lo:hi] += ((x[lo:hi].to(dt) @ A[k].to(dt).transpose(0, 1)) * scale) @ B[k].to(dt).transpose(0, 1)
    return output


@contextlib.contextmanager
def inject(
    model: nn.Module,
    weights: LoraWeights,
    rows: torch.Tensor | None = None,
    scale: float | None = None,
) -> Iterator[None]:
    """Hook ``weights`` into ``model`` for the duration of the ``with`` block; hooks are always removed.

    ``scale`` defaults to the layout's (alpha/r, or alpha/√r with rsLoRA). Several ``inject`` blocks
    may be nested: their deltas add up, as stacked adapters do.
    """
    layout = weights.layout
    scale = layout.scale if scale is None else scale
    wants_grad = any(t.requires_grad for t in weights.tensors())
    if wants_grad and _uses_reentrant_checkpointing(model):
        raise InjectionError(
            "reentrant activation checkpointing silently drops gradients to injected LoRA tensors; "
            "enable it with gradient_checkpointing_kwargs={'use_reentrant': False}"
        )
    router = _Router(weights.num_adapters, rows)
    handles = []
    try:
        for slot in layout.slots:
            try:
                module = model.get_submodule(slot.path)
            except AttributeError:
                raise InjectionError(f"slot {slot.key}: the model has no module {slot.path!r}") from None
            if not isinstance(module, nn.Linear) or (module.in_features, module.out_features) != (
                slot.in_features,
                slot.out_features,
            ):
                raise InjectionError(
                    f"slot {slot.key}: {slot.path} is {module!r}, expected Linear({slot.in_features}, "
                    f"{slot.out_features})"
                )
            A, B = weights.A[slot.key], weights.B[slot.key]

            def hook(mod, args, output, A=A, B=B):
                x = args[0]
                router.check(x.shape[0])
                if router.runs is not None:
                    return _add_runs(output, x, A, B, scale, router.runs)
                if A.dim() == 3 and router.rows is None and not _needs_grad(output, x, A, B):
                    return _add_blocks_in_place(output, x, A, B, scale)
                return output + _lora_delta(x, A, B, scale, router)

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()

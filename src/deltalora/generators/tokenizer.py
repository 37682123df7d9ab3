"""DnD's LoRA tokenizer, derived from a :class:`~deltalora.lora.LoraLayout` instead of typed in per model.

Drag-and-Drop LLMs (DnD) turns a LoRA into a sequence of equally shaped 2-D tokens so a convolutional
generator can emit all of them at once, and trains that generator with an MSE on the tokens. DnD wrote
one hand-made tokenizer class per backbone with literal chunk counts (7, 38, 45, ...); here every count
comes from the layout, and one round-trip test covers every backbone.

Token order
    Slots in layout order (layer-major, inside a layer ``q, k, v, o, gate, up, down``); inside a slot
    first the chunks of ``A`` ([r, in]), then the chunks of ``Bᵀ`` ([r, out]) — the per-slot arrangement
    DnD uses. Both matrices have the rank on their row axis, so every chunk is ``r × c``.

Chunk width ``c``
    By default the gcd of every ``in_features`` and ``out_features`` of the adapted linears: the widest
    chunk that cuts every matrix into whole chunks (256 for Qwen2.5-1.5B, 128 for Qwen2.5-0.5B — DnD's
    numbers). ``max_chunk`` caps it at the largest divisor of that gcd not above the cap (still exact
    tiling). An explicit ``chunk_size`` is used as given; a feature axis it does not divide gets a
    zero-padded last chunk, recorded in :attr:`LoraTokenizer.index` (``width < c``).

Token layout, shape ``(r + 2, c + 2)``
    Each chunk ``X`` is standardised by its own statistics over its valid cells:
    ``mean = mean(X)``, ``sigma = sqrt(var(X) + eps²)`` (population variance; ``eps`` keeps the zero
    matrix — e.g. an untrained ``B`` — finite and differentiable), ``Z = (X - mean) / sigma``.

    ============================  ====================================================
    cells                         value
    ============================  ====================================================
    ``[:r, :c]``                  ``Z`` (padding columns of a padded chunk hold 0)
    ``[:r, c]`` and ``[r, :]``    ``mean``   (right column 1, and the whole row ``r``)
    ``[:r, c+1]`` and ``[r+1, :]`` ``log(sigma)`` (right column 2, and the whole row ``r+1``)
    ============================  ====================================================

    So the two extra columns hold (mean, log-std) beside every row, and the two extra rows hold mean and
    log-std across the full width (corners included). :meth:`LoraTokenizer.detokenize` reads ``mean`` and
    ``log(sigma)`` as the average over all of their ``r + c + 2`` cells, which is exact for tokenised
    weights and, for a generator's prediction, lets every border cell receive gradient. DnD wrote the same
    two statistics into its last two rows/columns (interleaved, with extra affine constants); we keep the
    raw mean and log-std, which round-trips without magic numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..lora import LoraLayout, LoraWeights


@dataclass(frozen=True)
class TokenInfo:
    """Where one token comes from — for debugging and per-slot analysis of token losses."""

    token: int  # position in the token sequence
    slot_index: int  # index into layout.slots
    slot_key: str  # e.g. "3.q_proj"
    matrix: Literal["A", "B"]  # A ([r, in]) or B (tokenised as Bᵀ, [r, out])
    chunk: int  # chunk number inside this matrix
    start: int  # first feature (column of A / row of B) covered by the chunk
    width: int  # valid columns; < chunk_size only for a zero-padded last chunk


@dataclass(frozen=True)
class _Segment:
    """The run of consecutive tokens that one matrix (A or Bᵀ of one slot) is cut into."""

    slot_key: str
    matrix: Literal["A", "B"]
    features: int  # length of the axis being chunked (in for A, out for B)
    first_token: int
    num_chunks: int


def derive_chunk_size(features: list[int], chunk_size: int | None = None, max_chunk: int | None = None) -> int:
    """The chunk width ``c`` for matrices whose chunked axes have these lengths.

    Default: gcd of all lengths (every matrix tiles exactly). ``max_chunk``: largest divisor of that gcd
    that is ``<= max_chunk``. ``chunk_size``: taken as given (may require padding).
    """
    if chunk_size is not None and max_chunk is not None:
        raise ConfigError(
            "give chunk_size or max_chunk, not both (chunk_size fixes the width, max_chunk caps the derived one)"
        )
    if chunk_size is not None:
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(chunk_size)
    g = math.gcd(*features)
    if max_chunk is None:
        return g
    if int(max_chunk) != max_chunk or max_chunk < 1:
        raise ConfigError(f"max_chunk must be a positive integer, got {max_chunk!r}")
    return max(d for d in range(1, min(g, int(max_chunk)) + 1) if g % d == 0)


class LoraTokenizer(nn.Module):
    """LoRA weights <-> DnD tokens ``[(K,) T, r + 2, c + 2]`` for one layout (see the module docstring).

    An ``nn.Module`` only so that its (non-persistent) padding mask follows a generator's ``.to(device)``;
    it has no parameters and adds nothing to a state dict.
    """

    def __init__(
        self,
        layout: LoraLayout,
        chunk_size: int | None = None,
        max_chunk: int | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not layout.slots:
            raise ConfigError("the LoRA layout has no slots; nothing to tokenise")
        ranks = {s.rank for s in layout.slots}
        if len(ranks) != 1:
            raise ConfigError(f"DnD tokens need one rank for every slot, the layout has ranks {sorted(ranks)}")
        if not eps > 0:
            raise ConfigError(f"eps must be > 0, got {eps!r}")
        self.layout = layout
        self.rank = ranks.pop()
        self.eps = float(eps)
        features = [d for s in layout.slots for d in (s.in_features, s.out_features)]
        self.chunk_size = derive_chunk_size(features, chunk_size, max_chunk)
        c = self.chunk_size

        segments: list[_Segment] = []
        index: list[TokenInfo] = []
        for s in layout.slots:
            for matrix, feat in (("A", s.in_features), ("B", s.out_features)):
                n = -(-feat // c)
                segments.append(_Segment(s.key, matrix, feat, len(index), n))
                for j in range(n):
                    index.append(TokenInfo(len(index), s.index, s.key, matrix, j, j * c, min(c, feat - j * c)))
        self._segments = tuple(segments)
        self.index: tuple[TokenInfo, ...] = tuple(index)
        widths = torch.tensor([t.width for t in index])
        self.padded = bool((widths < c).any())
        # [T, 1, c] True where a chunk column holds a real weight; absent (None) when nothing is padded.
        valid = (torch.arange(c)[None, None, :] < widths[:, None, None]) if self.padded else None
        self.register_buffer("_valid", valid, persistent=False)

    # ---- shapes ---------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.index)

    @property
    def token_shape(self) -> tuple[int, int]:
        """``(r + 2, c + 2)``."""
        return (self.rank + 2, self.chunk_size + 2)

    def slot_tokens(self, key: str) -> range:
        """Token positions of one slot (its A chunks then its Bᵀ chunks)."""
        segs = [g for g in self._segments if g.slot_key == key]
        if not segs:
            raise KeyError(f"slot {key!r} is not in the layout")
        return range(segs[0].first_token, segs[-1].first_token + segs[-1].num_chunks)

    def describe(self, token: int) -> str:
        """One line naming where a token comes from, e.g. ``token 17: 1.q_proj B chunk 3 [768:1024]``."""
        t = self.index[token]
        pad = f" (padded {self.chunk_size - t.width})" if t.width < self.chunk_size else ""
        return f"token {t.token}: {t.slot_key} {t.matrix} chunk {t.chunk} [{t.start}:{t.start + t.width}]{pad}"

    def cell_mask(self) -> Tensor:
        """Bool ``[T, r + 2, c + 2]``: False only on padding columns of padded chunks (no weight behind them)."""
        r, c = self.rank, self.chunk_size
        mask = torch.ones(self.num_tokens, r + 2, c + 2, dtype=torch.bool, device=self._device())
        if self._valid is not None:
            mask[:, :r, :c] = self._valid.expand(-1, r, -1)
        return mask

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, token_shape={self.token_shape}, padded={self.padded}"

    # ---- conversion -----------------------------------------------------------------------------
    def tokenize(self, weights: LoraWeights) -> Tensor:
        """``LoraWeights`` (single or stacked) -> fp32 tokens ``[(K,) T, r + 2, c + 2]``; differentiable."""
        self._check_layout(weights.layout)
        r, c = self.rank, self.chunk_size
        chunks = []
        for g in self._segments:
            m = weights.A[g.slot_key] if g.matrix == "A" else weights.B[g.slot_key].transpose(-1, -2)
            m = m.to(torch.float32)  # [..., r, F]
            pad = g.num_chunks * c - g.features
            if pad:
                m = nn.functional.pad(m, (0, pad))
            # [..., r, n*c] -> [..., r, n, c] -> [..., n, r, c]: chunk j holds columns j*c .. (j+1)*c
            chunks.append(m.reshape(*m.shape[:-1], g.num_chunks, c).movedim(-2, -3))
        x = torch.cat(chunks, dim=-3)  # [..., T, r, c]

        if self._valid is None:
            mean = x.mean(dim=(-2, -1), keepdim=True)
            var = (x - mean).square().mean(dim=(-2, -1), keepdim=True)
        else:
            valid = self._valid.to(x.dtype)  # [T, 1, c]
            count = valid.sum(dim=(-2, -1), keepdim=True) * r
            mean = x.sum(dim=(-2, -1), keepdim=True) / count  # padding is zero: plain sum is the valid sum
            var = ((x - mean) * valid).square().sum(dim=(-2, -1), keepdim=True) / count
        sigma = torch.sqrt(var + self.eps**2)
        z = (x - mean) / sigma
        if self._valid is not None:
            z = z * self._valid
        log_sigma = torch.log(sigma)

        lead = x.shape[:-2]
        right = torch.cat([mean.expand(*lead, r, 1), log_sigma.expand(*lead, r, 1)], dim=-1)
        bottom = torch.cat([mean.expand(*lead, 1, c + 2), log_sigma.expand(*lead, 1, c + 2)], dim=-2)
        return torch.cat([torch.cat([z, right], dim=-1), bottom], dim=-2)

    def split(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens -> (standardised chunks ``[..., T, r, c]``, mean ``[..., T]``, log-std ``[..., T]``).

        Mean and log-std are averaged over all of their border cells (see the module docstring).
        """
        r, c = self.rank, self.chunk_size
        n = r + c + 2
        mean = (tokens[..., :r, c].sum(-1) + tokens[..., r, :].sum(-1)) / n
        log_sigma = (tokens[..., :r, c + 1].sum(-1) + tokens[..., r + 1, :].sum(-1)) / n
        return tokens[..., :r, :c], mean, log_sigma

    def detokenize(self, tokens: Tensor) -> LoraWeights:
        """Tokens ``[T, r+2, c+2]`` or ``[K, T, r+2, c+2]`` -> ``LoraWeights`` (fp32; stacked iff K given)."""
        expected = (self.num_tokens, *self.token_shape)
        if tokens.dim() not in (3, 4) or tuple(tokens.shape[-3:]) != expected:
            raise ValueError(
                f"tokens have shape {tuple(tokens.shape)}; expected [(K,) {', '.join(map(str, expected))}]"
            )
        z, mean, log_sigma = self.split(tokens.to(torch.float32))
        x = z * torch.exp(log_sigma)[..., None, None] + mean[..., None, None]  # [..., T, r, c]
        A: dict[str, Tensor] = {}
        B: dict[str, Tensor] = {}
        for g in self._segments:
            part = x[..., g.first_token : g.first_token + g.num_chunks, :, :]  # [..., n, r, c]
            m = part.movedim(-3, -2).reshape(*part.shape[:-3], self.rank, g.num_chunks * self.chunk_size)
            m = m[..., : g.features]  # drop the padding of a padded last chunk
            if g.matrix == "A":
                A[g.slot_key] = m.contiguous()
            else:
                B[g.slot_key] = m.transpose(-1, -2).contiguous()
        return LoraWeights(self.layout, A, B)

    # ---- helpers --------------------------------------------------------------------------------
    def _check_layout(self, layout: LoraLayout) -> None:
        mine = [(s.key, s.a_shape, s.b_shape) for s in self.layout.slots]
        theirs = [(s.key, s.a_shape, s.b_shape) for s in layout.slots]
        if mine != theirs:
            raise ValueError("these LoRA weights have a different layout (slots or shapes) than the tokenizer's")

    def _device(self) -> torch.device:
        return self._valid.device if self._valid is not None else torch.device("cpu")


def criterion_weights(teacher_tokens: Tensor, floor: float = 0.0) -> Tensor:
    """Per-token loss weights ``[T]`` from how much each token varies across a teacher set; mean exactly 1.

    DnD's idea: a token that every teacher agrees on carries little task information, while a token that
    differs between teachers is where the generator must listen to the condition — so it weighs each
    token's MSE by the spread of that token across the training checkpoints. Here:

        s_t = mean over the cells of token t of  std_n(teacher_tokens[n, t, cell])   (population std)
        w_t = (s_t + floor · mean(s)) / ((1 + floor) · mean(s))

    so ``w`` has mean 1 (the weighted loss stays on the scale of the plain MSE), ``w_t ∝ s_t`` for
    ``floor = 0`` (DnD's choice: a token identical across teachers gets weight 0), and ``floor > 0`` keeps
    every token in the loss with at least ``floor / (1 + floor)`` weight. Padding cells are constant and
    only lower a padded token's mean spread slightly. If no token varies at all the weights are uniform.

    ``teacher_tokens``: ``[N, T, ...]`` with N >= 2 teachers (tokens of one layout, stacked). No gradient.
    """
    if teacher_tokens.dim() < 2:
        raise ValueError(f"teacher_tokens must be [N, T, ...], got shape {tuple(teacher_tokens.shape)}")
    if teacher_tokens.shape[0] < 2:
        raise ValueError("criterion weights need at least 2 teachers: the spread of one adapter is undefined")
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    t = teacher_tokens.detach().to(torch.float32)
    spread = t.std(dim=0, unbiased=False).flatten(start_dim=1).mean(dim=1)  # [T]
    avg = spread.mean()
    if not avg > 0:
        return torch.ones_like(spread)
    return (spread + floor * avg) / ((1.0 + floor) * avg)


def weighted_token_mse(
    pred: Tensor, target: Tensor, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """DnD's training loss: MSE over token cells, each token's error scaled by ``weights[t]``.

    ``pred``/``target``: ``[..., T, H, W]``; ``weights``: ``[T]`` (e.g. :func:`criterion_weights`; None =
    plain MSE); ``mask``: optional bool ``[T, H, W]`` of cells to count (e.g. ``LoraTokenizer.cell_mask()``
    to ignore padding). With weights of mean 1 and no mask the value is on the plain MSE's scale.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.dim() < 3:
        raise ValueError(f"tokens must be [..., T, H, W], got shape {tuple(pred.shape)}")
    err = (pred - target).square()
    if mask is not None:
        if tuple(mask.shape) != tuple(pred.shape[-3:]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(pred.shape[-3:])}")
        m = mask.to(err.dtype)
        per_token = (err * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp_min(1.0)
    else:
        per_token = err.mean(dim=(-2, -1))  # [..., T]
    if weights is not None:
        if tuple(weights.shape) != (pred.shape[-3],):
            raise ValueError(f"weights {tuple(weights.shape)} must be [T] = [{pred.shape[-3]}]")
        per_token = per_token * weights.to(per_token)
    return per_token.mean()


__all__ = ["LoraTokenizer", "TokenInfo", "criterion_weights", "derive_chunk_size", "weighted_token_mse"]

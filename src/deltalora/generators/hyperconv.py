"""DnD's HyperConv generator: prompt embeddings -> DnD tokens -> LoRA weights.

A condition ``[K, n_prompts, cond_dim]`` is viewed as a 3-D feature map per adapter: ``n_prompts`` planes
(the *channel* axis ``L``) of ``rows × cols`` (each prompt's embedding vector laid out as a grid,
``rows · cols = cond_dim``). A stack of HyperConv layers walks that map to the token grid
``(T, r + 2, c + 2)`` of :class:`~deltalora.generators.tokenizer.LoraTokenizer`, whose ``detokenize``
turns it into ``LoraWeights``. DnD's loss is an MSE on tokens, so :meth:`HyperConvGenerator.forward_tokens`
returns them directly.

One HyperConv layer, input ``[B, L, H, W]`` -> output ``[B, L', H', W']``:

1. ``LayerNorm`` over each ``H × W`` plane.
2. Two branches that each mix all three axes: *width first* (conv whose channels are the W axis,
   ``W -> W'``, kernel over ``(H, L)``; then channels = H, ``H -> H'``, kernel over ``(L, W')``) and
   *height first* (the same two steps in the other order) followed by ``tanh``. Their mean with a learnt
   ``[H', W']`` bias, ``(width_first + tanh(height_first) + bias) / 3``, is DnD's combination.
3. A conv whose channels are the L axis (``L -> L'``, kernel over ``(H', W')``) — this is the step that
   grows ``n_prompts`` planes into ``T`` tokens. A residual connection is added when shapes agree.

Every axis swap is an explicit ``permute`` (DnD had a ``.view`` where a transpose was meant), and the
generator's configuration lives on the instance (``gen.spec``, ``gen.features``), never on the class.

Widths: the stage shapes interpolate geometrically from ``(n_prompts, rows, cols)`` to
``(T, r + 2, c + 2)`` over ``num_layers`` layers; ``width_mult`` scales the intermediate channel counts
(the ``L`` axis, which dominates the parameter count through the last ``L_{n-1} × T × k²`` conv), so one
option shrinks the generator to fit a CPU. DnD's hand-typed schedule for Qwen2.5-0.5B
(128×384×384 -> ... -> 2048×10×200 -> 4296×10×130, kernel 9) is one point of the same family.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..config import StrictModel, model_validate_or_raise
from ..errors import ConfigError
from ..lora import LoraLayout, LoraWeights
from .registry import register_generator
from .tokenizer import LoraTokenizer

Shape3 = tuple[int, int, int]  # (L, H, W): planes, rows, columns


class HyperConvOptions(StrictModel):
    """The ``hyperconv`` generator's own options (``build_generator("hyperconv", ..., **options)``)."""

    width_mult: float = Field(1.0, gt=0, description="scales the intermediate channel (plane) counts")
    num_layers: int = Field(4, ge=1, le=32, description="HyperConv layers between condition and tokens")
    kernel_size: int = Field(3, ge=1, le=15, description="odd conv kernel; DnD used 9")
    cond_rows: int | None = Field(
        None, ge=1, description="rows of the embedding grid; default: near-square divisor of cond_dim"
    )
    chunk_size: int | None = Field(None, ge=1, description="tokenizer chunk width (default derived from the layout)")
    max_chunk: int | None = Field(None, ge=1, description="cap on the derived tokenizer chunk width")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd so 'same' padding is symmetric, got {v}")
        return v


def near_square_rows(n: int) -> int:
    """Largest divisor of ``n`` that is <= sqrt(n): the rows of the most square ``rows × cols = n`` grid."""
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)


def plan_features(start: Shape3, end: Shape3, num_layers: int, width_mult: float) -> list[Shape3]:
    """Stage shapes ``[start, ..., end]`` (``num_layers + 1`` entries), geometric in every axis.

    Only the intermediate plane counts are scaled by ``width_mult``; the first shape is the condition and
    the last is the token grid, both fixed.
    """
    feats: list[Shape3] = [start]
    for i in range(1, num_layers):
        f = i / num_layers
        geo = [a * (b / a) ** f for a, b in zip(start, end)]
        feats.append((max(1, round(geo[0] * width_mult)), max(1, round(geo[1])), max(1, round(geo[2]))))
    feats.append(end)
    return feats


def _conv(cin: int, cout: int, k: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class HyperConvLayer(nn.Module):
    """One ``[B, L, H, W] -> [B, L', H', W']`` step (see the module docstring)."""

    def __init__(self, fin: Shape3, fout: Shape3, kernel_size: int) -> None:
        super().__init__()
        (lin, hin, win), (lout, hout, wout) = fin, fout
        k = kernel_size
        self.norm = nn.LayerNorm([hin, win])
        self.w_first_w = _conv(win, wout, k, bias=False)
        self.w_first_h = _conv(hin, hout, k, bias=False)
        self.h_first_h = _conv(hin, hout, k, bias=False)
        self.h_first_w = _conv(win, wout, k, bias=False)
        self.bias = nn.Parameter(torch.zeros(hout, wout))
        self.planes = _conv(lin, lout, k, bias=True)
        self.residual = fin == fout

    @staticmethod
    def _along_w(x: Tensor, conv: nn.Conv2d) -> Tensor:
        # [B, L, H, W] -> [B, W, H, L] (W as channels) -> conv -> back to [B, L, H, W']
        return conv(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)

    @staticmethod
    def _along_h(x: Tensor, conv: nn.Conv2d) -> Tensor:
        # [B, L, H, W] -> [B, H, L, W] (H as channels) -> conv -> back to [B, L, H', W]
        return conv(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x)
        width_first = self._along_h(self._along_w(y, self.w_first_w), self.w_first_h)
        height_first = torch.tanh(self._along_w(self._along_h(y, self.h_first_h), self.h_first_w))
        y = (width_first + height_first + self.bias) / 3
        y = self.planes(y)
        return x + y if self.residual else y


class HyperConvGenerator(nn.Module):
    """``cond [K, n_prompts, cond_dim] -> LoraWeights(num_adapters=K)`` through DnD tokens.

    Attributes: ``tokenizer`` (the layout's :class:`LoraTokenizer`), ``features`` (stage shapes),
    ``spec`` (JSON-able; ``build_generator(spec["name"], layout, spec["cond_dim"], spec["n_prompts"],
    **spec["options"])`` rebuilds the same architecture).
    """

    def __init__(self, layout: LoraLayout, cond_dim: int, n_prompts: int, options: HyperConvOptions) -> None:
        super().__init__()
        for name, v in (("cond_dim", cond_dim), ("n_prompts", n_prompts)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"hyperconv: {name} must be a positive integer, got {v!r}")
        rows = options.cond_rows if options.cond_rows is not None else near_square_rows(cond_dim)
        if cond_dim % rows:
            raise ConfigError(f"hyperconv: cond_rows={rows} does not divide cond_dim={cond_dim}; pick a divisor")
        self.layout = layout
        self.cond_dim = cond_dim
        self.n_prompts = n_prompts
        self.tokenizer = LoraTokenizer(layout, chunk_size=options.chunk_size, max_chunk=options.max_chunk)
        self.cond_grid = (rows, cond_dim // rows)
        token_grid: Shape3 = (self.tokenizer.num_tokens, *self.tokenizer.token_shape)
        self.features = plan_features((n_prompts, *self.cond_grid), token_grid, options.num_layers, options.width_mult)
        self.layers = nn.ModuleList(
            HyperConvLayer(a, b, options.kernel_size) for a, b in zip(self.features[:-1], self.features[1:])
        )
        resolved = options.model_copy(update={"cond_rows": rows})
        self.spec: dict[str, Any] = {
            "name": "hyperconv",
            "cond_dim": cond_dim,
            "n_prompts": n_prompts,
            "options": resolved.model_dump(mode="json"),
        }

    def forward_tokens(self, cond: Tensor) -> Tensor:
        """``[K, n_prompts, cond_dim]`` -> DnD tokens ``[K, T, r + 2, c + 2]`` (the target of DnD's MSE)."""
        if cond.dim() != 3 or tuple(cond.shape[1:]) != (self.n_prompts, self.cond_dim):
            raise ValueError(
                f"condition has shape {tuple(cond.shape)}; expected [K, {self.n_prompts}, {self.cond_dim}]"
            )
        # Each prompt's embedding vector is laid out row-major on a rows × cols grid (a reshape of one
        # vector, not an axis swap).
        x = cond.reshape(cond.shape[0], self.n_prompts, *self.cond_grid)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, cond: Tensor) -> LoraWeights:
        return self.tokenizer.detokenize(self.forward_tokens(cond))

    def extra_repr(self) -> str:
        return "features=" + " -> ".join("x".join(map(str, f)) for f in self.features)


def hyperconv_num_parameters(layout: LoraLayout, cond_dim: int, n_prompts: int, **options: Any) -> int:
    """Parameter count of ``build_generator("hyperconv", layout, cond_dim, n_prompts, **options)``
    computed from the stage shapes, without allocating the model (the full-size ones are large)."""
    opts = model_validate_or_raise(HyperConvOptions, options, "hyperconv generator options")
    tok = LoraTokenizer(layout, chunk_size=opts.chunk_size, max_chunk=opts.max_chunk)
    rows = opts.cond_rows if opts.cond_rows is not None else near_square_rows(cond_dim)
    feats = plan_features(
        (n_prompts, rows, cond_dim // rows), (tok.num_tokens, *tok.token_shape), opts.num_layers, opts.width_mult
    )
    k2 = opts.kernel_size**2
    total = 0
    for (li, hi, wi), (lo, ho, wo) in zip(feats[:-1], feats[1:]):
        total += 2 * hi * wi  # LayerNorm
        total += 2 * (wi * wo + hi * ho) * k2  # the four axis convs, no bias
        total += ho * wo  # branch bias
        total += li * lo * k2 + lo  # plane conv with bias
    return total


@register_generator("hyperconv")
def build_hyperconv(
    layout: LoraLayout, cond_dim: int, n_prompts: int, library: Any = None, **options: Any
) -> HyperConvGenerator:
    """Builder for the registry: validates ``options`` (unknown or bad ones raise ``ConfigError``); DnD's generator
    does not read the teacher library."""
    opts = model_validate_or_raise(HyperConvOptions, options, "hyperconv generator options")
    return HyperConvGenerator(layout, cond_dim, n_prompts, opts)


__all__ = [
    "HyperConvGenerator",
    "HyperConvLayer",
    "HyperConvOptions",
    "build_hyperconv",
    "hyperconv_num_parameters",
    "near_square_rows",
    "plan_features",
]

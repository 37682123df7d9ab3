"""How a forward pass over the probes becomes one vector per probe (and v(M) = their mean).

Representations, by spec string (:func:`parse_representation`; :attr:`Representation.spec` is canonical):

- ``last_token`` (default): final layer after the final norm (``last_hidden_state`` = ``hidden_states[-1]``),
  at the last real token.
- ``mean``: final layer after the final norm, averaged over the real (non-pad) tokens.
- ``layers:[i,j,...]`` with optional ``:concat`` (default) or ``:avg`` and optional ``:last_token`` (default)
  or ``:mean``: ``hidden_states[i]`` of transformers, concatenated or averaged over the listed layers.
  Index 0 is the embeddings; ``num_hidden_layers`` (= -1) is the final, post-norm output; every index
  in between is a decoder layer's output *before* the final norm.

Probes are left-padded with explicit position ids (``cumsum(mask) - 1``), so a padded row sees the same
positions as the probe alone; pooling gathers at the real tokens of each row; everything after the
decoder is done in float32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError

_LAYERS_RE = re.compile(r"^layers:\[(?P<idx>[-\d,\s]+)\](?::(?P<a>\w+))?(?::(?P<b>\w+))?$")


@dataclass(frozen=True)
class Representation:
    pool: str = "last_token"  # "last_token" | "mean"
    layers: tuple[int, ...] | None = None  # None: the final post-norm output only
    combine: str = "concat"  # "concat" | "avg" (only with layers)

    @property
    def spec(self) -> str:
        if self.layers is None:
            return self.pool
        return f"layers:[{','.join(map(str, self.layers))}]:{self.combine}:{self.pool}"

    def dim(self, hidden_size: int) -> int:
        return hidden_size * (len(self.layers) if self.layers is not None and self.combine == "concat" else 1)

    def __str__(self) -> str:
        return self.spec


def parse_representation(spec: str | Representation) -> Representation:
    if isinstance(spec, Representation):
        return spec
    s = str(spec).strip()
    if s in ("last_token", "mean"):
        return Representation(pool=s)
    m = _LAYERS_RE.match(s)
    if m:
        try:
            layers = tuple(int(x) for x in m["idx"].split(",") if x.strip())
        except ValueError:
            layers = ()
        opts = [o for o in (m["a"], m["b"]) if o]
        combine = next((o for o in opts if o in ("concat", "avg")), "concat")
        pool = next((o for o in opts if o in ("last_token", "mean")), "last_token")
        unknown = [o for o in opts if o not in ("concat", "avg", "last_token", "mean")]
        if layers and not unknown and len(set(layers)) == len(layers):
            return Representation(pool=pool, layers=layers, combine=combine)
    raise ConfigError(
        f"unknown representation {spec!r}; use last_token, mean, or layers:[i,j,...][:concat|:avg][:last_token|:mean] "
        "(distinct hidden_states indices, e.g. layers:[12,24]:avg)"
    )


def encode_probes(tokenizer, texts, device=None) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and matching ``position_ids`` for ``texts``.

    Tokenised like Delta Activations does (the tokenizer's default special tokens, no chat template).
    """
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    mask = enc["attention_mask"]
    out = {
        "input_ids": enc["input_ids"],
        "attention_mask": mask,
        "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0),
    }
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def repeat_batch(enc: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """K adapter-major blocks of the same probe rows (what batched injection routes)."""
    return enc if k == 1 else {name: t.repeat(k, 1) for name, t in enc.items()}


def _pool(h: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    h = h.float()
    if pool == "last_token":
        # index of each row's last real token (== T-1 with left padding; correct for any padding)
        t = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * t).argmax(dim=1)
        return h[torch.arange(h.shape[0], device=h.device), last]
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1)


def probe_vectors(decoder: torch.nn.Module, enc: dict[str, torch.Tensor], rep: Representation) -> torch.Tensor:
    """One float32 vector per row of ``enc`` ([N, dim]) from a forward of ``decoder`` (the model without LM head)."""
    out = decoder(**enc, use_cache=False, output_hidden_states=rep.layers is not None)
    return pool_outputs(out, enc["attention_mask"], rep)


def pool_outputs(out, mask: torch.Tensor, rep: Representation) -> torch.Tensor:
    """:func:`probe_vectors` after its forward: ``rep`` pooled over the tokens where ``mask`` is 1 ([N, dim] float32).

    ``mask`` need not be the attention mask: a forward over prompt + answer pooled with a mask of the prompt tokens
    gives the prompt's vectors (causal attention: no prompt token sees the answer), which the fused Δ + KL step uses.
    ``out`` must hold ``hidden_states`` when ``rep`` names layers."""
    if rep.layers is None:
        return _pool(out.last_hidden_state, mask, rep.pool)
    hs = out.hidden_states
    n = len(hs)
    bad = [i for i in rep.layers if not -n <= i < n]
    if bad:
        raise ConfigError(
            f"representation {rep.spec}: layers {bad} do not exist; hidden_states has indices 0..{n - 1} (or -{n}..-1)"
        )
    pooled = [_pool(hs[i], mask, rep.pool) for i in rep.layers]
    return torch.cat(pooled, dim=-1) if rep.combine == "concat" else torch.stack(pooled).mean(dim=0)


def mean_over_probes(vectors: torch.Tensor, num_probes: int) -> torch.Tensor:
    """[K·P, dim] adapter-major rows -> [K, dim]: v of each adapter, the mean over its P probes (float32)."""
    return vectors.float().reshape(-1, num_probes, vectors.shape[-1]).mean(dim=1)


__all__ = [
    "Representation",
    "encode_probes",
    "mean_over_probes",
    "parse_representation",
    "pool_outputs",
    "probe_vectors",
    "repeat_batch",
]

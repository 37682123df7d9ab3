"""``deltalora generator info``: parameter counts of the registered generators for one layout."""

from __future__ import annotations

import typer

from .common import emit_json, run_guarded

app = typer.Typer(no_args_is_help=True)


def generator_sizes(layout, cond_dim: int, n_prompts: int, names: list[str] | None = None) -> dict[str, dict]:
    """``{name: {"num_parameters", "ratio_to_hyperconv"}}`` for ``names`` (default: every registered generator).

    Generators are built with their parameters on the meta device (shapes only: no memory, no init
    cost; see :func:`~deltalora.generators.checkpoint.meta_parameters`) with default options.
    The ratio is None when hyperconv is not registered.
    """
    from ..generators import build_generator, generator_names, num_parameters
    from ..generators.checkpoint import meta_parameters

    known = generator_names()
    names = list(dict.fromkeys(names or known))
    counts = {}
    for name in dict.fromkeys([*names, *(["hyperconv"] if "hyperconv" in known else [])]):
        with meta_parameters():
            counts[name] = num_parameters(build_generator(name, layout, cond_dim=cond_dim, n_prompts=n_prompts))
    ref = counts.get("hyperconv")
    return {n: {"num_parameters": counts[n], "ratio_to_hyperconv": None if ref is None else counts[n] / ref} for n in names}


@app.command("info")
def info_cmd(
    generator: list[str] = typer.Option([], "--generator", help="Generator name (repeatable; default: every registered one)."),
    backbone: str = typer.Option(..., help="Registered backbone name, local model dir, or HF id (only its config is read)."),
    rank: int = typer.Option(8, "--rank", "-r", help="LoRA rank r."),
    alpha: float = typer.Option(16.0, help="LoRA alpha."),
    targets: str = typer.Option("q,v", help="Comma-separated modules: q,k,v,o,gate,up,down."),
    layers: str = typer.Option(None, help="Comma-separated layer indices (default: all)."),
    cond_dim: int = typer.Option(384, help="Width of one condition embedding (minilm: 384)."),
    n_prompts: int = typer.Option(8, help="Condition prompts per adapter."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Parameter count of each generator for a backbone + LoRA config, and its ratio to hyperconv (built on the meta device: no memory)."""

    def go() -> dict:
        from ..backbones import architecture_of
        from ..config import LoraSpec, model_validate_or_raise
        from ..lora import derive_layout

        spec = model_validate_or_raise(LoraSpec, dict(rank=rank, alpha=alpha, targets=targets, layers=layers), "lora options")
        layout = derive_layout(architecture_of(backbone), spec)
        sizes = generator_sizes(layout, cond_dim, n_prompts, generator or None)
        return {
            "backbone": backbone,
            "lora": spec.model_dump(mode="json"),
            "lora_params": layout.num_params,
            "num_slots": len(layout.slots),
            "cond_dim": cond_dim,
            "n_prompts": n_prompts,
            "generators": sizes,
        }

    info = run_guarded(go)
    if json_out:
        emit_json(info)
        return
    lora = info["lora"]
    typer.echo(
        f"backbone {backbone}, rank {lora['rank']}, targets {','.join(lora['targets'])}: {info['num_slots']} slots, "
        f"{info['lora_params']:,} LoRA parameters; cond_dim {cond_dim}, n_prompts {n_prompts}"
    )
    for name, g in info["generators"].items():
        ratio = g["ratio_to_hyperconv"]
        typer.echo(f"  {name:>10}  {g['num_parameters']:>15,} parameters" + ("" if ratio is None else f"  ({ratio:.4g} x hyperconv)"))

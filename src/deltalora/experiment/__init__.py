"""Phase 4: the held-out experiment (``deltalora run``) and its ablations (``deltalora ablate``)."""

from .config import AblationConfig, EvalConfig, RunConfig, load_ablation_config, load_run_config
from .run import ROWS, run_experiment

__all__ = ["ROWS", "AblationConfig", "EvalConfig", "RunConfig", "load_ablation_config", "load_run_config", "run_experiment"]

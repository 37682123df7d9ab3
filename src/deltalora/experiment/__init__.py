"""Phase 4: the held-out experiment (``deltalora run``), its report (``deltalora report``) and its ablations
(``deltalora ablate``)."""

from .config import AblationConfig, EvalConfig, RunConfig, TargetConfig, load_ablation_config, load_run_config
from .report import rerender, write_report
from .run import ROWS, run_experiment
from .stats import summarize

__all__ = [
    "ROWS",
    "AblationConfig",
    "EvalConfig",
    "RunConfig",
    "TargetConfig",
    "load_ablation_config",
    "load_run_config",
    "rerender",
    "run_experiment",
    "summarize",
    "write_report",
]

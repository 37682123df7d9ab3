"""The run's timing ledger (``timing.json``): seconds per stage for this call, and summed over every call."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import ConfigError
from ..paths import atomic_write_bytes


class StageClock:
    """Seconds per stage for this call, and summed over every call into one run directory (``timing.json``).

    A resumed run's report would otherwise time only the work its last call did. The sum is written after
    every stage, so a kill loses only the stage it cut short; that stage's work is not counted.
    """

    def __init__(self, out: Path):
        self.path = out / "timing.json"
        self.call: dict[str, float] = {}
        self.total: dict[str, float] = {}
        self.calls = 1
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                self.total = {str(k): float(v) for k, v in saved["stages"].items()}
                self.calls = int(saved["calls"]) + 1
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{self.path}: not a timing ledger ({type(exc).__name__}: {exc}); delete it "
                    "(only the report's all-calls timing is lost) and rerun"
                ) from None

    def add(self, name: str, t0: float) -> None:
        """Count the seconds since ``t0`` (a :func:`time.perf_counter` reading) to stage ``name``."""
        dt = time.perf_counter() - t0
        self.call[name] = round(self.call.get(name, 0.0) + dt, 2)
        self.total[name] = round(self.total.get(name, 0.0) + dt, 2)
        atomic_write_bytes(self.path, json.dumps({"calls": self.calls, "stages": self.total}, indent=1).encode())


__all__ = ["StageClock"]

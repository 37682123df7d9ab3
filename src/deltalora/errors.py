"""User-facing errors.

Every error raised at a boundary (a file, a config, a download) is a :class:`DeltaLoraError` whose
message is one line naming the offending thing and what to do about it. The CLI prints it and exits
non-zero; library users can catch it.
"""

from __future__ import annotations


class DeltaLoraError(Exception):
    """A problem the user can fix; ``str(err)`` is a single actionable line."""

    exit_code = 2


class ConfigError(DeltaLoraError):
    """A config file or option is invalid."""


class BackboneError(DeltaLoraError):
    """A backbone cannot be resolved, fetched, verified or loaded."""


class AdapterError(DeltaLoraError):
    """An adapter directory is missing, corrupt, or does not fit the backbone."""

    def __init__(self, path, problem: str, fix: str):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")

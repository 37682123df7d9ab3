"""Shared CLI plumbing: one-line errors with a non-zero exit, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import DeltaLoraError

T = TypeVar("T")


def run_guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; a :class:`DeltaLoraError` becomes ``error: <one line>`` on stderr and its exit code."""
    try:
        return fn(*args, **kwargs)
    except DeltaLoraError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")

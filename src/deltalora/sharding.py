"""``--shard i/n``: split an embarrassingly parallel job (zoo build, Δ extraction) over n workers.

Worker i takes every n-th item of one fixed order, starting at i: the shards are disjoint and together cover
everything, whatever i each worker is given. One parser and one rule, for every job that shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from .errors import ConfigError

T = TypeVar("T")

ALL = (0, 1)


class ShardError(ConfigError):
    """A shard spec that is not i/n with 0 <= i < n."""


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1), everything."""
    if text is None:
        return ALL
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    return check_shard((i, n), f"--shard {text!r}")


def check_shard(shard: tuple[int, int], what: str | None = None) -> tuple[int, int]:
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ShardError(
            f"{what or f'shard {i}/{n}'} is not i/n with 0 <= i < n; e.g. --shard 0/2 and --shard 1/2 for two workers"
        )
    return i, n


def take_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Every n-th of ``items`` (in their given order) starting at i; all of them for None."""
    i, n = check_shard(shard or ALL)
    return list(items[i::n])


__all__ = ["ShardError", "check_shard", "parse_shard", "take_shard"]

"""Both ways agent.spawn starts a session's process, for the tests that check what that process
is: a fork at spawn() time, and a child forked ahead by prefork() and sent its plan (as a spare
supervisor does)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from agent.spawn import Syscalls, prefork, spawn

WAYS = ("fork", "preforked")


def spawn_by(way: str) -> Callable[..., int]:
    """spawn() itself, or a spawn() whose child is forked by prefork() first."""
    if way == "fork":
        return spawn

    def preforked(plan: Any, *, syscalls: Optional[Syscalls] = None, **kwargs: Any) -> int:
        return spawn(plan, syscalls=syscalls, preforked=prefork(syscalls), **kwargs)

    return preforked

"""structlog configuration, done once by the CLI for commands that log (the daemon).

JSON lines on stderr for services, key=value lines for a terminal. Events are named `noun.verb`.
"""

import importlib
import logging
import sys
import types
from typing import Any, Optional, TextIO

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _Tolerant:
    """A log stream that never raises: a closed or full stderr (journald restarting, a pipe
    whose reader is gone) must not take the daemon down. Lost log lines are the lesser harm."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> Any:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


class _Deferred(types.ModuleType):
    """Stands in for a module until something asks it for a name; then the real module is
    imported (in its place in sys.modules) and answers."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def keep_out_unused_imports() -> None:
    """structlog imports asyncio, and asyncio would load ssl, for coroutine methods the daemon
    never calls: about 5 MB of resident memory (OpenSSL alone 1.2 MB), in the daemon and, copied
    on write, in every supervisor. Nothing here speaks TLS: ssl stays out. asyncio is deferred
    until something uses it. Call before structlog's first import."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    if "asyncio" not in sys.modules:
        sys.modules["asyncio"] = _Deferred("asyncio")


def configure(fmt: str = "auto", level: str = "info", stream: Optional[TextIO] = None) -> None:
    import structlog

    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(key_order=["ts", "level", "event"])
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=_Tolerant(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )

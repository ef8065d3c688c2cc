"""A process's name as ps and /proc/PID/comm show it (Linux; elsewhere nothing is set or read).

The daemon's processes name themselves by what they are doing, and the daemon reads its
children's names where the difference matters: an idle spare supervisor is `runas-spare`, and a
supervisor whose session has ended (recorded, its client told) is `runas-ended` until it exits.
Only the process itself, or root, can set a process's name.
"""

from __future__ import annotations

import os
from typing import Optional

SPARE = "runas-spare"  # an idle spare supervisor
ENDED = "runas-ended"  # a supervisor whose session is over: no longer a live session


def set_name(name: str, sys_platform: str) -> str:
    """Set this process's name; returns the previous one (NAME where none can be set)."""
    if sys_platform != "linux":
        return name
    try:  # plain descriptors: a supervisor does this on its session's start
        fd = os.open("/proc/self/comm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return name
    try:
        old = os.read(fd, 64).decode("utf-8", "replace").rstrip("\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, name.encode())
        return old
    except OSError:
        return name
    finally:
        os.close(fd)


def name_of(pid: int, sys_platform: str) -> Optional[str]:
    """PID's name, or None (gone, or not Linux)."""
    if sys_platform != "linux":
        return None
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None

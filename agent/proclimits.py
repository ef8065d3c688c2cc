"""What a process's settings are that PAM session modules change in the calling process:
resource limits (every RLIMIT_*), the umask and the nice value (pam_limits, pam_umask).

PAM's session stage runs in a root process of its own (agent.pam), never in the supervisor: a
user's `hard fsize 8` would otherwise stop the supervisor writing the audit log. That process
captures its settings before PAM and again after, and hands the difference to the supervisor,
which gives it to the session's child, which applies it before exec. `changes` and the
dataclass are pure; `capture` and `apply` make the system calls.
"""

from __future__ import annotations

import os
import resource  # here, not in the functions: the forked child of agent.spawn imports nothing
from dataclasses import dataclass

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Optional

_MAX_RESOURCE = 64  # far above RLIM_NLIMITS of any kernel (16 on Linux, 9 on macOS)


@dataclass(frozen=True)
class ProcessLimits:
    """Resource limits as (resource, soft, hard), the umask and the nice value. As a capture,
    every resource and both values are there; as a set of changes, only what differs (None:
    unchanged)."""

    rlimits: tuple[tuple[int, int, int], ...] = ()
    umask: Optional[int] = None
    nice: Optional[int] = None

    @property
    def empty(self) -> bool:
        return not self.rlimits and self.umask is None and self.nice is None


def resources() -> tuple[int, ...]:
    """Every resource limit this system has: those resource names, and those it has no name
    for (Linux's RLIMIT_LOCKS), found by asking for each number up to RLIM_NLIMITS."""
    found = []
    for number in range(_MAX_RESOURCE):
        try:
            resource.getrlimit(number)
        except ValueError:  # at or beyond RLIM_NLIMITS
            break
        except OSError:  # a gap in the numbering
            continue
        found.append(number)
    return tuple(found)


def capture() -> ProcessLimits:
    """This process's limits, umask and nice value now."""
    rlimits = []
    for r in resources():
        soft, hard = resource.getrlimit(r)
        rlimits.append((r, soft, hard))
    mask = os.umask(0o077)
    os.umask(mask)
    return ProcessLimits(tuple(rlimits), mask, os.getpriority(os.PRIO_PROCESS, 0))


def changes(before: ProcessLimits, after: ProcessLimits) -> ProcessLimits:
    """What applying to a process in state BEFORE brings it to AFTER (both captures)."""
    old = {r: (soft, hard) for r, soft, hard in before.rlimits}
    rlimits = tuple((r, soft, hard) for r, soft, hard in after.rlimits
                    if old.get(r) != (soft, hard))
    return ProcessLimits(rlimits,
                         None if after.umask == before.umask else after.umask,
                         None if after.nice == before.nice else after.nice)


def restore(own: ProcessLimits) -> tuple[str, ...]:
    """Put this process's OWN settings (a capture) back, each on its own; returns what could
    not be put back. Raising a hard limit needs CAP_SYS_RESOURCE: without it (a container
    whose bounding set lacks it) a hard limit stays where it was lowered, and its soft limit
    goes as near its own as that hard limit allows."""
    now = capture()
    back = changes(now, own)
    problems = []
    current = {r: (soft, hard) for r, soft, hard in now.rlimits}
    for r, soft, hard in back.rlimits:
        try:
            resource.setrlimit(r, (soft, hard))
        except (OSError, ValueError) as exc:
            now_hard = current[r][1]
            near = soft if _at_most(soft, now_hard) else now_hard
            try:
                resource.setrlimit(r, (near, now_hard))
            except (OSError, ValueError):
                near = current[r][0]
            problems.append(f"{_name(r)} stays ({near}, {now_hard}) instead of "
                            f"({soft}, {hard}): {exc}")
    for what, value in (("nice value", back.nice), ("umask", back.umask)):
        if value is None:
            continue
        try:
            apply(ProcessLimits(nice=value) if what == "nice value"
                  else ProcessLimits(umask=value))
        except OSError as exc:
            problems.append(f"{what} stays as PAM set it: {exc}")
    return tuple(problems)


def _name(number: int) -> str:
    names = sorted(n for n in dir(resource)
                   if n.startswith("RLIMIT_") and getattr(resource, n) == number)
    return names[0] if names else f"resource limit {number}"


def _at_most(a: int, b: int) -> bool:
    """a <= b, for limits where RLIM_INFINITY is above every number."""
    if b == resource.RLIM_INFINITY:
        return True
    return a != resource.RLIM_INFINITY and a <= b


def apply(limits: ProcessLimits) -> None:
    """Set LIMITS in this process: the nice value, the resource limits, the umask. Raises
    OSError (ValueError for a limit the kernel refuses as invalid). Raising a hard limit or
    lowering the nice value needs root: call it before a privilege drop."""
    if limits.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, limits.nice)
    for r, soft, hard in limits.rlimits:
        resource.setrlimit(r, (soft, hard))
    if limits.umask is not None:
        os.umask(limits.umask)

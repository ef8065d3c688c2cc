"""Linux kernel keyrings: a fresh session keyring for each session, as pam_keyinit gives one.

A process inherits its parent's session keyring and possesses it: whatever keys it holds, the
process may read, and whatever the process adds there, every other process of that keyring may
read. The daemon's session keyring (under systemd, the unit's own, holding its invocation id)
must therefore never reach a session, and two sessions must never share one. The session's
child joins a new anonymous session keyring after the privilege drop, so the keyring belongs to
the account, and links the account's user keyring into it (what pam_keyinit does, so keys kept
in the user keyring are still found).

When it cannot, the session is refused, unless the kernel keyrings are out of this process's
reach altogether, in which case there is nothing to inherit: the kernel has no keyrings
(ENOSYS), or keyctl is filtered for this process (a container's seccomp profile refuses it with
EPERM or ENOSYS, and a probe of the current session keyring is refused the same way).

glibc has no keyctl() wrapper (libkeyutils has), so the system call is made through syscall(2)
with this machine's number for it. The call is prepared in the parent; the forked child only
makes it.
"""

from __future__ import annotations

import errno
import os
import sys

from agent.errors import SpawnFailed

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import Callable, Optional

# linux/keyctl.h
KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_LINK = 8
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4

# The keyctl system call's number per (machine, pointer size in bytes): a 32-bit userland on
# a 64-bit kernel uses its own ABI's number.
SYSCALL_NUMBERS = {
    ("x86_64", 8): 250,
    ("x86_64", 4): 288,
    ("i386", 4): 288,
    ("i486", 4): 288,
    ("i586", 4): 288,
    ("i686", 4): 288,
    ("aarch64", 8): 219,
    ("aarch64", 4): 311,
    ("armv6l", 4): 311,
    ("armv7l", 4): 311,
    ("armv8l", 4): 311,
    ("ppc64le", 8): 271,
    ("ppc64", 8): 271,
    ("s390x", 8): 280,
    ("riscv64", 8): 219,
    ("loongarch64", 8): 219,
}


def syscall_number(machine: str, pointer_size: int) -> Optional[int]:
    """The keyctl system call's number on MACHINE (os.uname().machine), or None if unknown."""
    return SYSCALL_NUMBERS.get((machine, pointer_size))


def load(sys_platform: str = sys.platform) -> Optional[Callable[[int, int, int], int]]:
    """keyctl(2) as a callable that raises OSError, or None where the platform has no kernel
    keyrings (macOS). Raises SpawnFailed on a Linux machine whose syscall number is unknown:
    a session must not start without its own keyring."""
    if not sys_platform.startswith("linux"):
        return None
    import ctypes

    machine = os.uname().machine
    number = syscall_number(machine, ctypes.sizeof(ctypes.c_void_p))
    if number is None:
        raise SpawnFailed(f"no keyctl system call number is known for machine {machine!r}: "
                          "a session cannot be given a session keyring of its own")
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    c_long = ctypes.c_long
    nr = c_long(number)

    def keyctl(operation: int, arg2: int, arg3: int) -> int:
        result = int(syscall(nr, c_long(operation), c_long(arg2), c_long(arg3)))
        if result == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result

    return keyctl


def join_fresh_session_keyring(keyctl: Callable[[int, int, int], int]) -> Optional[int]:
    """Join a new anonymous session keyring (owned by the caller's uid) and link the user
    keyring into it. Returns the new keyring's serial, or None when keyrings are out of reach
    (see the module's docstring). Raises OSError when the join fails otherwise; the link is
    best-effort (the keyring is fresh either way)."""
    try:
        serial = keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0, 0)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return None  # no keyrings in this kernel
        if exc.errno in (errno.EPERM, errno.EACCES):
            try:
                keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
            except OSError as probe:
                if probe.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    return None  # keyctl is refused wholesale: no keyring can be reached
        raise
    try:
        keyctl(KEYCTL_LINK, KEY_SPEC_USER_KEYRING, KEY_SPEC_SESSION_KEYRING)
    except OSError:
        pass
    return serial

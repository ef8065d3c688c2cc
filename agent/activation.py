"""Service-manager integration without libraries: inherited listeners and readiness notification.

systemd: socket activation hands the daemon its listener as fd 3 with LISTEN_FDS/LISTEN_PID set
(sd_listen_fds(3)); `Type=notify` waits for "READY=1" sent as one datagram to $NOTIFY_SOCKET
(sd_notify(3)). launchd: the `Sockets` entry of the LaunchDaemon plist is claimed with
launch_activate_socket(3) from libSystem, called through ctypes.

The environment is passed in (normally os.environ) and the launchd call is an injected seam, so
every path runs in tests with real sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys

from agent.errors import ActivationFailed

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping, Sequence
    from typing import Any, Callable, Optional

SD_LISTEN_FDS_START = 3
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# The key under `Sockets` in launchd/org.runas-agent.agent.plist.
LAUNCHD_SOCKET_NAME = "Listeners"
LIBSYSTEM = "/usr/lib/libSystem.B.dylib"


def inherited_listener(
    environ: MutableMapping[str, str],
    *,
    sys_platform: str = sys.platform,
    launchd: Optional[Callable[[str], Sequence[int]]] = None,
    pid: Optional[int] = None,
) -> Optional[socket.socket]:
    """The listening socket the service manager opened for us, or None if there is none.

    Linux: fd 3 when LISTEN_PID names this process and LISTEN_FDS is 1. The LISTEN_* variables
    are removed from ENVIRON whatever they say, so no child inherits them. macOS: the fd that
    launchd's `Listeners` socket entry yields; None when the process is not run by launchd.
    The socket must be a listening AF_UNIX stream socket; anything else raises ActivationFailed.
    The returned socket is close-on-exec, so sessions never inherit it.
    """
    if sys_platform == "darwin":
        return _from_launchd(launchd if launchd is not None else launch_activate_socket)
    return _from_systemd(environ, os.getpid() if pid is None else pid)


def _from_systemd(environ: MutableMapping[str, str], pid: int) -> Optional[socket.socket]:
    listen_pid = environ.get("LISTEN_PID")
    listen_fds = environ.get("LISTEN_FDS")
    for name in LISTEN_VARS:
        environ.pop(name, None)
    if listen_pid is None or listen_fds is None:
        return None
    if not _is_decimal(listen_pid) or int(listen_pid) != pid:
        # Meant for another process (e.g. inherited from a parent): not ours to take.
        return None
    if not _is_decimal(listen_fds):
        raise ActivationFailed(
            f"LISTEN_FDS={listen_fds!r} from the service manager is not a count of sockets"
        )
    count = int(listen_fds)
    if count == 0:
        return None
    if count != 1:
        raise ActivationFailed(
            f"the service manager passed {count} sockets; expected exactly one",
            hint="the socket unit must have a single ListenStream= line",
        )
    return _adopt(SD_LISTEN_FDS_START, "fd 3 from the service manager")


def _from_launchd(activate: Callable[[str], Sequence[int]]) -> Optional[socket.socket]:
    try:
        fds = list(activate(LAUNCHD_SOCKET_NAME))
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT):
            # ESRCH: not started by launchd; ENOENT: the job has no such socket entry.
            return None
        raise ActivationFailed(
            f"launch_activate_socket({LAUNCHD_SOCKET_NAME!r}) failed: "
            f"{os.strerror(exc.errno) if exc.errno is not None else exc}"
        ) from exc
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ActivationFailed(
            f"launchd passed {len(fds)} sockets for {LAUNCHD_SOCKET_NAME!r}; expected exactly one",
            hint="the plist's Sockets entry must name a single SockPathName",
        )
    # XNU's getsockopt has no SO_ACCEPTCONN (ENOPROTOOPT): launchd's socket is judged by its
    # family and type; launchd listens on it before the job starts.
    return _adopt(fds[0], f"the launchd socket {LAUNCHD_SOCKET_NAME!r} (fd {fds[0]})",
                  ask_listening=False)


def _adopt(fd: int, what: str, *, ask_listening: bool = True) -> socket.socket:
    """Wrap FD as a socket after checking it is an AF_UNIX stream socket, and listening when
    ASK_LISTENING and the kernel can say (SO_ACCEPTCONN; ENOPROTOOPT means it cannot)."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ActivationFailed(f"{what} is not open: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ActivationFailed(f"{what} is not a socket",
                               hint="the socket unit must use ListenStream= with a path")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationFailed(f"{what}: cannot use it as a socket: {exc.strerror}") from exc
    try:
        family, kind = sock.family, sock.type
        listening = _listening(sock) if ask_listening else None
    except OSError as exc:
        sock.detach()
        raise ActivationFailed(f"{what}: cannot inspect it: {exc.strerror}") from exc
    problem = None
    if family != socket.AF_UNIX:
        problem = f"is a {_name(family)} socket, not AF_UNIX"
    elif kind != socket.SOCK_STREAM:
        problem = f"is a {_name(kind)} socket, not SOCK_STREAM"
    elif listening == 0:
        problem = "is not listening"
    if problem is not None:
        sock.detach()  # leave the descriptor to its owner
        raise ActivationFailed(
            f"{what} {problem}",
            hint="expected a listening Unix stream socket (ListenStream=/path or SockPathName)",
        )
    os.set_inheritable(fd, False)
    return sock


def _listening(sock: socket.socket) -> Optional[int]:
    """SO_ACCEPTCONN, or None when the kernel does not implement it (ENOPROTOOPT)."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return None
        raise


def _name(value: Any) -> str:
    return getattr(value, "name", str(value))


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


def notify(state: str, environ: Mapping[str, str]) -> bool:
    """Send STATE (e.g. "READY=1", "STOPPING=1") to the service manager, as sd_notify(3) does.

    Returns False when there is no manager listening for notifications ($NOTIFY_SOCKET unset or
    empty, or an address kind this code does not speak); True once the datagram is sent.
    A manager that is announced but cannot be reached raises ActivationFailed.
    """
    if not state or "\0" in state or "=" not in state:
        raise ValueError(f"not a notification state: {state!r}")
    target = environ.get("NOTIFY_SOCKET", "")
    if target.startswith("@"):
        address = "\0" + target[1:]  # Linux abstract namespace
    elif target.startswith("/"):
        address = target
    else:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        raise ActivationFailed(
            f"cannot notify the service manager at NOTIFY_SOCKET={target!r}: {exc.strerror}"
        ) from exc
    return True


def launch_activate_socket(name: str, lib: Any = None) -> list[int]:
    """The descriptors launchd holds for the plist's Sockets entry NAME (macOS).

    Calls `int launch_activate_socket(const char *name, int **fds, size_t *cnt)` from libSystem
    and frees the array it returns. Raises OSError with the errno it reports (ESRCH when the
    process was not started by launchd). LIB stands in for libSystem in tests.
    """
    import ctypes

    if lib is None:
        lib = ctypes.CDLL(LIBSYSTEM, use_errno=True)
    func = lib.launch_activate_socket
    func.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
                     ctypes.POINTER(ctypes.c_size_t)]
    func.restype = ctypes.c_int
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = func(name.encode("utf-8"), ctypes.byref(fds), ctypes.byref(count))
    if err != 0:
        raise OSError(err, os.strerror(err))
    if not fds:
        return []
    try:
        return [int(fds[i]) for i in range(count.value)]
    finally:
        free = lib.free
        free.argtypes = [ctypes.c_void_p]
        free.restype = None
        free(ctypes.cast(fds, ctypes.c_void_p))

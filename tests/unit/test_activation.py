"""Socket activation and readiness notification, with real sockets and real file descriptors.

The systemd paths run a real child process that receives a real socket as fd 3 with LISTEN_FDS
and LISTEN_PID set, exactly as systemd (or systemd-socket-activate) starts the daemon. The launchd
path cannot run here: its one seam (launch_activate_socket) is replaced, and the ctypes call
itself is exercised against a C-callable stand-in that allocates with the real malloc.
"""

import ctypes
import ctypes.util
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import pytest

from agent.activation import inherited_listener, launch_activate_socket, notify
from agent.errors import ActivationFailed
from tests.support.isolation import REPO


@pytest.fixture
def tmp_short() -> Iterator[str]:
    """A short directory name: AF_UNIX paths are limited to 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="act-", dir="/tmp") as d:
        yield d


def _recv_with_creds(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and the sender's pid (SCM_CREDENTIALS, as systemd reads it)."""
    size = ctypes.sizeof(ctypes.c_int) * 3
    data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(size))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[:4], sys.byteorder)
            return data, pid
    raise AssertionError("no credentials received")


def _manager_socket(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind(address)
    s.settimeout(5)
    return s


# --- notify -------------------------------------------------------------------------------


def test_notify_reaches_a_path_socket_with_our_credentials(tmp_short: str) -> None:
    path = os.path.join(tmp_short, "notify")
    with _manager_socket(path) as manager:
        assert notify("READY=1", {"NOTIFY_SOCKET": path}) is True
        data, pid = _recv_with_creds(manager)
        assert data == b"READY=1"
        assert pid == os.getpid()
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": path}) is True
        assert manager.recv(4096) == b"STOPPING=1"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"runas-agent-test-{os.getpid()}-{id(object())}"
    with _manager_socket("\0" + name) as manager:
        assert notify("READY=1\nSTATUS=listening", {"NOTIFY_SOCKET": "@" + name}) is True
        assert manager.recv(4096) == b"READY=1\nSTATUS=listening"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_notify_without_a_manager_is_false(env: dict[str, str]) -> None:
    assert notify("READY=1", env) is False


def test_notify_to_an_announced_but_absent_manager_raises(tmp_short: str) -> None:
    with pytest.raises(ActivationFailed) as info:
        notify("READY=1", {"NOTIFY_SOCKET": os.path.join(tmp_short, "gone")})
    assert info.value.reason == "activation_failed"
    assert "NOTIFY_SOCKET" in str(info.value)


@pytest.mark.parametrize("state", ["", "READY", "READY=1\0"])
def test_notify_rejects_what_is_not_a_state(state: str) -> None:
    with pytest.raises(ValueError, match="not a notification state"):
        notify(state, {"NOTIFY_SOCKET": "/nonexistent"})


# --- systemd socket activation, in a real child with a real fd 3 ------------------------------

_LAUNCH = """
import os, sys
fd, pid_offset, fds, code = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
env = {"PATH": "/usr/bin:/bin"}
if pid_offset >= 0:
    env["LISTEN_PID"] = str(os.getpid() + pid_offset)
if fds != "-":
    env["LISTEN_FDS"] = fds
env["LISTEN_FDNAMES"] = "runas-agent.socket"
os.execve(sys.executable, [sys.executable, "-c", code], env)
"""

_CHILD = """
import json, os, stat, subprocess, sys
sys.path.insert(0, {repo!r})
from agent.activation import inherited_listener
from agent.errors import ActivationFailed
out = {{}}
try:
    sock = inherited_listener(os.environ)
except ActivationFailed as exc:
    out["error"] = str(exc)
    out["reason"] = exc.reason
    sock = None
out["env"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
grandchild = subprocess.run(["/usr/bin/env"], capture_output=True, text=True).stdout
out["child_env"] = sorted(line.split("=")[0] for line in grandchild.splitlines()
                          if line.startswith("LISTEN_"))
try:
    out["fd3_is_socket"] = stat.S_ISSOCK(os.fstat(3).st_mode)
except OSError:
    out["fd3_is_socket"] = None
if sock is None:
    out["socket"] = None
    print(json.dumps(out), flush=True)
    sys.exit(0)
out["socket"] = {{"fd": sock.fileno(), "family": sock.family.name, "type": sock.type.name,
                  "inheritable": os.get_inheritable(sock.fileno())}}
print(json.dumps(out), flush=True)
conn, _ = sock.accept()
conn.sendall(b"hello from the activated daemon")
conn.close()
"""


def _activated_child(sock_fd: int, *, pid_offset: int = 0,
                     fds: str = "1") -> "subprocess.Popen[str]":
    """Start a child with SOCK_FD as its fd 3 and LISTEN_PID/LISTEN_FDS set (pid_offset -1: no
    LISTEN_PID; fds "-": no LISTEN_FDS)."""
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, str(sock_fd), str(pid_offset), fds,
         _CHILD.format(repo=REPO)],
        pass_fds=(sock_fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO,
    )


def _report(proc: "subprocess.Popen[str]") -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"child printed nothing; stderr: {err}")
    return dict(json.loads(line))


def _finish(proc: "subprocess.Popen[str]") -> None:
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def _unix_listener(directory: str) -> tuple[socket.socket, str]:
    path = os.path.join(directory, "agent.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(8)
    return s, path


def test_child_takes_fd3_and_serves_on_it(tmp_short: str) -> None:
    listener, path = _unix_listener(tmp_short)
    with listener:
        proc = _activated_child(listener.fileno())
        report = _report(proc)
        assert report["socket"] == {"fd": 3, "family": "AF_UNIX", "type": "SOCK_STREAM",
                                    "inheritable": False}
        assert report["env"] == []
        assert report["child_env"] == []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
            assert client.recv(100) == b"hello from the activated daemon"
        _finish(proc)


@pytest.mark.parametrize(("pid_offset", "fds"), [(1, "1"), (-1, "1"), (0, "-"), (0, "0")])
def test_nothing_for_us_leaves_fd3_alone(tmp_short: str, pid_offset: int, fds: str) -> None:
    """LISTEN_PID of another process, no LISTEN_PID, no LISTEN_FDS, or zero sockets: None, the
    variables are gone all the same, and fd 3 is not touched."""
    listener, _ = _unix_listener(tmp_short)
    with listener:
        proc = _activated_child(listener.fileno(), pid_offset=pid_offset, fds=fds)
        report = _report(proc)
        _finish(proc)
    assert report["socket"] is None
    assert "error" not in report
    assert report["env"] == []
    assert report["child_env"] == []
    assert report["fd3_is_socket"] is True


@pytest.mark.parametrize(("fds", "message"), [
    ("x", "LISTEN_FDS='x' from the service manager is not a count of sockets"),
    ("-1", "LISTEN_FDS='-1' from the service manager is not a count of sockets"),
    ("2", "the service manager passed 2 sockets; expected exactly one"),
])
def test_invalid_listen_fds_is_refused(tmp_short: str, fds: str, message: str) -> None:
    listener, _ = _unix_listener(tmp_short)
    with listener:
        proc = _activated_child(listener.fileno(), fds=fds)
        report = _report(proc)
        _finish(proc)
    assert report["reason"] == "activation_failed"
    assert report["error"].startswith(message)
    assert report["env"] == []


def _datagram(directory: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(os.path.join(directory, "dgram"))
    return s


def _tcp_listener(directory: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _not_listening(directory: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(directory, "idle"))
    return s


@pytest.mark.parametrize(("make", "problem"), [
    (_datagram, "is a SOCK_DGRAM socket, not SOCK_STREAM"),
    (_tcp_listener, "is a AF_INET socket, not AF_UNIX"),
    (_not_listening, "is not listening"),
])
def test_wrong_kind_of_socket_is_refused(tmp_short: str, make: Any, problem: str) -> None:
    with make(tmp_short) as sock:
        proc = _activated_child(sock.fileno())
        report = _report(proc)
        _finish(proc)
    assert report["reason"] == "activation_failed"
    assert report["error"].startswith(f"fd 3 from the service manager {problem}")
    assert "listening Unix stream socket" in report["error"]
    assert report["fd3_is_socket"] is True  # refused, not closed behind the manager's back


def test_a_file_as_fd3_is_refused(tmp_short: str) -> None:
    path = os.path.join(tmp_short, "plain")
    with open(path, "w") as fh:
        proc = _activated_child(fh.fileno())
        report = _report(proc)
        _finish(proc)
    assert report["error"].startswith("fd 3 from the service manager is not a socket")


def test_no_variables_means_none_and_environ_untouched() -> None:
    env = {"PATH": "/usr/bin"}
    assert inherited_listener(env, sys_platform="linux") is None
    assert env == {"PATH": "/usr/bin"}


# --- launchd (macOS), through the injected seam ----------------------------------------------


class FakeLaunchd:
    """Stands in for launch_activate_socket: hands out real descriptors, or fails with errno."""

    def __init__(self, fds: Sequence[int] = (), err: Optional[int] = None) -> None:
        self.fds, self.err = list(fds), err
        self.names: list[str] = []

    def __call__(self, name: str) -> list[int]:
        self.names.append(name)
        if self.err is not None:
            raise OSError(self.err, os.strerror(self.err))
        return self.fds


def test_launchd_socket_is_adopted(tmp_short: str) -> None:
    listener, path = _unix_listener(tmp_short)
    fd = listener.detach()
    fake = FakeLaunchd([fd])
    sock = inherited_listener({}, sys_platform="darwin", launchd=fake)
    assert sock is not None
    with sock:
        assert fake.names == ["Listeners"]
        assert sock.fileno() == fd
        assert os.get_inheritable(fd) is False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            conn, _ = sock.accept()
            conn.sendall(b"ok")
            conn.close()
            assert client.recv(10) == b"ok"


@pytest.mark.parametrize("err", [errno.ESRCH, errno.ENOENT])
def test_not_run_by_launchd_is_none(err: int) -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}  # ignored on macOS
    assert inherited_listener(env, sys_platform="darwin", launchd=FakeLaunchd(err=err)) is None


def test_launchd_failure_is_an_error() -> None:
    with pytest.raises(ActivationFailed, match=r"launch_activate_socket\('Listeners'\) failed"):
        inherited_listener({}, sys_platform="darwin", launchd=FakeLaunchd(err=errno.EPERM))


def test_launchd_with_two_sockets_is_refused_and_closes_them(tmp_short: str) -> None:
    a, b = socket.socketpair()
    fds = [a.detach(), b.detach()]
    with pytest.raises(ActivationFailed, match="launchd passed 2 sockets"):
        inherited_listener({}, sys_platform="darwin", launchd=FakeLaunchd(fds))
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_launchd_datagram_socket_is_refused(tmp_short: str) -> None:
    with _datagram(tmp_short) as s, pytest.raises(ActivationFailed, match="not SOCK_STREAM"):
        inherited_listener({}, sys_platform="darwin", launchd=FakeLaunchd([s.fileno()]))


class _FakeLibSystem:
    """launch_activate_socket as a real C function pointer over a Python body, plus libc's free:
    the array it returns comes from the real malloc, as libSystem's does."""

    PROTO = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p,
                             ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
                             ctypes.POINTER(ctypes.c_size_t))

    def __init__(self, fds: Sequence[int], err: int = 0) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        self.names: list[bytes] = []
        self.freed: list[int] = []

        def free(ptr: Optional[int]) -> None:
            self.freed.append(ptr or 0)
            libc.free(ctypes.c_void_p(ptr))

        self.free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free)
        self.allocated: list[int] = []

        def body(name: bytes, out: Any, cnt: Any) -> int:
            self.names.append(name)
            if err:
                return err
            mem = libc.malloc(ctypes.sizeof(ctypes.c_int) * max(len(fds), 1))
            self.allocated.append(mem)
            arr = ctypes.cast(mem, ctypes.POINTER(ctypes.c_int))
            for i, fd in enumerate(fds):
                arr[i] = fd
            out[0] = arr
            cnt[0] = len(fds)
            return 0

        self.launch_activate_socket = self.PROTO(body)


def test_launch_activate_socket_ctypes_call() -> None:
    lib = _FakeLibSystem([7, 9])
    assert launch_activate_socket("Listeners", lib=lib) == [7, 9]
    assert lib.names == [b"Listeners"]
    assert lib.freed == lib.allocated != []


def test_launch_activate_socket_reports_errno() -> None:
    with pytest.raises(OSError, match="No such process") as info:
        launch_activate_socket("Listeners", lib=_FakeLibSystem([], err=errno.ESRCH))
    assert info.value.errno == errno.ESRCH


class XnuSocketOptions:
    """getsockopt as XNU's sogetoptlock() answers it: no case for SO_ACCEPTCONN, so ENOPROTOOPT;
    every other option as the real kernel answers."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.asked_acceptconn = 0

    def __call__(self, sock: socket.socket, level: int, option: int, *args: int) -> Any:
        if level == socket.SOL_SOCKET and option == socket.SO_ACCEPTCONN:
            self.asked_acceptconn += 1
            raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
        return self.real(sock, level, option, *args)


def test_launchd_socket_is_adopted_on_a_kernel_without_so_acceptconn(
        tmp_short: str, monkeypatch: pytest.MonkeyPatch) -> None:
    xnu = XnuSocketOptions(socket.socket.getsockopt)
    monkeypatch.setattr(socket.socket, "getsockopt", xnu)
    listener, path = _unix_listener(tmp_short)
    sock = inherited_listener({}, sys_platform="darwin", launchd=FakeLaunchd([listener.detach()]))
    assert sock is not None
    with sock, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        conn, _ = sock.accept()
        conn.close()
    assert xnu.asked_acceptconn == 0  # not asked on macOS at all


def test_launchd_datagram_socket_is_still_refused_without_so_acceptconn(
        tmp_short: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "getsockopt", XnuSocketOptions(socket.socket.getsockopt))
    with _datagram(tmp_short) as s, pytest.raises(ActivationFailed, match="not SOCK_STREAM"):
        inherited_listener({}, sys_platform="darwin", launchd=FakeLaunchd([s.fileno()]))

"""Socket activation for real: the installed package's own units, run by systemd-socket-activate
(systemd's tool for exactly this) inside the isolated namespace.

The socket exists before the daemon does; the first connection starts the daemon with the
unit's ExecStart; the daemon tells the manager READY=1 and, on SIGTERM, STOPPING=1 over a
NOTIFY_SOCKET this test binds (systemd-socket-activate does not read notifications itself);
ExecReload's SIGHUP reloads the config; a session runs as the requested account.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Isolated, Users
from tests.packaging.conftest import Built
from tests.support.daemon import kill_supervisors

pytestmark = pytest.mark.privileged

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
UNITS = Path("/lib/systemd/system")


def sh(*argv: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENV)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def unit_value(unit: Path, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
              if line.startswith(key + "=")]
    assert len(values) == 1, (unit, key, values)
    return values[0]


@pytest.fixture
def installed(system_overlay: Isolated, built: Built) -> Iterator[None]:
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends", str(built.new_deb))
    try:
        yield
    finally:
        kill_supervisors("/run/runas-agent/sessions")
        sh("dpkg", "--purge", "runas-agent")


class Manager:
    """The notification end of a service manager: a datagram socket that records who sent
    what (SCM_CREDENTIALS), as systemd's own does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)

    def receive(self, timeout: float) -> "tuple[str, int] | None":
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = next(int.from_bytes(d[:4], sys.byteorder) for level, kind, d in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return data.decode(), pid

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [a.decode() for a in fh.read().split(b"\0") if a]


def test_first_connection_starts_the_installed_daemon(installed: None, users: Users,
                                                      tmp_path: Path) -> None:
    socket_unit, service_unit = UNITS / "runas-agent.socket", UNITS / "runas-agent.service"
    listen = unit_value(socket_unit, "ListenStream")
    exec_start = unit_value(service_unit, "ExecStart").split()
    assert exec_start[:3] == ["/usr/bin/python3", "-I", "/usr/bin/runas-agent"]
    os.makedirs(os.path.dirname(listen), mode=0o755, exist_ok=True)
    manager = Manager(str(tmp_path / "notify"))
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        activator = subprocess.Popen(
            ["systemd-socket-activate", "--listen", listen, "--fdname", "runas-agent.socket",
             "--setenv", f"NOTIFY_SOCKET={manager.path}", "--", *exec_start],
            env={"PATH": ENV["PATH"], "LC_ALL": "C.UTF-8"}, stdout=log, stderr=log,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(listen):
            assert activator.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the socket never appeared"
            time.sleep(0.02)
        # Listening, but nothing started yet: no daemon, no notification.
        assert manager.receive(timeout=0.5) is None
        assert cmdline(activator.pid)[0] == "systemd-socket-activate"

        # The first connection: the installed client, with the socket path from the installed
        # config, as the session transport would use it.
        proc = sh("/usr/bin/runas-agent", "sessions", "--json")
        assert json.loads(proc.stdout) == []
        ready = manager.receive(timeout=15)
        assert ready == ("READY=1", activator.pid), log_path.read_text()
        assert cmdline(activator.pid) == exec_start  # the same process, now the daemon
        assert "socket.inherited" in log_path.read_text()

        proc = sh("/usr/bin/runas-agent", "session", "--run-as", "--tag",
                  f"SSMSessionRunAs={users.alice}", "--", "id", "-un")
        assert proc.stdout == f"{users.alice}\n", proc.stderr
        audit = [json.loads(line) for line in
                 Path("/var/log/runas-agent/audit.log").read_text().splitlines()]
        assert any(r["event"] == "session.started" and r.get("user") == users.alice
                   for r in audit), audit

        # ExecReload: kill -HUP $MAINPID.
        reload_cmd = unit_value(service_unit, "ExecReload").replace("$MAINPID",
                                                                     str(activator.pid))
        sh(*reload_cmd.split())
        deadline = time.monotonic() + 10
        while "config.reloaded" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

        # Stop: STOPPING=1 reaches the manager, the daemon exits cleanly.
        activator.send_signal(signal.SIGTERM)
        assert manager.receive(timeout=10) == ("STOPPING=1", activator.pid)
        assert activator.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()
        manager.close()

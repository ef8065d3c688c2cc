"""Start the real daemon (`python -m agent serve`) inside the test namespace, and talk to it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

from agent.client import Client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Marker variables in the daemon's environment; none of them may reach a session.
MARKERS = {
    "RUNAS_TEST_MARKER": "daemon-secret",
    "LD_LIBRARY_PATH": "/nonexistent/lib",
    "LD_PRELOAD": "",
    "PYTHONINSPECT": "",
    "AWS_SECRET_ACCESS_KEY": "do-not-leak",
}


@dataclass
class DaemonProc:
    workdir: str
    socket: str
    audit_path: str
    state_dir: str
    config_path: str
    proc: Optional[subprocess.Popen[bytes]] = None
    log_path: str = ""
    extra_pids: list[int] = field(default_factory=list)

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=20)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spare(self, timeout: float = 10, *, not_: int = 0) -> int:
        """The daemon's one idle spare supervisor (tests.support.load.the_spare)."""
        from tests.support import load

        return load.the_spare(self.pid, timeout, not_=not_)

    def start(self, extra_env: Optional[dict[str, str]] = None,
              pass_fds: tuple[int, ...] = (), prefix: tuple[str, ...] = ()) -> None:
        """PREFIX: a command that execs the daemon's argv given after it (same pid)."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LC_ALL": "C.UTF-8", **MARKERS, **(extra_env or {})}
        self.log_path = os.path.join(self.workdir, "daemon.log")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon keeps it
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "agent", "serve", "--config", self.config_path],
            cwd=REPO, env=env, stdout=log, stderr=log, pass_fds=pass_fds,
            start_new_session=True,
        )
        log.close()
        if not pass_fds:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()}")
            try:
                self.client.ping()
                return
            except Exception:
                time.sleep(0.02)
        raise AssertionError(f"daemon not ready: {self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def audit(self) -> list[dict[str, Any]]:
        try:
            with open(self.audit_path) as fh:
                return [json.loads(line) for line in fh]
        except FileNotFoundError:
            return []

    def events(self, session_id: str) -> list[str]:
        return [r["event"] for r in self.audit() if r.get("session_id") == session_id]

    def wait_event(self, session_id: str, event: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.audit():
                if r.get("session_id") == session_id and r["event"] == event:
                    return r
            time.sleep(0.05)
        raise AssertionError(f"no {event} for {session_id}: {self.events(session_id)}")

    def cli(self, *args: str, input: Optional[bytes] = None,
            timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "agent", args[0], "--socket", self.socket, *args[1:]],
            cwd=REPO, capture_output=True, input=input if input is not None else b"",
            timeout=timeout, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_supervisors(self.state_dir)


def kill_supervisors(state_dir: str) -> None:
    """Stop every session supervisor this daemon left (their records name them)."""
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return
    for name in names:
        try:
            with open(os.path.join(state_dir, name)) as fh:
                rec = json.load(fh)
            os.kill(int(rec["pid"]), signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError):
            pass


def make_daemon(config: Optional[dict[str, dict[str, Any]]] = None) -> DaemonProc:
    """A daemon with its own socket, audit log and state directory (not started).

    CONFIG holds config sections merged over the test defaults (written as JSON, which is YAML).
    """
    work = tempfile.mkdtemp(prefix="runas-agent-d-", dir="/run")
    os.chmod(work, 0o755)
    sock = os.path.join(work, "sock", "agent.sock")
    audit = os.path.join(work, "audit", "audit.log")
    state = os.path.join(work, "sessions")
    cfg_path = os.path.join(work, "config.yaml")
    cfg: dict[str, dict[str, Any]] = {
        "socket": {"path": sock},
        "audit": {"path": audit},
        "logging": {"format": "json", "level": "debug"},
        "session": {"state_dir": state, "grace_period": 1.0},
    }
    for section, values in (config or {}).items():
        cfg.setdefault(section, {}).update(values)
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    return DaemonProc(work, sock, audit, state, cfg_path)


@contextlib.contextmanager
def running(config: Optional[dict[str, dict[str, Any]]] = None) -> Iterator[DaemonProc]:
    """A started daemon (see make_daemon), stopped and cleaned up afterwards."""
    d = make_daemon(config)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()


def read_until(fd: int, token: bytes, timeout: float = 20) -> bytes:
    """What FD gives until TOKEN is in it; fails the test on end of file or after TIMEOUT s."""
    data = b""
    deadline = time.monotonic() + timeout
    while token not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {token!r} in {data!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before {token!r}: {data!r}"
            data += chunk
    return data


def public_copy_of_agent(where: str) -> str:
    """A world-readable copy of the agent package in WHERE (a directory everyone can search),
    for clients run as other accounts; tests get it from the agent_pkg fixture."""
    dest = tempfile.mkdtemp(prefix="runas-agent-pkg-", dir=where)
    os.chmod(dest, 0o755)
    shutil.copytree(os.path.join(REPO, "agent"), os.path.join(dest, "agent"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return dest

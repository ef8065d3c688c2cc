"""What the benchmark and the load, soak and fuzz scripts stand on: an isolated namespace with a
test account, the real daemon, an sshd of their own, and measurement helpers.

Everything here runs as root inside a private mount namespace (tests/support/isolation.py):
accounts, /etc/ssh changes, sockets and state land in tmpfs-backed overlays and vanish with the
namespace. Processes started here are stopped by pid; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support import isolation, load  # noqa: E402
from tests.support.daemon import DaemonProc, make_daemon  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Optional

SSHD = "/usr/sbin/sshd"


# -- set-up ---------------------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (accounts are created inside a private mount namespace)")


def ensure_environment(script: str, argv: Sequence[str], need_sshd: bool = False) -> None:
    """Re-run SCRIPT under the checkout's virtualenv, bootstrapping it (and openssh-server when
    NEED_SSHD) first if needed. Returns only when already running in the virtualenv."""
    venv_python = os.path.join(REPO, ".venv", "bin", "python")
    missing_sshd = need_sshd and not os.access(SSHD, os.X_OK)
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(REPO, ".venv"))
    if in_venv and not missing_sshd:
        return
    if missing_sshd or not os.access(venv_python, os.X_OK):
        what = "openssh-server (the ssh baseline) and " if missing_sshd else ""
        print(f"bench: installing {what}the virtualenv with scripts/bootstrap --bench",
              file=sys.stderr)
        subprocess.run([os.path.join(REPO, "scripts", "bootstrap"), "--bench"], check=True,
                       stdout=sys.stderr)
    os.execv(venv_python, [venv_python, script, *argv])


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def create_user(name: str, shell: str = "/bin/sh") -> None:
    """A regular account; its password is '*' (no password, but not locked: sshd accepts keys)."""
    run("useradd", "-m", "-s", shell, "--", name)
    run("usermod", "-p", "*", "--", name)


def enter_isolation() -> isolation.Isolation:
    return isolation.enter()


def leave_isolation(iso: isolation.Isolation) -> None:
    isolation.leave(iso)


def bench_daemon(audit_dir: Optional[str] = None,
                 extra: Optional[dict[str, dict[str, Any]]] = None) -> DaemonProc:
    """The real daemon (`python -m agent serve`), started; AUDIT_DIR holds its audit log (by
    default the namespace's /run, a tmpfs)."""
    cfg: dict[str, dict[str, Any]] = {
        "logging": {"format": "json", "level": "info"},
        "session": {"max_sessions": 4096},
        "limits": {"max_connections": 128},
    }
    if audit_dir is not None:
        cfg["audit"] = {"path": os.path.join(audit_dir, "audit.log")}
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    d = make_daemon(cfg)
    d.start()
    return d


def disk_scratch() -> str:
    """A directory on the root filesystem outside the overlays, for an audit log whose fsync
    reaches a real disk (removed by the caller)."""
    return tempfile.mkdtemp(prefix="runas-agent-bench-", dir="/tmp")


def fs_type(path: str) -> str:
    best, kind = "", "?"
    with open("/proc/self/mounts") as fh:
        for line in fh:
            parts = line.split()
            mnt = parts[1]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


@dataclass
class Sshd:
    workdir: str
    port: int
    key: str
    known_hosts: str
    proc: Optional[subprocess.Popen[bytes]] = None

    def argv(self, user: str, *command: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", self.key, "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
                f"{user}@127.0.0.1", *command]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def start_sshd(user: str) -> Sshd:
    """An sshd of our own on a high port of 127.0.0.1: own host key, own config, key auth for
    USER only. Debian's defaults otherwise (UsePAM yes)."""
    work = tempfile.mkdtemp(prefix="runas-agent-sshd-", dir="/run")
    os.chmod(work, 0o700)
    hostkey, key = os.path.join(work, "host_ed25519"), os.path.join(work, "id_ed25519")
    for path in (hostkey, key):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path)
    home = os.path.expanduser(f"~{user}")
    ssh_dir = os.path.join(home, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    auth = os.path.join(ssh_dir, "authorized_keys")
    shutil.copyfile(key + ".pub", auth)
    pw = __import__("pwd").getpwnam(user)
    for path in (ssh_dir, auth):
        os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(auth, 0o600)
    port = _free_port()
    known = os.path.join(work, "known_hosts")
    with open(hostkey + ".pub") as fh:
        kind, blob = fh.read().split()[:2]
    with open(known, "w") as fh:
        fh.write(f"[127.0.0.1]:{port} {kind} {blob}\n")
    cfg = os.path.join(work, "sshd_config")
    with open(cfg, "w") as fh:
        fh.write("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {hostkey}",
            f"PidFile {work}/sshd.pid", "PubkeyAuthentication yes",
            "AuthenticationMethods publickey", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM yes", "PrintMotd no", "UseDNS no",
            f"AllowUsers {user}", "MaxStartups 200", "MaxSessions 100", "",
        ]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    run(SSHD, "-t", "-f", cfg)
    log = open(os.path.join(work, "sshd.log"), "ab")  # noqa: SIM115 - sshd keeps it
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", cfg], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    s = Sshd(work, port, key, known, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited {proc.returncode}: {_tail(work + '/sshd.log')}")
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.connect(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.02)
        finally:
            probe.close()
    done = subprocess.run(s.argv(user, "true"), capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        s.stop()
        raise RuntimeError(f"ssh to the bench sshd failed: {done.stderr.decode()!r} "
                           f"{_tail(work + '/sshd.log')}")
    return s


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-2000:]
    except OSError:
        return ""


# -- the daemon's resources and sessions ---------------------------------------------------


def open_fds(pid: int) -> int:
    return load.Usage.of(pid).fds


def rss_mb(pid: int) -> float:
    return load.Usage.of(pid).rss_kb / 1024


def uss_mb(pids: Sequence[int]) -> list[float]:
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(float(psutil.Process(pid).memory_full_info().uss) / 2**20)
        except psutil.Error:
            continue
    return out


@dataclass
class Ids:
    prefix: str
    n: int = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}-{os.getpid()}-{self.n}"


def agent_true(client: Any, user: str, sid: str, pty: bool = False) -> dict[str, Any]:
    """One session running `true` through a warm client: request -> exit status."""
    sess = load.start(client, user, sid, "true", ("xterm", 24, 80) if pty else None)
    try:
        return dict(sess.wait())
    finally:
        sess.close()


# -- statistics ------------------------------------------------------------------------------


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)

    def add(self, s: float) -> None:
        self.seconds.append(s)

    def summary(self) -> dict[str, Any]:
        xs = sorted(self.seconds)
        n = len(xs)
        if n == 0:
            return {"n": 0}

        def pct(p: float) -> float:
            return xs[min(n - 1, round(p * (n - 1)))] * 1e3

        mean = sum(xs) / n
        return {"n": n, "p50_ms": round(pct(0.5), 3), "p99_ms": round(pct(0.99), 3),
                "mean_ms": round(mean * 1e3, 3), "min_ms": round(xs[0] * 1e3, 3),
                "per_s": round(1.0 / mean, 1)}


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    os_name = "?"
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True,
                                 check=False).stderr.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem, "kernel": platform.release(),
            "os": os_name, "python": platform.python_version(), "openssh": ssh_version}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)

"""Run the privileged tests inside a private mount namespace with tmpfs-backed overlays.

The pytest process itself unshares its mount namespace (ctypes, single-threaded at that point),
then mounts overlays on /etc, /home, /var and /run. Users created, files written and daemons'
sockets all land in the overlays; the host's directories are untouched, which a test proves by
checksumming them from the original namespace (kept open as a file descriptor).
"""

import ctypes
import ctypes.util
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
OVERLAID = ("/etc", "/home", "/var", "/run")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Parts of /var that the host itself churns (package caches), and this checkout (pytest writes
# its cache there), left out of the fingerprint.
_FINGERPRINT_SKIP = ("/var/cache", "/var/tmp", REPO)
# /usr/local/{bin,sbin} are not overlaid: a test that writes there would change the host.
FINGERPRINT_ROOTS = ("/etc", "/home", "/var", "/usr/local/bin", "/usr/local/sbin")


def fingerprint(roots: tuple[str, ...] = FINGERPRINT_ROOTS) -> dict[str, str]:
    """path -> digest of type, mode, owner and content, for every entry under ROOTS."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [
                d for d in dirnames if os.path.join(dirpath, d) not in _FINGERPRINT_SKIP
            ]
            for name in filenames + dirnames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                h = hashlib.sha256(f"{st.st_mode}:{st.st_uid}:{st.st_gid}".encode())
                if os.path.islink(path):
                    h.update(os.readlink(path).encode())
                elif os.path.isfile(path):
                    try:
                        with open(path, "rb") as fh:
                            h.update(fh.read())
                    except OSError:
                        h.update(b"<unreadable>")
                out[path] = h.hexdigest()
    return out


def live_processes(*, zombies: bool = False) -> dict[int, int]:
    """pid -> real uid of every process that is not a zombie (with ZOMBIES, of every process:
    a fast pid-hopper is seen by its zombies, since its one live process is always newer than
    the listing of /proc)."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if not zombies and fields.get("State", "").strip().startswith("Z"):
            continue
        out[int(name)] = int(fields["Uid"].split()[0])
    return out


def describe_process(pid: int) -> str:
    """PID's state, real uid, cgroup and command line, for a failure message."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/cgroup") as fh:
            where = " ".join(fh.read().split())
    except OSError:
        return f"{pid} (gone)"
    return (f"{pid} state {fields.get('State', '?').strip()} uids "
            f"{' '.join(fields.get('Uid', '?').split())} ppid {fields.get('PPid', '?').strip()} "
            f"cgroup {where} cmd {cmd!r}")


def process_uids() -> set[int]:
    return set(live_processes(zombies=True).values())


@dataclass(frozen=True)
class Isolation:
    host_ns_fd: int
    scratch: str

    def host_fingerprint(self) -> dict[str, str]:
        """Fingerprint /etc, /home and /var as the host sees them (from the original namespace)."""
        code = (
            "import json,sys; sys.path.insert(0, sys.argv[1]);"
            "from tests.support.isolation import fingerprint;"
            "print(json.dumps(fingerprint()))"
        )
        proc = subprocess.run(
            ["nsenter", f"--mount=/proc/{os.getpid()}/fd/{self.host_ns_fd}", "--",
             sys.executable, "-c", code, REPO],
            capture_output=True, check=True, text=True,
        )
        import json

        return dict(json.loads(proc.stdout))


def _unshare_mount_ns() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def enter() -> Isolation:
    """Move this process into a private mount namespace with overlays on the host's state."""
    host_ns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    os.set_inheritable(host_ns_fd, False)
    _unshare_mount_ns()
    _mount("--make-rprivate", "/")
    scratch = tempfile.mkdtemp(prefix="runas-agent-test-")
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", scratch)
    overlay(scratch, OVERLAID)
    return Isolation(host_ns_fd, scratch)


def leave(iso: Isolation) -> None:
    """The namespace's scratch tmpfs is mounted on an empty directory of the host's /tmp:
    remove that directory as the host sees it (what is in the tmpfs goes with the namespace)."""
    subprocess.run(["nsenter", f"--mount=/proc/{os.getpid()}/fd/{iso.host_ns_fd}", "--",
                    "rmdir", "--", iso.scratch], capture_output=True, check=False)


def overlay(scratch: str, dirs: tuple[str, ...]) -> None:
    """Put a tmpfs-backed overlay (upper and work dirs in SCRATCH) on each of DIRS, in this
    process's private namespace; e.g. /usr and /opt for tests that install packages.
    redirect_dir=on lets a directory the host already has be renamed, as on the host itself
    (without it, overlayfs refuses with EXDEV)."""
    for d in dirs:
        name = d.strip("/").replace("/", "_")
        up, work = f"{scratch}/{name}.up", f"{scratch}/{name}.work"
        os.makedirs(up)
        os.makedirs(work)
        _mount("-t", "overlay", "overlay", "-o",
               f"lowerdir={d},upperdir={up},workdir={work},redirect_dir=on", d)

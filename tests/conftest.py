"""Shared fixtures. Privileged tests run as root inside an isolated mount namespace (see
tests/support/isolation.py); in CI they must run, so a missing privilege fails instead of skipping.
"""

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from tests.support import isolation

REPO = isolation.REPO


@dataclass(frozen=True)
class Isolated:
    iso: isolation.Isolation
    baseline: dict[str, str]
    process_uids: frozenset[int]  # the real uids of the host's processes before any test


@pytest.fixture(scope="session")
def isolated() -> Iterator[Isolated]:
    """A private mount namespace with overlays on /etc, /home, /var and /run; at the end, the
    host's /tmp loses the empty directory its scratch tmpfs was mounted on."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("privileged tests must run as root in CI")
        pytest.skip("privileged test: run the suite as root (./scripts/test does)")
    baseline = isolation.fingerprint()
    uids = frozenset(isolation.process_uids())
    iso = isolation.enter()
    try:
        _enable_extrausers()
        yield Isolated(iso, baseline, uids)
    finally:
        isolation.leave(iso)


@pytest.fixture(scope="session")
def agent_pkg(isolated: Isolated) -> str:
    """A world-readable copy of the agent package, for clients run as other accounts; in the
    namespace's scratch tmpfs, so it goes with the namespace."""
    from tests.support.daemon import public_copy_of_agent

    return public_copy_of_agent(isolated.iso.scratch)


def _enable_extrausers() -> None:
    """Add the extrausers NSS source (a stand-in for a directory service) inside the namespace."""
    os.makedirs("/var/lib/extrausers", exist_ok=True)
    for name in ("passwd", "group", "shadow"):
        open(f"/var/lib/extrausers/{name}", "a").close()
    with open("/etc/nsswitch.conf") as fh:
        lines = fh.read().splitlines()
    out = []
    for line in lines:
        key = line.split(":", 1)[0].strip()
        add = key in ("passwd", "group", "shadow") and "extrausers" not in line
        out.append(line + " extrausers" if add else line)
    with open("/etc/nsswitch.conf", "w") as fh:
        fh.write("\n".join(out) + "\n")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


BROKEN_SHELL_ACCOUNT = "attk-brokensh"


def broken_shell_account() -> str:
    """BROKEN_SHELL_ACCOUNT, made if missing: an account whose shell cannot be exec'd (a script
    whose interpreter does not exist), so a start fails at the exec, after everything before it
    succeeded."""
    import pwd

    os.makedirs("/var/lib/runas-test", exist_ok=True)
    shell = "/var/lib/runas-test/attk-broken-shell"
    with open(shell, "w") as fh:
        fh.write("#!/nonexistent/interpreter\n")
    os.chmod(shell, 0o755)
    try:
        pwd.getpwnam(BROKEN_SHELL_ACCOUNT)
    except KeyError:
        sh("useradd", "-m", "-s", shell, "--", BROKEN_SHELL_ACCOUNT)
    return BROKEN_SHELL_ACCOUNT


@dataclass(frozen=True)
class Users:
    alice: str = "alice"  # local, bash, supplementary group devs
    bob: str = "bob"  # local, /bin/sh
    nolog: str = "nolog"  # /usr/sbin/nologin
    nofalse: str = "nofalse"  # /bin/false
    toor: str = "toor"  # uid 0 alias (primary group 0)
    zero: str = "zero"  # uid 0 alias whose primary group is its own, not 0
    dirk: str = "dirk"  # directory-only (libnss-extrausers)
    missing: str = "nobody-here"
    devs_group: str = "devs"


def add_directory_user(name: str, uid: int, shell: str = "/bin/bash") -> None:
    """An account that exists only in a directory-like NSS source (libnss-extrausers)."""
    with open("/var/lib/extrausers/passwd", "a") as fh:
        fh.write(f"{name}:x:{uid}:{uid}:{name} (directory):/home/{name}:{shell}\n")
    with open("/var/lib/extrausers/group", "a") as fh:
        fh.write(f"{name}:x:{uid}:\n")
    with open("/var/lib/extrausers/shadow", "a") as fh:
        fh.write(f"{name}:*:19000:0:99999:7:::\n")
    os.makedirs(f"/home/{name}", mode=0o700)
    os.chown(f"/home/{name}", uid, uid)


@pytest.fixture(scope="session")
def users(isolated: Isolated) -> Users:
    u = Users()
    sh("groupadd", u.devs_group)
    sh("useradd", "-m", "-s", "/bin/bash", "-G", u.devs_group, "--", u.alice)
    sh("useradd", "-m", "-s", "/bin/sh", "--", u.bob)
    sh("useradd", "-m", "-s", "/usr/sbin/nologin", "--", u.nolog)
    sh("useradd", "-m", "-s", "/bin/false", "--", u.nofalse)
    sh("useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", "/root", "-s", "/bin/bash", "--", u.toor)
    sh("groupadd", u.zero)
    sh("useradd", "-o", "-u", "0", "-g", u.zero, "-M", "-d", "/root", "-s", "/bin/bash", "--",
       u.zero)
    add_directory_user(u.dirk, 5001)
    return u


def run_cli(*args: str, input: str = "", env: Optional[dict[str, str]] = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True, text=True, input=input, timeout=timeout, cwd=REPO,
        env=env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                         "LC_ALL": "C.UTF-8"},
    )


def run_json(*args: str) -> "tuple[int, dict[str, Any]]":
    import json

    proc = run_cli(args[0], "--json", *args[1:])
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def write_config(path: str, text: str) -> str:
    with open(path, "w") as fh:
        fh.write(text)
    return path


__all__: Sequence[str] = ("Users", "run_cli", "run_json", "sh", "write_config")

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import pytest

from agent.errors import CommandFailed, LookupFailed
from agent.platform import current
from agent.platform.darwin import Darwin
from agent.platform.linux import Linux
from agent.runner import SAFE_PATH, Completed, run, which


class FakeDscl:
    """Stands in for macOS's dscl: knows a set of local users."""

    def __init__(self, local: set[str]) -> None:
        self.local = local

    def __call__(self, argv: Sequence[str], *, timeout: float = 30.0,
                 input: Optional[bytes] = None, check: bool = True,
                 env: Optional[Mapping[str, str]] = None) -> Completed:
        assert argv[:3] == ["/usr/bin/dscl", ".", "-read"]
        name = argv[3].removeprefix("/Users/") if hasattr(str, "removeprefix") else argv[3][7:]
        ok = name in self.local
        return Completed(tuple(argv), 0 if ok else 56, b"UniqueID: 501\n" if ok else b"",
                         b"" if ok else b"<dscl_cmd> DS Error: -14136\n")


def test_darwin_source_local_and_directory() -> None:
    d = Darwin(FakeDscl({"alice"}))
    assert d.account_source("alice") == "local"
    assert d.account_source("corp\\bob") == "directory"


def test_current_picks_platform() -> None:
    assert isinstance(current(FakeDscl(set()), sys_platform="darwin"), Darwin)
    assert isinstance(current(sys_platform="linux"), Linux)


def test_linux_source_reads_passwd_exactly(tmp_path: Path) -> None:
    p = tmp_path / "passwd"
    p.write_text("alice:x:1001:1001::/home/alice:/bin/bash\nbobby:x:1002:1002::/h:/bin/sh\n")
    lx = Linux(str(p))
    assert lx.account_source("alice") == "local"
    assert lx.account_source("bob") == "directory"  # a prefix of bobby is not bob
    assert lx.account_source("bobby") == "local"


def test_linux_source_unreadable_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(LookupFailed):
        Linux(str(tmp_path / "missing")).account_source("alice")


def test_runner_requires_absolute_path() -> None:
    with pytest.raises(CommandFailed, match="absolute"):
        run(["true"])


def test_runner_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="not installed"):
        run([str(tmp_path / "nope")])
    with pytest.raises(CommandFailed, match="exited 3"):
        run(["/bin/sh", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(CommandFailed, match="timed out"):
        run(["/bin/sleep", "5"], timeout=0.2)
    done = run(["/bin/sh", "-c", "echo $PATH; exit 4"], check=False)
    assert done.returncode == 4
    assert done.stdout.decode().strip() == SAFE_PATH


def test_runner_does_not_leak_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("SECRET_MARKER", "x")
    out = run(["/usr/bin/env"]).stdout.decode()
    assert "LD_PRELOAD" not in out
    assert "SECRET_MARKER" not in out


def test_which_searches_fixed_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert which("sh") in ("/usr/bin/sh", "/bin/sh")
    assert which("definitely-not-a-command") is None

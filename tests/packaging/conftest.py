"""Fixtures for the packaging tests: packages built from this checkout (two versions, for the
upgrade tests), and /usr and /opt overlaid in the isolated namespace for the install tests."""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Isolated
from tests.support import isolation

REPO = Path(isolation.REPO)
BUILD = REPO / "packaging" / "build"


@dataclass(frozen=True)
class Built:
    old_version: str
    new_version: str
    old_deb: Path
    new_deb: Path
    old_rpm: Path
    new_rpm: Path


def build(version: str, out: Path) -> tuple[Path, Path]:
    proc = subprocess.run([str(BUILD), "--version", version, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    deb, rpm = (Path(line) for line in proc.stdout.split())
    assert deb == out / f"runas-agent_{version}_all.deb"
    assert rpm == out / f"runas-agent-{version}-1.noarch.rpm"
    assert deb.is_file()
    assert rpm.is_file()
    return deb, rpm


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The checkout's version, and an older one ("~prev" sorts before it for dpkg and rpm)."""
    from agent import __version__

    out = tmp_path_factory.mktemp("dist")
    old = f"{__version__}~prev"
    old_deb, old_rpm = build(old, out)
    new_deb, new_rpm = build(__version__, out)
    return Built(old, __version__, old_deb, new_deb, old_rpm, new_rpm)


@pytest.fixture(scope="session")
def system_overlay(isolated: Isolated) -> Isolated:
    """Also overlay /usr and /opt, so packages can be installed and removed for real."""
    if not os.path.ismount("/usr") or _fstype("/usr") != "overlay":
        isolation.overlay(isolated.iso.scratch, ("/usr", "/opt"))
    return isolated


def _fstype(path: str) -> str:
    best, kind = "", ""
    with open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            covers = path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")
            if covers and len(fields[1]) >= len(best):
                best, kind = fields[1], fields[2]
    return kind

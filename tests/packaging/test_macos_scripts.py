"""The .pkg's installer scripts against macOS's tools as they behave there, modelled by fakes:
every absolute tool path in a script is pointed at a fake in a scratch directory (the scripts
cannot run Apple's tools here). launchctl models what is widely reported of it: `bootout`
returns before the job is gone, and `bootstrap` of a job still loaded fails with
"5: Input/output error"."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.isolation import REPO

SCRIPTS = Path(REPO) / "packaging/macos/scripts"
TOOL = re.compile(r"(?<![\w/])(/usr/libexec|/usr/sbin|/usr/bin|/bin|/sbin)/([A-Za-z][\w.-]*)")

FAKE_LAUNCHCTL = """#!/bin/sh
# The job is loaded; after bootout it stays for 3 more queries of `print`.
state=$(cat "$STATE" 2>/dev/null || echo loaded)
echo "$*" >> "$LOG"
case "$1" in
  print) case "$state" in
           loaded) exit 0 ;;
           going:0) echo gone > "$STATE"; exit 113 ;;
           going:*) n=${state#going:}; echo "going:$((n - 1))" > "$STATE"; exit 0 ;;
           *) exit 113 ;;
         esac ;;
  bootout) [ "$state" = loaded ] && echo going:3 > "$STATE"; exit 0 ;;
  bootstrap) case "$state" in
               gone) echo loaded > "$STATE"; exit 0 ;;
               *) echo "Bootstrap failed: 5: Input/output error" >&2; exit 5 ;;
             esac ;;
  kickstart) exit 0 ;;
esac
exit 0
"""


def _fake_tools(script: Path, fakes: Path, bodies: dict[str, str] | None = None) -> Path:
    """SCRIPT with its absolute tool paths pointing into FAKES (every tool a no-op, except
    dscl answering a gid, and launchctl)."""
    shebang, text = script.read_text().split("\n", 1)
    for _prefix, name in set(TOOL.findall(text)):
        fake = fakes / name
        if not fake.exists():
            body = (bodies[name] if bodies and name in bodies else
                    "#!/bin/sh\necho 'PrimaryGroupID: 555'\n" if name == "dscl" else
                    FAKE_LAUNCHCTL if name == "launchctl" else
                    "#!/bin/sh\nexec awk \"$@\"\n" if name == "awk" else "#!/bin/sh\nexit 0\n")
            fake.write_text(body)
            fake.chmod(0o755)
    out = fakes / script.name
    out.write_text(shebang + "\n" + TOOL.sub(lambda m: str(fakes / m.group(2)), text))
    out.chmod(0o755)
    return out


def test_postinstall_waits_for_launchd_to_let_go_of_the_old_job(tmp_path: Path) -> None:
    script = _fake_tools(SCRIPTS / "postinstall", tmp_path)
    env = {"PATH": "/usr/bin:/bin", "STATE": str(tmp_path / "state"),
           "LOG": str(tmp_path / "log")}
    proc = subprocess.run([str(script), "pkg", "/", "/"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    assert calls[-1].startswith("bootstrap system")
    assert (tmp_path / "state").read_text().strip() == "loaded"


XCRUN_STUB = "#!/bin/sh\necho 'xcode-select: error: no developer tools were found' >&2\nexit 2\n"


def test_preinstall_refuses_a_mac_without_the_command_line_tools(tmp_path: Path) -> None:
    """/usr/bin/python3 is an xcrun stub until the Command Line Tools are installed."""
    script = _fake_tools(SCRIPTS / "preinstall", tmp_path,
                         {"xcode-select": XCRUN_STUB, "python3": XCRUN_STUB})
    proc = subprocess.run([str(script), "pkg", "/", "/"], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "xcode-select --install" in proc.stderr


def test_preinstall_refuses_a_python3_that_does_not_run(tmp_path: Path) -> None:
    """Command Line Tools present but broken (e.g. after a macOS upgrade)."""
    script = _fake_tools(SCRIPTS / "preinstall", tmp_path, {"python3": XCRUN_STUB})
    proc = subprocess.run([str(script), "pkg", "/", "/"], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "needs a working" in proc.stderr


def test_preinstall_accepts_a_working_python3(tmp_path: Path) -> None:
    script = _fake_tools(SCRIPTS / "preinstall", tmp_path)
    proc = subprocess.run([str(script), "pkg", "/", "/"], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

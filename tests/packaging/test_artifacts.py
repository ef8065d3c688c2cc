"""The service units, the launchd plist, the man page, the default config and the built packages,
checked with the tools the distributions use (systemd-analyze, lintian, rpmlint, shellcheck)."""

import gzip
import io
import os
import plistlib
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent.config import Config, SocketConfig, from_mapping, load_config
from tests.packaging.conftest import REPO, Built

UNITS = [REPO / "systemd" / "runas-agent.socket", REPO / "systemd" / "runas-agent.service"]
PLIST = REPO / "launchd" / "org.runas-agent.agent.plist"
PKG = REPO / "packaging"
SHELL_SCRIPTS = [
    PKG / "build",
    PKG / "deb" / "postinst", PKG / "deb" / "prerm", PKG / "deb" / "postrm",
    PKG / "rpm" / "pre.sh", PKG / "rpm" / "post.sh", PKG / "rpm" / "preun.sh",
    PKG / "rpm" / "postun.sh",
    *sorted((PKG / "macos").glob("*.sh")),
    *sorted((PKG / "macos" / "scripts").glob("*")),
]


def run(*argv: str, **kw: object) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload, no-any-return]


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values, across sections (the units use each key in one section only)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


# --- systemd ------------------------------------------------------------------------------


def test_systemd_analyze_verify_prints_nothing() -> None:
    # --man=no: the man page is not installed on this host; the install test verifies with it.
    proc = run("systemd-analyze", "verify", "--man=no", *map(str, UNITS))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is reported on stderr (exit status 0)."""
    bad = tmp_path / "runas-agent.service"
    bad.write_text(UNITS[1].read_text().replace("KillMode=", "KilMode="))
    (tmp_path / "runas-agent.socket").write_text(UNITS[0].read_text())
    proc = run("systemd-analyze", "verify", "--man=no", str(tmp_path / "runas-agent.socket"),
               str(bad))
    assert "KilMode" in proc.stderr


def test_socket_unit() -> None:
    s = unit_settings(UNITS[0])
    assert s["ListenStream"] == ["/run/runas-agent/runas-agent.sock"]
    assert s["SocketMode"] == ["0660"]
    assert s["SocketGroup"] == ["runas-agent"]
    assert s["WantedBy"] == ["sockets.target"]
    assert "Accept" not in s  # one daemon for all connections
    # The default config and the client agree with the unit on where the socket is.
    assert SocketConfig().path == s["ListenStream"][0]


def test_service_unit_keeps_sessions_and_sudo_working() -> None:
    s = unit_settings(UNITS[1])
    assert s["Type"] == ["notify"]
    assert s["KillMode"] == ["process"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"] == [
        "/usr/bin/python3 -I /usr/bin/runas-agent serve --config /etc/runas-agent/config.yaml"]
    assert s["Requires"] == ["runas-agent.socket"]
    breaking = {"NoNewPrivileges", "PrivateUsers", "SystemCallFilter", "ProtectSystem",
                "ProtectHome", "CapabilityBoundingSet", "MemoryDenyWriteExecute",
                "RestrictAddressFamilies", "PrivateNetwork", "PrivateDevices",
                "ProtectKernelTunables", "ProtectHostname", "ProtectProc", "RestrictNamespaces",
                "RestrictSUIDSGID", "PrivateTmp", "DynamicUser", "User", "RuntimeDirectory"}
    assert breaking.isdisjoint(s)


# --- launchd ------------------------------------------------------------------------------


def test_launchd_plist() -> None:
    with PLIST.open("rb") as fh:
        p = plistlib.load(fh)
    assert p["Label"] == "org.runas-agent.agent"
    assert PLIST.name == p["Label"] + ".plist"
    assert p["ProgramArguments"][:4] == ["/usr/bin/python3", "-I", "/usr/local/bin/runas-agent",
                                         "serve"]
    # The name the daemon asks launch_activate_socket for.
    from agent.activation import LAUNCHD_SOCKET_NAME

    listener = p["Sockets"][LAUNCHD_SOCKET_NAME]
    assert listener["SockPathName"].startswith("/var/run/")
    assert listener["SockPathMode"] == 0o660  # 432 in the plist's decimal
    assert listener["SockType"] == "stream"
    assert listener["SockFamily"] == "Unix"
    assert p["KeepAlive"] == {"SuccessfulExit": False}
    assert p["AbandonProcessGroup"] is True  # sessions outlive a daemon restart
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert p[key].startswith("/var/log/runas-agent/")


# --- scripts ------------------------------------------------------------------------------


def test_scripts_are_shellcheck_clean() -> None:
    assert len(SHELL_SCRIPTS) >= 10, SHELL_SCRIPTS
    proc = run("shellcheck", "--severity=style", *map(str, SHELL_SCRIPTS))
    assert proc.returncode == 0, proc.stdout


def test_scripts_are_executable_where_they_run_directly() -> None:
    for path in [PKG / "build", PKG / "deb" / "postinst", PKG / "deb" / "prerm",
                 PKG / "deb" / "postrm", *sorted((PKG / "macos").glob("*.sh")),
                 *sorted((PKG / "macos" / "scripts").glob("*"))]:
        assert os.access(path, os.X_OK), path


# --- man page and default config ------------------------------------------------------------


def test_man_page_covers_every_command_and_renders_cleanly(tmp_path: Path) -> None:
    from agent.cli import build_parser

    page = tmp_path / "runas-agent.8"
    proc = run(sys.executable, str(PKG / "manpage.py"), "--version", "9.9", "--date",
               "2026-01-02")
    assert proc.returncode == 0, proc.stderr
    page.write_text(proc.stdout)
    shown = run("man", "--warnings=all", "-l", str(page),
                env={"MANWIDTH": "100", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin",
                     "MANPAGER": "cat", "PAGER": "cat"})
    assert shown.returncode == 0
    assert shown.stderr == ""
    text = shown.stdout
    assert "runas-agent 9.9" in text
    assert "2026-01-02" in text
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands
    for name in commands:
        assert re.search(rf"^   runas-agent {name}\b", text, re.M), name
    assert "runas-agent config check" in text
    for section in ("SYNOPSIS", "COMMANDS", "EXIT STATUS", "SIGNALS", "FILES", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section
    assert "--config PATH" in text


def test_default_config_is_valid_and_documents_every_default() -> None:
    """Uncommenting every setting line gives the embedded defaults back, so the shipped file
    cannot drift from agent/config.py unnoticed."""
    text = (PKG / "config.yaml").read_text()
    cfg = load_config(str(PKG / "config.yaml"))
    assert cfg.socket.group == "runas-agent"
    assert cfg.peers.allowed_groups == ("runas-agent",)
    import yaml

    uncommented = "\n".join(
        line[1:] if line.startswith("#") and not line.startswith("##") else line
        for line in text.splitlines()
    )
    data = yaml.safe_load(uncommented)
    full = from_mapping(data)
    expected = Config()
    from agent.values import fields, replace

    expected = replace(
        expected,
        socket=replace(expected.socket, group="runas-agent"),
        peers=replace(expected.peers, allowed_groups=("runas-agent",)),
    )
    assert full == expected
    for section in fields(Config):
        sub = getattr(Config(), section)
        for name in fields(sub):
            assert name in data[section], f"{section}.{name} is not documented"


# --- the built packages ---------------------------------------------------------------------


def test_build_is_fast_and_reproducible(built: Built, tmp_path: Path) -> None:
    import time

    t0 = time.monotonic()
    from tests.packaging.conftest import build

    deb, rpm = build(built.new_version, tmp_path)
    assert time.monotonic() - t0 < 60
    assert deb.read_bytes() == built.new_deb.read_bytes()
    assert rpm.read_bytes() == built.new_rpm.read_bytes()


def test_lintian_reports_no_errors_or_warnings(built: Built) -> None:
    proc = run("lintian", "--pedantic", "--display-info", "--fail-on", "error,warning",
               str(built.new_deb))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not re.search(r"^[EW]: ", proc.stdout, re.M), proc.stdout


def test_rpmlint_reports_no_errors_or_warnings(built: Built) -> None:
    proc = run("rpmlint", "-c", str(PKG / "rpm" / "rpmlint.toml"), str(built.new_rpm))
    assert proc.returncode == 0, proc.stdout
    assert " 0 errors, 0 warnings" in proc.stdout, proc.stdout


def test_rpmlint_would_report_a_problem(built: Built) -> None:
    """Without the justified filters rpmlint does complain, so the check above is real."""
    proc = run("rpmlint", str(built.new_rpm))
    assert proc.returncode != 0
    assert "E: no-signature" in proc.stdout


def _deb_members(deb: Path) -> dict[str, tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name.lstrip("."): m for m in t.getmembers()}


def test_deb_contents(built: Built) -> None:
    members = _deb_members(built.new_deb)
    assert members["/usr/bin/runas-agent"].mode == 0o755
    assert members["/usr/lib/runas-agent/agent/cli.py"].mode == 0o644
    assert "/usr/lib/runas-agent/agent/activation.py" in members
    assert "/lib/systemd/system/runas-agent.socket" in members
    assert "/lib/systemd/system/runas-agent.service" in members
    assert "/etc/runas-agent/config.yaml" in members
    assert "/usr/share/man/man8/runas-agent.8.gz" in members
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in members if n.startswith("/opt")]
    # Debian ships structlog: nothing vendored in the .deb.
    assert not [n for n in members if "/vendor/" in n]
    assert ("/etc/pam.d/runas-agent" in members) == (PKG / "pam" / "runas-agent").is_file()
    fields = run("dpkg-deb", "--field", str(built.new_deb)).stdout
    assert "Architecture: all" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.M)
    assert depends is not None
    assert {d.strip() for d in depends.group(1).split(",")} >= {
        "python3 (>= 3.9)", "python3-psutil", "python3-yaml", "python3-structlog (>= 21.1)"}
    conffiles = run("dpkg-deb", "--info", str(built.new_deb), "conffiles").stdout.split()
    assert "/etc/runas-agent/config.yaml" in conffiles


def test_deb_wrapper_runs_the_agent_on_system_python(built: Built, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(built.new_deb), str(tmp_path), check=True)
    wrapper = (tmp_path / "usr/bin/runas-agent").read_text()
    assert wrapper.startswith("#!/usr/bin/python3 -I\n")
    assert '"/usr/lib/runas-agent"' in wrapper
    with gzip.open(tmp_path / "usr/share/man/man8/runas-agent.8.gz", "rt") as fh:
        assert fh.read().startswith(".TH RUNAS-AGENT 8 ")


def test_rpm_file_list_and_metadata(built: Built) -> None:
    files = run("rpm", "-qpl", str(built.new_rpm)).stdout.split()
    assert "/usr/bin/runas-agent" in files
    assert "/usr/lib/runas-agent/agent/cli.py" in files
    assert "/usr/lib/systemd/system/runas-agent.socket" in files
    assert "/usr/lib/systemd/system/runas-agent.service" in files
    assert "/usr/share/man/man8/runas-agent.8.gz" in files
    # structlog is not in RHEL 9's or Amazon Linux 2023's base repositories: vendored.
    assert "/usr/lib/runas-agent/vendor/structlog/__init__.py" in files
    assert not [f for f in files if f.startswith("/opt") or "__pycache__" in f]
    configs = run("rpm", "-qpc", str(built.new_rpm)).stdout.split()
    assert "/etc/runas-agent/config.yaml" in configs
    # %config(noreplace): the file flags of config.yaml carry both bits.
    flags = run("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]",
                str(built.new_rpm)).stdout
    assert re.search(r"^/etc/runas-agent/config.yaml cn$", flags, re.M), flags
    info = run("rpm", "-qp", "--qf", "%{ARCH} %{VERSION} %{RELEASE}\n", str(built.new_rpm))
    assert info.stdout == f"noarch {built.new_version} 1\n"
    requires = run("rpm", "-qpR", str(built.new_rpm)).stdout.splitlines()
    assert {"python3 >= 3.9", "python3dist(psutil)", "python3dist(pyyaml)",
            "/usr/bin/python3"} <= {r.strip() for r in requires}


def test_rpm_scriptlets_handle_install_upgrade_and_erase(built: Built) -> None:
    scripts = run("rpm", "-qp", "--scripts", str(built.new_rpm)).stdout
    parts = re.split(r"^(\w+) scriptlet \(using /bin/sh\):$", scripts, flags=re.M)
    bodies = dict(zip(parts[1::2], parts[2::2]))
    assert set(bodies) == {"preinstall", "postinstall", "preuninstall", "postuninstall"}
    assert "groupadd --system runas-agent" in bodies["preinstall"]
    post = bodies["postinstall"]
    assert '[ "$1" -eq 1 ]' in post
    assert "enable runas-agent.socket" in post
    assert "try-restart runas-agent.service" in post
    assert "[ -d /run/systemd/system ]" in post
    assert '[ "$1" -eq 0 ]' in bodies["preuninstall"]
    assert '[ "$1" -eq 0 ]' in bodies["postuninstall"]
    # Each body, as rpm will run it, is shellcheck-clean too.
    for name, body in bodies.items():
        proc = run("shellcheck", "-s", "sh", "-", input=body)
        assert proc.returncode == 0, (name, proc.stdout)


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_deb_scripts_refuse_unknown_arguments(script: str) -> None:
    proc = run("sh", str(PKG / "deb" / script), "bogus")
    assert proc.returncode == 1
    assert "unknown argument 'bogus'" in proc.stderr


# --- macOS .pkg (its payload is laid out here; pkgbuild itself needs a Mac) ------------------


def test_macos_payload_layout(tmp_path: Path) -> None:
    proc = run(str(PKG / "macos" / "build-pkg.sh"), "--version", "7.7.7", "--stage-only",
               str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "root"
    assert proc.stdout.strip() == str(root)
    lib = root / "usr/local/lib/runas-agent"
    assert (lib / "agent/activation.py").is_file()
    assert '__version__ = "7.7.7"' in (lib / "agent/__init__.py").read_text()
    wrapper = root / "usr/local/bin/runas-agent"
    assert os.access(wrapper, os.X_OK)
    assert '"/usr/local/lib/runas-agent"' in wrapper.read_text()
    plist_path = root / "Library/LaunchDaemons/org.runas-agent.agent.plist"
    assert plist_path.read_bytes() == PLIST.read_bytes()
    with plist_path.open("rb") as fh:
        plist = plistlib.load(fh)
    assert plist["ProgramArguments"][2] == "/usr/local/bin/runas-agent"
    # The macOS config names the socket launchd creates; the client finds it there.
    cfg = load_config(str(root / "usr/local/share/runas-agent/config.yaml"))
    assert cfg.socket.path == plist["Sockets"]["Listeners"]["SockPathName"]
    assert cfg.session.state_dir.startswith("/var/run/")
    assert cfg.socket.group == "runas-agent"
    assert os.access(tmp_path / "scripts/postinstall", os.X_OK)
    assert os.access(lib / "uninstall.sh", os.X_OK)
    assert (root / "usr/local/share/man/man8/runas-agent.8").read_text().startswith(".TH ")


def test_macos_config_rewrite_fails_loudly_when_its_lines_move() -> None:
    proc = run(str(PKG / "macos" / "config.sh"), input="socket:\n  group: runas-agent\n")
    assert proc.returncode == 1
    assert "socket.path or session.state_dir not found" in proc.stderr


def test_macos_build_refuses_to_run_off_a_mac() -> None:
    proc = run(str(PKG / "macos" / "build-pkg.sh"), "--out", "/nonexistent")
    assert proc.returncode == 2
    assert "a .pkg is built on macOS" in proc.stderr

"""agent.argv reads the common command lines of check, resolve and session exactly as argparse
does, and gives up (None, so argparse runs) on every other one."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import argv as fast
from agent import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _argparse(args: list[str]) -> dict[str, object] | None:
    """argparse's attributes for ARGS, or None when it exits (an error, --help)."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            ns = cli.build_parser().parse_args(args)
    except SystemExit:
        return None
    return vars(ns)


def _check(args: list[str]) -> dict[str, object] | None:
    """The fast path's result for ARGS, after checking it against argparse's."""
    got = fast.parse(args)
    if got is not None:
        want = _argparse(args)
        assert want is not None, f"{args}: argparse refuses what the fast path accepts"
        func = want.pop("func")
        assert got == want, args
        found = cli._fast_args(args)
        assert found is not None
        assert vars(found) == {**got, "func": func}
    return got


COMMON = [
    ["check", "alice"],
    ["check", "alice", "--json"],
    ["check", "--json", "alice"],
    ["check", "--config", "/etc/x.yaml", "alice", "--json"],
    ["check", ""],
    ["check", "a b"],
    ["resolve"],
    ["resolve", "--run-as", "--tag", "SSMSessionRunAs=alice"],
    ["resolve", "--no-run-as", "--json"],
    ["resolve", "--tag", "a=1", "--tag", "b=", "--tag", "c=x=y", "--default-user", "bob"],
    ["resolve", "--config", "", "--json", "--run-as"],
    ["session"],
    ["session", "--"],
    ["session", "--", "true"],
    ["session", "-t", "--", "id", "-un"],
    ["session", "--socket", "/run/s.sock", "--run-as", "--tag", "SSMSessionRunAs=u", "--", "true"],
    ["session", "--config", "c.yaml", "--principal", "arn:aws:iam::1:user/x", "--session-id",
     "s-1", "--default-user", "bob", "--no-run-as", "--", "sh", "-c", "echo --json"],
    ["session", "--", "--", "x"],
    ["session", "--", "-t", "--socket", "y"],
]


@pytest.mark.parametrize("args", COMMON, ids=" ".join)
def test_common_forms_take_the_fast_path(args: list[str]) -> None:
    assert _check(args) is not None


OTHERS = [
    [], ["--help"], ["-h"], ["check"], ["check", "-h"], ["check", "--help"],
    ["check", "a", "b"], ["check", "--json"], ["check", "--js", "a"],
    ["check", "--json", "--json", "a"],
    ["check", "--config=x", "a"], ["check", "--config", "-x", "a"], ["check", "--config"],
    ["check", "--", "a"], ["check", "-1"], ["check", "-"], ["check", "a", "--run-as"],
    ["resolve", "x"], ["resolve", "--tag", "novalue"], ["resolve", "--tag", "=x"],
    ["resolve", "--tag"], ["resolve", "--tag", "-a=1"], ["resolve", "--tag", "a=1", "--tag", "a=2"],
    ["resolve", "--run-as", "--no-run-as"], ["resolve", "--run-as", "--run-as"],
    ["resolve", "--default"], ["resolve", "--no"], ["resolve", "-t"], ["resolve", "--"],
    ["session", "true"], ["session", "-t", "true"], ["session", "--socket"],
    ["session", "--socket", "-x", "--", "true"], ["session", "-tt", "--", "true"],
    ["session", "--json", "--", "true"], ["session", "--tag", "a", "--", "true"],
    ["session", "--sock", "s", "--", "true"], ["session", "--session-id=s", "--", "true"],
    ["session", "-t", "-t", "--", "true"], ["session", "--run-as", "--no-run-as", "--", "x"],
    ["version"], ["sessions"], ["config", "check"], ["--version"], ["frobnicate"],
]


@pytest.mark.parametrize("args", OTHERS, ids=lambda a: " ".join(a) or "(none)")
def test_other_forms_go_to_argparse(args: list[str]) -> None:
    assert _check(args) is None


WORDS = ["check", "resolve", "session", "alice", "", "-", "--", "-t", "-tt", "--json", "--js",
         "--config", "--config=c", "c.yaml", "--socket", "/s", "--tag", "a=1", "a=2", "=x", "b",
         "--run-as", "--no-run-as", "--default-user", "--principal", "--session-id", "-h",
         "--help", "-1", "-x", "true"]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["check", "resolve", "session"]),
       st.lists(st.sampled_from(WORDS), max_size=7))
def test_any_command_line_parses_as_argparse_does(command: str, rest: list[str]) -> None:
    _check([command, *rest])


def test_every_short_command_line_parses_as_argparse_does() -> None:
    words = ["alice", "--", "-t", "--json", "--config", "c", "--tag", "a=1", "--run-as",
             "--no-run-as"]
    for command in ("check", "resolve", "session"):
        for n in range(4):
            for rest in itertools.product(words, repeat=n):
                _check([command, *rest])


# -- what the hot paths import ---------------------------------------------------------------

NEVER = {"argparse", "gettext", "locale", "shutil", "typing", "yaml", "structlog", "psutil"}
NO_DATACLASSES = {"dataclasses", "inspect", "ast", "dis", "tokenize"}

PROBE = """
import sys
sys.path.insert(0, {repo!r})
from agent.cli import main
code = main({argv!r})
{extra}
sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n")
"""


def _modules(argv: list[str], extra: str = "") -> set[str]:
    # -S: no site-packages; their .pth files (an editable install's finder) are not the CLI's.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE.format(repo=REPO, argv=argv,
                                                                      extra=extra)],
                          capture_output=True, text=True, check=True,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    line = done.stderr.rsplit("\nMODULES ", 1)[1]
    return set(line.split())


@pytest.mark.parametrize("argv", [["check", "root"], ["check", "--json", "nosuchuser"],
                                  ["resolve", "--run-as", "--tag", "SSMSessionRunAs=root"],
                                  ["resolve", "--json"]])
def test_check_and_resolve_import_no_parser_no_extras_and_no_dataclasses(argv: list[str]) -> None:
    mods = _modules(argv)
    assert {"agent.accounts", "agent.config", "agent.platform"} <= mods  # the command did run
    if argv[0] == "resolve":
        assert {"agent.resolve", "agent.policy"} <= mods
    if argv == ["resolve", "--json"]:
        assert "agent.homedir" in mods  # Run As off: ssm-user, whose home is checked
    assert not mods & (NEVER | NO_DATACLASSES), sorted(mods & (NEVER | NO_DATACLASSES))


def test_session_imports_no_parser_and_no_dataclasses() -> None:
    # No daemon: the client fails to connect; the modules it would import once connected
    # (the server check, the relay) are imported by the probe afterwards.
    mods = _modules(["session", "--socket", "/nonexistent/s.sock", "--run-as", "--tag",
                     "SSMSessionRunAs=root", "--", "true"],
                    "import agent.peer, agent.attach, agent.client")
    assert {"agent.client", "agent.protocol", "agent.peer", "agent.attach"} <= mods
    assert not mods & (NEVER | NO_DATACLASSES), sorted(mods & (NEVER | NO_DATACLASSES))

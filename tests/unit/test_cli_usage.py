import pytest

from agent.cli import main


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["resolve", "--tag", "novalue"],
        ["resolve", "--tag", "=x"],
        ["resolve", "--run-as", "--no-run-as"],
        ["config"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_duplicate_tag_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("resolve", "session"):
        with pytest.raises(SystemExit) as info:
            main([cmd, "--run-as", "--tag", "SSMSessionRunAs=a", "--tag", "SSMSessionRunAs=b",
                  "--config", "/dev/null"])
        assert info.value.code == 2
        assert "--tag SSMSessionRunAs given twice" in capsys.readouterr().err


def test_config_error_exits_2(tmp_path: "object", capsys: pytest.CaptureFixture[str]) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "c.yaml"
    p.write_text("policy: {nope: 1}\n")
    assert main(["config", "check", str(p)]) == 2
    err = capsys.readouterr().err
    assert "policy.nope: unknown key" in err
    assert main(["check", "alice", "--config", str(p)]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from agent import __version__

    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"runas-agent {__version__}\n"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("check", "resolve", "config", "version"):
        assert cmd in out


def test_agent_errors_are_reported_not_tracebacks(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A socket-activation variable that names this process but is malformed.
    import os

    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "two")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["serve", "--config", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runas-agent: activation_failed: ")
    assert "Traceback" not in err


def test_printable_escapes_terminal_controls() -> None:
    from agent.cli import _printable

    assert _printable("arn:aws:iam::1:role/x") == "arn:aws:iam::1:role/x"
    assert _printable("a\x1b[2Jb\u202e") == "a\\x1b[2Jb\\u202e"

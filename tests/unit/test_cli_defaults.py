"""The CLI's copies of config defaults, kept so that `session` need not parse a config."""

from __future__ import annotations

from agent import cli, config


def test_socket_default_is_the_configs() -> None:
    assert config.Config().socket.path == cli.SOCKET_PATH


def test_config_path_is_the_configs() -> None:
    assert cli.CONFIG_PATH == config.DEFAULT_PATH


def test_every_command_is_known() -> None:
    full = cli.build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert tuple(sub.choices) == cli.COMMANDS  # type: ignore[arg-type]


def test_one_command_parser_parses_like_the_full_one() -> None:
    argv = ["session", "--socket", "/x", "--tag", "SSMSessionRunAs=u", "--", "true"]
    assert vars(cli.build_parser("session").parse_args(argv)) == vars(
        cli.build_parser().parse_args(argv))

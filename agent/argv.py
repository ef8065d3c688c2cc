"""The common command lines of `check`, `resolve` and `session`, read without argparse.

These commands sit on people's and transports' hot paths, and argparse (with `re`, `gettext`,
`locale` and `shutil`, and the building of a parser) costs about as much as the rest of such a
command. `parse` accepts only these exact forms, options in any order:

    check [--config PATH] [--json] USER
    resolve [--config PATH] [--json] [--tag KEY=VALUE]... [--run-as | --no-run-as]
            [--default-user NAME]
    session [--socket PATH] [--config PATH] [--tag KEY=VALUE]... [--run-as | --no-run-as]
            [--default-user NAME] [--principal ARN] [--session-id ID] [-t] [-- COMMAND [ARG]...]

and gives what the command's argparse parser gives for them. For anything else it returns None
and the caller uses argparse, so help, every error and every other form (`--opt=value`,
abbreviations, values that begin with `-`, an option given twice, a COMMAND without `--`) keep
argparse's behaviour and messages. tests/unit/test_cli_argv.py compares the two on many
command lines.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Optional

# command: {option: (dest, value)}; value None: the option takes one argument
_FLAGS: dict[str, dict[str, tuple[str, Any]]] = {
    "check": {"--config": ("config", None), "--json": ("json", True)},
    "resolve": {"--config": ("config", None), "--json": ("json", True),
                "--run-as": ("run_as", True), "--no-run-as": ("run_as", False),
                "--default-user": ("default_user", None)},
    "session": {"--socket": ("socket", None), "--config": ("config", None),
                "--run-as": ("run_as", True), "--no-run-as": ("run_as", False),
                "--default-user": ("default_user", None), "--principal": ("principal", None),
                "--session-id": ("session_id", None), "-t": ("tty", True)},
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "check": {"config": None, "json": False},
    "resolve": {"config": None, "json": False, "run_as": None, "default_user": None},
    "session": {"socket": None, "config": None, "run_as": None, "default_user": None,
                "principal": None, "session_id": None, "tty": False},
}
_TAGS = ("resolve", "session")


def _plain(arg: str) -> bool:
    """A word argparse takes as a value or positional in every case: not option-like."""
    return not arg.startswith("-")


def parse(argv: Sequence[str]) -> Optional[dict[str, Any]]:
    """ARGV's attributes (argparse's dests, with "command") when it is one of the forms above;
    else None."""
    if not argv or argv[0] not in _FLAGS:
        return None
    name = argv[0]
    flags = _FLAGS[name]
    out: dict[str, Any] = {"command": name, **_DEFAULTS[name]}
    if name in _TAGS:
        out["tag"] = {}
    if name == "session":
        out["command"] = []  # argparse's REMAINDER when nothing follows
    seen: set[str] = set()
    positionals: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if _plain(arg):
            positionals.append(arg)
            continue
        if arg == "--" and name == "session":
            out["command"] = list(argv[i - 1:])  # argparse's REMAINDER keeps the "--"
            break
        if arg == "--tag" and name in _TAGS:
            if i == len(argv) or not _plain(argv[i]):
                return None
            key, sep, value = argv[i].partition("=")
            i += 1
            if not sep or not key or key in out["tag"]:
                return None
            out["tag"] = {**out["tag"], key: value}
            continue
        if arg not in flags or arg in seen:
            return None
        seen.add(arg)
        dest, value = flags[arg]
        if dest in seen:  # --run-as with --no-run-as
            return None
        seen.add(dest)
        if value is None:
            if i == len(argv) or not _plain(argv[i]):
                return None
            value = argv[i]
            i += 1
        out[dest] = value
    if name == "check":
        if len(positionals) != 1:
            return None
        out["user"] = positionals[0]
    elif positionals:
        return None
    return out

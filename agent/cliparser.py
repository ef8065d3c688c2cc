"""The argparse side of the command line: the parser's classes and shared options.

Imported only when a command line is not one of the common forms agent.argv reads (help,
errors, the other commands): argparse's import and the parser's building cost about as much as
`check` itself.
"""

from __future__ import annotations

import argparse
import sys

from agent.cli import EXIT_USAGE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, Optional

class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


class Tags(argparse.Action):
    """--tag KEY=VALUE, repeatable, into a dict; a key given twice is a usage error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        tags = dict(getattr(namespace, self.dest) or {})
        key, value = values
        if key in tags:
            parser.error(f"--tag {key} given twice")
        tags[key] = value
        setattr(namespace, self.dest, tags)


def add_prefs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tag", action=Tags, type=tag, default={}, metavar="KEY=VALUE",
        help="a tag of the principal (repeatable); the one that matters is SSMSessionRunAs",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run-as", dest="run_as", action="store_true", default=None,
                   help="Run As support is enabled in the account preferences")
    g.add_argument("--no-run-as", dest="run_as", action="store_false",
                   help="Run As support is disabled: sessions run as ssm-user")
    p.add_argument("--default-user", metavar="NAME",
                   help="the account preference's default Run As user")

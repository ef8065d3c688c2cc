"""The `runas-agent` command line. The composition root: the only place that builds real objects.

Commands import only what they use, so `check` and `resolve` start fast.
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, NoReturn, Optional

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_prefs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tag", action="append", type=_tag, default=[], metavar="KEY=VALUE",
        help="a tag of the principal (repeatable); the one that matters is SSMSessionRunAs",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run-as", dest="run_as", action="store_true", default=None,
                   help="Run As support is enabled in the account preferences")
    g.add_argument("--no-run-as", dest="run_as", action="store_false",
                   help="Run As support is disabled: sessions run as ssm-user")
    p.add_argument("--default-user", metavar="NAME",
                   help="the account preference's default Run As user")


def build_parser() -> argparse.ArgumentParser:
    from agent import __version__

    parser = _Parser(
        prog="runas-agent",
        description="Node-side Run As agent: decides which OS account a session runs as, "
        "validates it, and starts the shell under it.",
        epilog="Exit codes: 0 allowed/success, 1 refused or denied, 2 usage or configuration "
        "error. `session` passes the command's status through and uses 255 for its own failures.",
    )
    parser.add_argument("--version", action="version", version=f"runas-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    cfg_help = "config file (default /etc/runas-agent/config.yaml; embedded defaults if absent)"

    p = sub.add_parser("check", help="can USER be a session target on this node?",
                       description="Run every check on USER as a session target and show each "
                       "one. Exit 0 if usable, 1 if refused (the reason code says why).")
    p.add_argument("user", metavar="USER")
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("resolve", help="which account would a session run as?",
                       description="Walk the Run As decision for a principal's tags and the "
                       "account preferences, then validate the chosen account. Exit 0 if "
                       "allowed, 1 if denied.")
    _add_prefs(p)
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("config", help="configuration commands",
                       description="Configuration commands.")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser)
    csub.required = True
    c = csub.add_parser("check", help="validate a config file (exit 0 valid, 2 invalid)",
                        description="Validate a config file: unknown keys, wrong types and bad "
                        "values are reported with their key path. Exit 0 valid, 2 invalid.")
    c.add_argument("path", nargs="?", metavar="PATH",
                   help="file to check (default /etc/runas-agent/config.yaml)")
    c.set_defaults(func=cmd_config_check)

    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(func=cmd_version)
    return parser


def _load(path: Optional[str]) -> Any:
    from agent.config import load_config

    return load_config(path)


def _dump(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def cmd_check(args: argparse.Namespace) -> int:
    from agent import accounts, platform

    cfg = _load(args.config)
    report = accounts.inspect(args.user, cfg.policy, platform.current())
    found = report.found
    if args.json:
        _dump({
            "user": report.user,
            "usable": report.usable,
            "reason": report.reason,
            "message": report.message,
            "hint": report.hint,
            "uid": found.uid if found else None,
            "gid": found.gid if found else None,
            "home": found.home if found else None,
            "shell": report.login_shell,
            "session_shell": found.shell if found else None,
            "groups": list(found.groups) if found else [],
            "source": found.source if found else None,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
        })
    else:
        import grp

        lines = []
        for c in report.checks:
            detail = c.detail
            if c.name == "groups" and c.ok and found is not None:
                detail = " ".join(f"{g}({_group_name(grp, g)})" for g in found.groups)
            mark = "ok" if c.ok else ("FAIL" if c.fatal else "warn")
            lines.append(f"  {mark:<5} {c.name:<7} {detail}")
        if report.usable and found is not None:
            verdict = f"{report.user}: usable as a session target (uid {found.uid}, {found.source})"
        else:
            verdict = f"{report.user}: refused: {report.reason}: {report.message}"
            if report.hint:
                verdict += f"\n  fix: {report.hint}"
        sys.stdout.write("\n".join([*lines, verdict]) + "\n")
    return EXIT_OK if report.usable else EXIT_REFUSED


def _group_name(grp: Any, gid: int) -> str:
    try:
        return str(grp.getgrgid(gid).gr_name)
    except KeyError:
        return "?"


def cmd_resolve(args: argparse.Namespace) -> int:
    from agent import platform
    from agent.resolve import resolve

    cfg = _load(args.config)
    tags: dict[str, str] = {}
    for key, value in args.tag:
        if key in tags:
            return _usage(f"--tag {key} given twice")
        tags[key] = value
    enabled = cfg.run_as.enabled if args.run_as is None else args.run_as
    default = cfg.run_as.default_user if args.default_user is None else args.default_user
    res = resolve(cfg, platform.current(), run_as_enabled=enabled, tags=tags, default_user=default)
    if args.json:
        _dump({
            "allowed": res.allowed,
            "user": res.user,
            "source": res.source,
            "reason": res.reason,
            "message": res.message,
            "uid": res.account.uid if res.account else None,
            "steps": list(res.steps),
        })
    else:
        out = [f"  {i}. {s}" for i, s in enumerate(res.steps, 1)]
        if res.allowed:
            out.append(f"allowed: runs as {res.user} (source: {res.source})")
        else:
            out.append(f"denied: {res.reason}: {res.message}")
        sys.stdout.write("\n".join(out) + "\n")
    return EXIT_OK if res.allowed else EXIT_REFUSED


def cmd_config_check(args: argparse.Namespace) -> int:
    import os

    from agent.config import DEFAULT_PATH, load_config

    if args.path is None and not os.path.exists(DEFAULT_PATH):
        sys.stdout.write(f"{DEFAULT_PATH}: no file; the embedded defaults apply\n")
        return EXIT_OK
    load_config(args.path or DEFAULT_PATH)
    sys.stdout.write(f"{args.path or DEFAULT_PATH}: ok\n")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    from agent import __version__

    sys.stdout.write(f"runas-agent {__version__}\n")
    return EXIT_OK


def _usage(message: str) -> int:
    sys.stderr.write(f"runas-agent: error: {message}\n")
    return EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from agent.errors import ConfigError

    try:
        return func(args)
    except ConfigError as exc:
        sys.stderr.write(f"runas-agent: configuration error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130

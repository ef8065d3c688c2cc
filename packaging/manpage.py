"""Render runas-agent(8) from the CLI's own argparse parser, so the man page follows the code.

Usage: python3 packaging/manpage.py --version VERSION --date YYYY-MM-DD > runas-agent.8
Every command and subcommand the parser knows gets a section with its usage, its description and
its options; the page itself adds what --help cannot say (files, units, signals).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FILES = (
    ("/etc/runas-agent/config.yaml",
     "Configuration; every setting has a built-in default. Check it with "
     "runas-agent config check."),
    ("/run/runas-agent/runas-agent.sock",
     "The daemon's socket: root and group runas-agent (the session transport), mode 0660."),
    ("/run/runas-agent/sessions", "One record per live session."),
    ("/var/log/runas-agent/audit.log", "Audit records, one JSON object per line."),
    ("/var/log/runas-agent/sessions",
     "Session recordings (recording.enabled), one asciicast v2 file per session, root-only."),
    ("/etc/pam.d/runas-agent", "PAM service used for each session on Linux, when present."),
    ("/etc/sudoers.d/ssm-agent-users",
     "sudo rights of ssm-user, written only when the agent created that account."),
    ("runas-agent.socket, runas-agent.service",
     "systemd units: the socket starts the daemon on the first connection."),
    ("/Library/LaunchDaemons/org.runas-agent.agent.plist", "launchd job on macOS."),
)

SIGNALS = (
    ("SIGTERM", "serve stops accepting connections and exits; live sessions keep running, each "
     "under its own supervisor process (the service uses KillMode=process)."),
    ("SIGHUP", "serve reloads the configuration (systemctl reload runas-agent)."),
)

SEE_ALSO = ("systemd.socket(5)", "systemd.service(5)", "launchd.plist(5)", "sudoers(5)",
            "pam(8)", "nsswitch.conf(5)")


def esc(text: str) -> str:
    """Escape text for roff: backslashes, minus signs, and a leading control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.split("\n"):
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + esc(text).replace('"', "\\(dq") + '"'


def _wide(parser: argparse.ArgumentParser) -> None:
    """One-line usage strings, whatever the terminal width."""
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=10_000)


def _usage(parser: argparse.ArgumentParser) -> str:
    _wide(parser)
    text = parser.format_usage().strip()
    text = text[len("usage: "):] if text.startswith("usage: ") else text
    return " ".join(text.replace(" [-h]", "").split())


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    out.append(sub)
    return out


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command that runs something, depth first, in the parser's order."""
    for sub in _subparsers(parser):
        if _subparsers(sub):
            yield from _leaves(sub)
        else:
            yield sub


def _option(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
        if action.nargs == 0:
            return names
        metavar = action.metavar or action.dest.upper()
        return f"{names} \\fI{esc(str(metavar))}\\fR"
    return f"\\fI{esc(str(action.metavar or action.dest))}\\fR"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS or not action.help:
            continue  # shown in the usage line; nothing more to say
        lines += [".TP", _option(action), esc(action.help)]
    return lines


def render(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    prog = parser.prog
    lines = [
        f'.TH {prog.upper()} 8 "{date}" "{prog} {esc(version)}" "System Administration"',
        ".SH NAME",
        f"{prog} \\- {esc((parser.description or '').split(':')[0])}",
        ".SH SYNOPSIS",
    ]
    leaves = list(_leaves(parser))
    lines += [".nf", *(esc(_usage(sub)) for sub in leaves), ".fi"]
    lines += [".SH DESCRIPTION", esc(parser.description or "")]
    lines += [".SH COMMANDS"]
    for sub in leaves:
        lines += [f".SS {_quote(sub.prog)}", ".nf", esc(_usage(sub)), ".fi", ".PP",
                  esc(sub.description or "")]
        lines += _options(sub)
    lines += [".SH OPTIONS", *_options(parser)]
    if parser.epilog:
        lines += [".SH EXIT STATUS", esc(parser.epilog)]
    lines += [".SH SIGNALS"]
    for name, text in SIGNALS:
        lines += [".TP", f"\\fB{name}\\fR", esc(text)]
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", f"\\fI{esc(path)}\\fR", esc(text)]
    lines += [".SH SEE ALSO", ",\n".join(_see_also(s) for s in SEE_ALSO)]
    return "\n".join(lines) + "\n"


def _see_also(ref: str) -> str:
    name, _, section = ref.partition("(")
    return f".BR {esc(name)} ({section}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Render runas-agent(8) from the CLI's parser.")
    ap.add_argument("--version", required=True)
    ap.add_argument("--date", required=True, help="YYYY-MM-DD shown in the page footer")
    args = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    from agent.cli import build_parser

    sys.stdout.write(render(build_parser(), args.version, args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

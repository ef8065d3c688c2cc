"""The `runas-agent` command line. The composition root: the only place that builds real objects.

Commands import only what they use, so `check` and `resolve` start fast.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, Callable, Optional

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


COMMANDS = ("check", "resolve", "config", "serve", "session", "sessions", "terminate", "ssm-user",
            "recordings", "replay", "version")
CONFIG_PATH = "/etc/runas-agent/config.yaml"  # agent.config.DEFAULT_PATH, without importing it
SOCKET_PATH = "/run/runas-agent/runas-agent.sock"  # agent.config.SocketConfig's default path


class _Skipped:
    """Stands in for a sub-parser this run does not need: every call is accepted and ignored."""

    def __getattr__(self, name: str) -> Callable[..., _Skipped]:
        return self._ignore

    def _ignore(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self


class _Only:
    """Sub-commands of which only ONE (or all, when None) are really built."""

    def __init__(self, sub: Any, only: Optional[str]) -> None:
        self._sub = sub
        self._only = only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._only is None or self._only == name:
            return self._sub.add_parser(name, **kwargs)
        return _Skipped()


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole parser, or with ONLY (a command name) just that command's sub-parser.

    Building every sub-parser costs more than most commands do; only the top-level help needs them.
    """
    import argparse

    from agent import __version__
    from agent.cliparser import Parser as _Parser
    from agent.cliparser import add_prefs as _add_prefs

    parser = _Parser(
        prog="runas-agent",
        description="Node-side Run As agent: decides which OS account a session runs as, "
        "validates it, and starts the shell under it.",
        epilog="Exit codes: 0 allowed/success, 1 refused or denied, 2 usage or configuration "
        "error. `session` passes the command's status through and uses 255 for its own failures.",
    )
    parser.add_argument("--version", action="version", version=f"runas-agent {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    sub = _Only(subparsers, only)

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

    sock_help = "the daemon's socket (default: socket.path from the config)"
    p = sub.add_parser("serve", help="run the daemon in the foreground",
                       description="Run the daemon in the foreground (systemd or launchd "
                       "supervises it). Accepts a socket-activated listener; otherwise binds "
                       "the socket itself. SIGTERM stops accepting and leaves live sessions "
                       "running; SIGHUP reloads the config.")
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.add_argument("--socket", metavar="PATH", help="listen here instead of socket.path")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("session", help="start a session through the daemon",
                       description="Start a session through the daemon. Without COMMAND: an "
                       "interactive login shell on a PTY attached to this terminal. With "
                       "COMMAND: run it through the target account's shell (the words are "
                       "quoted so they reach the program exactly), stdout and stderr relayed "
                       "separately, no PTY unless -t. Exit status: the command's (128+N if "
                       "killed by signal N); 255 when the session is denied or the agent fails, "
                       "with the reason code on stderr.")
    p.add_argument("--socket", metavar="PATH", help=sock_help)
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    _add_prefs(p)
    p.add_argument("--principal", metavar="ARN", help="principal recorded in the audit log "
                   "(default: local:USER of the caller)")
    p.add_argument("--session-id", metavar="ID", help="session id (default: a random one)")
    p.add_argument("-t", dest="tty", action="store_true",
                   help="force a PTY, even when this stdin is not a terminal (like ssh -tt)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG]...")
    p.set_defaults(func=cmd_session)

    p = sub.add_parser("sessions", help="list live sessions",
                       description="List the node's live sessions (also those started before "
                       "the daemon's last restart); callers other than root and members of "
                       "peers.admin_groups see only the sessions they started. Exit 0, or 255 "
                       "when the agent cannot be reached, is not root (untrusted_server) or "
                       "fails.")
    p.add_argument("--socket", metavar="PATH", help=sock_help)
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("terminate", help="end a live session",
                       description="End a live session: SIGHUP to its processes, SIGKILL "
                       "after the grace period. Exit 0 when the daemon accepted the request, 1 "
                       "when there is no such live session (or none this caller started), 255 "
                       "when the agent cannot be reached, is not root (untrusted_server) or "
                       "fails.")
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("--socket", metavar="PATH", help=sock_help)
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.set_defaults(func=cmd_terminate)

    p = sub.add_parser("ssm-user", help="the ssm-user account and its sudoers drop-in",
                       description="The account sessions run as when Run As is off, and its "
                       "sudoers drop-in (/etc/sudoers.d/ssm-agent-users).")
    usub = p.add_subparsers(dest="ssm_user_command", metavar="SUBCOMMAND", parser_class=_Parser)
    usub.required = True
    for name, func, text, desc in (
        ("status", cmd_ssm_user_status, "show the account, the drop-in and what sudo grants",
         "Show whether ssm-user exists (uid, shell, home, and whether that home can be trusted: "
         "if not, the reason is ssm_user_unsafe), whether the agent created it, the "
         "drop-in (present, mode, owner, valid for visudo, expected content), whether sudo "
         "grants it root, and whether /etc/sudoers includes /etc/sudoers.d. Read-only. Exit 0 "
         "when all is well, 1 when there is a problem (listed; a missing account is one), 2 on "
         "a usage or configuration error."),
        ("ensure", cmd_ssm_user_ensure, "create ssm-user now if it does not exist",
         "Create ssm-user if it does not exist, as the first session with Run As off would: "
         "once, under a lock, with the drop-in when ssm_user.sudoers is on. An existing account "
         "is never modified and gets no drop-in. Exit 0 when the account exists afterwards, 1 "
         "when it could not be created or is not usable, 2 on a usage or configuration error."),
        ("revoke-sudo", cmd_ssm_user_revoke_sudo, "remove the drop-in, keep the account",
         "Remove the sudoers drop-in atomically; the account stays. Exit 0 when no drop-in is "
         "left (removed, or there was none), 1 when it could not be removed, 2 on a usage or "
         "configuration error."),
    ):
        u = usub.add_parser(name, help=text, description=desc)
        u.add_argument("--config", metavar="PATH", help=cfg_help)
        u.add_argument("--json", action="store_true", help="print one JSON object")
        u.set_defaults(func=func)

    p = sub.add_parser("recordings", help="list session recordings, or verify them",
                       description="List the session recordings in recording.dir (id, user, "
                       "start, duration, bytes, and whether the file still has the size and "
                       "SHA-256 that the audit log's session.ended holds: ok, mismatch, "
                       "missing, or unverified when no end is on record, e.g. a live "
                       "session). Needs root. Exit 0, 2 on a usage or configuration error.")
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_recordings)
    rsub = p.add_subparsers(dest="recordings_command", metavar="[verify]",
                            parser_class=_Parser)
    v = rsub.add_parser("verify", help="check recordings against the audit log's hashes",
                        description="Check every recording (or session ID's) against the size "
                        "and SHA-256 recorded in the audit log when its session ended. Exit 0 "
                        "when none differs, 1 when a file was changed or removed after its "
                        "session ended (each one named), 2 on a usage or configuration error.")
    v.add_argument("id", nargs="?", metavar="ID", help="a session id (default: all)")
    v.add_argument("--config", metavar="PATH", help=cfg_help)
    v.add_argument("--json", action="store_true", help="print a JSON list")
    v.set_defaults(func=cmd_recordings_verify)

    p = sub.add_parser("replay", help="play a session recording in this terminal",
                       description="Play session ID's recording (recording.dir/ID.cast) on "
                       "stdout with its timing. Needs root. The recording is the session "
                       "account's output, so only what draws the screen is played (text, "
                       "colours, cursor movement, erase, scrolling, the alternate screen); "
                       "sequences that would set the title or clipboard, make links, reach "
                       "terminal-specific handlers, make the terminal answer as if typed, or "
                       "change what the keyboard or mouse send are left out, as is any sequence "
                       "not known. At the end, or when interrupted, whatever screen state the "
                       "recording left on (alternate screen, scroll region, hidden cursor, "
                       "colours) is undone, whether stdout is a terminal or not. Exit 0, 1 when "
                       "there is no such recording or it is not valid, 2 on a usage or "
                       "configuration error.")
    p.add_argument("id", metavar="ID")
    p.add_argument("--speed", metavar="X", type=_positive, default=1.0,
                   help="play X times as fast (default 1)")
    p.add_argument("--max-idle", metavar="S", type=_positive, default=None,
                   help="shorten every pause to at most S seconds")
    p.add_argument("--raw", action="store_true",
                   help="play every byte as recorded, escape sequences included (UNSAFE: "
                   "the session's account can then set this terminal's clipboard and title, "
                   "make it type replies into your shell, and leave modes on)")
    p.add_argument("--config", metavar="PATH", help=cfg_help)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(func=cmd_version)
    return parser


def _default_socket() -> str:
    """socket.path of the default config file; the embedded default, unparsed, without one."""
    import os

    try:
        os.stat(CONFIG_PATH)
    except FileNotFoundError:
        return SOCKET_PATH
    except OSError:
        pass  # unreadable: load_config reports it
    return str(_load(None).socket.path)


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
    tags: dict[str, str] = args.tag
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
    cfg = load_config(args.path or DEFAULT_PATH)
    from agent.config import platform_warnings

    for warning in platform_warnings(cfg, sys.platform):
        sys.stderr.write(f"warning: {warning}\n")
    sys.stdout.write(f"{args.path or DEFAULT_PATH}: ok\n")
    if cfg.session.end_mode == "all" and sys.platform == "linux":  # macOS: platform_warnings
        from agent import cgroup

        found: Any = cgroup.probe()
        if isinstance(found, cgroup.Unavailable):
            sys.stdout.write(f"session.end_mode: {found.describe()} (the process walk ends "
                             "what a session left; a process that keeps forking can escape it)\n")
        else:
            sys.stdout.write(f"session.end_mode: all: each session in its own {found.describe()}"
                             "\n")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from agent import logsetup, platform
    from agent.audit import AuditLog
    from agent.config import load_config
    from agent.registry import Registry
    from agent.server import Daemon, bind_socket, check_socket_path, check_state_dir

    cfg = _load(args.config)
    logsetup.keep_out_unused_imports()
    logsetup.configure(cfg.logging.format, cfg.logging.level)
    import structlog

    log = structlog.get_logger()
    if os.geteuid() != 0:
        return _usage("serve must run as root (it starts sessions as other accounts)")
    from agent.config import platform_warnings

    for warning in platform_warnings(cfg, sys.platform):
        log.warning("config.unsupported", detail=warning)
    from agent import activation
    from agent.errors import AgentError

    listener = activation.inherited_listener(os.environ)
    env = dict(os.environ)  # NOTIFY_SOCKET, read at each notification

    def notify(state: str) -> None:
        try:
            activation.notify(state, env)
        except AgentError as exc:  # the manager went away: not a reason to stop serving
            log.warning("notify.failed", state=state, error=str(exc))

    check_state_dir(cfg.session.state_dir)
    path = args.socket or cfg.socket.path
    if listener is None:
        listener = bind_socket(path, cfg.socket.mode, cfg.socket.group)
        log.info("socket.bound", path=path, mode=oct(cfg.socket.mode), group=cfg.socket.group)
    else:
        name = listener.getsockname()
        if isinstance(name, str) and name.startswith("/"):
            check_socket_path(name)  # the service manager's path is held to the same rule
        log.info("socket.inherited", fd=listener.fileno())
    daemon = Daemon(
        cfg=cfg, listener=listener, platform=platform.current(), audit=AuditLog(cfg.audit.path),
        registry=Registry(cfg.session.state_dir), log=log,
        reload=lambda: load_config(args.config), on_ready=lambda: notify("READY=1"),
        on_stopping=lambda: notify("STOPPING=1"),
    )
    try:
        return daemon.run()
    finally:
        listener.close()


def _client(args: argparse.Namespace) -> Any:
    from agent.client import Client

    path = args.socket
    if path is None:
        path = _default_socket() if args.config is None else _load(args.config).socket.path
    return Client(path)


def cmd_session(args: argparse.Namespace) -> int:
    import os
    import pwd
    import shlex

    from agent import attach
    from agent.errors import AgentError

    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    command = shlex.join(words) if words else None
    tags: dict[str, str] = args.tag
    want_pty = command is None or args.tty
    terminal = None
    if want_pty:
        term = os.environ.get("TERM") or "xterm-256color"
        try:
            size = os.get_terminal_size(0)
            rows, cols = size.lines, size.columns
        except OSError:
            rows = cols = 0
        # A terminal that does not know its size (0x0) gets the classic 24x80.
        terminal = (term, rows or 24, cols or 80)
    from agent.environ import ALLOWED_CLIENT_ENV

    env = {k: v for k, v in os.environ.items() if k in ALLOWED_CLIENT_ENV}
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = str(os.getuid())
    session_id = args.session_id or "cli-" + os.urandom(8).hex()
    try:
        sess = _client(args).start(
            session_id=session_id, principal_arn=args.principal or f"local:{me}", tags=tags,
            run_as_enabled=args.run_as, default_user=args.default_user, command=command,
            terminal=terminal, env=env,
        )
    except AgentError as exc:
        sys.stderr.write(f"runas-agent: {exc.reason}: {exc}\n")
        return 255
    try:
        status = attach.relay_pty(sess) if terminal else attach.relay_pipes(sess)
    except (AgentError, OSError) as exc:
        sys.stderr.write(f"runas-agent: {getattr(exc, 'reason', 'internal_error')}: {exc}\n")
        return 255
    finally:
        sess.close()
    if status.get("reason") == "lost":
        sys.stderr.write("runas-agent: connection to the agent lost\n")
        return 255
    return attach.exit_code(status)


def cmd_sessions(args: argparse.Namespace) -> int:
    from agent.errors import AgentError

    try:
        rows = _client(args).sessions()
    except AgentError as exc:
        sys.stderr.write(f"runas-agent: {exc.reason}: {exc}\n")
        return 255
    if args.json:
        _dump(rows)
        return EXIT_OK
    if not rows:
        sys.stdout.write("no live sessions\n")
        return EXIT_OK
    head = ("ID", "USER", "UID", "SOURCE", "PID", "STARTED", "PRINCIPAL")
    keys = ("id", "user", "uid", "source", "pid", "started_at", "principal")
    table = [head] + [tuple(_printable(str(r[k])) for k in keys) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    return EXIT_OK


def _printable(text: str) -> str:
    """TEXT with control and other non-printable characters escaped (safe on a terminal)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


def cmd_terminate(args: argparse.Namespace) -> int:
    from agent.errors import AgentError

    try:
        _client(args).terminate(args.session_id)
    except AgentError as exc:
        sys.stderr.write(f"runas-agent: {exc.reason}: {exc}\n")
        return EXIT_REFUSED if exc.reason == "session_not_found" else 255
    sys.stdout.write(f"terminating {args.session_id}\n")
    return EXIT_OK


def cmd_ssm_user_status(args: argparse.Namespace) -> int:
    from agent import platform, ssm_user

    cfg = _load(args.config)
    out = ssm_user.status(cfg, platform.current())
    if args.json:
        _dump(out)
    else:
        sys.stdout.write(ssm_user.format_status(out))
    return EXIT_OK if not out["problems"] else EXIT_REFUSED


def cmd_ssm_user_ensure(args: argparse.Namespace) -> int:
    from agent import platform, ssm_user
    from agent.audit import AuditLog
    from agent.errors import AgentError

    cfg = _load(args.config)
    try:
        res = ssm_user.ensure(cfg, platform.current(), audit=AuditLog(cfg.audit.path))
    except AgentError as exc:
        return _ssm_user_failed(args, exc)
    acct = res.account
    if args.json:
        _dump({"ok": True, "user": acct.name, "created": res.created, "uid": acct.uid,
               "gid": acct.gid, "home": acct.home, "shell": acct.shell,
               "sudoers_written": res.sudoers_written})
    else:
        what = "created" if res.created else "already exists"
        line = f"{acct.name}: {what} (uid {acct.uid}, home {acct.home}, shell {acct.shell})"
        if res.sudoers_written:
            line += "; sudoers drop-in written"
        sys.stdout.write(line + "\n")
    return EXIT_OK


def cmd_ssm_user_revoke_sudo(args: argparse.Namespace) -> int:
    from agent import platform, ssm_user
    from agent.audit import AuditLog
    from agent.errors import AgentError

    cfg = _load(args.config)
    plat = platform.current()
    try:
        removed = ssm_user.revoke_sudo(cfg, plat, audit=AuditLog(cfg.audit.path))
    except AgentError as exc:
        return _ssm_user_failed(args, exc)
    path = ssm_user.Paths.for_platform(plat.name).drop_in
    if args.json:
        _dump({"ok": True, "removed": removed, "path": path})
    else:
        sys.stdout.write(f"{path}: {'removed' if removed else 'not present'}\n")
    return EXIT_OK


def _ssm_user_failed(args: argparse.Namespace, exc: Any) -> int:
    sys.stderr.write(f"runas-agent: {exc.reason}: {exc}\n")
    if args.json:
        _dump({"ok": False, "reason": exc.reason, "message": exc.message, "hint": exc.hint})
    return EXIT_REFUSED


def cmd_version(args: argparse.Namespace) -> int:
    from agent import __version__

    sys.stdout.write(f"runas-agent {__version__}\n")
    return EXIT_OK


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _recordings(args: argparse.Namespace, only: Optional[str] = None) -> Any:
    from agent import recordings

    cfg = _load(args.config)
    try:
        return recordings.scan(cfg.recording.dir, cfg.audit.path, only)
    except OSError as exc:
        sys.stderr.write(f"runas-agent: cannot read the recordings in {cfg.recording.dir}: "
                         f"{exc.strerror or exc}\n")
        return None


def _show_recordings(entries: Any, as_json: bool) -> None:
    if as_json:
        _dump([e.as_dict() for e in entries])
        return
    lines = [f"{'ID':<24} {'USER':<12} {'STARTED':<20} {'DURATION':>9} {'BYTES':>11} VERIFIED"]
    for e in entries:
        duration = "-" if e.duration is None else f"{e.duration:.1f}s"
        size = "-" if e.bytes is None else str(e.bytes)
        lines.append(f"{_printable(e.id or e.file):<24} {_printable(e.user or '-'):<12} "
                     f"{e.started or '-':<20} {duration:>9} {size:>11} {e.verified}")
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_recordings(args: argparse.Namespace) -> int:
    entries = _recordings(args)
    if entries is None:
        return EXIT_USAGE
    _show_recordings(entries, args.json)
    return EXIT_OK


def cmd_recordings_verify(args: argparse.Namespace) -> int:
    from agent import recordings

    entries = _recordings(args, args.id)
    if entries is None:
        return EXIT_USAGE
    if args.id is not None and not entries:
        sys.stderr.write(f"runas-agent: no recording of session {_printable(args.id)}\n")
        return EXIT_REFUSED
    bad = [e for e in entries if e.verified in (recordings.MISMATCH, recordings.MISSING)]
    if args.json:
        _dump([e.as_dict() for e in entries])
    else:
        for e in entries:
            sys.stdout.write(f"{e.verified:<10} {_printable(e.file)}"
                             f"{': ' + _printable(e.detail) if e.detail else ''}\n")
    for e in bad:
        sys.stderr.write(f"runas-agent: {_printable(e.file)}: {e.verified}: "
                         f"{_printable(e.detail)}\n")
    return EXIT_REFUSED if bad else EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from agent import asciicast, recordings, termfilter

    cfg = _load(args.config)
    out = sys.stdout
    screen = None if args.raw else termfilter.Filter()

    def write(text: str) -> None:
        if screen is not None:
            text = screen.feed(text)
        if text:
            try:
                out.write(text)
            except UnicodeEncodeError:  # a lone surrogate (JSON allows one), or not UTF-8
                enc = out.encoding or "utf-8"
                out.write(text.encode(enc, "replace").decode(enc))
            out.flush()

    try:
        path = recordings.find(cfg.recording.dir, args.id)
        try:
            recordings.play(path, write, speed=args.speed, max_idle=args.max_idle)
        finally:  # also on an error or ^C: the terminal gets back what the recording changed
            if screen is not None:
                write(screen.finish())
    except (OSError, asciicast.FormatError) as exc:
        msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"runas-agent: replay {_printable(args.id)}: {_printable(msg)}\n")
        return EXIT_REFUSED
    return EXIT_OK


def _usage(message: str) -> int:
    sys.stderr.write(f"runas-agent: error: {message}\n")
    return EXIT_USAGE


def _fast_args(argv: Sequence[str]) -> Optional[Any]:
    """The common forms of check, resolve and session, parsed without argparse (agent.argv);
    None for every other command line."""
    from agent import argv as fast

    found = fast.parse(argv)
    if found is None:
        return None
    from types import SimpleNamespace

    funcs = {"check": cmd_check, "resolve": cmd_resolve, "session": cmd_session}
    return SimpleNamespace(**found, func=funcs[argv[0]])


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = _fast_args(argv)
    if args is None:
        only = argv[0] if argv and argv[0] in COMMANDS else None
        args = build_parser(only).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from agent.errors import AgentError, ConfigError

    try:
        return func(args)
    except ConfigError as exc:
        sys.stderr.write(f"runas-agent: configuration error: {exc}\n")
        return EXIT_USAGE
    except AgentError as exc:
        sys.stderr.write(f"runas-agent: {exc.reason}: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130

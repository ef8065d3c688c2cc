"""Configuration: frozen values (agent.values) with embedded defaults, loaded from an optional
YAML file.

Every setting has a default, so the agent runs with no file. Unknown keys and wrong types are
errors that name the key path and the expected type.
"""

from __future__ import annotations

import os
import re

from agent.errors import ConfigError
from agent.values import Frozen, fields

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

DEFAULT_PATH = "/etc/runas-agent/config.yaml"


# Frozen value classes (agent.values), not dataclasses: `check` and `resolve` import this module.


class SocketConfig(Frozen):
    __slots__ = ("group", "mode", "path")
    path: str
    mode: int
    group: Optional[str]

    def __init__(self, path: str = "/run/runas-agent/runas-agent.sock", mode: int = 0o660,
                 group: Optional[str] = None) -> None:
        self._init(path=path, mode=mode, group=group)


class PeersConfig(Frozen):
    """Who may talk to the daemon. Root is always allowed.

    A peer lists and terminates only the sessions it started; root and members of
    admin_groups see and end all of them."""

    __slots__ = ("admin_groups", "allowed_groups", "allowed_uids")
    allowed_uids: tuple[int, ...]
    allowed_groups: tuple[str, ...]
    admin_groups: tuple[str, ...]

    def __init__(self, allowed_uids: tuple[int, ...] = (0,), allowed_groups: tuple[str, ...] = (),
                 admin_groups: tuple[str, ...] = ()) -> None:
        self._init(allowed_uids=allowed_uids, allowed_groups=allowed_groups,
                   admin_groups=admin_groups)


class RunAsConfig(Frozen):
    """Defaults for the account preferences when a request does not carry them."""

    __slots__ = ("allow_ssm_user", "default_user", "enabled", "shell_profile")
    enabled: bool
    default_user: Optional[str]
    shell_profile: str
    # Restrictions: a node can refuse ssm-user sessions (Run As off) altogether.
    allow_ssm_user: bool

    def __init__(self, enabled: bool = False, default_user: Optional[str] = None,
                 shell_profile: str = "", allow_ssm_user: bool = True) -> None:
        self._init(enabled=enabled, default_user=default_user, shell_profile=shell_profile,
                   allow_ssm_user=allow_ssm_user)


class PolicyConfig(Frozen):
    """Node policy. It can only restrict who may be a session target."""

    __slots__ = ("allow_directory_users", "allow_disabled_shells", "allow_users", "deny_users",
                 "min_uid")
    allow_users: tuple[str, ...]
    deny_users: tuple[str, ...]
    min_uid: int
    allow_directory_users: bool
    allow_disabled_shells: bool

    def __init__(self, allow_users: tuple[str, ...] = (), deny_users: tuple[str, ...] = (),
                 min_uid: int = 0, allow_directory_users: bool = True,
                 allow_disabled_shells: bool = False) -> None:
        self._init(allow_users=allow_users, deny_users=deny_users, min_uid=min_uid,
                   allow_directory_users=allow_directory_users,
                   allow_disabled_shells=allow_disabled_shells)


class SessionConfig(Frozen):
    __slots__ = ("end_mode", "grace_period", "idle_timeout", "max_duration", "max_sessions",
                 "max_sessions_per_peer", "pam", "pam_service", "state_dir")
    max_sessions: int
    # Live sessions started by one peer uid (other than root); null: a quarter of max_sessions,
    # at least 1.
    max_sessions_per_peer: Optional[int]
    max_duration: float  # seconds, 0 = unlimited
    idle_timeout: float  # seconds, 0 = unlimited
    grace_period: float
    end_mode: str  # "process_group" or "all"
    pam: bool  # Linux: used when /etc/pam.d/<pam_service> exists; false turns PAM off
    pam_service: str
    state_dir: str  # one record per live session

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, max_sessions: int = 256, max_sessions_per_peer: Optional[int] = None,
        max_duration: float = 0.0, idle_timeout: float = 0.0, grace_period: float = 5.0,
        end_mode: str = "process_group", pam: bool = True, pam_service: str = "runas-agent",
        state_dir: str = "/run/runas-agent/sessions",
    ) -> None:
        self._init(max_sessions=max_sessions, max_sessions_per_peer=max_sessions_per_peer,
                   max_duration=max_duration, idle_timeout=idle_timeout,
                   grace_period=grace_period, end_mode=end_mode, pam=pam,
                   pam_service=pam_service, state_dir=state_dir)

    def peer_share(self) -> int:
        if self.max_sessions_per_peer is not None:
            return self.max_sessions_per_peer
        return max(1, self.max_sessions // 4)


class LimitsConfig(Frozen):
    __slots__ = ("list_rate_per_peer", "max_connections", "max_connections_per_peer",
                 "max_frame", "read_timeout")
    max_frame: int
    max_connections: int
    # Connections one peer uid (other than root) may have open at once; null: a quarter of
    # max_connections, at least 1.
    max_connections_per_peer: Optional[int]
    read_timeout: float
    # `list` requests one peer uid (other than root) may make per second, in bursts of as many
    # (at least 1); 0: no limit.
    list_rate_per_peer: float

    def __init__(self, max_frame: int = 65536, max_connections: int = 128,
                 max_connections_per_peer: Optional[int] = None,
                 read_timeout: float = 10.0, list_rate_per_peer: float = 10.0) -> None:
        self._init(max_frame=max_frame, max_connections=max_connections,
                   max_connections_per_peer=max_connections_per_peer, read_timeout=read_timeout,
                   list_rate_per_peer=list_rate_per_peer)

    def peer_share(self) -> int:
        if self.max_connections_per_peer is not None:
            return self.max_connections_per_peer
        return max(1, self.max_connections // 4)


class SsmUserConfig(Frozen):
    __slots__ = ("home", "shell", "sudoers", "system", "uid")
    uid: Optional[int]
    system: bool
    shell: str
    home: Optional[str]
    sudoers: bool

    def __init__(self, uid: Optional[int] = None, system: bool = False,
                 shell: str = "/bin/bash", home: Optional[str] = None,
                 sudoers: bool = True) -> None:
        self._init(uid=uid, system=system, shell=shell, home=home, sudoers=sudoers)


class AuditConfig(Frozen):
    __slots__ = ("path",)
    path: str

    def __init__(self, path: str = "/var/log/runas-agent/audit.log") -> None:
        self._init(path=path)


class RecordingConfig(Frozen):
    """Session recording (asciicast v2, one root-only file per session), off by default."""

    __slots__ = ("dir", "enabled", "input", "max_bytes", "on_failure", "on_limit")
    enabled: bool
    dir: str  # root-owned, mode 0700
    input: bool  # keystrokes too (they carry passwords)
    max_bytes: int  # per session; 0 = unlimited
    on_limit: str  # "end" the session, or "stop" recording (and say so in the audit log)
    on_failure: str  # when the file cannot be written: "end" the session, or "continue"

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, enabled: bool = False, dir: str = "/var/log/runas-agent/sessions",
        input: bool = False, max_bytes: int = 1 << 30,
        on_limit: str = "end", on_failure: str = "end",
    ) -> None:
        self._init(enabled=enabled, dir=dir, input=input, max_bytes=max_bytes,
                   on_limit=on_limit, on_failure=on_failure)


class LoggingConfig(Frozen):
    __slots__ = ("format", "level")
    format: str  # auto, json, console
    level: str

    def __init__(self, format: str = "auto", level: str = "info") -> None:
        self._init(format=format, level=level)


class Config(Frozen):
    """Every section; one left out is its defaults."""

    __slots__ = ("audit", "limits", "logging", "peers", "policy", "recording", "run_as",
                 "session", "socket", "ssm_user")
    socket: SocketConfig
    peers: PeersConfig
    run_as: RunAsConfig
    policy: PolicyConfig
    session: SessionConfig
    limits: LimitsConfig
    ssm_user: SsmUserConfig
    audit: AuditConfig
    recording: RecordingConfig
    logging: LoggingConfig

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, socket: Optional[SocketConfig] = None, peers: Optional[PeersConfig] = None,
        run_as: Optional[RunAsConfig] = None, policy: Optional[PolicyConfig] = None,
        session: Optional[SessionConfig] = None, limits: Optional[LimitsConfig] = None,
        ssm_user: Optional[SsmUserConfig] = None, audit: Optional[AuditConfig] = None,
        recording: Optional[RecordingConfig] = None, logging: Optional[LoggingConfig] = None,
    ) -> None:
        self._init(
            socket=SocketConfig() if socket is None else socket,
            peers=PeersConfig() if peers is None else peers,
            run_as=RunAsConfig() if run_as is None else run_as,
            policy=PolicyConfig() if policy is None else policy,
            session=SessionConfig() if session is None else session,
            limits=LimitsConfig() if limits is None else limits,
            ssm_user=SsmUserConfig() if ssm_user is None else ssm_user,
            audit=AuditConfig() if audit is None else audit,
            recording=RecordingConfig() if recording is None else recording,
            logging=LoggingConfig() if logging is None else logging,
        )


_CHOICES: dict[str, tuple[str, ...]] = {
    "session.end_mode": ("process_group", "all"),
    "logging.format": ("auto", "json", "console"),
    "logging.level": ("debug", "info", "warning", "error"),
    "recording.on_limit": ("end", "stop"),
    "recording.on_failure": ("end", "continue"),
}
# The smallest recording limit: room for the header and the closing marker.
MIN_RECORDING_BYTES = 4096
_NON_NEGATIVE = (
    "policy.min_uid",
    "session.max_duration",
    "session.idle_timeout",
    "session.grace_period",
    "recording.max_bytes",
    "limits.list_rate_per_peer",
)
_POSITIVE = (
    "session.max_sessions",
    "limits.max_frame",
    "limits.max_connections",
    "limits.read_timeout",
)
_PAM_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ABSOLUTE_PATHS = (
    "socket.path", "audit.path", "session.state_dir", "ssm_user.shell", "ssm_user.home",
    "recording.dir",
)


def _is_section(tp: Any) -> bool:
    """Whether TP is a value class: Config or one of its sections, read from a mapping."""
    return isinstance(tp, type) and issubclass(tp, Frozen)


def _type_name(tp: Any) -> str:
    from typing import Union, get_args, get_origin

    origin = get_origin(tp)
    if origin is Union:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if _is_section(tp):
        return "mapping"
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str, shown: Any = None) -> Any:
    from typing import Union, get_args, get_origin

    origin = get_origin(tp)
    if origin is Union:
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _convert(value, inner[0], path, shown=tp)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__}")
        item = get_args(tp)[0]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if _is_section(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, path)
    ok = (
        isinstance(value, bool)
        if tp is bool
        else (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if tp is float
            else isinstance(value, tp) and not isinstance(value, bool)
        )
    )
    if not ok:
        expected = _type_name(shown if shown is not None else tp)
        raise ConfigError(f"{path}: expected {expected}, got {type(value).__name__}")
    return float(value) if tp is float else value


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    import typing

    # Annotations are strings (postponed evaluation); resolve them against typing's names.
    hints = typing.get_type_hints(cls, localns={"Optional": typing.Optional})
    names = set(fields(cls))
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(
                f"{where}: unknown key", hint=f"known keys here: {', '.join(sorted(names))}"
            )
    values = {}
    for key, val in data.items():
        path = f"{prefix}.{key}" if prefix else key
        values[key] = _convert(val, hints[key], path)
    return cls(**values)


def _get(cfg: Config, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _check_values(cfg: Config) -> None:
    for path, choices in _CHOICES.items():
        if _get(cfg, path) not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(choices)}")
    for path in _NON_NEGATIVE:
        if _get(cfg, path) < 0:
            raise ConfigError(f"{path}: must not be negative")
    for path in _POSITIVE:
        if _get(cfg, path) <= 0:
            raise ConfigError(f"{path}: must be positive")
    for path in _ABSOLUTE_PATHS:
        value = _get(cfg, path)
        if value is not None and not os.path.isabs(value):
            raise ConfigError(f"{path}: expected an absolute path, got {value!r}")
    if not _PAM_SERVICE_RE.fullmatch(cfg.session.pam_service):
        raise ConfigError(
            f"session.pam_service: {cfg.session.pam_service!r} is not a PAM service name",
            hint="a file name in /etc/pam.d: letters, digits, '.', '_' and '-'",
        )
    sessions_share = cfg.session.max_sessions_per_peer
    if sessions_share is not None and not 1 <= sessions_share <= cfg.session.max_sessions:
        raise ConfigError(
            f"session.max_sessions_per_peer: must be between 1 and session.max_sessions "
            f"({cfg.session.max_sessions}), got {sessions_share}")
    share = cfg.limits.max_connections_per_peer
    if share is not None and not 1 <= share <= cfg.limits.max_connections:
        raise ConfigError(
            f"limits.max_connections_per_peer: must be between 1 and limits.max_connections "
            f"({cfg.limits.max_connections}), got {share}")
    _check_recording(cfg)
    if not 0 <= cfg.socket.mode <= 0o777:
        raise ConfigError("socket.mode: expected a permission mode such as 0o660")
    if cfg.socket.mode & 0o007:
        raise ConfigError(
            "socket.mode: the socket must not be accessible to others",
            hint="use 0o660 and socket.group for the session transport",
        )


def _check_recording(cfg: Config) -> None:
    rec = cfg.recording
    if os.path.normpath(rec.dir) != rec.dir.rstrip("/") or rec.dir.rstrip("/") == "":
        raise ConfigError(f"recording.dir: {rec.dir!r} must be a normalized path other than /")
    shared = {os.path.normpath(cfg.session.state_dir): "session.state_dir",
              os.path.dirname(os.path.normpath(cfg.audit.path)): "the audit log's directory"}
    if os.path.normpath(rec.dir) in shared:
        raise ConfigError(f"recording.dir: {rec.dir!r} is also "
                          f"{shared[os.path.normpath(rec.dir)]}",
                          hint="recordings need a directory of their own")
    if 0 < rec.max_bytes < MIN_RECORDING_BYTES:
        raise ConfigError(f"recording.max_bytes: must be 0 (unlimited) or at least "
                          f"{MIN_RECORDING_BYTES}, got {rec.max_bytes}")


def from_mapping(data: Any) -> Config:
    """Build a Config from parsed YAML (None means an empty file)."""
    cfg: Config = _convert(data, Config, "")
    _check_values(cfg)
    return cfg


def parse(text: str, source: str = "<config>") -> Config:
    import yaml  # lazy: only when there is a file

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from None


def platform_warnings(cfg: Config, sys_platform: str) -> tuple[str, ...]:
    """What CFG asks for that this platform cannot give (config check and start-up say it)."""
    out = []
    if sys_platform == "darwin" and cfg.session.end_mode == "all":
        out.append("session.end_mode: 'all' has nothing behind it on macOS (no subreaper, no "
                   "cgroups): processes that leave the session's process group are not ended; "
                   "it works as 'process_group' there")
    return tuple(out)


def load_config(path: Optional[str] = None) -> Config:
    """Load PATH, or the default file if it exists, or the embedded defaults.

    An explicitly named file must exist; the default file is optional.
    """
    explicit = path is not None
    target = path if path is not None else DEFAULT_PATH
    try:
        with open(target, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: cannot read: {exc}") from exc
    return parse(text, target)

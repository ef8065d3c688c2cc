"""Configuration: frozen dataclasses with embedded defaults, loaded from an optional YAML file.

Every setting has a default, so the agent runs with no file. Unknown keys and wrong types are
errors that name the key path and the expected type.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from agent.errors import ConfigError

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

DEFAULT_PATH = "/etc/runas-agent/config.yaml"


@dataclass(frozen=True)
class SocketConfig:
    path: str = "/run/runas-agent/runas-agent.sock"
    mode: int = 0o660
    group: Optional[str] = None


@dataclass(frozen=True)
class PeersConfig:
    """Who may talk to the daemon. Root is always allowed.

    A peer lists and terminates only the sessions it started; root and members of
    admin_groups see and end all of them."""

    allowed_uids: tuple[int, ...] = (0,)
    allowed_groups: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunAsConfig:
    """Defaults for the account preferences when a request does not carry them."""

    enabled: bool = False
    default_user: Optional[str] = None
    shell_profile: str = ""
    # Restrictions: a node can refuse ssm-user sessions (Run As off) altogether.
    allow_ssm_user: bool = True


@dataclass(frozen=True)
class PolicyConfig:
    """Node policy. It can only restrict who may be a session target."""

    allow_users: tuple[str, ...] = ()
    deny_users: tuple[str, ...] = ()
    min_uid: int = 0
    allow_directory_users: bool = True
    allow_disabled_shells: bool = False


@dataclass(frozen=True)
class SessionConfig:
    max_sessions: int = 256
    # Live sessions started by one peer uid (other than root); null: a quarter of max_sessions,
    # at least 1.
    max_sessions_per_peer: Optional[int] = None
    max_duration: float = 0.0  # seconds, 0 = unlimited
    idle_timeout: float = 0.0  # seconds, 0 = unlimited
    grace_period: float = 5.0
    end_mode: str = "process_group"  # or "all"
    pam: bool = True  # Linux: used when /etc/pam.d/<pam_service> exists; false turns PAM off
    pam_service: str = "runas-agent"
    state_dir: str = "/run/runas-agent/sessions"  # one record per live session

    def peer_share(self) -> int:
        if self.max_sessions_per_peer is not None:
            return self.max_sessions_per_peer
        return max(1, self.max_sessions // 4)


@dataclass(frozen=True)
class LimitsConfig:
    max_frame: int = 65536
    max_connections: int = 128
    # Connections one peer uid (other than root) may have open at once; null: a quarter of
    # max_connections, at least 1.
    max_connections_per_peer: Optional[int] = None
    read_timeout: float = 10.0

    def peer_share(self) -> int:
        if self.max_connections_per_peer is not None:
            return self.max_connections_per_peer
        return max(1, self.max_connections // 4)


@dataclass(frozen=True)
class SsmUserConfig:
    uid: Optional[int] = None
    system: bool = False
    shell: str = "/bin/bash"
    home: Optional[str] = None
    sudoers: bool = True


@dataclass(frozen=True)
class AuditConfig:
    path: str = "/var/log/runas-agent/audit.log"


@dataclass(frozen=True)
class RecordingConfig:
    """Session recording (asciicast v2, one root-only file per session), off by default."""

    enabled: bool = False
    dir: str = "/var/log/runas-agent/sessions"  # root-owned, mode 0700
    input: bool = False  # keystrokes too (they carry passwords)
    max_bytes: int = 1 << 30  # per session; 0 = unlimited
    on_limit: str = "end"  # end the session, or stop recording (and say so in the audit log)
    on_failure: str = "end"  # when the file cannot be written: end the session, or continue


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "auto"  # auto, json, console
    level: str = "info"


@dataclass(frozen=True)
class Config:
    socket: SocketConfig = field(default_factory=SocketConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    run_as: RunAsConfig = field(default_factory=RunAsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    ssm_user: SsmUserConfig = field(default_factory=SsmUserConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


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


def _type_name(tp: Any) -> str:
    from typing import Union, get_args, get_origin

    origin = get_origin(tp)
    if origin is Union:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
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
    if dataclasses.is_dataclass(tp):
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
    names = {f.name for f in dataclasses.fields(cls)}
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

"""Typed errors. Each carries the reason code used on the wire, in the CLI and in the audit log."""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from typing import ClassVar, Optional

# The reason codes, one meaning each.
INVALID_NAME = "invalid_name"
USER_NOT_FOUND = "user_not_found"
NAME_MISMATCH = "name_mismatch"
ROOT_REFUSED = "root_refused"
SHELL_DISABLED = "shell_disabled"
DENIED_BY_POLICY = "denied_by_policy"
DIRECTORY_USER_REFUSED = "directory_user_refused"
RUN_AS_USER_MISSING = "run_as_user_missing"
LOOKUP_FAILED = "lookup_failed"
UNAUTHORIZED = "unauthorized"
BAD_REQUEST = "bad_request"
LIMIT_REACHED = "limit_reached"
INTERNAL_ERROR = "internal_error"
CONFIG_ERROR = "config_error"
COMMAND_FAILED = "command_failed"
SPAWN_FAILED = "spawn_failed"
SESSION_EXISTS = "session_exists"
SESSION_NOT_FOUND = "session_not_found"
ACCOUNT_REFUSED = "account_refused"
PAM_FAILED = "pam_failed"
LOGIN_RECORD_FAILED = "login_record_failed"
SSM_USER_FAILED = "ssm_user_failed"
SSM_USER_UNSAFE = "ssm_user_unsafe"
INSTALL_FAILED = "install_failed"
AUDIT_FAILED = "audit_failed"
UNREACHABLE = "unreachable"
TERMINATED = "terminated"
ACTIVATION_FAILED = "activation_failed"
UNTRUSTED_SERVER = "untrusted_server"
RECORDING_FAILED = "recording_failed"



class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    reason: ClassVar[str] = INTERNAL_ERROR

    def __init__(self, message: str, *, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InvalidName(AgentError):
    reason = INVALID_NAME


class UserNotFound(AgentError):
    reason = USER_NOT_FOUND


class NameMismatch(AgentError):
    reason = NAME_MISMATCH


class RootRefused(AgentError):
    reason = ROOT_REFUSED


class ShellDisabled(AgentError):
    reason = SHELL_DISABLED


class DeniedByPolicy(AgentError):
    reason = DENIED_BY_POLICY


class DirectoryUserRefused(AgentError):
    reason = DIRECTORY_USER_REFUSED


class RunAsUserMissing(AgentError):
    reason = RUN_AS_USER_MISSING


class LookupFailed(AgentError):
    reason = LOOKUP_FAILED


class Unauthorized(AgentError):
    reason = UNAUTHORIZED


class BadRequest(AgentError):
    reason = BAD_REQUEST


class LimitReached(AgentError):
    reason = LIMIT_REACHED


class InternalError(AgentError):
    reason = INTERNAL_ERROR


class ConfigError(AgentError):
    reason = CONFIG_ERROR


class CommandFailed(AgentError):
    """An external command could not run, timed out, or exited non-zero."""

    reason = COMMAND_FAILED


class SpawnFailed(AgentError):
    """The session's process could not be started (fork, privilege drop, chdir or exec)."""

    reason = SPAWN_FAILED


class SessionExists(AgentError):
    reason = SESSION_EXISTS


class SessionNotFound(AgentError):
    reason = SESSION_NOT_FOUND


class AccountRefused(AgentError):
    """PAM's account stage refused the account (expired, locked, nologin...)."""

    reason = ACCOUNT_REFUSED


class PamFailed(AgentError):
    """PAM itself failed: libpam missing, or a start, credential or session stage error."""

    reason = PAM_FAILED


class LoginRecordFailed(AgentError):
    """utmp, wtmp or lastlog could not be written (the session goes on; this is logged)."""

    reason = LOGIN_RECORD_FAILED


class SsmUserFailed(AgentError):
    """ssm-user or its sudoers drop-in could not be created or changed."""

    reason = SSM_USER_FAILED


class SsmUserUnsafe(AgentError):
    """ssm-user's home cannot be trusted (it exists already, is a symlink, is another user's, or
    others can write it or a directory above it): no session runs as ssm-user and no drop-in is
    written until it is fixed."""

    reason = SSM_USER_UNSAFE


class InstallFailed(AgentError):
    """A file could not be installed or removed atomically; the previous file (or none) remains."""

    reason = INSTALL_FAILED


class AuditFailed(AgentError):
    """An audit record could not be made durable; the session is refused."""

    reason = AUDIT_FAILED


class Unreachable(AgentError):
    """A client could not reach the daemon's socket."""

    reason = UNREACHABLE


class Terminated(AgentError):
    """The session was terminated before its shell started."""

    reason = TERMINATED


class ActivationFailed(AgentError):
    """The service manager's socket or notification channel is unusable (systemd, launchd)."""

    reason = ACTIVATION_FAILED


class UntrustedServer(AgentError):
    """A client found a server on the socket that does not run as root; it sent nothing."""

    reason = UNTRUSTED_SERVER


class RecordingFailed(AgentError):
    """The session's recording cannot be written (its directory unsafe or unwritable, the disk
    full); with recording.on_failure `end`, no session runs (or goes on) unrecorded."""

    reason = RECORDING_FAILED


_BY_REASON = {
    cls.reason: cls
    for cls in (
        InvalidName,
        UserNotFound,
        NameMismatch,
        RootRefused,
        ShellDisabled,
        DeniedByPolicy,
        DirectoryUserRefused,
        RunAsUserMissing,
        LookupFailed,
        Unauthorized,
        BadRequest,
        LimitReached,
        InternalError,
        ConfigError,
        CommandFailed,
        SpawnFailed,
        SessionExists,
        SessionNotFound,
        AccountRefused,
        PamFailed,
        LoginRecordFailed,
        SsmUserFailed,
        SsmUserUnsafe,
        InstallFailed,
        AuditFailed,
        Unreachable,
        Terminated,
        ActivationFailed,
        UntrustedServer,
        RecordingFailed,
    )
}


REASONS = frozenset(_BY_REASON)


def error_for(reason: str, message: str) -> AgentError:
    """Rebuild a typed error from a reason code (e.g. one received on the wire)."""
    return _BY_REASON.get(reason, InternalError)(message)

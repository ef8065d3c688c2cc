"""Who does a session run as: the Run As decision followed by account validation."""

from __future__ import annotations

from agent import accounts, policy
from agent.errors import SSM_USER_UNSAFE, USER_NOT_FOUND, AgentError, error_for
from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional

    from agent.accounts import Account, Report
    from agent.config import Config
    from agent.platform import Platform


class Resolution(Frozen):
    """A frozen value (agent.values): `resolve` imports this module."""

    __slots__ = ("account", "allowed", "hint", "message", "reason", "report", "source", "steps",
                 "user")
    allowed: bool
    user: Optional[str]
    source: Optional[str]
    reason: Optional[str]
    message: Optional[str]
    steps: tuple[str, ...]
    account: Optional[Account]  # None when denied, or when ssm-user is still to be created
    report: Optional[Report]
    hint: Optional[str]  # what to do, when the denial is not the report's own

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces
        self, allowed: bool, user: Optional[str], source: Optional[str], reason: Optional[str],
        message: Optional[str], steps: tuple[str, ...], account: Optional[Account],
        report: Optional[Report], hint: Optional[str] = None,
    ) -> None:
        self._init(allowed=allowed, user=user, source=source, reason=reason, message=message,
                   steps=steps, account=account, report=report, hint=hint)

    def error(self) -> AgentError:
        err = error_for(self.reason or "internal_error", self.message or "denied")
        if self.hint is not None:
            err.hint = self.hint
        elif self.report is not None and self.report.reason == self.reason:
            err.hint = self.report.hint
        return err


def resolve(
    cfg: Config,
    platform: Platform,
    *,
    run_as_enabled: bool,
    tags: Mapping[str, str],
    default_user: Optional[str],
) -> Resolution:
    decision = policy.decide(
        run_as_enabled, tags, default_user, allow_ssm_user=cfg.run_as.allow_ssm_user
    )
    steps = list(decision.steps)
    outcome = decision.outcome
    if isinstance(outcome, policy.Denial):
        steps.append(f"DENY {outcome.reason}")
        return Resolution(
            False, None, None, outcome.reason, outcome.message, tuple(steps), None, None
        )

    report = accounts.inspect(outcome.user, cfg.policy, platform)
    if outcome.source == policy.SOURCE_SSM_USER and report.reason == USER_NOT_FOUND:
        from agent import homedir

        home = (cfg.ssm_user.home if cfg.ssm_user.home is not None
                else platform.default_home(outcome.user))
        unsafe = homedir.problem(home, None, outcome.user)
        if unsafe is not None:
            # What creating it would meet: refused before anything is created.
            steps.append(f"ssm-user does not exist yet, and creating it is refused: "
                         f"{unsafe.message}")
            steps.append(f"DENY {SSM_USER_UNSAFE}")
            return Resolution(
                False, outcome.user, outcome.source, SSM_USER_UNSAFE,
                f"{outcome.user} is refused: {unsafe.message}", tuple(steps), None, report,
                unsafe.hint,
            )
        steps.append("ssm-user does not exist yet: it is created on the first session")
        steps.append("ALLOW ssm-user")
        return Resolution(
            True, outcome.user, outcome.source, None, None, tuple(steps), None, report
        )
    for check in report.checks:
        steps.append(f"{'ok' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.account is None:
        steps.append(f"DENY {report.reason} (no fallback to another account)")
        return Resolution(
            False, outcome.user, outcome.source, report.reason, report.message,
            tuple(steps), None, report,
        )
    steps.append(f"ALLOW {outcome.user} (uid {report.account.uid})")
    return Resolution(
        True, outcome.user, outcome.source, None, None, tuple(steps), report.account, report
    )

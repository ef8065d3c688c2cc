"""The Run As decision (pure, no I/O).

| run_as_enabled | SSMSessionRunAs tag | default user | target                          |
|----------------|---------------------|--------------|---------------------------------|
| false          | ignored             | ignored      | ssm-user                        |
| true           | non-empty           | ignored      | the tag's user (never fallback) |
| true           | absent or empty     | set          | the default user                |
| true           | absent or empty     | unset/empty  | DENY run_as_user_missing        |
"""

from __future__ import annotations

from agent.errors import DENIED_BY_POLICY, RUN_AS_USER_MISSING
from agent.values import Frozen

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost matters on the CLI
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional, Union

TAG_KEY = "SSMSessionRunAs"
SSM_USER = "ssm-user"

SOURCE_TAG = "tag"
SOURCE_PREFERENCE = "preference"
SOURCE_SSM_USER = "ssm-user"


# Frozen value classes (agent.values), not dataclasses: `resolve` imports this module.


class Target(Frozen):
    __slots__ = ("source", "user")
    user: str
    source: str  # SOURCE_TAG, SOURCE_PREFERENCE or SOURCE_SSM_USER

    def __init__(self, user: str, source: str) -> None:
        self._init(user=user, source=source)


class Denial(Frozen):
    __slots__ = ("message", "reason")
    reason: str
    message: str

    def __init__(self, reason: str, message: str) -> None:
        self._init(reason=reason, message=message)


class Decision(Frozen):
    __slots__ = ("outcome", "steps")
    outcome: Union[Target, Denial]
    steps: tuple[str, ...]

    def __init__(self, outcome: Union[Target, Denial], steps: tuple[str, ...]) -> None:
        self._init(outcome=outcome, steps=steps)


def decide(
    run_as_enabled: bool,
    tags: Mapping[str, str],
    default_user: Optional[str],
    *,
    allow_ssm_user: bool = True,
) -> Decision:
    """Choose the session's target account name. The account itself is validated elsewhere."""
    if not run_as_enabled:
        steps = ["Run As is disabled: sessions run as ssm-user"]
        if not allow_ssm_user:
            steps.append("node policy refuses ssm-user sessions (run_as.allow_ssm_user: false)")
            return Decision(
                Denial(DENIED_BY_POLICY, "Run As is disabled and node policy refuses ssm-user"),
                tuple(steps),
            )
        return Decision(Target(SSM_USER, SOURCE_SSM_USER), tuple(steps))

    steps = ["Run As is enabled"]
    tag = tags.get(TAG_KEY)
    if tag:
        steps.append(f"principal tag {TAG_KEY}={tag!r}: target is {tag!r}")
        return Decision(Target(tag, SOURCE_TAG), tuple(steps))
    steps.append(f"principal has no {TAG_KEY} tag" + (" (empty value)" if tag == "" else ""))
    if default_user:
        steps.append(f"account preference default Run As user: target is {default_user!r}")
        return Decision(Target(default_user, SOURCE_PREFERENCE), tuple(steps))
    steps.append("no default Run As user is set")
    return Decision(
        Denial(
            RUN_AS_USER_MISSING,
            f"Run As is enabled but neither a {TAG_KEY} tag nor a default Run As user is set",
        ),
        tuple(steps),
    )

import itertools
from typing import Optional

import pytest

from agent.errors import DENIED_BY_POLICY, RUN_AS_USER_MISSING
from agent.policy import SSM_USER, TAG_KEY, Denial, Target, decide

TAGS = {
    "absent": {},
    "empty": {TAG_KEY: ""},
    "alice": {TAG_KEY: "alice"},
    "wrong-case": {"ssmsessionrunas": "alice", "SSMSESSIONRUNAS": "alice"},
    "noise": {"Team": "ops", "SSMSessionRunAsX": "alice", " SSMSessionRunAs": "alice"},
}
DEFAULTS: dict[str, Optional[str]] = {"unset": None, "empty": "", "bob": "bob"}


def expected(enabled: bool, tag: str, default: str, allow_ssm: bool) -> "Target | Denial":
    if not enabled:
        if not allow_ssm:
            return Denial(DENIED_BY_POLICY, "")
        return Target(SSM_USER, "ssm-user")
    if tag == "alice":
        return Target("alice", "tag")
    if default == "bob":
        return Target("bob", "preference")
    return Denial(RUN_AS_USER_MISSING, "")


@pytest.mark.parametrize(
    ("enabled", "tag", "default", "allow_ssm"),
    list(itertools.product([False, True], TAGS, DEFAULTS, [True, False])),
)
def test_decision_table(enabled: bool, tag: str, default: str, allow_ssm: bool) -> None:
    got = decide(enabled, TAGS[tag], DEFAULTS[default], allow_ssm_user=allow_ssm).outcome
    want = expected(enabled, tag, default, allow_ssm)
    if isinstance(want, Target):
        assert got == want
    else:
        assert isinstance(got, Denial)
        assert got.reason == want.reason
        assert got.message


def test_tag_wins_over_default_and_is_passed_verbatim() -> None:
    got = decide(True, {TAG_KEY: " alice "}, "bob").outcome
    # No trimming: the account layer rejects the whitespace; the decision never falls back.
    assert got == Target(" alice ", "tag")


def test_run_as_off_ignores_tag_and_default() -> None:
    got = decide(False, {TAG_KEY: "alice"}, "bob").outcome
    assert got == Target(SSM_USER, "ssm-user")


def test_steps_explain_the_path() -> None:
    d = decide(True, {}, None)
    assert d.steps[0] == "Run As is enabled"
    assert any("no SSMSessionRunAs tag" in s for s in d.steps)
    assert any("no default Run As user" in s for s in d.steps)
    assert "empty value" in " ".join(decide(True, {TAG_KEY: ""}, "bob").steps)

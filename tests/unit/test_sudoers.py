"""The sudoers drop-in is rendered from a typed rule: golden tests on the exact bytes."""

import os

import pytest

from agent import sudoers

GOLDEN = b"# User rules for ssm-user\nssm-user ALL=(ALL) NOPASSWD:ALL\n"


def test_ssm_user_drop_in_golden_bytes() -> None:
    assert sudoers.render(sudoers.ssm_user_rule()) == GOLDEN


def test_drop_in_path_and_mode() -> None:
    # The cloud vendor's path: no '.' and no trailing '~', or sudo would skip the file.
    assert sudoers.DROP_IN_PATH == "/etc/sudoers.d/ssm-agent-users"
    assert "." not in os.path.basename(sudoers.DROP_IN_PATH)
    assert sudoers.DROP_IN_MODE == 0o440


def test_rule_renders_other_users_and_password_rules() -> None:
    assert sudoers.render(sudoers.Rule("deploy_2")) == (
        b"# User rules for deploy_2\ndeploy_2 ALL=(ALL) NOPASSWD:ALL\n"
    )
    assert sudoers.render(sudoers.Rule("ops", nopasswd=False)) == (
        b"# User rules for ops\nops ALL=(ALL) ALL\n"
    )


@pytest.mark.parametrize("user", [
    "", "ALL", "Ssm-user", "#0", "%sudo", "+netgroup", "-x", "bob ALL=(ALL) ALL", "a\nb",
    "a,b", "a:b", "a=b", "a\\b", "a.b", "a b", "x" * 33, "ssm-user\n", "é",
])
def test_rule_refuses_anything_but_a_plain_name(user: str) -> None:
    with pytest.raises(ValueError, match="plain lower-case user name"):
        sudoers.Rule(user)


def test_rule_is_frozen() -> None:
    import dataclasses

    rule = sudoers.ssm_user_rule()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.user = "root"  # type: ignore[misc]


DEBIAN_SUDOERS = """\
#
# This file MUST be edited with the 'visudo' command as root.
Defaults\tenv_reset
root\tALL=(ALL:ALL) ALL
%sudo\tALL=(ALL:ALL) ALL
# See sudoers(5) for more information on "@include" directives:

@includedir /etc/sudoers.d
"""


@pytest.mark.parametrize(("text", "found"), [
    (DEBIAN_SUDOERS, ("/etc/sudoers.d",)),
    ("#includedir /etc/sudoers.d\n", ("/etc/sudoers.d",)),
    ("  @includedir   /etc/sudoers.d/  \n", ("/etc/sudoers.d/",)),
    ('@includedir "/etc/sudoers.d"\n', ("/etc/sudoers.d",)),
    ("@includedir sudoers.d\n", ("/etc/sudoers.d",)),
    ("# includedir /etc/sudoers.d\n", ()),  # a comment, not a directive
    ("## @includedir /etc/sudoers.d\n", ()),
    ("#include /etc/sudoers.d/ssm-agent-users\n", ()),
    ("@include /etc/sudoers.d\n", ()),
    ("", ()),
])
def test_includedirs(text: str, found: tuple[str, ...]) -> None:
    assert sudoers.includedirs(text) == found


def test_includes_dir() -> None:
    assert sudoers.includes_dir(DEBIAN_SUDOERS, "/etc/sudoers.d")
    assert sudoers.includes_dir("#includedir /etc/sudoers.d/\n", "/etc/sudoers.d")
    assert not sudoers.includes_dir("root ALL=(ALL) ALL\n", "/etc/sudoers.d")
    assert not sudoers.includes_dir("#includedir /etc/other.d\n", "/etc/sudoers.d")
    # macOS: /etc is a link to /private/etc and its sudoers names the real path.
    mac = "#includedir /private/etc/sudoers.d\n"
    assert not sudoers.includes_dir(mac, "/etc/sudoers.d")
    links = {"/etc/sudoers.d": "/private/etc/sudoers.d"}

    def same(a: str, b: str) -> bool:
        return links.get(a, a) == links.get(b, b)

    assert sudoers.includes_dir(mac, "/etc/sudoers.d", same=same)


def test_grants_root_nopasswd_reads_sudo_list_output() -> None:
    granted = (
        "Matching Defaults entries for ssm-user on vm:\n"
        "    env_reset, mail_badpass, use_pty\n\n"
        "User ssm-user may run the following commands on vm:\n"
        "    (ALL) NOPASSWD: ALL\n"
    )
    assert sudoers.grants_root_nopasswd(granted)
    assert sudoers.grants_root_nopasswd("    (ALL : ALL) NOPASSWD: ALL\n")
    assert not sudoers.grants_root_nopasswd("User ssm-user is not allowed to run sudo on vm.\n")
    assert not sudoers.grants_root_nopasswd("    (ALL) ALL\n")  # asks for a password
    assert not sudoers.grants_root_nopasswd("    (ALL) NOPASSWD: /usr/bin/id\n")
    assert not sudoers.grants_root_nopasswd("    (bob) NOPASSWD: ALL\n")
    assert not sudoers.grants_root_nopasswd("")

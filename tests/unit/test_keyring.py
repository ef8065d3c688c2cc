"""The session keyring decision (agent.keyring): join, link, and when a failure refuses."""

from __future__ import annotations

import errno

import pytest

from agent import keyring
from agent.keyring import (
    KEY_SPEC_SESSION_KEYRING,
    KEY_SPEC_USER_KEYRING,
    KEYCTL_GET_KEYRING_ID,
    KEYCTL_JOIN_SESSION_KEYRING,
    KEYCTL_LINK,
)


class Kernel:
    """keyctl answering from a table: operation -> result or errno."""

    def __init__(self, **answers: int) -> None:
        self.answers = answers
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, op: int, a2: int, a3: int) -> int:
        self.calls.append((op, a2, a3))
        name = {KEYCTL_JOIN_SESSION_KEYRING: "join", KEYCTL_LINK: "link",
                KEYCTL_GET_KEYRING_ID: "get"}[op]
        answer = self.answers.get(name, 0)
        if answer < 0:
            raise OSError(-answer, "refused")
        return answer


def test_join_then_link_the_user_keyring() -> None:
    k = Kernel(join=77)
    assert keyring.join_fresh_session_keyring(k) == 77
    assert k.calls == [(KEYCTL_JOIN_SESSION_KEYRING, 0, 0),
                       (KEYCTL_LINK, KEY_SPEC_USER_KEYRING, KEY_SPEC_SESSION_KEYRING)]


def test_a_failed_link_keeps_the_fresh_keyring() -> None:
    assert keyring.join_fresh_session_keyring(Kernel(join=77, link=-errno.EDQUOT)) == 77


def test_no_keyrings_in_the_kernel_is_nothing_to_isolate() -> None:
    k = Kernel(join=-errno.ENOSYS)
    assert keyring.join_fresh_session_keyring(k) is None
    assert k.calls == [(KEYCTL_JOIN_SESSION_KEYRING, 0, 0)]


@pytest.mark.parametrize("probe", [errno.EPERM, errno.ENOSYS, errno.EACCES])
def test_keyctl_filtered_wholesale_is_nothing_to_isolate(probe: int) -> None:
    k = Kernel(join=-errno.EPERM, get=-probe)
    assert keyring.join_fresh_session_keyring(k) is None
    assert k.calls[1] == (KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)


def test_a_refused_join_with_keyrings_in_reach_refuses() -> None:
    with pytest.raises(OSError, match="refused") as err:
        keyring.join_fresh_session_keyring(Kernel(join=-errno.EPERM, get=5))
    assert err.value.errno == errno.EPERM


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.ENOMEM, errno.EINVAL])
def test_other_join_failures_refuse(code: int) -> None:
    with pytest.raises(OSError, match="refused") as err:
        keyring.join_fresh_session_keyring(Kernel(join=-code))
    assert err.value.errno == code


def test_syscall_numbers() -> None:
    assert keyring.syscall_number("x86_64", 8) == 250
    assert keyring.syscall_number("x86_64", 4) == 288
    assert keyring.syscall_number("aarch64", 8) == 219
    assert keyring.syscall_number("pdp11", 2) is None


def test_no_keyrings_on_macos() -> None:
    assert keyring.load("darwin") is None


def test_the_real_call_on_this_machine() -> None:
    keyctl = keyring.load("linux")
    assert keyctl is not None
    with pytest.raises(OSError, match=r"\[Errno") as err:
        keyctl(-1, 0, 0)  # no such operation
    assert err.value.errno == errno.EOPNOTSUPP
    assert keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) > 0

"""The value classes that replace dataclasses on the command line's path stay frozen values."""

from __future__ import annotations

import dataclasses

import pytest

from agent import config, policy, protocol
from agent.accounts import Account, Check, Report
from agent.client import Client
from agent.homedir import Problem
from agent.peer import Peer
from agent.platform import NewUser
from agent.platform.darwin import Darwin
from agent.platform.linux import Linux
from agent.resolve import Resolution
from agent.runner import run
from agent.values import Frozen, fields, replace

ALICE = Account("alice", 1001, 1001, "/home/alice", "/bin/sh", (1001,), "local")

VALUES: list[Frozen] = [
    protocol.Terminal("xterm", 24, 80),
    protocol.Principal("arn:x", {"k": "v"}),
    protocol.Preferences(True, "bob", None),
    protocol.StartRequest("s-1", protocol.Principal("arn:x"), protocol.Preferences(), None, "id",
                          {}),
    protocol.TerminateRequest("s-1"),
    protocol.ResizeControl(30, 100),
    Client("/run/x.sock", timeout=5),
    Peer(10, 1001, 1001, (1001, 50)),
    config.Config(),
    config.SocketConfig(),
    config.PeersConfig(),
    config.RunAsConfig(),
    config.PolicyConfig(),
    config.SessionConfig(),
    config.LimitsConfig(),
    config.SsmUserConfig(),
    config.AuditConfig(),
    config.RecordingConfig(),
    config.LoggingConfig(),
    ALICE,
    Check("name", True, "ok"),
    Report("alice", (Check("name", True, "ok"),), None, None, None, ALICE, "/bin/sh"),
    policy.Target("alice", policy.SOURCE_TAG),
    policy.Denial("denied_by_policy", "no"),
    policy.Decision(policy.Target("alice", policy.SOURCE_TAG), ("step",)),
    Resolution(True, "alice", policy.SOURCE_TAG, None, None, ("step",), ALICE, None),
    Problem("/home/x", "home /home/x is a symbolic link", "fix it"),
    NewUser("ssm-user", "/bin/bash"),
    Linux(),
    Darwin(run),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_fields_cannot_be_set_added_or_deleted(value: Frozen) -> None:
    name = value.__slots__[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(value, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.other = 1
    assert not hasattr(value, "__dict__")


def test_equality_hash_and_repr_come_from_the_fields() -> None:
    assert Peer(1, 2, 3, (3,)) == Peer(1, 2, 3, (3,))
    assert Peer(1, 2, 3, (3,)) != Peer(1, 2, 4, (3,))
    assert hash(Peer(1, 2, 3, (3,))) == hash(Peer(1, 2, 3, (3,)))
    assert protocol.ListRequest() == protocol.ListRequest()
    assert protocol.ListRequest() != protocol.PingRequest()
    assert protocol.ResizeControl(1, 2) != (1, 2)
    assert repr(protocol.ResizeControl(1, 2)) == "ResizeControl(cols=2, rows=1)"
    assert Client() == Client("/run/runas-agent/runas-agent.sock", 30.0, 300.0, 0)
    assert Client(timeout=1).timeout == 1
    assert protocol.Principal("a").tags == {}
    with pytest.raises(TypeError):
        hash(protocol.Principal("a"))  # a dict field: unhashable, as in a frozen dataclass


def test_every_field_is_set_exactly_once() -> None:
    class Pair(Frozen):
        __slots__ = ("a", "b")

        def __init__(self, **values: int) -> None:
            self._init(**values)

    assert Pair(a=1, b=2)._values() == (1, 2)
    with pytest.raises(TypeError):
        Pair(a=1)
    with pytest.raises(TypeError):
        Pair(a=1, b=2, c=3)


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_replace_builds_an_equal_value_through_the_constructor(value: Frozen) -> None:
    # Every constructor parameter is named after its field: replace() relies on it.
    assert replace(value) == value
    assert replace(value) is not value
    assert fields(value) == fields(type(value)) == value.__slots__


def test_replace_changes_only_the_named_fields() -> None:
    moved = replace(ALICE, shell="/bin/bash", groups=(1001, 27))
    assert moved == Account("alice", 1001, 1001, "/home/alice", "/bin/bash", (1001, 27), "local")
    assert ALICE.shell == "/bin/sh"
    cfg = config.Config()
    changed = replace(cfg, session=replace(cfg.session, state_dir="/x"))
    assert changed.session.state_dir == "/x"
    assert changed.session.max_sessions == cfg.session.max_sessions
    assert changed.socket == cfg.socket
    assert changed != cfg
    with pytest.raises(TypeError):
        replace(ALICE, nosuchfield=1)


def test_config_defaults_are_values_equal_to_a_fresh_build() -> None:
    assert config.Config() == config.from_mapping({})
    assert hash(config.Config()) == hash(config.from_mapping(None))
    assert fields(config.Config) == tuple(sorted(
        ("socket", "peers", "run_as", "policy", "session", "limits", "ssm_user", "audit",
         "recording", "logging")))

"""The value classes that replace dataclasses on the command line's path stay frozen values."""

from __future__ import annotations

import dataclasses

import pytest

from agent import protocol
from agent.client import Client
from agent.peer import Peer
from agent.values import Frozen

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

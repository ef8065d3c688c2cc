"""Immutable value classes for the modules on the command line's start-up path.

`dataclasses` costs its import (it imports `inspect`, and with it `ast`, `dis`, `enum` and
`tokenize`) and an `exec` for every method it generates on every class: more than the rest of
`runas-agent session` takes to start. The value types of the modules that `session`, `check`
and `resolve` import (`agent.protocol`, `agent.client`, `agent.peer`, `agent.config`,
`agent.accounts`, `agent.policy`, `agent.resolve`, `agent.homedir`, `agent.platform`) derive
from `Frozen` instead. Their fields are their `__slots__`, set once by their `__init__`, whose
parameters are named after the fields; afterwards, assigning or deleting a field raises
`dataclasses.FrozenInstanceError`, and equality, hashing and repr come from the fields, as a
frozen dataclass has them. `fields()` and `replace()` stand for their `dataclasses` namesakes.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, TypeVar, Union

    V = TypeVar("V", bound="Frozen")


class Frozen:
    """Base of a frozen value class: `__slots__` names its fields."""

    __slots__: tuple[str, ...] = ()

    def _init(self, **values: object) -> None:
        """Set every field, once; only `__init__` calls this."""
        if set(values) != set(self.__slots__):
            raise TypeError(f"{type(self).__qualname__}: fields {sorted(self.__slots__)}, "
                            f"got {sorted(values)}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise _frozen(name)

    def __delattr__(self, name: str) -> NoReturn:
        raise _frozen(name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Frozen) and other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"


def fields(value: Union[Frozen, type[Frozen]]) -> tuple[str, ...]:
    """The names of VALUE's fields (VALUE: a value class or one of its instances)."""
    return value.__slots__


def replace(value: V, **changes: object) -> V:
    """A new value of VALUE's class with CHANGES to its fields, built by its constructor (as
    `dataclasses.replace`); an unknown field name raises TypeError."""
    unknown = set(changes) - set(value.__slots__)
    if unknown:
        raise TypeError(f"{type(value).__qualname__}: no fields {sorted(unknown)}")
    values = {name: getattr(value, name) for name in value.__slots__}
    values.update(changes)
    cls: Any = type(value)
    new: V = cls(**values)
    return new


def _frozen(name: str) -> AttributeError:
    # Imported only here, when a caller tries to change a value: the error a frozen dataclass
    # raises, so callers that catch it see no difference.
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot assign to field {name!r}")

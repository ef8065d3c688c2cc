"""Immutable value classes for the modules on the command line's start-up path.

`dataclasses` costs its import (it imports `inspect`, and with it `ast`, `dis`, `enum` and
`tokenize`) and an `exec` for every method it generates on every class: more than the rest of
`runas-agent session` takes to start. The value types of `agent.protocol`, `agent.client` and
`agent.peer` derive from `Frozen` instead. Their fields are their `__slots__`, set once by
their `__init__`; afterwards, assigning or deleting a field raises
`dataclasses.FrozenInstanceError`, and equality, hashing and repr come from the fields, as a
frozen dataclass has them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


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


def _frozen(name: str) -> AttributeError:
    # Imported only here, when a caller tries to change a value: the error a frozen dataclass
    # raises, so callers that catch it see no difference.
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot assign to field {name!r}")

"""Change counters, so a cache built from configuration knows when it is stale.

``Epoch`` counts every change of the configuration a packet's way through a node depends on (hook
registrations, rule commits, ipset members, routes, addresses, sysctls, IPVS services), in any node
of the process: a cache compares one number. The dicts here bump it, and each subclass keeps its own
count for all its instances (``changes``).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Epoch:
    """The process-wide configuration change count."""

    value: ClassVar[int] = 0

    @classmethod
    def bump(cls) -> None:
        cls.value += 1


class VersionedDict(dict[K, V]):
    """A dict whose every change bumps its class's ``changes`` and the ``Epoch``."""

    changes: ClassVar[int] = 0

    @classmethod
    def bump(cls) -> None:
        cls.changes += 1
        Epoch.value += 1

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        type(self).bump()

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        type(self).bump()

    def pop(self, *args: Any) -> Any:
        type(self).bump()
        return super().pop(*args)

    def popitem(self) -> tuple[K, V]:
        type(self).bump()
        return super().popitem()

    def clear(self) -> None:
        super().clear()
        type(self).bump()

    def update(self, *args: Any, **kw: Any) -> None:
        super().update(*args, **kw)
        type(self).bump()

    def setdefault(self, key: K, default: Any = None) -> Any:
        type(self).bump()
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]  # dict's own |= bypasses update()
        type(self).bump()
        return super().__ior__(other)


class Sysctls(VersionedDict[str, str]):
    """A namespace's ``net.*`` settings."""

    changes: ClassVar[int] = 0


class SetMembers(VersionedDict[tuple[Any, ...], Any]):
    """An ipset's members (the registry bumps the same counter when sets come and go)."""

    changes: ClassVar[int] = 0


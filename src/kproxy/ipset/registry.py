"""The sets of one network namespace, in creation order (list:set sets listed last, as the kernel dumps them)."""

from __future__ import annotations

from typing import Any

from kproxy.ipset.sets import IpSet, IpsetError
from kproxy.versioned import SetMembers


class IpsetRegistry:
    def __init__(self) -> None:
        self.sets: dict[str, IpSet] = {}
        # References held by rules (iptables set match and SET target, while committed), by set name:
        # with list:set members, what "References" counts and what makes a set "in use".
        self.held: dict[str, int] = {}

    def get(self, name: str) -> IpSet | None:
        return self.sets.get(name)

    def need(self, name: str) -> IpSet:
        s = self.sets.get(name)
        if s is None:
            raise IpsetError("The set with the given name does not exist")
        return s

    def create(self, s: IpSet, exist: bool = False) -> None:
        old = self.sets.get(s.name)
        if old is not None:
            if exist and old.type == s.type:
                return
            raise IpsetError("Set cannot be created: set with the same name already exists")
        self.sets[s.name] = s
        SetMembers.bump()

    def ordered(self) -> list[IpSet]:
        return [s for s in self.sets.values() if s.type != "list:set"] + \
            [s for s in self.sets.values() if s.type == "list:set"]

    def hold(self, name: str, n: int) -> None:
        """Take (``n`` > 0) or release references to the set ``name`` (ip_set_nfnl_get/put_byindex)."""
        left = self.held.get(name, 0) + n
        if left < 0:
            raise ValueError(f"ipset: reference count of {name} would go below zero")
        if left:
            self.held[name] = left
        else:
            self.held.pop(name, None)

    def references(self, name: str) -> int:
        s = self.sets[name]
        return s.references + self.held.get(name, 0) + sum(1 for o in self.sets.values() if o.type == "list:set" and (name,) in o.members)

    def destroy(self, name: str | None) -> None:
        names = [name] if name else list(self.sets)
        for n in names:
            self.need(n)
            if self.references(n):
                raise IpsetError("Set cannot be destroyed: it is in use by a kernel component")
        for n in names:
            del self.sets[n]
        SetMembers.bump()

    def swap(self, a: str, b: str) -> None:
        sa, sb = self.need(a), self.need(b)
        if sa.type != sb.type or sa.family != sb.family:
            raise IpsetError("The sets cannot be swapped: their type does not match")
        sa.name, sb.name = b, a
        self.sets[a], self.sets[b] = sb, sa
        SetMembers.bump()

    def rename(self, a: str, b: str) -> None:
        s = self.need(a)
        if self.references(a):     # the kernel checks this before the name clash
            raise IpsetError("Set cannot be renamed: it is in use by another system")
        if b in self.sets:
            raise IpsetError("Set cannot be renamed: a set with the new name already exists")
        del self.sets[a]
        s.name = b
        self.sets[b] = s
        SetMembers.bump()

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.sets.values()]

    def from_json(self, data: list[dict[str, Any]]) -> None:
        self.sets = {d["name"]: IpSet.from_json(d) for d in data}
        SetMembers.bump()

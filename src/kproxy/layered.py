"""A dict whose copies share everything they did not change.

A kube-proxy node's nat table holds a hundred thousand chains, and every partial sync makes a working
copy of it, changes three chains and commits. With a plain ``dict`` the copy (and later freeing it)
costs the table's size; a ``LayeredDict`` copy costs what was changed since the last copy. Its
contents live in a stack of frozen layers, oldest first, under one private top layer: ``child()``
freezes the top (both dicts then share every layer) and starts an empty one. A deletion over a lower
layer is a tombstone. Layers merge as they grow, like an LSM tree, so a lookup probes a handful of
dicts and each entry is copied a logarithmic number of times over its life.

It behaves exactly as a ``dict``, insertion order included: a key keeps its position when its value
is replaced and moves to the end when it is deleted and added again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_TOMB: Any = object()       # deleted here, though present in a lower layer
_MISSING: Any = object()
_GROWTH = 4                 # a layer merges into the one below when it is at least a quarter of its size
_MAX_LAYERS = 8


class _Layer:
    """One frozen (or, at the top, private) layer: its values and tombstones, and, in insertion order,
    the keys that became present in it (``born``): a key's position is that of its newest birth."""

    __slots__ = ("values", "born")

    def __init__(self, values: dict[Any, Any], born: dict[Any, Any]) -> None:
        self.values = values
        self.born = born


class LayeredDict(MutableMapping[K, V], Generic[K, V]):
    """A mutable mapping with ``dict``'s semantics and copy-on-write copies (``child``)."""

    __slots__ = ("_layers", "_top", "_len")

    def __init__(self, base: Mapping[K, V] | None = None) -> None:
        """Over ``base`` (a plain dict, shared, never copied: its owner must not change it again)."""
        if base is None:
            self._layers: tuple[_Layer, ...] = ()
            self._len = 0
        else:
            plain = base if isinstance(base, dict) else dict(base)
            self._layers = (_Layer(plain, plain),)
            self._len = len(plain)
        self._top = _Layer({}, {})

    # -- lookups ------------------------------------------------------------------------------------

    def _find(self, key: object) -> Any:
        """The newest record of ``key``: its value, _TOMB, or _MISSING."""
        v = self._top.values.get(key, _MISSING)
        if v is not _MISSING:
            return v
        for layer in reversed(self._layers):
            v = layer.values.get(key, _MISSING)
            if v is not _MISSING:
                return v
        return _MISSING

    def _below(self, key: object) -> bool:
        """Whether a frozen layer holds ``key`` present."""
        for layer in reversed(self._layers):
            v = layer.values.get(key, _MISSING)
            if v is not _MISSING:
                return v is not _TOMB
        return False

    def __getitem__(self, key: K) -> V:
        v = self._find(key)
        if v is _MISSING or v is _TOMB:
            raise KeyError(key)
        return v

    def get(self, key: K, default: Any = None) -> Any:
        v = self._find(key)
        return default if v is _MISSING or v is _TOMB else v

    def __contains__(self, key: object) -> bool:
        v = self._find(key)
        return v is not _MISSING and v is not _TOMB

    def __len__(self) -> int:
        return self._len

    # -- changes ------------------------------------------------------------------------------------

    def __setitem__(self, key: K, value: V) -> None:
        top = self._top
        old = self._find(key)
        if old is _MISSING or old is _TOMB:
            top.born[key] = None
            self._len += 1
        top.values[key] = value

    def __delitem__(self, key: K) -> None:
        old = self._find(key)
        if old is _MISSING or old is _TOMB:
            raise KeyError(key)
        top = self._top
        top.born.pop(key, None)
        if self._below(key):
            top.values[key] = _TOMB
        else:
            del top.values[key]
        self._len -= 1

    def settle(self) -> None:
        """Freeze what was written into the layers now, so that a later ``child`` costs nothing: done
        when a big change commits (a full restore), not in the next small one."""
        if self._top.values:
            self._layers = _compact((*self._layers, self._top))
            self._top = _Layer({}, {})

    def child(self) -> LayeredDict[K, V]:
        """A copy sharing this dict's layers; both may change from now on without affecting the other."""
        self.settle()
        copy: LayeredDict[K, V] = LayeredDict.__new__(LayeredDict)
        copy._layers, copy._top, copy._len = self._layers, _Layer({}, {}), self._len
        return copy

    # -- iteration, in dict order -------------------------------------------------------------------

    def __iter__(self) -> Iterator[K]:
        layers = (*self._layers, self._top)
        for i, layer in enumerate(layers):
            above = layers[i + 1:]
            for key in list(layer.born) if layer is self._top else layer.born:
                # changed since: still here unless deleted (and perhaps born again above)
                if above and any(key in up.values for up in above) and \
                        (any(key in up.born for up in above) or self._find(key) is _TOMB):
                    continue
                yield key

    def __repr__(self) -> str:
        return f"LayeredDict({dict(self.items())!r})"


def _compact(layers: tuple[_Layer, ...]) -> tuple[_Layer, ...]:
    """Merge the newest layers into the ones below while they are comparable in size (or too many)."""
    out = list(layers)
    while len(out) >= 2 and (len(out[-1].values) * _GROWTH >= len(out[-2].values) or len(out) > _MAX_LAYERS):
        upper = out.pop()
        lower = out.pop()
        out.append(_merge(lower, upper, bottom=not out))
    return tuple(out)


def _merge(lower: _Layer, upper: _Layer, bottom: bool) -> _Layer:
    """One layer holding what ``upper`` over ``lower`` holds (tombstones dropped at the bottom, where
    the values are kept in dict order so that they serve as the births too)."""
    values = dict(lower.values)
    born: dict[Any, Any] = dict.fromkeys(lower.born)
    uvals = upper.values
    tombs = [key for key, v in uvals.items() if v is _TOMB]
    values.update(uvals)
    for key in tombs:
        born.pop(key, None)
        if bottom:
            del values[key]
    for key in [key for key in upper.born if key in born]:     # deleted and added again: moves to the end
        del born[key]
    born.update(dict.fromkeys(upper.born))
    if bottom:
        if list(values) != list(born):
            values = {key: values[key] for key in born}
        return _Layer(values, values)
    return _Layer(values, born)


def settle(d: object) -> None:
    """``LayeredDict.settle`` for a mapping that may be a plain dict (which has nothing to settle)."""
    if isinstance(d, LayeredDict):
        d.settle()


SMALL = 4096     # below this size a plain copy is cheaper than layers (and later reads are faster)


def cow_copy(d: MutableMapping[K, V]) -> MutableMapping[K, V]:
    """A copy of ``d`` to change: a plain dict when ``d`` is small, else a copy-on-write ``share``."""
    if len(d) < SMALL:
        return dict(d)
    return share(d)


def share(d: MutableMapping[K, V]) -> LayeredDict[K, V]:
    """A copy-on-write copy of ``d``; a plain dict is taken as the first layer, so it must not change again."""
    if isinstance(d, LayeredDict):
        return d.child()
    return LayeredDict(d)

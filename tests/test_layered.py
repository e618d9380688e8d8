"""LayeredDict behaves as a dict, and its copies never see each other's changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kproxy.layered import LayeredDict, share

keys = st.sampled_from([f"k{i}" for i in range(12)])
ops = st.lists(st.tuples(st.sampled_from(["set", "del", "child", "switch"]), keys, st.integers(0, 5)),
               max_size=120)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, st.integers()), ops)
def test_every_copy_behaves_as_its_own_dict(start: dict[str, int], script: list[tuple[str, str, int]]) -> None:
    # Each live copy is paired with the plain dict it must equal; "switch" moves to another copy,
    # so parents are changed after their children were made, and children after their parents.
    copies: list[tuple[LayeredDict[str, int], dict[str, int]]] = [(share(dict(start)), dict(start))]
    cur = 0
    for op, key, n in script:
        d, ref = copies[cur]
        if op == "set":
            d[key] = n
            ref[key] = n
        elif op == "del":
            if key in ref:
                del d[key]
                del ref[key]
            else:
                try:
                    del d[key]
                except KeyError:
                    pass
                else:
                    raise AssertionError("deleting a missing key must raise KeyError")
        elif op == "child":
            copies.append((d.child(), dict(ref)))
        else:
            cur = n % len(copies)
        for layered, plain in copies:
            assert list(layered.items()) == list(plain.items())     # dict order included
            assert len(layered) == len(plain)
            assert (key in layered) == (key in plain)
            assert layered.get(key, -1) == plain.get(key, -1)


def test_a_long_history_stays_shallow() -> None:
    """Thousands of copies, each changing a few keys of a big dict, keep few layers and cost little."""
    d: LayeredDict[int, int] = share({i: i for i in range(50_000)})
    for step in range(3_000):
        d = d.child()
        d[step % 50_000] = -step
        extra = (step * 7) % 50_000 + 50_000
        if extra in d:
            del d[extra]
        d[extra] = step
        del d[step % 50_000]
        d[step % 50_000] = -step
    assert len(d._layers) <= 9
    assert len(d) == len({*range(50_000), *((s * 7) % 50_000 + 50_000 for s in range(3_000))})
    assert d[2_999] == -2_999
    assert list(d)[-1] == 2_999            # deleted and added again: moved to the end, as in a dict

"""Strings stored once and referred to by a small int from numpy columns, counted by their users.

A position's latest count names its source and event_id (E1's tie-break, E8's identity). Kept as
str per position they would cost ~60 bytes each; a baseline load gives millions of positions the
same few: one source (the ERP) and one event_id per extract (``count@<as_of>``). Here each distinct
string is kept once while some position uses it and freed when none does, so the table is bounded
by the positions, not by the history.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np
import numpy.typing as npt

NONE = 0
"""The index that names nothing: a position without a count holds it (its columns start at zero)."""


class Names:
    """Interned strings with a use count each; index ``NONE`` is reserved."""

    __slots__ = ("_free", "_index", "_names", "_uses")

    def __init__(self) -> None:
        self._names: list[str | None] = [None]
        self._uses: list[int] = [0]
        self._index: dict[str, int] = {}
        self._free: list[int] = []

    def __len__(self) -> int:
        """Strings held now."""
        return len(self._index)

    def acquire(self, name: str, users: int = 1) -> int:
        """The index of ``name``, counting ``users`` more users of it."""
        i = self._index.get(name)
        if i is None:
            if self._free:
                i = self._free.pop()
                self._names[i] = name
            else:
                i = len(self._names)
                self._names.append(name)
                self._uses.append(0)
            self._index[name] = i
        self._uses[i] += users
        return i

    def release_all(self, indices: npt.NDArray[np.int32]) -> None:
        """``release`` of every index in ``indices`` (one per user), counted per name."""
        counts = np.bincount(indices, minlength=1)
        for i in np.flatnonzero(counts).tolist():
            self.release(i, int(counts[i]))

    def release(self, i: int, users: int = 1) -> None:
        """``users`` fewer users of index ``i``; the string is forgotten with its last user."""
        if i == NONE:
            return
        uses = self._uses[i] - users
        assert uses >= 0, "a name released more often than acquired"
        self._uses[i] = uses
        if not uses:
            name = self._names[i]
            assert name is not None
            del self._index[name]
            self._names[i] = None
            self._free.append(i)

    def name(self, i: int) -> str:
        name = self._names[i]
        assert name is not None, "a column names a string that was released"
        return name

    def find(self, name: str) -> int:
        """The index of ``name`` if some position uses it, else ``NONE`` (a lookup, no new user)."""
        return self._index.get(name, NONE)

    def snapshot(self) -> list[str | None]:
        return list(self._names)

    @classmethod
    def restoring(cls, names: Sequence[str | None], *columns: npt.NDArray[np.int32],
                  slice_size: int) -> Generator[None, None, Names]:
        """The table as snapshotted, its use counts recounted from the columns that refer to it; indexed
        ``slice_size`` names at a time, yielding between slices: a shard whose counts came as facts names
        each position's own event_id, millions of them (~0.4 µs each), indexed in one go for seconds in
        which a process serving other groups answered no call and renewed no lease (``_restore``)."""
        table = cls()
        table._names = list(names) or [None]
        uses = np.zeros(len(table._names), dtype=np.int64)
        for column in columns:
            uses += np.bincount(column.ravel(), minlength=len(table._names))[: len(table._names)]
        uses[NONE] = 0
        table._uses = uses.tolist()
        kept, index, free = table._names, table._index, table._free
        for at in range(NONE + 1, len(kept), slice_size):
            if at > NONE + 1:
                yield
            for i in range(at, min(at + slice_size, len(kept))):
                name = kept[i]
                if name is None or not table._uses[i]:
                    kept[i] = None
                    free.append(i)
                else:
                    index[name] = i
        return table

"""The wire form of a channel stream's entry: one declaration (``FIELDS``) that the Lua writer, the
service's readers, the publishers and their dead letters all follow.

An entry is flat string fields, readable by any Redis client in any language. ``published_at`` is
Redis's clock when the entry was written (the moment the value became visible), so the writer
script sets it; every other field comes from the ``ChannelUpdate``. ``FOLLOWS`` is on the first entry a
run of the service writes to a channel alone (entries written before it was kept have none): the version
that entry follows, the newest Redis held at the start, where a run's versions jump (C3); every other entry
follows the version before its own. A reader that does not know it reads the entry as before, and the jump
as a gap (safe: it looks for what it missed and finds nothing).

An entry with ``MARKER`` carries no update, only its version, the version it follows and ``published_at``: each
start writes one (``START``) as a run's first entry of every channel, so that a quiet channel, which publishes
nothing for hours, still says where the run's versions jump (publishers name what they delivered above the
version it follows, at versions Redis lost: C4). It touches no key and no state hash; readers skip it once they
have followed it on (``values_of``). A reader that does not know it finds no ``sku``: an undecodable entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from atp_service.storage.resp import as_text
from reservation import ChannelUpdate, Key, Published, StockStatus

FIELDS = ("channel", "sku", "location", "quantity", "previous", "status", "version", "event_time", "durable_at",
          "published_at")
"""The fields of one entry, in order."""
FOLLOWS = "follows"
"""The field, after ``FIELDS``, of a run's first entry in a channel's stream: the version it follows."""
MARKER, START = "marker", "start"
"""The field of an entry that carries no update, and its one value: a start's marker (``StartMarker``)."""
MARKER_FIELDS = ("channel", MARKER, "version", FOLLOWS, "published_at")
"""The fields of a marker, in order."""
_SET_BY_SCRIPT = {"channel": "channel", "published_at": "now"}  # Lua variables of the writer script
_CARRIED = tuple(name for name in FIELDS if name not in _SET_BY_SCRIPT)
"""The fields an update carries into the writer script, in this order (then the version it follows, whether it is a
marker, and its state-hash value)."""
SKU_ARG, LOCATION_ARG, VERSION_ARG = (_CARRIED.index(name) + 1 for name in ("sku", "location", "version"))
"""Where the sku, the location and the version are in the script's item for an update (Lua counts from 1)."""
FOLLOWS_ARG = len(_CARRIED) + 1
"""Where the version an update follows is in the script's item for it ("": the one before its own)."""
MARKER_ARG = len(_CARRIED) + 2
"""Where the script's item says it is a marker (``MARKER``'s value; "": an update)."""
STATE_ARG = len(_CARRIED) + 3
"""Where the state-hash value is in the script's item for an update (its last; for a marker what the script checks
of its stream: ``SETTLED``, a start's ``reached``, or "")."""
SETTLED = "settled"
"""A marker's last item in the writer script: linked by a settle, its link checked (``StartMarker.settled``)."""


class StartMarker(ChannelUpdate):
    """A run's first entry of a channel when it carries no update: its version (the run's first), the version it
    follows (the newest Redis held at the start: C3) and when it was written. No key: ``sku`` and ``location`` are
    empty, and nothing reads it as a value (``values_of``)."""

    settled: bool = False
    """Linked by a settle (``RunFeed.lost_past``) to the newest version it read in the stream: the writer script
    refuses it where Redis no longer reaches that version (LOST), as it refuses an entry following on from a lost one.
    A start's is checked against ``reached`` instead: it may follow the state hash's newest, past a stream deleted
    since."""

    reached: int = 0
    """A start's: the newest id Redis had handed out in the stream when the run read it (``ChannelStore.load``). The
    writer script refuses the marker where the stream's last id is now below it (LOST): Redis lost versions between
    the start's read and its first write, which the marker would follow, and the desk's memory still shows (C4).
    0: no stream then, nothing to check."""


def start_marker(channel: str, version: int, follows: int, now_ms: int, settled: bool = False,
                 reached: int = 0) -> StartMarker:
    """The marker a run writes first to ``channel``: ``version`` follows ``follows`` across the start's jump."""
    return StartMarker(channel, "", "", 0, None, StockStatus.OUT_OF_STOCK, version, 0, 0, now_ms, follows, settled,
                       reached)


def values_of(entries: Iterable[ChannelUpdate]) -> list[ChannelUpdate]:
    """The updates among ``entries``: the values published, markers left out (they carry none)."""
    return [u for u in entries if not isinstance(u, StartMarker)]


def to_fields(u: ChannelUpdate) -> dict[str, str]:
    """The entry's fields for ``u`` (its ``published_at`` as the update knows it; ``FOLLOWS`` where it is set)."""
    if isinstance(u, StartMarker):
        return {"channel": u.channel, MARKER: START, "version": str(u.version), FOLLOWS: str(u.follows),
                "published_at": str(u.published_at)}
    fields = {
        "channel": u.channel, "sku": u.sku, "location": u.location, "quantity": str(u.quantity),
        "previous": "" if u.previous is None else str(u.previous), "status": u.status.value,
        "version": str(u.version), "event_time": str(u.event_time), "durable_at": str(u.durable_at),
        "published_at": str(u.published_at),
    }
    if u.follows is not None:
        fields[FOLLOWS] = str(u.follows)
    return fields


def from_fields(fields: Mapping[Any, Any]) -> ChannelUpdate:
    """The update an entry holds (keys and values as bytes or str), or a ``StartMarker`` (it carries none).
    Raises KeyError or ValueError for an entry of another format, a marker of a kind not known here included."""
    f = {as_text(k): as_text(v) for k, v in fields.items()}
    if MARKER in f:
        if f[MARKER] != START:
            raise ValueError(f"an entry marked {f[MARKER]!r}, a kind of marker this reader does not know")
        return start_marker(f["channel"], int(f["version"]), int(f[FOLLOWS]), int(f["published_at"]))
    previous = f["previous"]
    return ChannelUpdate(
        f["channel"], f["sku"], f["location"], int(f["quantity"]), None if previous == "" else int(previous),
        StockStatus(f["status"]), int(f["version"]), int(f["event_time"]), int(f["durable_at"]),
        int(f["published_at"]), follows_of(f),
    )


def follows_of(fields: Mapping[Any, Any]) -> int | None:
    """The version an entry says it follows (``FOLLOWS``, keys and values as bytes or str); None: it has none
    and follows the version before its own. Raises ValueError for a value that is not a version."""
    value = fields.get(FOLLOWS, fields.get(FOLLOWS.encode()))
    return None if value is None else int(as_text(value))


def follows_on(version: int, follows: int | None, position: int) -> bool:
    """An entry of ``version`` (that says it ``follows``, or None) is the one after ``position`` (C3): the
    version after it within a run, or a run's first entry linked to exactly that position."""
    return version == position + 1 if follows is None else follows == position


def script_item(u: ChannelUpdate) -> tuple[str, ...]:
    """``u`` as the writer script takes it: the carried fields in order, the version it follows ("": none),
    ``MARKER``'s value ("": an update), then the state-hash value. A marker's: its version, the version it follows
    and ``START``, the rest "" but its last: ``SETTLED`` where a settle linked it (``StartMarker.settled``), else a
    start's ``reached`` ("": 0, nothing checked)."""
    if isinstance(u, StartMarker):
        return (*("" if name != "version" else str(u.version) for name in _CARRIED), str(u.follows), START,
                SETTLED if u.settled else str(u.reached or ""))
    fields = to_fields(u)
    return (*(fields[name] for name in _CARRIED), fields.get(FOLLOWS, ""), "",
            f"{u.quantity} {u.version} {u.event_time} {u.status.value}")


STATE_SEP = "\t"
"""Between sku and location in a field of a channel's state hash (ids never hold control characters)."""


def state_entry(field: Any, value: Any) -> tuple[Key, Published]:
    """A field of a channel's state hash, ``sku<TAB>location``, and its value, ``quantity version
    event_time status`` (written by the script from ``script_item``'s last item). A value written before
    the status was kept has three words: it shows ``OUT_OF_STOCK`` at 0 and ``IN_STOCK`` above."""
    sku, _, location = as_text(field).partition(STATE_SEP)
    words = as_text(value).split()
    quantity, version, event_time = (int(word) for word in words[:3])
    if len(words) > 3:
        status = StockStatus(words[3])
    else:
        status = StockStatus.OUT_OF_STOCK if quantity == 0 else StockStatus.IN_STOCK
    return (sku, location), Published(quantity, version, event_time, status)


def state_update(channel: str, field: Any, value: Any) -> ChannelUpdate:
    """A channel's last published value of one key, from its state hash, as an update with no
    ``previous`` (what the reader was shown before is not known): what a publisher delivers for a
    key whose stream entries were trimmed before it read them."""
    (sku, location), published = state_entry(field, value)
    return ChannelUpdate(channel, sku, location, published.quantity, None, published.status, published.version,
                         published.event_time, 0, 0)


def xadd_arguments(item: str, follows: bool = False) -> str:
    """The Lua of an XADD's field-value pairs for one update ``item`` (a table built by ``script_item``);
    ``follows``: with ``FOLLOWS`` last."""
    pairs, n = [], 0
    for name in FIELDS:
        if name in _SET_BY_SCRIPT:
            pairs.append(f"'{name}', {_SET_BY_SCRIPT[name]}")
        else:
            n += 1
            pairs.append(f"'{name}', {item}[{n}]")
    if follows:
        pairs.append(f"'{FOLLOWS}', {item}[{FOLLOWS_ARG}]")
    return ", ".join(pairs)


def xadd_marker_arguments(item: str) -> str:
    """The Lua of a marker's XADD field-value pairs (``MARKER_FIELDS``), its item ``item`` built by ``script_item``."""
    lua = {"channel": "channel", MARKER: f"{item}[{MARKER_ARG}]", "version": f"{item}[{VERSION_ARG}]",
           FOLLOWS: f"{item}[{FOLLOWS_ARG}]", "published_at": "now"}
    return ", ".join(f"'{name}', {lua[name]}" for name in MARKER_FIELDS)

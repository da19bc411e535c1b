"""Pure domain logic of the ATP service: positions, facts, reservations. No I/O.

Rules come from SEMANTICS.md (Q1-Q5, R1-R7, E1-E11); each function cites the
rule it enforces.
"""

from ._allocate import GroupPolicy, allocate
from ._bucket import TokenBucket
from ._bulk import CountRows
from ._curation import ChannelRules, curate, network_available, zero_through
from ._errors import (
    GIVEN_UP,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Moved,
    NotFound,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from ._events import Event, LogEntry, decode_entry, encode_entry
from ._facts import PositionHistory
from ._feed import ChannelUpdate, Feed, Key, Published
from ._feed_policy import FeedPolicy, StockStatus
from ._ledger import Ledger, LedgerSnapshot
from ._limits import Limits
from ._model import (
    OUTGOING_KINDS,
    TERMINAL,
    ZERO,
    Fact,
    FactKind,
    FactOutcome,
    LineRecord,
    LineRequest,
    OrderStep,
    Outcome,
    PendingOp,
    Quantities,
    Reservation,
    ReserveCommand,
    State,
)
from ._operations import ReserveView, View, confirm, expire, fulfill, release, reserve
from ._store import MADE, PositionStore
from ._validate import (
    as_asked,
    check_id,
    check_safety_stock,
    count_block,
    count_rows,
    fact,
    line_requests,
    partial_lines,
    reserve_command,
    reserve_one_line,
)

__all__ = [
    "GIVEN_UP",
    "MADE",
    "OUTGOING_KINDS",
    "TERMINAL",
    "ZERO",
    "AlreadyExists",
    "ChannelRules",
    "ChannelUpdate",
    "CountRows",
    "DomainError",
    "Event",
    "Fact",
    "FactKind",
    "FactOutcome",
    "FailedPrecondition",
    "Feed",
    "FeedPolicy",
    "GroupPolicy",
    "InvalidArgument",
    "Key",
    "Ledger",
    "LedgerSnapshot",
    "Limits",
    "LineRecord",
    "LineRequest",
    "LogEntry",
    "Moved",
    "NotFound",
    "OrderStep",
    "Outcome",
    "PendingOp",
    "PositionHistory",
    "PositionStore",
    "Published",
    "Quantities",
    "Reason",
    "Reservation",
    "ReserveCommand",
    "ReserveView",
    "ResourceExhausted",
    "State",
    "StockStatus",
    "TokenBucket",
    "Unavailable",
    "View",
    "allocate",
    "as_asked",
    "check_id",
    "check_safety_stock",
    "confirm",
    "count_block",
    "count_rows",
    "curate",
    "decode_entry",
    "encode_entry",
    "expire",
    "fact",
    "fulfill",
    "line_requests",
    "network_available",
    "partial_lines",
    "release",
    "reserve",
    "reserve_command",
    "reserve_one_line",
    "zero_through",
]

import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_HELD: _ClassVar[ReservationState]
    RESERVATION_STATE_CONFIRMED: _ClassVar[ReservationState]
    RESERVATION_STATE_FULFILLED: _ClassVar[ReservationState]
    RESERVATION_STATE_RELEASED: _ClassVar[ReservationState]
    RESERVATION_STATE_EXPIRED: _ClassVar[ReservationState]
    RESERVATION_STATE_REJECTED: _ClassVar[ReservationState]

class LineOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINE_OUTCOME_UNSPECIFIED: _ClassVar[LineOutcome]
    LINE_OUTCOME_GRANTED: _ClassVar[LineOutcome]
    LINE_OUTCOME_INSUFFICIENT: _ClassVar[LineOutcome]
    LINE_OUTCOME_NOT_ATTEMPTED: _ClassVar[LineOutcome]

class FactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_KIND_UNSPECIFIED: _ClassVar[FactKind]
    FACT_KIND_SALE: _ClassVar[FactKind]
    FACT_KIND_RETURN: _ClassVar[FactKind]
    FACT_KIND_RECEIPT: _ClassVar[FactKind]
    FACT_KIND_ADJUST: _ClassVar[FactKind]
    FACT_KIND_SHIPMENT: _ClassVar[FactKind]
    FACT_KIND_COUNT: _ClassVar[FactKind]

class FactOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_OUTCOME_UNSPECIFIED: _ClassVar[FactOutcome]
    FACT_OUTCOME_APPLIED: _ClassVar[FactOutcome]
    FACT_OUTCOME_DUPLICATE: _ClassVar[FactOutcome]
    FACT_OUTCOME_ABSORBED: _ClassVar[FactOutcome]
    FACT_OUTCOME_QUARANTINED: _ClassVar[FactOutcome]
    FACT_OUTCOME_INVALID: _ClassVar[FactOutcome]

class QuarantineReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUARANTINE_REASON_UNSPECIFIED: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_LATE: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_CONFLICT: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_OUT_OF_RANGE: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_CAPACITY: _ClassVar[QuarantineReason]

class StockStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOCK_STATUS_UNSPECIFIED: _ClassVar[StockStatus]
    STOCK_STATUS_IN_STOCK: _ClassVar[StockStatus]
    STOCK_STATUS_LOW_STOCK: _ClassVar[StockStatus]
    STOCK_STATUS_OUT_OF_STOCK: _ClassVar[StockStatus]
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_HELD: ReservationState
RESERVATION_STATE_CONFIRMED: ReservationState
RESERVATION_STATE_FULFILLED: ReservationState
RESERVATION_STATE_RELEASED: ReservationState
RESERVATION_STATE_EXPIRED: ReservationState
RESERVATION_STATE_REJECTED: ReservationState
LINE_OUTCOME_UNSPECIFIED: LineOutcome
LINE_OUTCOME_GRANTED: LineOutcome
LINE_OUTCOME_INSUFFICIENT: LineOutcome
LINE_OUTCOME_NOT_ATTEMPTED: LineOutcome
FACT_KIND_UNSPECIFIED: FactKind
FACT_KIND_SALE: FactKind
FACT_KIND_RETURN: FactKind
FACT_KIND_RECEIPT: FactKind
FACT_KIND_ADJUST: FactKind
FACT_KIND_SHIPMENT: FactKind
FACT_KIND_COUNT: FactKind
FACT_OUTCOME_UNSPECIFIED: FactOutcome
FACT_OUTCOME_APPLIED: FactOutcome
FACT_OUTCOME_DUPLICATE: FactOutcome
FACT_OUTCOME_ABSORBED: FactOutcome
FACT_OUTCOME_QUARANTINED: FactOutcome
FACT_OUTCOME_INVALID: FactOutcome
QUARANTINE_REASON_UNSPECIFIED: QuarantineReason
QUARANTINE_REASON_LATE: QuarantineReason
QUARANTINE_REASON_CONFLICT: QuarantineReason
QUARANTINE_REASON_OUT_OF_RANGE: QuarantineReason
QUARANTINE_REASON_CAPACITY: QuarantineReason
STOCK_STATUS_UNSPECIFIED: StockStatus
STOCK_STATUS_IN_STOCK: StockStatus
STOCK_STATUS_LOW_STOCK: StockStatus
STOCK_STATUS_OUT_OF_STOCK: StockStatus

class PositionKey(_message.Message):
    __slots__ = ("sku", "location")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ...) -> None: ...

class Line(_message.Message):
    __slots__ = ("sku", "location", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class LineResult(_message.Message):
    __slots__ = ("sku", "location", "requested", "granted", "outcome", "available", "allocations")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    requested: int
    granted: int
    outcome: LineOutcome
    available: int
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ..., requested: _Optional[int] = ..., granted: _Optional[int] = ..., outcome: _Optional[_Union[LineOutcome, str]] = ..., available: _Optional[int] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("location", "quantity")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    location: str
    quantity: int
    def __init__(self, location: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class LineState(_message.Message):
    __slots__ = ("sku", "location", "held", "committed", "fulfilled", "released")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    FULFILLED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    held: int
    committed: int
    fulfilled: int
    released: int
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ..., held: _Optional[int] = ..., committed: _Optional[int] = ..., fulfilled: _Optional[int] = ..., released: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "order_ref", "channel", "state", "lines", "create_time", "expire_time", "update_time")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_REF_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    order_ref: str
    channel: str
    state: ReservationState
    lines: _containers.RepeatedCompositeFieldContainer[LineState]
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, reservation_id: _Optional[str] = ..., order_ref: _Optional[str] = ..., channel: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., lines: _Optional[_Iterable[_Union[LineState, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("reservation_id", "order_ref", "channel", "lines", "ttl", "allow_partial")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_REF_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    order_ref: str
    channel: str
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    ttl: _duration_pb2.Duration
    allow_partial: bool
    def __init__(self, reservation_id: _Optional[str] = ..., order_ref: _Optional[str] = ..., channel: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reservation_id", "state", "lines", "expire_time", "replayed")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    state: ReservationState
    lines: _containers.RepeatedCompositeFieldContainer[LineResult]
    expire_time: _timestamp_pb2.Timestamp
    replayed: bool
    def __init__(self, reservation_id: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., lines: _Optional[_Iterable[_Union[LineResult, _Mapping]]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ConfirmRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id", "lines", "operation_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    operation_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ..., operation_id: _Optional[str] = ...) -> None: ...

class FulfillRequest(_message.Message):
    __slots__ = ("reservation_id", "lines", "operation_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    operation_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ..., operation_id: _Optional[str] = ...) -> None: ...

class ConfirmResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class FulfillResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class GetAvailabilityRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[PositionKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[PositionKey, _Mapping]]] = ...) -> None: ...

class Availability(_message.Message):
    __slots__ = ("sku", "location", "on_hand", "reserved", "committed", "safety_stock", "available")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SAFETY_STOCK_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    on_hand: int
    reserved: int
    committed: int
    safety_stock: int
    available: int
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ..., on_hand: _Optional[int] = ..., reserved: _Optional[int] = ..., committed: _Optional[int] = ..., safety_stock: _Optional[int] = ..., available: _Optional[int] = ...) -> None: ...

class GetAvailabilityResponse(_message.Message):
    __slots__ = ("positions", "possibly_stale")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    POSSIBLY_STALE_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedCompositeFieldContainer[Availability]
    possibly_stale: bool
    def __init__(self, positions: _Optional[_Iterable[_Union[Availability, _Mapping]]] = ..., possibly_stale: _Optional[bool] = ...) -> None: ...

class Fact(_message.Message):
    __slots__ = ("event_id", "source", "kind", "sku", "location", "quantity", "event_time", "reservation_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    source: str
    kind: FactKind
    sku: str
    location: str
    quantity: int
    event_time: _timestamp_pb2.Timestamp
    reservation_id: str
    def __init__(self, event_id: _Optional[str] = ..., source: _Optional[str] = ..., kind: _Optional[_Union[FactKind, str]] = ..., sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class FactResult(_message.Message):
    __slots__ = ("event_id", "outcome", "quarantine_reason", "detail", "error")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    outcome: FactOutcome
    quarantine_reason: QuarantineReason
    detail: str
    error: _status_pb2.Status
    def __init__(self, event_id: _Optional[str] = ..., outcome: _Optional[_Union[FactOutcome, str]] = ..., quarantine_reason: _Optional[_Union[QuarantineReason, str]] = ..., detail: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Fact]
    def __init__(self, events: _Optional[_Iterable[_Union[Fact, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FactResult]
    def __init__(self, results: _Optional[_Iterable[_Union[FactResult, _Mapping]]] = ...) -> None: ...

class LoadCountsRequest(_message.Message):
    __slots__ = ("source", "skus", "locations", "sku_index", "location_index", "on_hand", "as_of")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SKUS_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    SKU_INDEX_FIELD_NUMBER: _ClassVar[int]
    LOCATION_INDEX_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    source: str
    skus: _containers.RepeatedScalarFieldContainer[str]
    locations: _containers.RepeatedScalarFieldContainer[str]
    sku_index: bytes
    location_index: bytes
    on_hand: bytes
    as_of: bytes
    def __init__(self, source: _Optional[str] = ..., skus: _Optional[_Iterable[str]] = ..., locations: _Optional[_Iterable[str]] = ..., sku_index: _Optional[bytes] = ..., location_index: _Optional[bytes] = ..., on_hand: _Optional[bytes] = ..., as_of: _Optional[bytes] = ...) -> None: ...

class RejectedRows(_message.Message):
    __slots__ = ("rows", "outcome", "quarantine_reason", "detail", "error")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedScalarFieldContainer[int]
    outcome: FactOutcome
    quarantine_reason: QuarantineReason
    detail: str
    error: _status_pb2.Status
    def __init__(self, rows: _Optional[_Iterable[int]] = ..., outcome: _Optional[_Union[FactOutcome, str]] = ..., quarantine_reason: _Optional[_Union[QuarantineReason, str]] = ..., detail: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class LoadCountsResponse(_message.Message):
    __slots__ = ("applied", "absorbed", "duplicate", "quarantined", "invalid", "rejected")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ABSORBED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    absorbed: int
    duplicate: int
    quarantined: int
    invalid: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedRows]
    def __init__(self, applied: _Optional[int] = ..., absorbed: _Optional[int] = ..., duplicate: _Optional[int] = ..., quarantined: _Optional[int] = ..., invalid: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedRows, _Mapping]]] = ...) -> None: ...

class ExplainAvailabilityRequest(_message.Message):
    __slots__ = ("sku", "location")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ...) -> None: ...

class ExplainedFact(_message.Message):
    __slots__ = ("event_time", "delta", "source")
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    event_time: _timestamp_pb2.Timestamp
    delta: int
    source: str
    def __init__(self, event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delta: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class ExplainedHold(_message.Message):
    __slots__ = ("reservation_id", "order_ref", "channel", "state", "held", "committed", "expire_time")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_REF_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    order_ref: str
    channel: str
    state: ReservationState
    held: int
    committed: int
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, reservation_id: _Optional[str] = ..., order_ref: _Optional[str] = ..., channel: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., held: _Optional[int] = ..., committed: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExplainAvailabilityResponse(_message.Message):
    __slots__ = ("availability", "has_count", "count_event_id", "count_time", "count_quantity", "deltas_after_count", "holds", "stream_time", "retained_since", "holds_truncated", "deltas_truncated", "possibly_stale", "holds_elsewhere")
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    HAS_COUNT_FIELD_NUMBER: _ClassVar[int]
    COUNT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_TIME_FIELD_NUMBER: _ClassVar[int]
    COUNT_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    DELTAS_AFTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TIME_FIELD_NUMBER: _ClassVar[int]
    RETAINED_SINCE_FIELD_NUMBER: _ClassVar[int]
    HOLDS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DELTAS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    POSSIBLY_STALE_FIELD_NUMBER: _ClassVar[int]
    HOLDS_ELSEWHERE_FIELD_NUMBER: _ClassVar[int]
    availability: Availability
    has_count: bool
    count_event_id: str
    count_time: _timestamp_pb2.Timestamp
    count_quantity: int
    deltas_after_count: _containers.RepeatedCompositeFieldContainer[ExplainedFact]
    holds: _containers.RepeatedCompositeFieldContainer[ExplainedHold]
    stream_time: _timestamp_pb2.Timestamp
    retained_since: _timestamp_pb2.Timestamp
    holds_truncated: bool
    deltas_truncated: bool
    possibly_stale: bool
    holds_elsewhere: bool
    def __init__(self, availability: _Optional[_Union[Availability, _Mapping]] = ..., has_count: _Optional[bool] = ..., count_event_id: _Optional[str] = ..., count_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count_quantity: _Optional[int] = ..., deltas_after_count: _Optional[_Iterable[_Union[ExplainedFact, _Mapping]]] = ..., holds: _Optional[_Iterable[_Union[ExplainedHold, _Mapping]]] = ..., stream_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retained_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., holds_truncated: _Optional[bool] = ..., deltas_truncated: _Optional[bool] = ..., possibly_stale: _Optional[bool] = ..., holds_elsewhere: _Optional[bool] = ...) -> None: ...

class SetSafetyStockRequest(_message.Message):
    __slots__ = ("sku", "location", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class SetSafetyStockResponse(_message.Message):
    __slots__ = ("availability",)
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    availability: Availability
    def __init__(self, availability: _Optional[_Union[Availability, _Mapping]] = ...) -> None: ...

class ReserveStreamRequest(_message.Message):
    __slots__ = ("reservations",)
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[ReserveRequest]
    def __init__(self, reservations: _Optional[_Iterable[_Union[ReserveRequest, _Mapping]]] = ...) -> None: ...

class ReserveOutcome(_message.Message):
    __slots__ = ("reservation_id", "response", "error")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    response: ReserveResponse
    error: _status_pb2.Status
    def __init__(self, reservation_id: _Optional[str] = ..., response: _Optional[_Union[ReserveResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ReserveStreamResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ReserveOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ReserveOutcome, _Mapping]]] = ...) -> None: ...

class ChannelUpdate(_message.Message):
    __slots__ = ("channel", "sku", "location", "quantity", "previous", "status", "version", "event_time", "publish_time", "durable_time")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    DURABLE_TIME_FIELD_NUMBER: _ClassVar[int]
    channel: str
    sku: str
    location: str
    quantity: int
    previous: int
    status: StockStatus
    version: int
    event_time: _timestamp_pb2.Timestamp
    publish_time: _timestamp_pb2.Timestamp
    durable_time: _timestamp_pb2.Timestamp
    def __init__(self, channel: _Optional[str] = ..., sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ..., previous: _Optional[int] = ..., status: _Optional[_Union[StockStatus, str]] = ..., version: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., durable_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchAvailabilityRequest(_message.Message):
    __slots__ = ("channel", "snapshot", "since_version")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SINCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    channel: str
    snapshot: bool
    since_version: int
    def __init__(self, channel: _Optional[str] = ..., snapshot: _Optional[bool] = ..., since_version: _Optional[int] = ...) -> None: ...

class WatchAvailabilityResponse(_message.Message):
    __slots__ = ("kind", "updates", "version")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchAvailabilityResponse.Kind]
        KIND_SNAPSHOT: _ClassVar[WatchAvailabilityResponse.Kind]
        KIND_SNAPSHOT_END: _ClassVar[WatchAvailabilityResponse.Kind]
        KIND_CHANGES: _ClassVar[WatchAvailabilityResponse.Kind]
        KIND_RESNAPSHOT_REQUIRED: _ClassVar[WatchAvailabilityResponse.Kind]
    KIND_UNSPECIFIED: WatchAvailabilityResponse.Kind
    KIND_SNAPSHOT: WatchAvailabilityResponse.Kind
    KIND_SNAPSHOT_END: WatchAvailabilityResponse.Kind
    KIND_CHANGES: WatchAvailabilityResponse.Kind
    KIND_RESNAPSHOT_REQUIRED: WatchAvailabilityResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: WatchAvailabilityResponse.Kind
    updates: _containers.RepeatedCompositeFieldContainer[ChannelUpdate]
    version: int
    def __init__(self, kind: _Optional[_Union[WatchAvailabilityResponse.Kind, str]] = ..., updates: _Optional[_Iterable[_Union[ChannelUpdate, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class ReloadEstateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChannelSummary(_message.Message):
    __slots__ = ("name", "published_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    published_keys: int
    def __init__(self, name: _Optional[str] = ..., published_keys: _Optional[int] = ...) -> None: ...

class ReloadEstateResponse(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[ChannelSummary]
    def __init__(self, channels: _Optional[_Iterable[_Union[ChannelSummary, _Mapping]]] = ...) -> None: ...

class GetRoutingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupRoute(_message.Message):
    __slots__ = ("group", "address", "epoch")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    group: int
    address: str
    epoch: int
    def __init__(self, group: _Optional[int] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetRoutingResponse(_message.Message):
    __slots__ = ("shards", "placement", "groups", "address", "max_availability_keys")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_AVAILABILITY_KEYS_FIELD_NUMBER: _ClassVar[int]
    shards: int
    placement: str
    groups: _containers.RepeatedCompositeFieldContainer[GroupRoute]
    address: str
    max_availability_keys: int
    def __init__(self, shards: _Optional[int] = ..., placement: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[GroupRoute, _Mapping]]] = ..., address: _Optional[str] = ..., max_availability_keys: _Optional[int] = ...) -> None: ...

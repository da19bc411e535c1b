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
    HELD: _ClassVar[ReservationState]
    CONFIRMED: _ClassVar[ReservationState]
    FULFILLED: _ClassVar[ReservationState]
    RELEASED: _ClassVar[ReservationState]
    EXPIRED: _ClassVar[ReservationState]
    REJECTED: _ClassVar[ReservationState]

class LineOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINE_OUTCOME_UNSPECIFIED: _ClassVar[LineOutcome]
    GRANTED: _ClassVar[LineOutcome]
    INSUFFICIENT: _ClassVar[LineOutcome]
    NOT_ATTEMPTED: _ClassVar[LineOutcome]

class FactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_KIND_UNSPECIFIED: _ClassVar[FactKind]
    SALE: _ClassVar[FactKind]
    RETURN: _ClassVar[FactKind]
    RECEIPT: _ClassVar[FactKind]
    ADJUST: _ClassVar[FactKind]
    SHIPMENT: _ClassVar[FactKind]
    COUNT: _ClassVar[FactKind]

class FactOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_OUTCOME_UNSPECIFIED: _ClassVar[FactOutcome]
    APPLIED: _ClassVar[FactOutcome]
    DUPLICATE: _ClassVar[FactOutcome]
    ABSORBED: _ClassVar[FactOutcome]
    QUARANTINED: _ClassVar[FactOutcome]
    INVALID: _ClassVar[FactOutcome]

class StockStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOCK_STATUS_UNSPECIFIED: _ClassVar[StockStatus]
    IN_STOCK: _ClassVar[StockStatus]
    LOW_STOCK: _ClassVar[StockStatus]
    OUT_OF_STOCK: _ClassVar[StockStatus]
RESERVATION_STATE_UNSPECIFIED: ReservationState
HELD: ReservationState
CONFIRMED: ReservationState
FULFILLED: ReservationState
RELEASED: ReservationState
EXPIRED: ReservationState
REJECTED: ReservationState
LINE_OUTCOME_UNSPECIFIED: LineOutcome
GRANTED: LineOutcome
INSUFFICIENT: LineOutcome
NOT_ATTEMPTED: LineOutcome
FACT_KIND_UNSPECIFIED: FactKind
SALE: FactKind
RETURN: FactKind
RECEIPT: FactKind
ADJUST: FactKind
SHIPMENT: FactKind
COUNT: FactKind
FACT_OUTCOME_UNSPECIFIED: FactOutcome
APPLIED: FactOutcome
DUPLICATE: FactOutcome
ABSORBED: FactOutcome
QUARANTINED: FactOutcome
INVALID: FactOutcome
STOCK_STATUS_UNSPECIFIED: StockStatus
IN_STOCK: StockStatus
LOW_STOCK: StockStatus
OUT_OF_STOCK: StockStatus

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
    __slots__ = ("reservation_id", "order_ref", "channel", "state", "lines", "created_at_ms", "expires_at_ms", "updated_at_ms")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_REF_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    order_ref: str
    channel: str
    state: ReservationState
    lines: _containers.RepeatedCompositeFieldContainer[LineState]
    created_at_ms: int
    expires_at_ms: int
    updated_at_ms: int
    def __init__(self, reservation_id: _Optional[str] = ..., order_ref: _Optional[str] = ..., channel: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., lines: _Optional[_Iterable[_Union[LineState, _Mapping]]] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("reservation_id", "order_ref", "channel", "lines", "ttl_seconds", "allow_partial")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_REF_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    order_ref: str
    channel: str
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    ttl_seconds: int
    allow_partial: bool
    def __init__(self, reservation_id: _Optional[str] = ..., order_ref: _Optional[str] = ..., channel: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ..., ttl_seconds: _Optional[int] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reservation_id", "state", "lines", "expires_at_ms", "replayed")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    state: ReservationState
    lines: _containers.RepeatedCompositeFieldContainer[LineResult]
    expires_at_ms: int
    replayed: bool
    def __init__(self, reservation_id: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., lines: _Optional[_Iterable[_Union[LineResult, _Mapping]]] = ..., expires_at_ms: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

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

class GetReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ReservationResponse(_message.Message):
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
    __slots__ = ("event_id", "source", "kind", "sku", "location", "quantity", "event_time_ms", "reservation_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    source: str
    kind: FactKind
    sku: str
    location: str
    quantity: int
    event_time_ms: int
    reservation_id: str
    def __init__(self, event_id: _Optional[str] = ..., source: _Optional[str] = ..., kind: _Optional[_Union[FactKind, str]] = ..., sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ..., event_time_ms: _Optional[int] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class FactResult(_message.Message):
    __slots__ = ("event_id", "outcome", "error")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    outcome: FactOutcome
    error: str
    def __init__(self, event_id: _Optional[str] = ..., outcome: _Optional[_Union[FactOutcome, str]] = ..., error: _Optional[str] = ...) -> None: ...

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

class ExplainAvailabilityRequest(_message.Message):
    __slots__ = ("sku", "location")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ...) -> None: ...

class ExplainedFact(_message.Message):
    __slots__ = ("event_id", "event_time_ms", "delta")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_time_ms: int
    delta: int
    def __init__(self, event_id: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., delta: _Optional[int] = ...) -> None: ...

class ExplainedHold(_message.Message):
    __slots__ = ("reservation_id", "order_ref", "channel", "state", "held", "committed", "expires_at_ms")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_REF_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    order_ref: str
    channel: str
    state: ReservationState
    held: int
    committed: int
    expires_at_ms: int
    def __init__(self, reservation_id: _Optional[str] = ..., order_ref: _Optional[str] = ..., channel: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., held: _Optional[int] = ..., committed: _Optional[int] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class ExplainAvailabilityResponse(_message.Message):
    __slots__ = ("availability", "has_count", "count_event_id", "count_time_ms", "count_quantity", "deltas_after_count", "holds", "stream_time_ms", "retained_since_ms", "holds_truncated")
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    HAS_COUNT_FIELD_NUMBER: _ClassVar[int]
    COUNT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    DELTAS_AFTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RETAINED_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    HOLDS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    availability: Availability
    has_count: bool
    count_event_id: str
    count_time_ms: int
    count_quantity: int
    deltas_after_count: _containers.RepeatedCompositeFieldContainer[ExplainedFact]
    holds: _containers.RepeatedCompositeFieldContainer[ExplainedHold]
    stream_time_ms: int
    retained_since_ms: int
    holds_truncated: bool
    def __init__(self, availability: _Optional[_Union[Availability, _Mapping]] = ..., has_count: _Optional[bool] = ..., count_event_id: _Optional[str] = ..., count_time_ms: _Optional[int] = ..., count_quantity: _Optional[int] = ..., deltas_after_count: _Optional[_Iterable[_Union[ExplainedFact, _Mapping]]] = ..., holds: _Optional[_Iterable[_Union[ExplainedHold, _Mapping]]] = ..., stream_time_ms: _Optional[int] = ..., retained_since_ms: _Optional[int] = ..., holds_truncated: _Optional[bool] = ...) -> None: ...

class SetSafetyStockRequest(_message.Message):
    __slots__ = ("sku", "location", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    location: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class ReserveBatch(_message.Message):
    __slots__ = ("reservations",)
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[ReserveRequest]
    def __init__(self, reservations: _Optional[_Iterable[_Union[ReserveRequest, _Mapping]]] = ...) -> None: ...

class ReserveOutcome(_message.Message):
    __slots__ = ("reservation_id", "code", "error", "response")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    code: int
    error: str
    response: ReserveResponse
    def __init__(self, reservation_id: _Optional[str] = ..., code: _Optional[int] = ..., error: _Optional[str] = ..., response: _Optional[_Union[ReserveResponse, _Mapping]] = ...) -> None: ...

class ReserveBatchResult(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ReserveOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ReserveOutcome, _Mapping]]] = ...) -> None: ...

class ChannelUpdate(_message.Message):
    __slots__ = ("channel", "sku", "location", "quantity", "previous", "status", "version", "event_time_ms", "published_at_ms", "durable_at_ms")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DURABLE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    channel: str
    sku: str
    location: str
    quantity: int
    previous: int
    status: StockStatus
    version: int
    event_time_ms: int
    published_at_ms: int
    durable_at_ms: int
    def __init__(self, channel: _Optional[str] = ..., sku: _Optional[str] = ..., location: _Optional[str] = ..., quantity: _Optional[int] = ..., previous: _Optional[int] = ..., status: _Optional[_Union[StockStatus, str]] = ..., version: _Optional[int] = ..., event_time_ms: _Optional[int] = ..., published_at_ms: _Optional[int] = ..., durable_at_ms: _Optional[int] = ...) -> None: ...

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
        SNAPSHOT: _ClassVar[WatchAvailabilityResponse.Kind]
        SNAPSHOT_END: _ClassVar[WatchAvailabilityResponse.Kind]
        CHANGES: _ClassVar[WatchAvailabilityResponse.Kind]
        RESNAPSHOT_REQUIRED: _ClassVar[WatchAvailabilityResponse.Kind]
    KIND_UNSPECIFIED: WatchAvailabilityResponse.Kind
    SNAPSHOT: WatchAvailabilityResponse.Kind
    SNAPSHOT_END: WatchAvailabilityResponse.Kind
    CHANGES: WatchAvailabilityResponse.Kind
    RESNAPSHOT_REQUIRED: WatchAvailabilityResponse.Kind
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

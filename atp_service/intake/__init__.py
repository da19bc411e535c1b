"""Facts from POS and WMS: the fact desk (``RecordEvents``, shipments naming reservations,
explanations) and the input-stream ingestor with its dead letters."""

from .facts import FactDesk
from .ingest import StreamIngestor

__all__ = ["FactDesk", "StreamIngestor"]

"""Channels: the estate (locations, channels, groups), the curator (C1-C3) and the desk that
publishes curated, throttled availability from durable state (C4)."""

from .curator import Curator
from .desk import ChannelDesk
from .estate import Estate, EstateError, EstateUnusable, load_estate

__all__ = ["ChannelDesk", "Curator", "Estate", "EstateError", "EstateUnusable", "load_estate"]

"""``--groups``: Reserves whose lines name a location group as well as a location, over channels of each
strategy, and positions made by facts taking their location's safety-stock default (Q4) — as the service
configures its engine from the estate (``AtpService._start_desks``: ``group_policies``,
``Engine.set_safety_defaults``; the sim's estate, ``simchannels.ESTATE``).

Off unless asked, so that the seeds found before draw as they did (a seed's run depends on every draw)."""

from __future__ import annotations

import random

from atp_service.channels.estate import group_policies
from atp_service.engine.router import Engine
from tests.sim.simchannels import ESTATE

GROUPS = tuple(ESTATE.groups)
"""The groups a Reserve line may name: their members overlap (a position given by two groups of one
reservation, and by a plain line beside them)."""
CHANNELS = ("web", "pickup", "phone")
"""A Reserve's channel: web picks from the member with the most available first, pickup in the group's
order, and phone, not configured, by the estate's default (priority)."""
GROUP_LINE_P = 0.35
"""The chance that a Reserve line names a group rather than a location."""


def configure(engine: Engine) -> None:
    """The estate's groups, each channel's strategy and the safety-stock defaults, set on ``engine``."""
    engine.group_policies, engine.default_group_policy = group_policies(ESTATE)
    engine.set_safety_defaults(ESTATE.safety_defaults)


def location_or_group(rng: random.Random, locations: tuple[str, ...]) -> str:
    return rng.choice(GROUPS) if rng.random() < GROUP_LINE_P else rng.choice(locations)


def channel(rng: random.Random) -> str:
    return rng.choice(CHANNELS)


"""The configuration and the slices of it the components are given."""

from __future__ import annotations

import ast
import inspect
import typing
from dataclasses import fields

import pytest

import atp_service.config as config_module
from atp_service.config import (
    ChannelSettings,
    EngineSettings,
    IngestSettings,
    ServiceConfig,
    ShardSettings,
    SnapshotPolicy,
)
from reservation import Limits

SLICES = (ChannelSettings, EngineSettings, IngestSettings, ShardSettings, SnapshotPolicy)
SLICE_PROPERTY = {SnapshotPolicy: "snapshot_policy", ShardSettings: "shard_settings",
                  EngineSettings: "engine_settings", IngestSettings: "ingest_settings",
                  ChannelSettings: "channel_settings"}


def documented_fields() -> set[str]:
    """ServiceConfig fields followed by a docstring (what --help and the docs show)."""
    tree = ast.parse(inspect.getsource(config_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServiceConfig")
    out = set()
    for stmt, after in zip(cls.body, cls.body[1:], strict=False):
        if isinstance(stmt, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            assert isinstance(stmt.target, ast.Name)
            out.add(stmt.target.id)
    return out


def test_every_setting_has_a_docstring() -> None:
    assert {f.name for f in fields(ServiceConfig)} <= documented_fields()


@pytest.mark.parametrize("kind", SLICES, ids=lambda k: k.__name__)
def test_each_slice_field_is_a_documented_setting_of_the_same_type_or_a_slice(kind: type) -> None:
    config_hints = typing.get_type_hints(ServiceConfig)
    for name, hint in typing.get_type_hints(kind).items():
        if hint in SLICE_PROPERTY:
            assert SLICE_PROPERTY[hint] == name
        else:
            assert name in documented_fields(), f"{kind.__name__}.{name} is not a ServiceConfig setting"
            assert config_hints[name] == hint, f"{kind.__name__}.{name}: {hint} != {config_hints[name]}"


def test_slices_carry_the_values_set() -> None:
    limits = Limits(max_lines=7)
    config = ServiceConfig(shards=3, mailbox_size=11, snapshot_every_entries=5, limits=limits,
                           input_streams=("in",), velocity_half_life_s=9.0)
    engine = config.engine_settings
    assert (engine.shards, engine.limits, engine.shard_settings.mailbox_size) == (3, limits, 11)
    assert engine.shard_settings.snapshot_policy.snapshot_every_entries == 5
    assert config.ingest_settings.input_streams == ("in",) and config.ingest_settings.limits is limits
    assert config.channel_settings.velocity_half_life_s == 9.0


def test_slices_are_frozen_and_slotted() -> None:
    settings = ServiceConfig().shard_settings
    with pytest.raises(AttributeError):
        settings.batch_max = 1  # type: ignore[misc]
    assert not hasattr(settings, "__dict__")

"""Reading a refused call the way any client would: the status and its google.rpc.Status details."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from atp_client import Refusal, typed


async def refused(call: Awaitable[Any]) -> Refusal:
    """Await ``call``, which must fail; its refusal decoded from the trailers."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return typed(err.value).refusal


def fields_of(refusal: Refusal) -> list[str]:
    return [v.field for v in refusal.field_violations]


def said(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    """(status, reason) of a refused call."""
    return error.code(), typed(error).reason


async def told(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """Await ``call``, which must fail: (status, reason)."""
    refusal = await refused(call)
    return refusal.code, refusal.reason

"""The allocator setting: applied where glibc's mallopt exists, a no-op (said, not raised) at 0."""

from __future__ import annotations

import ctypes
import sys

import pytest

from atp_service.app.allocator import set_mmap_threshold


def test_zero_leaves_the_allocator_alone() -> None:
    assert set_mmap_threshold(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallopt"),
                    reason="glibc's mallopt only")
def test_a_threshold_is_applied_by_glibc() -> None:
    assert set_mmap_threshold(256 * 1024) is True

"""The allocator setting: applied where glibc's mallopt exists, a no-op (said, not raised) at 0."""

from __future__ import annotations

import ctypes
import sys

import pytest

from atp_service.app.allocator import set_mmap_threshold, set_numpy_hugepages
from atp_service.config import ServiceConfig


def test_zero_leaves_the_allocator_alone() -> None:
    assert set_mmap_threshold(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallopt"),
                    reason="glibc's mallopt only")
def test_a_threshold_is_applied_by_glibc() -> None:
    assert set_mmap_threshold(256 * 1024) is True


class _Libc:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def mallopt(self, param: int, value: ctypes.c_int) -> int:
        self.calls.append(value.value)
        return 1


@pytest.mark.parametrize("nbytes", [2**32, 2**32 + 4096, 2**31, 64 << 20])
def test_a_threshold_glibc_cannot_take_is_refused_not_wrapped(nbytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """ctypes.c_int wraps silently: 4 GiB reached mallopt as 0, which maps every allocation on its
    own (a syscall and a page each). glibc takes at most 32 MiB (HEAP_MAX_SIZE / 2 on 64 bits)."""
    libc = _Libc()
    monkeypatch.setattr(ctypes, "CDLL", lambda _name: libc)
    monkeypatch.setattr(sys, "platform", "linux")
    assert set_mmap_threshold(nbytes) is False and libc.calls == []


@pytest.mark.parametrize("nbytes", [-1, 2**32, 64 << 20])
def test_the_setting_is_checked_with_the_others(nbytes: int) -> None:
    with pytest.raises(ValueError, match="malloc_mmap_threshold"):
        ServiceConfig(malloc_mmap_threshold=nbytes)


def test_numpy_huge_pages_are_switched_and_the_previous_setting_returned() -> None:
    before = set_numpy_hugepages(False)
    try:
        assert set_numpy_hugepages(True) is False
        assert set_numpy_hugepages(False) is True
        assert set_numpy_hugepages(False) is False
    finally:
        set_numpy_hugepages(before)


def test_numpy_huge_pages_are_off_unless_configured() -> None:
    assert ServiceConfig.from_env({}).numpy_hugepages is False
    assert ServiceConfig.from_env({"ATP_NUMPY_HUGEPAGES": "true"}).numpy_hugepages is True

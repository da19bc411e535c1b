"""The memory settings of the serving process: the C allocator's (glibc's ``mallopt``) and numpy's
huge pages.

glibc serves a request below its mmap threshold from a heap arena, and by default raises that
threshold to the size of any mmapped block freed (up to 32 MiB). A service that receives blocks of
a few MB (LoadCounts, snapshots, grown position arrays) then keeps them in arenas, where freed
memory stays resident: loading 3 M positions left ~55 MB more RSS than with a fixed threshold
(benchmarks/estate.py, recorded in benchmarks/RESULTS.md). A fixed threshold maps each large block
on its own and returns it to the system when freed.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import numpy as np

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter (glibc's malloc.h): setting it also stops the threshold's own adjustment."""
MAX_MMAP_THRESHOLD = 32 << 20
"""The largest threshold glibc takes on 64 bits (HEAP_MAX_SIZE / 2); ``mallopt`` refuses more."""
log = logging.getLogger(__name__)


def set_numpy_hugepages(enabled: bool) -> bool:
    """Whether numpy madvises huge pages for its large arrays (its own default: on, where the kernel
    has transparent huge pages in ``madvise`` mode). Returns the previous setting; where this numpy
    has no switch, nothing changes and it says so."""
    switch = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(switch, "_set_madvise_hugepage", None)
    if setter is None:
        log.info("numpy_hugepages: not applied (this numpy has no switch)")
        return enabled
    return bool(setter(enabled))


def set_mmap_threshold(nbytes: int) -> bool:
    """Blocks of ``nbytes`` or more are mapped on their own (0: leave the allocator as it is). Only
    where the C library has glibc's ``mallopt``; elsewhere this changes nothing and says so."""
    if nbytes <= 0:
        return False
    if nbytes > MAX_MMAP_THRESHOLD:  # and ctypes.c_int would wrap 4 GiB to 0: every block mapped alone
        log.warning("malloc_mmap_threshold: %d is more than glibc takes (%d); not applied", nbytes,
                    MAX_MMAP_THRESHOLD)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, ctypes.c_int(nbytes)):
        log.info("malloc_mmap_threshold: not applied (the C library has no glibc mallopt)")
        return False
    return True

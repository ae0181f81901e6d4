"""Give freed heap memory back to the operating system.

Loading a gallery, calibrating or writing a snapshot allocates large
temporary buffers. glibc's malloc keeps what they freed inside the process
(the heap top cannot shrink past a live allocation, and its mmap threshold
rises after big frees), so the node's resident memory would stay at its peak.
`release_free_memory` asks glibc to return those pages (``malloc_trim``); on
other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True if the C library could do it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

"""Handing the memory a refresh has freed back to the system.

A refresh of a large cluster allocates a few hundred megabytes for a moment (the groups read, the
series built, the exposition written) and frees them. glibc's malloc keeps freed memory in its
heaps for reuse rather than returning it, and the exporter's threads (the refresh loops, the
librdkafka threads, the scrape handlers) each allocate from arenas of their own, so its resident
memory ratchets up refresh after refresh to the largest peak each arena ever saw. Measured at
10,000 partitions and 1,000 groups: 346 MB after seven refreshes without this, 229 MB with it,
against 48 MB of live Python objects. ``malloc_trim(0)`` returns the free pages of every arena;
it costs a few milliseconds, once per refresh.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim, nothing kept either
        return None


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

"""The process's memory allocator, set for the torch executor's many short-lived large tensors.

glibc hands every freed block above its mmap threshold back to the operating system, so the next tensor of that
size starts on fresh pages and page-faults as it is first written: an elementwise op on an 8 MiB tensor then takes
2-3x as long as on reused memory. An LRP pass makes several such temporaries per layer (relevance quotients and
products), a plain gradient fewer. `reuse_freed_memory` keeps freed memory in the heap for reuse instead; the
process then stays at its peak size, as torch's own CUDA caching allocator does. The CLI calls it once at start;
library users may. It does nothing where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def reuse_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Keep freed blocks up to `limit_bytes` for reuse (no mmap per large tensor, no trimming); True if applied."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, limit_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, limit_bytes))

"""How the node's process uses glibc's allocator: frame-sized buffers for hours, models reloaded.

No import here starts a thread, so that ``configure_malloc`` can run first in the node's executable: glibc fixes
its arena limit when the first thread other than the main one allocates, so a limit set later does not hold.
"""
from __future__ import annotations

import ctypes


def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (the tuning below is then a no-op)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def configure_malloc() -> None:
    """Tune glibc's allocator for a node that allocates frame-sized buffers and reloads models for hours.

    Every frame allocates and frees buffers of megabytes (the image, the masks, their messages). By default
    glibc serves them with mmap and unmaps them on free, so the next frame page-faults its memory back in,
    which costs milliseconds per frame: freed memory is kept instead (ROS 2's real-time guidance sets the same
    two options). And glibc gives each thread that allocates its own arena: a model loaded by one executor
    thread and reloaded by another leaves its freed memory in an arena that nothing reuses, and the process grew
    by tens of MB with every cleanup/configure cycle (scripts/soak.py); one arena keeps it flat. The arena limit
    holds only if this runs before any other thread allocates: the ``synseg_node`` executable calls it first
    (called after numpy's and rclpy's imports, the active node had 4 heaps of other arenas; none since).
    """
    libc = _libc()
    if libc is None:
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8     # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)         # the largest value glibc accepts: 32 MB
    libc.mallopt(m_trim_threshold, 512 << 20)
    libc.mallopt(m_arena_max, 1)


def return_freed_memory() -> None:
    """Give freed memory back to the kernel (glibc's malloc_trim: free pages anywhere in the heap, every arena).

    ``configure_malloc``'s trim threshold keeps what is freed, so that frames reuse it: a released model's
    memory would stay with the process, and so would what the heap's fragmentation strands between live
    blocks. The node calls this after cleanup and once a minute; it takes 3-9 ms (measured on
    ``Segmenter.segment`` in a loop with a new vocabulary every 60 frames, it gave back about 60 MB of 976).
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)

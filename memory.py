"""The host memory a process holds: how much is available, its peak, and how glibc hands big buffers
back.

Used where memory is bounded by design: the data cache's choice (cache.py), the tile engine (tiles.py)
and the block-wise vectoriser (vector.py); peak_rss_mb by the benchmarks that measure them. No torch
here.
"""
import ctypes
import os
import resource

MMAP_THRESHOLD = 256 << 10  # host buffers of this many bytes or more are mapped and unmapped whole


def fix_mmap_threshold():
    """Make glibc serve every host buffer of MMAP_THRESHOLD bytes or more (a row of tiles, a mask, an
    output window) from its own mapping, handed back to the OS when freed. By default glibc raises
    that threshold each time such a buffer is freed; later row buffers then come from the heaps of
    the threads that allocate them (reader, network, writer: one arena each), which keep what is
    freed and fragment, so peak memory crept up with the number of rows run, i.e. with the scene.
    No-op where the C library has no mallopt (not glibc)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD; setting it also stops its adjustment


def available_ram() -> int:
    """Bytes of memory available to new allocations without swapping (MemAvailable), as the kernel
    estimates it; free pages where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB: the kernel's VmHWM, which starts afresh
    with the program (ru_maxrss would carry over the parent's peak across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

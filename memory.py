"""The host memory a process holds: how much is available, its peak, and whether glibc hands big
freed buffers back to the OS or keeps them for reuse.

Handing back where several threads allocate: the tile engine's overlapped stages or a server's
requests (tiles.py), and the block-wise vectoriser (vector.py). Keeping where one thread allocates
the same buffers again and again: training (train.py), and the tile engine alone in the main thread.
available_ram sizes the data cache (cache.py); peak_rss_mb is for the benchmarks. No torch here.
"""
import ctypes
import os
import resource

MMAP_THRESHOLD = 256 << 10  # host buffers of this many bytes or more are mapped and unmapped whole
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def fix_mmap_threshold():
    """Make glibc serve every host buffer of MMAP_THRESHOLD bytes or more (a row of tiles, a mask, an
    output window) from its own mapping, handed back to the OS when freed. By default glibc raises
    that threshold each time such a buffer is freed; later row buffers then come from the heaps of
    the threads that allocate them (reader, network, writer: one arena each), which keep what is
    freed and fragment, so peak memory crept up with the number of rows run, i.e. with the scene."""
    set_malloc(MMAP_THRESHOLD, 2 * MMAP_THRESHOLD)  # trim paired as glibc's own adjustment pairs them


def keep_freed_buffers():
    """The opposite, for one thread that allocates the same big buffers again and again: a training
    step frees and reallocates its activations, gradients and the bf16 copies of the weights every
    step, the tile engine its batches' activations every batch. By default glibc maps every buffer
    over 32 MB (the largest U-Net weights in float32) afresh and trims the heap's free top, and the
    fixed 256 KB threshold above maps every buffer; each fresh page faults at its first touch: casting
    the largest weight from bf16 to float32 took 10.2 ms into fresh memory and 2.9 ms with this. Here
    glibc keeps what is freed for the next allocation; the footprint is the same every step, so it
    does not grow."""
    set_malloc(1 << 30, (1 << 31) - 1)


def set_malloc(mmap_threshold: int, trim_threshold: int):
    """glibc's mmap threshold (buffers this big or bigger get a mapping of their own, unmapped when
    freed; setting it also stops glibc's own adjustment of it) and trim threshold (free memory at the
    heap's top beyond this goes back to the OS), process-wide. No-op where the C library has no mallopt
    (not glibc)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        mallopt(M_TRIM_THRESHOLD, trim_threshold)


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

"""How lmlab keeps a process's resident memory bounded, through the C library (Linux, glibc;
elsewhere both functions do nothing):

- `bound_heap`: glibc's malloc serves large CPU buffers from mappings of their own, given back
  when freed, instead of a heap that keeps freed activations it cannot reuse
  (trainer.malloc_mmap_threshold);
- `release_mapped_pages` (and `releasing`, over an iteration): a pass over a memory-mapped
  corpus drops the pages it has read, which would otherwise stay resident (and counted in its
  RSS) until memory runs short. Reading a sample of rows scattered over a corpus reads most
  of its pages (each batch of rows spans a stretch of the file), and opening an Arrow file
  reads ~15% of them (`open_mapped`).
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MADV_DONTNEED = 4  # madvise's advice (Linux): drop the pages; a later read maps them again


def _libc():
    return ctypes.CDLL(None)  # the C library this process already uses


def bound_heap(threshold: int | None) -> None:
    """Buffers of at least `threshold` bytes get mappings of their own (None: as it is)."""
    libc = _libc()
    if threshold is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


def release_mapped_pages(paths) -> None:
    """Drops this process's resident pages of the memory-mapped files `paths` (they stay in
    the page cache: reading them again costs no disk access)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            maps = f.readlines()
    except OSError:  # not Linux
        return
    wanted = {os.path.realpath(p) for p in paths}
    libc = _libc()
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].rstrip("\n") in wanted:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


def open_mapped(paths) -> list:
    """The Arrow files `paths` as memory-mapped Datasets, without the pages opening them read."""
    from datasets import Dataset

    paths = list(paths)
    parts = [Dataset.from_file(str(path)) for path in paths]
    release_mapped_pages(paths)
    return parts


def releasing(rows, paths, every: int = 1000):
    """`rows`, one by one, dropping the pages of the memory-mapped `paths` every `every` rows."""
    for i, row in enumerate(rows):
        if i % every == 0:
            release_mapped_pages(paths)
        yield row
    release_mapped_pages(paths)

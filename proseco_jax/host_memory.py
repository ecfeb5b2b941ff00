"""How the process's C allocator treats the memory XLA:CPU frees: kept for reuse, not handed back.

XLA:CPU allocates the temporary buffer of a program anew on every call, from its worker threads; for a train
step that buffer holds the activations kept for the backward pass (2.7 GB for the DiT of the `large`
benchmark shape in bfloat16). glibc's malloc serves an allocation that large from its own `mmap` outside
the threads' arenas and unmaps it when it is freed, so every step touches that many fresh pages again: at
that shape, ~680,000 page faults and ~1 s of kernel time per 2 s step on a 2-core CPU. With
`keep_freed_memory` all threads allocate from the main heap, which never shrinks, so each step reuses the
pages of the step before (no page faults in the steady state). The cost: memory the process frees stays
its own until it exits (its resident size stays at its peak), which is what a training or sampling job wants.

Only glibc has these settings (`mallopt`); elsewhere the call does nothing. Accelerators' memory is not
touched. The binaries in launch/ that run XLA programs over and over call it when the computation runs on
the CPU (`cli.run(main, keep_freed_memory=True)`); in a notebook, call it before the first JAX computation.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1  # Free memory at the top of the heap above this many bytes goes back to the kernel.
M_MMAP_MAX = -4  # Most allocations served by their own mmap at once (0: none, all from the heap).
M_ARENA_MAX = -8  # Most arenas (1: every thread allocates from the main heap).
# mallopt takes an int; -1 converts to the largest size_t: the heap is never trimmed.
NEVER = -1


def keep_freed_memory() -> bool:
    """Makes glibc's malloc serve every allocation from the main heap and keep freed memory for reuse.

    Returns whether all settings took (False off glibc). Call it before JAX starts its CPU backend (the
    first `jax.devices()`, array or compiled call): threads that have allocated already keep their own
    arenas, from which large buffers are still mapped and unmapped on every call.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER))
    took = [mallopt(parameter, value) == 1 for parameter, value in settings]  # Each is tried.
    return all(took)

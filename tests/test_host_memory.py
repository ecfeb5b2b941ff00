"""keep_freed_memory: a CPU program's temporary buffer is reused from one call to the next (no fresh pages),
as the binaries set it up (`cli.run`), unless --nokeep_freed_memory."""

import json
import os
import platform
import subprocess
import sys

import pytest

from proseco_jax import host_memory

# A binary whose jitted function has a temporary buffer (80 MB, above glibc's per-thread heap size) that
# XLA:CPU allocates on every call; prints the page faults of each call and the buffer's pages.
BINARY = """
import ctypes, json, resource
import jax, jax.numpy as jnp
from proseco_jax import cli

# Transparent huge pages off (PR_SET_THP_DISABLE): where they are always on, a buffer faults in as 2 MB pages.
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)

def main(argv):
    x = jnp.ones((10, 1024, 1024), jnp.float32)
    w = jnp.ones((1024, 4), jnp.float32)
    f = jax.jit(lambda x, w: jnp.cumsum(jnp.sin(x), axis=0)[::-1].reshape(-1, 1024) @ w)
    temp = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes
    faults = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x, w).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"faults": faults, "temp_pages": temp / 4096}))

cli.run(main, keep_freed_memory=True)
"""


def _run(*flags: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", BINARY, *flags], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the allocator settings are glibc's on Linux")
def test_binaries_reuse_freed_memory_unless_told_not_to():
    kept, handed_back = _run(), _run("--nokeep_freed_memory")
    # Handed back, every call faults its whole temporary buffer in again. Kept, the heap grows over some of
    # the first calls (a buffer may be freed after the next call took one), then calls fault none of it.
    assert min(handed_back["faults"][4:]) > 0.9 * handed_back["temp_pages"], handed_back
    assert min(kept["faults"][4:]) < 0.02 * kept["temp_pages"], kept


def test_off_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert host_memory.keep_freed_memory() is False

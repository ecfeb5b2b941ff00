"""Test setup: 8 fake CPU devices, so mesh code runs here exactly as on a pod slice.

XLA reads the flag once, when jax is first imported, so it is set before anything imports jax.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    # Lower backend optimisation compiles test programs about twice as fast; the tests time nothing.
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are cached on disk and shared with the binaries the tests start, so a program that
# several tests (or processes) build is compiled once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "proseco_jax_test_xla_cache")
)

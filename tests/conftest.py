"""Test setup: four host CPU devices, so sharding tests run without accelerators.

XLA reads XLA_FLAGS when JAX initialises its backends, so this must run before any test
module imports jax (pytest imports conftest.py first).
"""
import os

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

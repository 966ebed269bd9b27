"""Data parallelism: a 1-D device mesh with a `data` axis, replicated state, sharded batch.

Steps are `jax.jit`-compiled with these shardings (the jit replacement for `pmap`): XLA
partitions the global computation, so gradients and BatchNorm statistics are over the
global batch and random numbers (drawn for global shapes) are the same on every device.
Results do not depend on the device count up to float summation order.
"""
from __future__ import annotations

import os

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Join a multi-process run when the environment describes one; a no-op otherwise.

  Multi-host GPU: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID (see launch/multihost_gpu.sh). TPU pod slices: TPU_WORKER_HOSTNAMES lists
  several workers and JAX finds the rest itself. Must run before anything touches devices.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                               int(env["JAX_PROCESS_ID"]))
  elif "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"asked for {num_devices} devices, {len(devices)} available")
    devices = devices[:num_devices]
  return Mesh(devices, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Dimension `axis` (the batch) split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def check_batch(batch_size: int, mesh: Mesh, field: str) -> None:
  """ValueError unless the global batch splits evenly over the mesh."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{field}={batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n}")

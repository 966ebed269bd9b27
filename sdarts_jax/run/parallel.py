"""Data parallelism: a 1-D device mesh with a `data` axis, replicated state, sharded batch.

Steps are `jax.jit`-compiled with these shardings (the jit replacement for `pmap`): XLA
partitions the global computation, so gradients and BatchNorm statistics are over the
global batch and random numbers (drawn for global shapes) are the same on every device.
Results do not depend on the device count up to float summation order.
"""
from __future__ import annotations

import contextlib
import os
import sys

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


# Environment variables that describe a multi-process run (see `initialize_distributed`).
PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
AUTO_ENV = "SDARTS_DISTRIBUTED"
HEARTBEAT_ENV = "SDARTS_HEARTBEAT_TIMEOUT_S"
INIT_TIMEOUT_ENV = "SDARTS_INIT_TIMEOUT_S"


def initialize_distributed() -> None:
  """Join a multi-process run when the environment describes one; a no-op otherwise.

  Explicit (multi-host GPU, several processes on one machine): JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID (see
  launch/multihost_gpu.sh). Detected by JAX (Cloud TPU slices, SLURM): SDARTS_DISTRIBUTED=auto
  (launch/tpu_pod.sh sets it), or TPU_WORKER_HOSTNAMES listing several workers.
  SDARTS_HEARTBEAT_TIMEOUT_S (default 100): seconds after which a process that stopped
  answering counts as dead and the others end with an error instead of waiting for it.
  SDARTS_INIT_TIMEOUT_S (default 300): how long to wait for every process to join.
  Must run before anything touches devices. ValueError for a malformed environment.
  """
  env = os.environ
  timeouts = dict(heartbeat_timeout_seconds=_positive_int(HEARTBEAT_ENV, 100),
                  initialization_timeout=_positive_int(INIT_TIMEOUT_ENV, 300))
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in PROCESS_ENV if not env.get(k)]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but not {' and '.join(missing)}: a "
                       f"multi-process run needs all of {', '.join(PROCESS_ENV)}")
    count, index = _positive_int("JAX_NUM_PROCESSES", 0), _positive_int("JAX_PROCESS_ID", 0, 0)
    if index >= count:
      raise ValueError(f"JAX_PROCESS_ID={index} must be below JAX_NUM_PROCESSES={count} "
                       f"(processes are numbered from 0)")
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], count, index, **timeouts)
  elif env.get(AUTO_ENV) == "auto" or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize(**timeouts)
  elif env.get(AUTO_ENV):
    raise ValueError(f"{AUTO_ENV}={env[AUTO_ENV]!r}: the only value is 'auto' (let JAX detect "
                     f"the cluster); for explicit processes set {', '.join(PROCESS_ENV)}")


def _positive_int(name: str, default: int, minimum: int = 1) -> int:
  """The integer in environment variable `name` (`default` when unset); ValueError naming
  the variable when it is not an integer >= minimum."""
  text = os.environ.get(name, "")
  if not text:
    return default
  try:
    value = int(text)
  except ValueError:
    value = minimum - 1
  if value < minimum:
    raise ValueError(f"{name}={text!r} must be an integer >= {minimum}")
  return value


@contextlib.contextmanager
def end_with_the_others():
  """In a multi-process run, a JAX runtime error (a collective whose peer died or left)
  ends this process at once with one `error:` line and status 1, rather than a traceback
  and then waiting in JAX's shutdown barrier for a process that is gone. A process that
  dies silently is noticed by the others within SDARTS_HEARTBEAT_TIMEOUT_S, when JAX ends
  them with its own message ("Terminating process because the JAX distributed service
  detected fatal errors")."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    cause = str(e).strip().splitlines()[0][:300]
    print(f"error: process {jax.process_index()} of {jax.process_count()} stops: a collective "
          f"operation failed, most likely because another process of this run died or was "
          f"stopped (see its log). All processes must be restarted together; the run resumes "
          f"from its last checkpoint. JAX: {cause}", file=sys.stderr, flush=True)
    os._exit(1)


def make_mesh(num_devices: int | None = None, devices=None) -> Mesh:
  """A 1-D mesh over the first `num_devices` of `devices` (default: all of `jax.devices()`,
  every process's; `sdarts_jax.tpu_check` passes a TPU slice's compile-only devices)."""
  devices = list(jax.devices() if devices is None else devices)
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


def data_parallel(batch_size: int) -> tuple[Mesh, NamedSharding, NamedSharding]:
  """(the mesh of every device, the replicated sharding, the batch-sharded one) of a run,
  after checking that config.data.batch_size (`batch_size`) divides over the devices."""
  mesh = make_mesh()
  check_batch(batch_size, mesh, "config.data.batch_size")
  return mesh, replicated(mesh), batch_sharded(mesh)


def check_batch(batch_size: int, mesh: Mesh, field: str) -> None:
  """ValueError unless the global batch splits evenly over the mesh."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{field}={batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n}")

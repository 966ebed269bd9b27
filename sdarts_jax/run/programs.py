"""Compiled programs shared within a process: a run that asks XLA for a program another run
of this process already compiled (same StableHLO, devices and compile options) gets that
executable instead of a new compilation.

`jax.jit` caches by the function object, and every run builds its step from fresh closures,
so a second run in one process (a resumed run, another seed of the same config, the test
suite's runs of one tiny config) compiled everything again: 15-90 s per program on CPU.
JAX's persistent compilation cache (`lifecycle.enable_compilation_cache`) avoids that across
processes but is off for CPU runs over several devices, where executables loaded from it
deadlocked (docs/design.md); this cache keeps the executables XLA built in this process, which
are the ones `jax.jit` would reuse itself. After each compilation the memory the compiler
freed goes back to the operating system (`release_freed_memory`).
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
from typing import Callable

import jax
from jax.sharding import NamedSharding

# Executables kept, least recently used first out: about one run's programs (initial state,
# step, evaluation, BatchNorm estimate, Hessian loops). Each holds its code and constants:
# compiling the paper-size DARTS step on CPU left the process 1.3 GiB larger.
MAX_EXECUTABLES = 8
_EXECUTABLES: collections.OrderedDict = collections.OrderedDict()


def jit(fn: Callable, compiler_options: dict | None = None, **jit_kwargs) -> "Program":
  """`jax.jit(fn, **jit_kwargs)` whose executables are shared with every other `Program` of
  this process that lowers to the same program (`Program`)."""
  shardings = [jit_kwargs.get("in_shardings"), jit_kwargs.get("out_shardings")]
  devices = tuple(_device_ids(s) for s in jax.tree.leaves(shardings))
  return Program(jax.jit(fn, compiler_options=compiler_options, **jit_kwargs),
                 (devices, tuple(sorted((compiler_options or {}).items()))))


class Program:
  """A jitted function called like it; each new argument signature (tree, shapes, dtypes,
  shardings) is lowered, and compiled unless an executable of the same lowered text, devices
  and compile options is in this process's cache. Lowering still runs for every new Program
  (seconds; XLA's compilation is most of the time)."""

  def __init__(self, jitted, placement: tuple):
    """placement: what besides its text tells the program apart (the devices of the jit's
    shardings, the compile options)."""
    self._jitted, self._placement = jitted, placement
    self._by_signature: dict = {}

  def __call__(self, *args):
    leaves, tree = jax.tree.flatten(args)
    signature = (tree, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves))
    compiled = self._by_signature.get(signature)
    if compiled is None:
      on = tuple(_device_ids(x.sharding) for x in leaves if isinstance(x, jax.Array))
      compiled = self._by_signature[signature] = _compile(self._jitted.lower(*args),
                                                          (self._placement, on))
    return compiled(*args)

  def lower(self, *args):
    return self._jitted.lower(*args)

  def eval_shape(self, *args):
    return self._jitted.eval_shape(*args)


def _compile(lowered, placement: tuple):
  """The executable of `lowered` placed as `placement` says (devices and options): from this
  process's cache, else compiled and kept."""
  key = (hashlib.sha256(lowered.as_text().encode()).hexdigest(), placement)
  if key in _EXECUTABLES:
    _EXECUTABLES.move_to_end(key)
    return _EXECUTABLES[key]
  compiled = _EXECUTABLES[key] = lowered.compile()
  while len(_EXECUTABLES) > MAX_EXECUTABLES:
    _EXECUTABLES.popitem(last=False)
  release_freed_memory()
  return compiled


def release_freed_memory() -> None:
  """Give the heap memory that the compiler freed back to the operating system (glibc's
  `malloc_trim`; nothing elsewhere).

  glibc keeps freed heap memory for reuse, and the step's buffers are allocated beside what
  XLA:CPU's compiler left, not in it: at paper size (DARTS, 8 cells, C=16, batch 64) the
  process held 4.2 GiB after compiling the step and peaked at 13.2 GiB while stepping (8.2
  GiB of the step's own buffers); trimmed after the compilation, 2.2 GiB and 10.7 GiB
  (steps no slower: 18.3-18.5 against 19.8-21.6 s; benchmarks/search_step.py reports the
  peak)."""
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return
  libc.malloc_trim(0)


def _device_ids(sharding) -> tuple:
  """The devices of a program's input or output, in mesh order where it has a mesh."""
  if isinstance(sharding, NamedSharding):
    return tuple(d.id for d in sharding.mesh.devices.flat)
  return tuple(sorted(d.id for d in getattr(sharding, "device_set", ())))

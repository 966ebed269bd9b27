"""Compiled programs shared within a process: a run that asks XLA for a program another run
of this process already compiled (same StableHLO, devices and compile options) gets that
executable instead of a new compilation.

`jax.jit` caches by the function object, and every run builds its step from fresh closures,
so a second run in one process (a resumed run, another seed of the same config, the test
suite's runs of one tiny config) compiled everything again: 15-90 s per program on CPU.
JAX's persistent compilation cache (`lifecycle.enable_compilation_cache`) avoids that across
processes but is off for CPU runs over several devices, where executables loaded from it
deadlocked (docs/design.md); this cache keeps the executables XLA built in this process, which
are the ones `jax.jit` would reuse itself.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Callable

import jax
from jax.sharding import NamedSharding

# Executables kept, least recently used first out: each holds its code and constants (tens
# of MB for a supernet step on CPU).
MAX_EXECUTABLES = 16
_EXECUTABLES: collections.OrderedDict = collections.OrderedDict()


def jit(fn: Callable, compiler_options: dict | None = None, **jit_kwargs) -> "Program":
  """`jax.jit(fn, **jit_kwargs)` whose executables are shared with every other `Program` of
  this process that lowers to the same program (`Program`)."""
  return Program(jax.jit(fn, compiler_options=compiler_options, **jit_kwargs), compiler_options)


class Program:
  """A jitted function called like it; each new argument signature (tree, shapes, dtypes,
  shardings) is lowered, and compiled unless an executable of the same lowered text, devices
  and compile options is in this process's cache. Lowering still runs for every new Program
  (seconds; XLA's compilation is most of the time)."""

  def __init__(self, jitted, compiler_options: dict | None):
    self._jitted, self._options = jitted, compiler_options
    self._by_signature: dict = {}

  def __call__(self, *args):
    leaves, tree = jax.tree.flatten(args)
    signature = (tree, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves))
    compiled = self._by_signature.get(signature)
    if compiled is None:
      compiled = self._by_signature[signature] = _compile(self._jitted.lower(*args),
                                                          self._options)
    return compiled(*args)

  def lower(self, *args):
    return self._jitted.lower(*args)

  def eval_shape(self, *args):
    return self._jitted.eval_shape(*args)


def _compile(lowered, options: dict | None):
  """The executable of `lowered`: from this process's cache, else compiled and kept."""
  args = lowered._lowering.compile_args
  devices = tuple(_device_ids(s) for s in (*args["in_shardings"], *args["out_shardings"]))
  key = (hashlib.sha256(lowered.as_text().encode()).hexdigest(), devices,
         tuple(sorted((options or {}).items())))
  if key in _EXECUTABLES:
    _EXECUTABLES.move_to_end(key)
    return _EXECUTABLES[key]
  compiled = _EXECUTABLES[key] = lowered.compile()
  while len(_EXECUTABLES) > MAX_EXECUTABLES:
    _EXECUTABLES.popitem(last=False)
  return compiled


def _device_ids(sharding) -> tuple:
  """The devices of a program's input or output, in mesh order where it has a mesh."""
  if isinstance(sharding, NamedSharding):
    return tuple(d.id for d in sharding.mesh.devices.flat)
  return tuple(sorted(d.id for d in getattr(sharding, "device_set", ())))

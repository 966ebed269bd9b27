"""Commands keep library noise off the console (`lifecycle.quiet_libraries`); TFDS's probing is
checked on the demo's real output in test_download.py."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import logging, sys
from sdarts_jax.run import lifecycle
lifecycle.quiet_libraries()
logging.root.setLevel(logging.INFO)  # even at INFO, the noise stays out
logging.root.addHandler(logging.StreamHandler(sys.stdout))
import jax
jax.devices()  # JAX logs "Unable to initialize backend 'tpu': ..." where there is no TPU
log = logging.getLogger("jax._src.xla_bridge")
log.warning("Platform 'tpu' is experimental and not all JAX functionality may be correctly "
            "supported!")
log.warning("An NVIDIA GPU may be present on this machine, but ...")  # kept: it helps
"""


def test_backend_probing_is_not_shown():
  out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS=""))
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ["An NVIDIA GPU may be present on this machine, but ..."], \
      out.stdout

#!/usr/bin/env bash
# Run a search on every worker of a Cloud TPU pod slice (one process per host; JAX
# discovers the slice itself, see sdarts_jax/parallel.py). The global batch is split over
# all chips: keep config.data.batch_size a multiple of the chip count.
#
#   launch/tpu_pod.sh TPU_NAME ZONE gs://bucket/runs/adv1 [--config.x=y ...]
#
# The workdir must be shared by all hosts (a gs:// path works with orbax). Only process 0
# writes metrics and genotypes.
set -euo pipefail
name=$1 zone=$2 workdir=$3
shift 3
repo=${REPO:-https://github.com/your-org/sdarts_jax}
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  [ -d sdarts_jax ] || git clone $repo sdarts_jax
  cd sdarts_jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'
  .venv/bin/python -m sdarts_jax.main --config=configs/cifar10_adv.py --workdir=$workdir $*
"

#!/usr/bin/env bash
# One process per GPU host. Run this on every host with the same COORDINATOR (host:port of
# host 0), NUM_HOSTS, and this host's HOST_ID (0 .. NUM_HOSTS-1):
#
#   COORDINATOR=10.0.0.1:1234 NUM_HOSTS=2 HOST_ID=0 launch/multihost_gpu.sh /shared/runs/adv1
#
# The workdir must be on storage all hosts see. Extra arguments are config overrides.
set -euo pipefail
workdir=$1
shift
export JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$NUM_HOSTS JAX_PROCESS_ID=$HOST_ID
exec .venv/bin/python -m sdarts_jax.main --config=configs/cifar10_adv.py --workdir="$workdir" "$@"

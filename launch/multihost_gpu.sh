#!/usr/bin/env bash
# Run sdarts_jax as one process per GPU host (each process drives all GPUs of its host;
# the global batch is split over every GPU: keep config.data.batch_size a multiple of
# their number).
#
#   launch/multihost_gpu.sh [options] --hosts=HOST0,HOST1,... WORKDIR [--config=FILE[:ARG]] [--config.x=y ...]
#       starts process i on HOST_i over ssh, HOST0 coordinating, and streams every host's
#       output here, each line prefixed with [HOST_i]; fails when any process fails.
#   launch/multihost_gpu.sh [options] WORKDIR [config flags]
#       runs this host's process: the one a scheduler starts on every host, with
#       COORDINATOR (host:port of process 0), NUM_HOSTS and HOST_ID in the environment, or
#       under SLURM (srun) SLURM_NTASKS, SLURM_PROCID and COORDINATOR
#       (see launch/slurm_gpu.sbatch).
# Options:
#   --port=N             the coordinator's port with --hosts (default: 12345)
#   --remote-dir=DIR     this checkout's path on the hosts (default: this checkout's path,
#                        i.e. a file system all hosts share, each host with .venv installed:
#                        `pip install -e '.[cuda13]'`, or '.[cuda12]' on CUDA 12 drivers)
#   --dry-run            print every command instead of running it
# The config defaults to configs/cifar10_adv.py. WORKDIR must be storage all hosts share;
# only process 0 writes metrics, genotypes and TensorBoard. A process that dies ends the
# others with an error (sdarts_jax/run/parallel.py), so no host is left hanging.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "error: $*" >&2; exit 2; }

dry_run=0 hosts="" port=12345
remote_dir=$(cd "$(dirname "$0")/.." && pwd)
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --hosts=*) hosts=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --remote-dir=*) remote_dir=${1#*=} ;;
    --help|-h) usage ;;
    *) die "unknown option $1 (options come before WORKDIR; see --help)" ;;
  esac
  shift
done
[[ $# -ge 1 ]] || usage
workdir=$1
shift
args=("$@")
[[ " ${args[*]-} " == *" --config="* ]] || args=(--config=configs/cifar10_adv.py "${args[@]}")
main=(.venv/bin/python -m sdarts_jax.main --workdir="$workdir" "${args[@]}")

show() { printf '+'; printf ' %q' "$@"; }

if [[ -z $hosts ]]; then
  # This host's process.
  coordinator=${COORDINATOR:-}
  num_hosts=${NUM_HOSTS:-${SLURM_NTASKS:-}}
  host_id=${HOST_ID:-${SLURM_PROCID:-}}
  [[ -n $coordinator && -n $num_hosts && -n $host_id ]] || die "set COORDINATOR (host:port of \
process 0), NUM_HOSTS and HOST_ID (0 .. NUM_HOSTS-1) on every host, or use --hosts=HOST0,HOST1,..."
  env=(JAX_COORDINATOR_ADDRESS="$coordinator" JAX_NUM_PROCESSES="$num_hosts"
       JAX_PROCESS_ID="$host_id")
  show cd "$remote_dir"; echo
  show env "${env[@]}" "${main[@]}"; echo
  [[ $dry_run == 1 ]] || { cd "$remote_dir" && exec env "${env[@]}" "${main[@]}"; }
  exit 0
fi

# Every host's process, over ssh.
IFS=, read -r -a host_list <<< "$hosts"
n=${#host_list[@]}
pids=()
for i in "${!host_list[@]}"; do
  host=${host_list[$i]}
  remote="cd $(printf %q "$remote_dir") && $(printf '%q ' env JAX_COORDINATOR_ADDRESS="${host_list[0]}:$port" \
JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" "${main[@]}")"
  show ssh -o BatchMode=yes "$host" "$remote"; printf ' 2>&1 | sed -u %q &\n' "s/^/[$host] /"
  if [[ $dry_run == 0 ]]; then
    (ssh -o BatchMode=yes "$host" "$remote" 2>&1 | sed -u "s/^/[$host] /") &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status

#!/usr/bin/env bash
# Run sdarts_jax on every worker of a Cloud TPU VM slice: one process per host, the global
# batch split over all chips (keep config.data.batch_size a multiple of the chip count).
#
#   launch/tpu_pod.sh [options] TPU_NAME ZONE WORKDIR [--config=FILE[:ARG]] [--config.x=y ...]
#
# What it ships (default: this checkout's working tree, committed or not):
#   (default)            a tarball of the files git sees here (tracked, and untracked ones
#                        that .gitignore does not exclude), copied to every worker
#   --repo=URL --commit=REV   each worker clones URL and checks out REV instead
# Options:
#   --project=ID         gcloud project (default: gcloud's configured one)
#   --extra=NAME         pip extra to install (default: tpu)
#   --remote-dir=DIR     where the code lives on the workers (default: sdarts_jax, in $HOME)
#   --log=FILE           also write the streamed output here (default: runs/tpu_TPU_NAME.log)
#   --topology=T         the slice's topology for the preflight, e.g. v5e:4x4 (default: from
#                        the TPU's accelerator type, asked of gcloud)
#   --no-preflight       skip the preflight
#   --dry-run            print every command instead of running it
# Preflight: before anything is created or copied, the config's search step is compiled for
# the slice's topology on this machine (python -m sdarts_jax.tpu_check, in .venv-tpu, which
# `make tpu-install` creates once); a config that does not fit a chip stops here with the
# check's error line (the chip's HBM, what the step needs, the largest batch that fits).
# The config defaults to configs/cifar10_adv.py. WORKDIR must be storage all hosts share
# (a gs:// path works with orbax); only process 0 writes metrics, genotypes and TensorBoard.
# Every process runs `python -m sdarts_jax.main` with SDARTS_DISTRIBUTED=auto, so JAX finds
# the slice's workers itself (sdarts_jax/run/parallel.py). Output streams from all workers,
# each line prefixed with its host name.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "error: $*" >&2; exit 2; }

dry_run=0 project="" extra=tpu remote_dir=sdarts_jax repo="" commit="" log="" topology=""
preflight=1
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --project=*) project=${1#*=} ;;
    --extra=*) extra=${1#*=} ;;
    --remote-dir=*) remote_dir=${1#*=} ;;
    --repo=*) repo=${1#*=} ;;
    --commit=*) commit=${1#*=} ;;
    --log=*) log=${1#*=} ;;
    --topology=*) topology=${1#*=} ;;
    --no-preflight) preflight=0 ;;
    --help|-h) usage ;;
    *) die "unknown option $1 (options come before TPU_NAME; see --help)" ;;
  esac
  shift
done
[[ $# -ge 3 ]] || usage
name=$1 zone=$2 workdir=$3
shift 3
[[ -n $repo && -z $commit || -z $repo && -n $commit ]] && die "--repo and --commit go together"
args=("$@")
[[ " ${args[*]-} " == *" --config="* ]] || args=(--config=configs/cifar10_adv.py "${args[@]}")
log=${log:-runs/tpu_$name.log}
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)

run() {  # print the command (shell-quoted); run it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ $dry_run == 1 ]] || "$@"
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone" --worker=all ${project:+--project="$project"})

# The topology name of a Cloud TPU accelerator type (v5litepod-16 -> v5e:4x4, v6e-8 ->
# v6e:2x4, v4-16 -> v4:2x2x2, v5p-8 -> v5p:2x2x1); empty for a type not listed.
topology_of() {
  local gen=${1%-*} n=${1##*-}
  case $gen in
    v5litepod|v5e|v6e)
      declare -A flat=([1]=1x1 [4]=2x2 [8]=2x4 [16]=4x4 [32]=4x8 [64]=8x8 [128]=8x16 [256]=16x16)
      [[ -n ${flat[$n]-} ]] && echo "${gen/v5litepod/v5e}:${flat[$n]}" ;;
    v4|v5p)  # the count is of TensorCores, two per chip
      declare -A cube=([8]=2x2x1 [16]=2x2x2 [32]=2x2x4 [64]=2x4x4 [128]=4x4x4 [256]=4x4x8)
      [[ -n ${cube[$n]-} ]] && echo "$gen:${cube[$n]}" ;;
  esac
}

# 0. Preflight: the config's search step compiled for the slice here.
if [[ $preflight == 1 ]]; then
  if [[ -z $topology ]]; then
    type=$(gcloud compute tpus tpu-vm describe "$name" --zone="$zone" ${project:+--project="$project"} \
      --format='value(acceleratorType)') || die "cannot ask gcloud for $name's accelerator type; pass --topology=T (or --no-preflight)"
    topology=$(topology_of "$type") || true
    [[ -n $topology ]] || die "no topology name known for accelerator type '$type'; pass --topology=T (e.g. v5e:4x4) or --no-preflight"
  fi
  run make -C "$root" -s tpu-install
  (cd "$root" && run .venv-tpu/bin/python -m sdarts_jax.tpu_check --topology="$topology" --programs=step "${args[@]}") ||
    die "preflight: the config does not compile or fit on $topology (above); nothing was created or copied (--no-preflight skips this check)"
fi

# 1. The code on every worker.
if [[ -n $repo ]]; then
  fetch="rm -rf $(printf %q "$remote_dir") && git clone -q $(printf %q "$repo") $(printf %q "$remote_dir") && git -C $(printf %q "$remote_dir") checkout -q $(printf %q "$commit")"
else
  tarball=${TMPDIR:-/tmp}/sdarts_jax.$$.tar.gz
  [[ $dry_run == 1 ]] || trap 'rm -f "$tarball"' EXIT
  echo "+ (cd $(printf %q "$root") && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(printf %q "$tarball"))"
  [[ $dry_run == 1 ]] || (cd "$root" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ ! -e $f ]] || printf '%s\0' "$f"; done |  # not deleted ones
    tar --null -T - -czf "$tarball")
  run "${gcloud_tpu[@]}" scp "$tarball" "$name:sdarts_jax.tar.gz" "${where[@]}"
  fetch="rm -rf $(printf %q "$remote_dir") && mkdir -p $(printf %q "$remote_dir") && tar -xzf sdarts_jax.tar.gz -C $(printf %q "$remote_dir")"
fi

# 2. Install on every worker.
run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --command="set -e; $fetch; cd $(printf %q "$remote_dir") && python3 -m venv .venv && .venv/bin/pip install -q -e '.[$extra]'"

# 3. One process per host; output streamed here (and appended to the log), each line
# prefixed with its host name.
main=$(printf ' %q' .venv/bin/python -m sdarts_jax.main --workdir="$workdir" "${args[@]}")
start=("${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --command="set -o pipefail; cd $(printf %q "$remote_dir") && SDARTS_DISTRIBUTED=auto$main 2>&1 | sed -u \"s/^/[\$(hostname)] /\"")
printf '+'; printf ' %q' "${start[@]}"; printf ' 2>&1 | tee -a %q\n' "$log"
if [[ $dry_run == 0 ]]; then
  mkdir -p "$(dirname "$log")"
  "${start[@]}" 2>&1 | tee -a "$log"
fi

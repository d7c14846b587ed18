#!/usr/bin/env bash
# Run the same hsemo-jax command on every worker; jax.distributed.initialize() auto-detects the
# slice on TPU VMs, so each process joins one global mesh. [--dry-run] Example:
#   tpu_scripts/launch.sh pretrain hsemo_jax/train/configs/pretrain_enet_b0_affectnet_tpu.toml \
#       --train gs://BUCKET/tfds/affectnet --val gs://BUCKET/tfds/affectnet --out /home/$USER/runs/enet
# Each process reads its own rows of every global batch from the dataset; the run directory must
# be one every worker sees (a local disk on a one-host slice, a shared mount on larger ones).
set -euo pipefail
[ "${1:-}" = "--dry-run" ] && { DRY_RUN=1; shift; }
source "$(dirname "$0")/env.sh"
[ $# -ge 1 ] || { echo "usage: $0 [--dry-run] HSEMO_JAX_SUBCOMMAND ARGS..." >&2; exit 2; }
args=$(printf ' %q' "$@")
on_workers "cd hsemo-jax && hsemo-jax$args --set distributed.initialize=true"

#!/usr/bin/env bash
# Run the same hsemo-jax command on every worker; jax.distributed.initialize() auto-detects the
# slice on TPU VMs, so each process joins one global mesh. Example:
#   tpu_scripts/launch.sh pretrain hsemo_jax/train/configs/pretrain_enet_b0_affectnet.toml \
#       --out /mnt/runs/enet --train /mnt/data/affectnet_train.npz
# Data and run directories must be visible to every worker (a shared disk or bucket mount):
# every process reads its own slice of each global batch, and checkpoints are written jointly.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 1 ] || { echo "usage: $0 HSEMO_JAX_SUBCOMMAND ARGS..." >&2; exit 2; }
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker=all --command "
  cd hsemo-jax && hsemo-jax$args --set distributed.initialize=true
"

#!/usr/bin/env bash
# Create a TPU VM slice: TPU_NAME, TPU_ZONE, TPU_TYPE, TPU_RUNTIME (see env.sh). [--dry-run]
set -euo pipefail
[ "${1:-}" = "--dry-run" ] && { DRY_RUN=1; shift; }
source "$(dirname "$0")/env.sh"
run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$TPU_ZONE" \
  --accelerator-type "$TPU_TYPE" --version "$TPU_RUNTIME"

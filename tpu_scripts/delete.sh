#!/usr/bin/env bash
# Delete the slice (stops billing). [--dry-run]
set -euo pipefail
[ "${1:-}" = "--dry-run" ] && { DRY_RUN=1; shift; }
source "$(dirname "$0")/env.sh"
run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet

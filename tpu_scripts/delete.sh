#!/usr/bin/env bash
# Delete the slice (stops billing).
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet

#!/usr/bin/env bash
# Install hsemo-jax (with JAX for TPU) on every worker of the slice.
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker=all --command "
  set -e
  python3 -m pip install -U pip 'jax[tpu]'
  if [ -d hsemo-jax ]; then git -C hsemo-jax fetch -q && git -C hsemo-jax checkout -q $REPO_REF && git -C hsemo-jax pull -q;
  else git clone -q $REPO_URL hsemo-jax && git -C hsemo-jax checkout -q $REPO_REF; fi
  python3 -m pip install -e hsemo-jax
  python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'
"

#!/usr/bin/env bash
# Install hsemo-jax (with JAX for TPU) on every worker of the slice. [--dry-run]
# gcsfs lets tfds / etils read gs:// dataset directories.
set -euo pipefail
[ "${1:-}" = "--dry-run" ] && { DRY_RUN=1; shift; }
source "$(dirname "$0")/env.sh"
on_workers "
  set -e
  python3 -m pip install -U pip 'jax[tpu]' gcsfs
  if [ -d hsemo-jax ]; then git -C hsemo-jax fetch -q && git -C hsemo-jax checkout -q $REPO_REF && git -C hsemo-jax pull -q;
  else git clone -q $REPO_URL hsemo-jax && git -C hsemo-jax checkout -q $REPO_REF; fi
  python3 -m pip install -e hsemo-jax
  python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'
"

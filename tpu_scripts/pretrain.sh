#!/usr/bin/env bash
# Pretrain on a TPU slice from a TFDS build on cloud storage (`hsemo-jax build-dataset` output
# copied to a bucket); tfds and grain read it there, each process its own rows of every batch.
#
#   tpu_scripts/pretrain.sh [--dry-run] --data gs://BUCKET/tfds/affectnet --out RUN
#                           [--config CONFIG] [--create] [--install] [-- MORE hsemo-jax ARGS]
#
# --config  default hsemo_jax/train/configs/pretrain_enet_b0_affectnet_tpu.toml (v5e-8 / v4-8,
#           global batch 1024); the build's train split trains, its validation split validates
# --create, --install   create the slice / install hsemo-jax on it first (create.sh, install.sh)
# --dry-run print the gcloud commands instead of running them (gcloud is not called)
# Rerunning the same command resumes the run in RUN from its last checkpoint.
set -euo pipefail
here="$(dirname "$0")"
config=hsemo_jax/train/configs/pretrain_enet_b0_affectnet_tpu.toml
data="" out="" create=0 install=0 dry=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; dry=(--dry-run); shift ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --install) install=1; shift ;;
    --) shift; break ;;
    *) echo "$0: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$data" ] && [ -n "$out" ] || { echo "usage: $0 [--dry-run] --data gs://BUCKET/DIR --out RUN [--config CONFIG] [--create] [--install] [-- ARGS]" >&2; exit 2; }
case "$data" in
  gs://*|/*) ;;  # a bucket, or a directory every worker has (e.g. the bucket mounted with gcsfuse)
  *) echo "$0: --data $data: expected a gs:// dataset directory (an hsemo-jax build-dataset output in a bucket)" >&2; exit 2 ;;
esac
export DRY_RUN="${DRY_RUN:-0}"
[ "$create" = 1 ] && "$here/create.sh" ${dry[@]+"${dry[@]}"}
[ "$install" = 1 ] && "$here/install.sh" ${dry[@]+"${dry[@]}"}
"$here/launch.sh" ${dry[@]+"${dry[@]}"} pretrain "$config" --train "$data" --val "$data" --out "$out" "$@"

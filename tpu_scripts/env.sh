# Settings shared by the TPU scripts; override any of them in the environment.
# Every script takes --dry-run as its first argument (or DRY_RUN=1): it then prints the gcloud
# commands it would run, one per line, and runs none of them.
: "${TPU_NAME:=hsemo-pod}"
: "${TPU_ZONE:=us-central2-b}"
: "${TPU_TYPE:=v4-8}"                       # 1 host x 4 chips; v5litepod-8 (zone e.g. us-west4-a) = v5e-8
: "${TPU_RUNTIME:=tpu-ubuntu2204-base}"     # v5e: v2-alpha-tpuv5-lite
: "${REPO_URL:?set REPO_URL to a git URL of this repository the TPU VMs can clone}"
: "${REPO_REF:=main}"
: "${DRY_RUN:=0}"

# quote ARGS...: the arguments as one shell command line (single quotes where needed).
quote() {
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

# run CMD ARGS...: run a command, or print it (shell-quoted) under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then quote "$@"; else "$@"; fi
}

# on_workers COMMAND: run a shell command on every worker of the slice.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker=all --command "$1"
}

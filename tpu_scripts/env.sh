# Settings shared by the TPU scripts; override any of them in the environment.
: "${TPU_NAME:=hsemo-pod}"
: "${TPU_ZONE:=us-central2-b}"
: "${TPU_TYPE:=v4-32}"                      # 4 hosts x 4 chips
: "${TPU_RUNTIME:=tpu-ubuntu2204-base}"
: "${REPO_URL:?set REPO_URL to a git URL of this repository the TPU VMs can clone}"
: "${REPO_REF:=main}"

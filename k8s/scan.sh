#!/usr/bin/env bash
# Security scan with checkov (offline): the Dockerfile, and the Kubernetes Jobs that dagster-k8s builds for the
# training job's steps (GPU reservoir step, quantum step, an ordinary step). Fails on any failed check except the
# four justified in k8s/README.md ("Checkov results"). Checkov lives in its own virtualenv (.venv-checkov).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=${PY:-$root/.venv/bin/python}
ckv=${CKV_VENV:-$root/.venv-checkov}
if ! test -x "$ckv/bin/checkov"; then
  python3.11 -m venv "$ckv"
  "$ckv/bin/pip" install -q "checkov==3.3.30"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$py" -m nq_dagster.k8s_jobs "$out"
"$ckv/bin/checkov" -d "$here" --framework dockerfile --skip-download --compact --quiet
"$ckv/bin/checkov" -d "$out" --framework kubernetes --skip-download --compact --quiet \
  --skip-check CKV_K8S_43,CKV_K8S_15,CKV2_K8S_6
"$ckv/bin/checkov" -f "$here/serve.yaml" --framework kubernetes --skip-download --compact --quiet \
  --skip-check CKV_K8S_43,CKV_K8S_15,CKV2_K8S_6
echo "checkov: no failed checks beyond the justified exceptions"

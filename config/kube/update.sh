#!/usr/bin/env bash
# Pins the current Kubernetes (and etcd) the local environment runs: rewrites go.mod and go.sum
# of config/kube (Kubernetes' server components) and config/kube/etcd. Run by hand when moving to
# another release, then commit both modules; builds use what is committed (build.sh).
#   config/kube/update.sh v1.37.2 v3.6.16
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver...) at v0.0.0 and
# maps them to ./staging with replace lines, which do not apply to a module that requires it; so
# every such line of that release's own go.mod becomes `k8s.io/X => k8s.io/X v0.<minor>.<patch>`
# here, generated from the go.mod of exactly that release, never copied from another.
set -euo pipefail
KUBE=${1:?usage: update.sh KUBERNETES_VERSION ETCD_VERSION}
ETCD=${2:?usage: update.sh KUBERNETES_VERSION ETCD_VERSION}
cd "$(dirname "$0")"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
export GOMODCACHE=${GOMODCACHE:-$HOME/.cache/kubernetes-nmstate/go/mod}

upstream=$(go mod download -json "k8s.io/kubernetes@$KUBE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
staging=v0.${KUBE#v1.}
go_line=$(grep -m1 '^go ' "$upstream")
godebug_line=$(grep -m1 '^godebug ' "$upstream" || true)

# etcd first: its directory is a module of its own, so no part of the Kubernetes one.
{
    echo "// etcd, built by config/kube/build.sh. Written by update.sh: do not edit."
    echo "module nmstate.io/localenv/etcd"
    echo
    echo "$go_line"
    echo
    echo "require go.etcd.io/etcd/server/v3 $ETCD"
} > etcd/go.mod
rm -f etcd/go.sum
(cd etcd && go mod tidy)

{
    echo "// Kubernetes' server components, built by config/kube/build.sh. Written by update.sh: do not edit."
    echo "module nmstate.io/localenv/kube"
    echo
    echo "$go_line"
    [ -n "$godebug_line" ] && echo "$godebug_line"
    echo
    echo "require k8s.io/kubernetes $KUBE"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$upstream"
    echo ")"
} > go.mod
rm -f go.sum
go mod tidy
echo "pinned Kubernetes $KUBE and etcd $ETCD; now run config/kube/build.sh" >&2

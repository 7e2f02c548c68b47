#!/usr/bin/env bash
# Builds the current Kubernetes the local environment runs, from the Go module proxy, once:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy as one
# multi-call binary `kube` (main.go; each name a hard link to it, so each process shows its own
# executable in /proc/PID/exe), etcd (etcd/), and what a sandbox node runs pods with: containerd,
# its runc shim and ctr (containerd/, pinned by hand: `go get
# github.com/containerd/containerd/v2@vX && go mod tidy` there) and the pod sandbox's pause
# (pause/). The version is
# the one config/kube/go.mod pins (update.sh moves it). Cached in
# ~/.cache/kubernetes-nmstate/kube-<version>-<hash>/bin, the hash taken over both modules and
# this script, so a changed recipe rebuilds and a warm run does not touch Go. The link
# ~/.cache/kubernetes-nmstate/kube-current points at the build of what go.mod pins now (the
# local environment runs what it points at). Progress on stderr, one line per step with its time.
set -euo pipefail
cd "$(dirname "$0")"
log() { printf 'build-kube-current: %s\n' "$*" >&2; }

VERSION=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p; s/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' go.mod | head -1)
[ -n "$VERSION" ] || { log "no k8s.io/kubernetes version in config/kube/go.mod"; exit 1; }
HASH=$(cat go.mod go.sum main.go etcd/go.mod etcd/go.sum etcd/main.go containerd/go.mod containerd/go.sum \
    containerd/tools.go pause/main.go build.sh | sha256sum | cut -c1-12)
ROOT=${KUBE_CACHE_ROOT:-$HOME/.cache/kubernetes-nmstate}
BIN=$ROOT/kube-$VERSION-$HASH/bin
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

point_current() { ln -sfn "kube-$VERSION-$HASH/bin" "$ROOT/kube-current"; }
if [ -x "$BIN/kube" ] && [ -x "$BIN/etcd" ] && [ -x "$BIN/containerd" ]; then
    point_current
    exit 0
fi
command -v go >/dev/null || { log "go is required (Go 1.26 or later)"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
export GOMODCACHE=$ROOT/go/mod GOCACHE=$ROOT/go/build
log "Kubernetes $VERSION with $(go version | cut -d' ' -f3), cached in $BIN"

step() { # name, then the command
    local name=$1 start=$SECONDS
    shift
    log "$name..."
    "$@" >"$ROOT/kube-build.log" 2>&1 || { tail -40 "$ROOT/kube-build.log" >&2; log "$name failed"; exit 1; }
    log "$name: $((SECONDS - start)) s"
}

mkdir -p "$BIN.new"
minor=${VERSION#v1.}; minor=${minor%%.*}
stamp="-X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1"
stamp+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
stamp+=" -X k8s.io/component-base/version.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
step "downloading the modules (go mod download)" go mod download
step "downloading etcd's modules" sh -c 'cd etcd && go mod download'
step "building kube ($(IFS=,; echo "${COMPONENTS[*]}"))" go build -trimpath -ldflags "-s -w $stamp" -o "$BIN.new/kube" .
step "building etcd" sh -c "cd etcd && go build -trimpath -ldflags '-s -w' -o '$BIN.new/etcd' ."
step "downloading containerd's modules" sh -c 'cd containerd && go mod download'
containerd=github.com/containerd/containerd/v2/cmd
step "building containerd, containerd-shim-runc-v2 and ctr" sh -c "cd containerd && go build -trimpath \
    -ldflags '-s -w' -o '$BIN.new/' $containerd/containerd $containerd/containerd-shim-runc-v2 $containerd/ctr"
step "building pause" go build -trimpath -ldflags "-s -w" -o "$BIN.new/pause" ./pause
for component in "${COMPONENTS[@]}"; do
    ln -f "$BIN.new/kube" "$BIN.new/$component"
done
rm -rf "$BIN"
mv "$BIN.new" "$BIN"
point_current
log "built Kubernetes $VERSION, etcd and containerd in $BIN"

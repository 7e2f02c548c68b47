#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's source package
# `kubernetes` once, and caches them in $KUBE_CACHE (default
# ~/.cache/kubernetes-nmstate/kube-1.20.2-r3; the -rN suffix changes whenever this recipe does,
# so machines holding an older build rebuild; control_plane.rs names the same directory).
# The registries these machines reach ship no kube-apiserver binary; this is the only real one.
# Steps and the reflect2 fix: ../shared/reference/kube-apiserver-from-debian.md.
# Idempotent: exits at once when both binaries are cached.
set -euo pipefail

CACHE=${KUBE_CACHE:-$HOME/.cache/kubernetes-nmstate/kube-1.20.2-r3}
BIN=$CACHE/bin
log() { printf 'build-kube: %s\n' "$*" >&2; }

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
    log "cached in $BIN"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "must run as root (apt-get)"; exit 1; }

SRC_LIST=/etc/apt/sources.list.d/kubernetes-nmstate-deb-src.sources
if [ ! -e "$SRC_LIST" ]; then
    log "adding a deb-src entry for bookworm ($SRC_LIST)"
    cat > "$SRC_LIST" <<'X'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
X
fi
log "installing build dependencies (golang-go, rsync, dpkg-dev, reflect2 1.0.2)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    golang-go dpkg-dev rsync make golang-github-modern-go-reflect2-dev >/dev/null

WORK=$CACHE/build
rm -rf "$WORK"
mkdir -p "$WORK/home"
cd "$WORK"
log "fetching the source package"
apt-get source --download-only kubernetes >/dev/null 2>&1
tar xzf kubernetes_*.orig.tar.gz
cd kubernetes-1.20.2

# Kubernetes 1.20 is built with the Go it was made for, Debian's 1.19 (golang-go puts it under
# /usr/lib/go-1.19), whatever `go` comes first on the PATH: a newer Go (1.26 on these machines)
# rejects parts of its vendored tree.
GO_ROOT=/usr/lib/go-1.19
[ -x "$GO_ROOT/bin/go" ] || { log "$GO_ROOT/bin/go is missing after installing golang-go"; exit 1; }
export PATH=$GO_ROOT/bin:$PATH GOROOT=$GO_ROOT GOTOOLCHAIN=local
log "using $(go version)"
export GOPATH=$PWD/.go CGO_ENABLED=0 HOME=$WORK/home GOCACHE=$WORK/gocache
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes   # the layout debian/rules uses
# Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, which crashes under Go >= 1.18 on the
# first CRD apply (SIGSEGV in mapiterinit). Debian's 1.0.2 is API-compatible and fixes it.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod

# The OpenAPI type validators test "is this value null?" with
#   data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))
# Under Go >= 1.19 every empty string decoded at run time shares the runtime's zero buffer, so
# that test is true for "" and a custom resource field holding "" is refused as null (e.g. the
# usual nodeSelector `node-role.kubernetes.io/worker: ""`). Only nil and typed nils are null.
for validator in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
                 vendor/github.com/go-openapi/validate/type.go; do
    grep -q 'data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' "$validator" \
        || { log "$validator no longer has the expected null test; review this patch"; exit 1; }
    sed -i 's/data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))/data == nil || isNilValue(data)/' "$validator"
    cat >> "$validator" <<'GO'

// isNilValue reports typed nils. Added by kubernetes-nmstate's build (see build-kube.sh).
func isNilValue(data interface{}) bool {
	value := reflect.ValueOf(data)
	switch value.Kind() {
	case reflect.Ptr, reflect.Map, reflect.Slice, reflect.Interface, reflect.Func, reflect.Chan:
		return value.IsNil()
	}
	return false
}
GO
done

start=$SECONDS
log "building kube-apiserver (about 6 minutes on 2 cores)"
make WHAT=cmd/kube-apiserver >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }
log "building kube-controller-manager (about 1 minute)"
make WHAT=cmd/kube-controller-manager >>"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }

mkdir -p "$BIN"
install -m 0755 _output/local/bin/linux/amd64/kube-apiserver "$BIN/kube-apiserver.new"
install -m 0755 _output/local/bin/linux/amd64/kube-controller-manager "$BIN/kube-controller-manager.new"
mv "$BIN/kube-apiserver.new" "$BIN/kube-apiserver"
mv "$BIN/kube-controller-manager.new" "$BIN/kube-controller-manager"
cd /
rm -rf "$WORK"
log "built in $((SECONDS - start)) s, cached in $BIN"

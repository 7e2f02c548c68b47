#!/usr/bin/env bash
# Installs the Debian packages the local environment and the integration tests use: etcd,
# NetworkManager, dnsmasq, a dbus-daemon and dbus-send, socat, iproute2, ping and sysctl; for
# nodes with real kubelets runc, the CNI plugins, iptables and conntrack (kube-proxy). Installing
# must never change the host's networking, so apt may not start any of their services
# (policy-rc.d), and the services a package enables for the next boot are disabled again.
# Idempotent.
set -euo pipefail
log() { printf 'install-deps: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root (apt-get)"; exit 1; }

declare -A package_of=(
    [etcd]=etcd-server [etcdctl]=etcd-client [NetworkManager]=network-manager
    [nmcli]=network-manager [dnsmasq]=dnsmasq-base [dbus-daemon]=dbus-daemon [ip]=iproute2
    [nsenter]=util-linux [unshare]=util-linux [socat]=socat [ping]=iputils-ping
    [getent]=libc-bin [python3]=python3 [sysctl]=procps [dbus-send]=dbus-bin
    [runc]=runc [iptables]=iptables [conntrack]=conntrack
    # `go tool pprof` reads the handler's CPU profiles in the profiler test.
    [go]=golang-go
)
missing=()
for command in "${!package_of[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${package_of[$command]}")
done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
log "installing ${missing[*]}"

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { [ "$created_policy" = 1 ] && rm -f "$policy"; return 0; }
trap cleanup EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable NetworkManager.service NetworkManager-wait-online.service \
        NetworkManager-dispatcher.service etcd.service >/dev/null 2>&1 || true
fi
log "done"

#!/usr/bin/env bash
# Usage: rootfs.sh DIR BINARY...
# Lays out DIR/rootfs for a FROM scratch image: the binaries in /usr/bin, the shared libraries
# they link (as ldd resolves them on the build machine; none for a static one) and the dynamic
# loader, CA certificates for the API server's TLS (kube reads the service account's CA, but a proxy may need them),
# and /etc/passwd with the non-root user the pods run as.
set -euo pipefail
dir=$1; shift
rm -rf "$dir"; mkdir -p "$dir/rootfs/usr/bin" "$dir/rootfs/etc" "$dir/rootfs/tmp" "$dir/rootfs/run" "$dir/rootfs/var"
# D-Bus clients (zbus too) look for the system bus at /var/run/dbus/system_bus_socket; the
# DaemonSet mounts the host's at /run/dbus/system_bus_socket, as on every Linux system.
ln -s ../run "$dir/rootfs/var/run"
for binary in "$@"; do
    install -m 0755 "$binary" "$dir/rootfs/usr/bin/"
    ldd "$binary" >/dev/null 2>&1 || continue # static: nothing to add
    ldd "$binary" | awk '/=>/ {print $3} /^\t\// {print $1}' | while read -r lib; do
        [ -n "$lib" ] || continue
        mkdir -p "$dir/rootfs$(dirname "$lib")"
        cp -L "$lib" "$dir/rootfs$lib"
    done
done
[ -f /etc/ssl/certs/ca-certificates.crt ] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nnmstate:x:65532:65532:nmstate:/:/sbin/nologin\n' > "$dir/rootfs/etc/passwd"
echo "rootfs.sh: $(du -sh "$dir/rootfs" | cut -f1) in $dir/rootfs"

#!/bin/sh
# Builds the Mezzanine test node image without pulling anything: debootstrap a minimal
# Debian 12 with sshd and the tools later issues need, add node-init, and `docker import`
# it. The tag carries a hash of this recipe, so a machine builds it once.
set -eu

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build-image.sh: '$1' is required" >&2
        exit 1
    }
}

main() {
    here=$(cd "$(dirname "$0")" && pwd)
    need_cmd docker
    need_cmd debootstrap
    need_cmd sha256sum
    packages="openssh-server,nginx,git,curl,ca-certificates,iproute2,procps,sudo,docker.io"
    mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    hash=$(cat "$here/build-image.sh" "$here/node-init" | sha256sum | cut -c1-12)
    tag="mezzanine-node:$hash"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        echo "$tag"
        return 0
    fi
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    echo "building $tag (debootstrap bookworm; takes a minute or two)" >&2
    debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >&2
    install -m 0755 "$here/node-init" "$root/usr/local/sbin/node-init"
    rm -f "$root"/etc/ssh/ssh_host_*
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        --change 'CMD ["/usr/local/sbin/node-init"]' \
        --change 'EXPOSE 22' \
        - "$tag" >&2
    echo "$tag"
}

main "$@"

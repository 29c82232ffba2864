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

# The Debian mirror this machine's apt already uses for bookworm's main archive (not the
# security one), from deb822 .sources files or one-line sources.list entries; so the tree
# names no package host of its own.
apt_mirror() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            /^[[:space:]]*$/ { if (deb && main && bookworm && uri != "") { print uri; uri = ""; exit } deb = main = bookworm = 0; uri = ""; next }
            /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            /^URIs:/ { if ($2 !~ /security/) uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") bookworm = 1 }
            /^Components:/ { for (i = 2; i <= NF; i++) if ($i == "main") main = 1 }
            END { if (deb && main && bookworm && uri != "") print uri }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" && $3 == "bookworm" && $2 !~ /security/ { print $2 }' "$f"
    done
}

main() {
    here=$(cd "$(dirname "$0")" && pwd)
    need_cmd docker
    need_cmd debootstrap
    need_cmd sha256sum
    packages="openssh-server,nginx,git,curl,ca-certificates,iproute2,procps,sudo,docker.io,python3-minimal"
    mirror="${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}"
    if [ -z "$mirror" ]; then
        echo "build-image.sh: no Debian bookworm mirror in /etc/apt sources; set DEBIAN_MIRROR" >&2
        exit 1
    fi
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

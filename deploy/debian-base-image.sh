#!/bin/sh
# Make the image `debian:SUITE-slim` from Debian's packages, as Debian's own images are made:
# a minbase bootstrap (essential packages and apt), trimmed as the slim variants are (no manual
# pages, documentation or translations), with the suite's updates and security archives.
# For machines that reach Debian's archive but no image registry (CI here): the Dockerfiles'
# FROM lines then find the image they name locally. With Docker Hub, pull it instead.
#
#   deploy/debian-base-image.sh SUITE [ENGINE]     e.g. bookworm podman
#
# Needs root and mmdebstrap. Does nothing when the image exists (remove it to make it anew).
set -eu
suite=${1:?usage: debian-base-image.sh SUITE [ENGINE]}
engine=${2:-podman}
image=docker.io/library/debian:$suite-slim  # what `FROM debian:SUITE-slim` resolves to

if "$engine" image exists "$image" 2>/dev/null; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mirror=http://deb.debian.org/debian
# The official images' apt setting: derived images keep no downloaded packages or caches.
cat > "$work/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
# The hook merges /usr as Debian does from bookworm on, without the usrmerge package (and perl).
# dpkg skips the excluded paths in every package, then and later (the options stay in the image).
mmdebstrap --variant=minbase --quiet --hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --aptopt='Acquire::Languages "none"' \
    --customize-hook="copy-in $work/docker-clean /etc/apt/apt.conf.d" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    "$suite" "$work/rootfs.tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $mirror-security $suite-security main"
"$engine" import --change 'CMD ["bash"]' "$work/rootfs.tar" "$image" >/dev/null
echo "debian-base-image: made $image from Debian's packages ($suite)" >&2

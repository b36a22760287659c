#!/bin/sh
# Build a Debian 12 (bookworm) base image for `make container` without Docker Hub:
# debootstrap --variant=minbase from the Debian mirror, python3.11 + pip + venv, then `docker import`.
#
#   deploy/base-image/build.sh [TAG]            (default TAG: convzoo-base:bookworm; needs root)
#
# Settings (environment):
#   DEBIAN_MIRROR   the apt mirror (default: http://deb.debian.org/debian)
#   EXTRA_PACKAGES  more Debian packages to include (space separated)
#   DOCKER          the docker client (default: /usr/bin/docker if present, else docker)
#
# Behind a TLS-intercepting proxy, add the host's CA certificates when building the service image
# (`make container HOST_CA=1`), not here: apt fetches over plain HTTP with signed indexes.
#
# The image sets PIP_BREAK_SYSTEM_PACKAGES=1 (BentoML installs its `uv` with the system pip; the
# service itself lives in /app/.venv) and points pip, uv and requests at the system CA bundle.
set -eu

TAG=${1:-convzoo-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
PACKAGES="python3.11,python3-pip,python3-venv,ca-certificates,passwd"
for p in ${EXTRA_PACKAGES:-}; do PACKAGES="$PACKAGES,$p"; done

command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }
"$DOCKER" info >/dev/null 2>&1 || { echo "docker not running: start dockerd (see docs/operations.md, "Containers")" >&2; exit 1; }

ROOT=$(mktemp -d /tmp/convzoo-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOT" "$MIRROR"

echo "deb $MIRROR bookworm main" > "$ROOT/etc/apt/sources.list"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* \
       "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/* "$ROOT"/tmp/* "$ROOT"/var/log/*

CA=/etc/ssl/certs/ca-certificates.crt
tar -C "$ROOT" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change "ENV SSL_CERT_FILE=$CA" \
    --change "ENV REQUESTS_CA_BUNDLE=$CA" \
    --change "ENV PIP_CERT=$CA" \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG"
"$DOCKER" image ls "$TAG"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds target/deb/flake-pilot_VERSION_ARCH.deb with plain dpkg-deb: the files come from
# `make install` into a staging tree, so the package holds exactly what a source install
# puts on a host, under /usr, plus the conffiles in /etc. Prints the path of the package.
set -euo pipefail

cd "$(dirname "$0")/.."
command -v dpkg-deb >/dev/null || { echo "deb: dpkg-deb not found; apt-get install dpkg" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
out=target/deb
stage=$out/flake-pilot_${version}_${arch}
deb=$out/flake-pilot_${version}_${arch}.deb

rm -rf "$stage" "$deb"
mkdir -p "$stage"
make --no-print-directory install DESTDIR="$PWD/$stage" PREFIX=/usr >&2

# Debian keeps man pages compressed, without a timestamp so the package is reproducible.
find "$stage/usr/share/man" -type f -name '*.[0-9]' -exec gzip -9n {} +

install -d -m 0755 "$stage/etc/flakes" "$stage/usr/share/doc/flake-pilot" "$stage/DEBIAN"
install -m 0644 packaging/flakes.yml "$stage/etc/flakes.yml"
install -m 0644 packaging/templates/container-flake.yaml packaging/templates/firecracker-flake.yaml \
    "$stage/etc/flakes/"
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"
install -m 0755 packaging/debian/postrm "$stage/DEBIAN/postrm"
{
    echo "Files: *"
    echo "License: MIT"
} > "$stage/usr/share/doc/flake-pilot/copyright"
chmod 0644 "$stage/usr/share/doc/flake-pilot/copyright"

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in > "$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control"

dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
echo "$deb"
